"""The Dagster layer, the only package that imports Dagster: assets by stage, checks, resources,
partitions, jobs and schedules. `locdiff_pipeline.definitions` assembles them."""
