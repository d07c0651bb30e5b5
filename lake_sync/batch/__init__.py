"""Offline inference: batch-prediction output files (S3, OpenAI Files, local JSONL) → index.

`request` validates an ML Commons batch-ingestion body, `readers` stream its sources line by
line, and `ingest.run_ingest` maps, joins and bulk-writes the documents.
"""
