"""Accuracy reports: DuckDB SQL over the predictions Parquet (their tables as people read them live in
`report_tables`, their figures in `figures`).

The SQL is the report: the same query runs in the pipeline, in the tests' recomputation check, and in
the user's own DuckDB session (README), against the views in warehouse/locdiff.duckdb.
"""

from __future__ import annotations

import glob
import time

import duckdb

from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method.bootstrap import CONFIDENCE
from locdiff_pipeline.method.densities import LEVEL
from locdiff_pipeline.method.metrics import THRESHOLDS_KM, accuracy_column

DATABASE = "locdiff.duckdb"
LOCK_WAIT_SECONDS = 120.0  # how long a run waits for another process to close the database file
TOP_PREFIX = "top5_"  # accuracy of the best of a method's five ranked answers

# table name -> number of hive partition keys in its folder layout
VIEWS = {
    "metadata": 2,
    "image_index": 2,
    "images": 2,
    "rejected": 2,
    "embeddings": 2,
    "shdd": 3,
    "predictions": 2,
    "prediction_samples": 2,
    "bootstrap": 2,
    "contamination": 1,
}
SHARDED = {
    "metadata",
    "image_index",
    "images",
    "rejected",
    "embeddings",
    "shdd",
}


# columns added to `predictions` over time, with their types: NULL in partitions written before them
LATER_COLUMNS = {
    "training_dataset": "VARCHAR",
    "top_error_km": "DOUBLE",
    "region": "VARCHAR",
    "log_density": "DOUBLE",
    "hpd_level": "DOUBLE",
    "hpd90_area": "DOUBLE",
    "hpd_areas": "DOUBLE[]",
}
# the numbers that carry a bootstrap interval: name -> per-row value whose mean over a benchmark's images it is
INTERVAL_VALUES = {
    **{accuracy_column(t): f"CASE WHEN error_km <= {t} THEN 1.0 ELSE 0.0 END" for t in THRESHOLDS_KM},
    "nll": "-log_density",
    "hpd90_coverage": f"CASE WHEN hpd_level IS NULL THEN NULL WHEN hpd_level <= {LEVEL} THEN 1.0 ELSE 0.0 END",
    "hpd90_area": "hpd90_area",
}
# the numbers each method is set against LocDiff's, and whether higher is better: the verdict comes from the
# interval of their paired difference (method minus LocDiff, per bootstrap replicate, on the same resampled
# regions), not from whether two marginal intervals overlap
VERSUS_LOCDIFF = {"acc_750km": True, "acc_2500km": True, "nll": False, "hpd90_area": False}


def accuracy_sql(source: str = "predictions", columns: set[str] | None = None, resamples: str | None = None) -> str:
    """The accuracy report's SQL over `source`, whose `columns` (default: all of today's) decide which of
    LATER_COLUMNS read as NULL, so a warehouse written by an earlier version still reports. With `resamples`
    (the bootstrap table), every INTERVAL_VALUES number gains its 95 % interval (`_low`, `_high`), and each
    VERSUS_LOCDIFF number of each method its difference from LocDiff's (`*_minus_locdiff`), that difference's
    interval over the shared replicates (`*_minus_locdiff_low`, `_high`) and the verdict it gives
    (`versus_locdiff_*`); without, the intervals and verdicts are NULL."""
    value = {
        name: name if columns is None or name in columns else f"CAST(NULL AS {kind})"
        for name, kind in LATER_COLUMNS.items()
    }
    ranked_column = value["top_error_km"]
    accuracies = ",\n    ".join(
        f"avg(CASE WHEN error_km <= {t} THEN 1.0 ELSE 0.0 END) AS {accuracy_column(t)}" for t in THRESHOLDS_KM
    )
    ranked = ",\n    ".join(  # NULL for methods without ranked answers
        f"avg(CASE WHEN {ranked_column} IS NULL THEN NULL WHEN {ranked_column} <= {t} THEN 1.0 ELSE 0.0 END) "
        f"AS {TOP_PREFIX}{accuracy_column(t)}"
        for t in THRESHOLDS_KM
    )
    missing = "".join(f", {kind} AS {name}" for name, kind in value.items() if kind != name)
    rows = f"(SELECT *{missing} FROM {source})"
    return f"""
WITH scored AS {rows},
base AS (
SELECT dataset, training_dataset, method, model_version, encoder,
    bool_and(encoder_pretrained) AS encoder_pretrained,
    count(DISTINCT image_id) AS count,
    count(DISTINCT region) AS regions,
    {accuracies},
    median(error_km) AS median_km,
    avg(-log_density) AS nll,
    avg({INTERVAL_VALUES["hpd90_coverage"]}) AS hpd90_coverage,
    avg(hpd90_area) AS hpd90_area,
    avg(CASE WHEN region_km IS NULL OR isnan(region_km) THEN NULL
             WHEN error_km <= region_km THEN 1.0 ELSE 0.0 END) AS region_coverage,
    median(CASE WHEN isnan(region_km) THEN NULL ELSE region_km END) AS median_region_km,
    corr(CASE WHEN isnan(spread_km) THEN NULL ELSE ln(1 + spread_km) END, ln(1 + error_km))
        AS spread_error_correlation,
    {ranked}
FROM scored
GROUP BY ALL
),
{_intervals_sql(resamples)}
SELECT b.*, {", ".join(f"i.{name}_low, i.{name}_high" for name in INTERVAL_VALUES)},
    {", ".join(_difference_sql(name) for name in VERSUS_LOCDIFF)},
    {", ".join(_versus_sql(name, higher) for name, higher in VERSUS_LOCDIFF.items())}
FROM base b
LEFT JOIN intervals i USING (dataset, method, model_version)
LEFT JOIN paired p USING (dataset, method, model_version)
LEFT JOIN base l ON l.dataset = b.dataset AND l.model_version = b.model_version AND l.method = 'locdiff'
ORDER BY b.dataset, b.model_version, b.method
"""


def _intervals_sql(resamples: str | None) -> str:
    """The `intervals` CTE: per method, the CONFIDENCE interval of each INTERVAL_VALUES mean over the
    bootstrap's replicates (each the ratio of the resampled regions' sums to their counts, as
    method/bootstrap.ratio_interval computes it); NULLs without a bootstrap table."""
    tail = (1.0 - CONFIDENCE) / 2.0
    if resamples is None:
        nulls = ", ".join(f"CAST(NULL AS DOUBLE) AS {n}_low, CAST(NULL AS DOUBLE) AS {n}_high" for n in INTERVAL_VALUES)
        paired_nulls = ", ".join(
            f"CAST(NULL AS DOUBLE) AS d_{n}_low, CAST(NULL AS DOUBLE) AS d_{n}_high" for n in VERSUS_LOCDIFF
        )
        return f"""intervals AS (SELECT DISTINCT dataset, method, model_version, {nulls} FROM base),
paired AS (SELECT DISTINCT dataset, method, model_version, {paired_nulls} FROM base)"""
    sums = ", ".join(f"sum({v}) AS s_{n}, count({v}) AS c_{n}" for n, v in INTERVAL_VALUES.items())
    ratios = ", ".join(f"sum(b.weight * r.s_{n}) / nullif(sum(b.weight * r.c_{n}), 0) AS {n}" for n in INTERVAL_VALUES)
    quantiles = ", ".join(
        f"quantile_cont({n}, {tail}) AS {n}_low, quantile_cont({n}, {1.0 - tail}) AS {n}_high" for n in INTERVAL_VALUES
    )
    paired_quantiles = ", ".join(
        f"quantile_cont(r.{n} - l.{n}, {tail}) AS d_{n}_low, quantile_cont(r.{n} - l.{n}, {1.0 - tail}) AS d_{n}_high"
        for n in VERSUS_LOCDIFF
    )
    return f"""per_region AS (
    SELECT dataset, method, model_version, region, {sums} FROM scored GROUP BY ALL
),
replicates AS (
    SELECT r.dataset, r.method, r.model_version, b.replicate, {ratios}
    FROM per_region r JOIN {resamples} b
        ON b.dataset = r.dataset AND b.model_version = r.model_version AND b.region = r.region
    GROUP BY ALL
),
intervals AS (SELECT dataset, method, model_version, {quantiles} FROM replicates GROUP BY ALL),
paired AS (
    SELECT r.dataset, r.method, r.model_version, {paired_quantiles}
    FROM replicates r JOIN replicates l
        ON l.dataset = r.dataset AND l.model_version = r.model_version AND l.replicate = r.replicate
        AND l.method = 'locdiff'
    GROUP BY ALL
)"""


def _difference_sql(name: str) -> str:
    """A method's `name` minus LocDiff's, and the CONFIDENCE interval of that difference over the bootstrap's
    replicates (each replicate's difference on the same resampled regions); NULL for LocDiff itself."""
    return f"""CASE WHEN b.method = 'locdiff' THEN NULL ELSE b.{name} - l.{name} END AS {name}_minus_locdiff,
    CASE WHEN b.method = 'locdiff' THEN NULL ELSE p.d_{name}_low END AS {name}_minus_locdiff_low,
    CASE WHEN b.method = 'locdiff' THEN NULL ELSE p.d_{name}_high END AS {name}_minus_locdiff_high"""


def _versus_sql(name: str, higher_is_better: bool) -> str:
    """A method's verdict against LocDiff on `name` by the interval of their paired difference: 'locdiff
    better' or 'locdiff worse' where it excludes zero, else 'tie'; NULL for LocDiff itself or without
    intervals."""
    better, worse = ("locdiff better", "locdiff worse") if higher_is_better else ("locdiff worse", "locdiff better")
    return f"""CASE WHEN b.method = 'locdiff' OR p.d_{name}_low IS NULL THEN NULL
        WHEN p.d_{name}_high < 0 THEN '{better}'
        WHEN p.d_{name}_low > 0 THEN '{worse}'
        ELSE 'tie' END AS versus_locdiff_{name}"""


def connect(
    warehouse: Warehouse, read_only: bool = False, wait_seconds: float = LOCK_WAIT_SECONDS
) -> duckdb.DuckDBPyConnection:
    """The warehouse's DuckDB database (views over the Parquet tables). DuckDB lets one process at a time
    open the file: runs of different benchmarks (one partition each, in parallel) take turns, each
    holding it for the few statements it runs, so a busy file is waited for, up to `wait_seconds`."""
    warehouse.root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return duckdb.connect(str(warehouse.root / DATABASE), read_only=read_only)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def create_views(warehouse: Warehouse) -> list[str]:
    """(Re)create one view per materialized table, and the `accuracy` view, in warehouse/locdiff.duckdb."""
    with connect(warehouse) as con:
        return _define_views(con, warehouse)


def in_memory_views(warehouse: Warehouse) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the same views: for readers that run in parallel (asset checks of
    shards run as separate processes), which must not contend for the database file's write lock."""
    con = duckdb.connect()
    _define_views(con, warehouse)
    return con


def _define_views(con: duckdb.DuckDBPyConnection, warehouse: Warehouse) -> list[str]:
    created = []
    for table, depth in VIEWS.items():
        part_files = warehouse.glob(table, depth)
        if next(glob.iglob(part_files), None) is None:
            continue
        # keys stay text: shard '007' (not 7), a dataset named '2024' (not a number)
        types = "{'dataset': VARCHAR, 'shard': VARCHAR}" if table in SHARDED else "{'dataset': VARCHAR}"
        quoted = part_files.replace("'", "''")  # a path is data: a quote in it must not end the literal
        con.execute(
            f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{quoted}', hive_partitioning = "
            f"true, union_by_name = true, hive_types = {types})"
        )
        created.append(table)
    if "predictions" in created:
        columns = {row[0] for row in con.execute("DESCRIBE predictions").fetchall()}
        resamples = "bootstrap" if "bootstrap" in created and "region" in columns else None
        con.execute(f"CREATE OR REPLACE VIEW accuracy AS {accuracy_sql(columns=columns, resamples=resamples)}")
        created.append("accuracy")
    return created


def accuracy_table(warehouse: Warehouse, dataset: str | None = None, model_version: int | None = None) -> list[dict]:
    """Rows of the accuracy report, straight from DuckDB over the predictions Parquet."""
    create_views(warehouse)
    with connect(warehouse) as con:
        return _accuracy_rows(con, dataset, model_version)


def read_accuracy_table(warehouse: Warehouse, dataset: str | None = None) -> list[dict]:
    """accuracy_table for a reader (`locdiff report`): views in memory, so it writes nothing, reads a
    read-only warehouse, and leaves an empty folder empty."""
    if not warehouse.root.is_dir():
        return []
    with duckdb.connect() as con:
        return _accuracy_rows(con, dataset) if "accuracy" in _define_views(con, warehouse) else []


def _accuracy_rows(con: duckdb.DuckDBPyConnection, dataset: str | None, model_version: int | None = None) -> list[dict]:
    return query(
        con,
        "SELECT * FROM accuracy WHERE ($1 IS NULL OR dataset = $1) AND ($2 IS NULL OR model_version = $2)",
        [dataset, model_version],
    )


def query(con: duckdb.DuckDBPyConnection, sql: str, parameters: list | None = None) -> list[dict]:
    """Rows as dicts; values reach DuckDB as bound parameters, never as SQL text."""
    cursor = con.execute(sql, parameters or [])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
