"""A team's stack on one machine's loopback: PostgreSQL, an MLflow tracking server, a dask cluster, and
Dagster's daemon and webserver on a PostgreSQL instance (`locdiff stack up|down|status|env`). The same
configuration pointed at real hosts is the multi-machine deployment (docs/scaling.md)."""
