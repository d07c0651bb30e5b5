"""The Paimon source: catalogs, snapshots and streamed reads; knows nothing of the index."""
