"""lake-sync: keep Elasticsearch indexes in step with Apache Paimon tables, with embeddings."""

__version__ = "0.1.0"
