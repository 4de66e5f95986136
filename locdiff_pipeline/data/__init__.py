"""Data: the Parquet warehouse and its id-hash shards, dataset descriptions and catalogs, the image readers
and ingest, the bundled default datasets, and the training rows streamed from the warehouse. Builds on
`method` (geometry) only."""
