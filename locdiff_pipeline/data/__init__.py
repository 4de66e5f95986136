"""Data: the Parquet warehouse, id-hash shards, dataset descriptions and readers, ingest, the bundled
default datasets and the frozen image encoder. Builds on `method` (geometry) only."""
