"""The Elasticsearch target: client, mappings, bulk writer, dead letters and the cursor."""
