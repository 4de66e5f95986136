"""Accuracy reports: DuckDB SQL over the predictions Parquet (figures live in `figures`).

The SQL is the report: the same query runs in the pipeline, in the tests' recomputation check, and in
the user's own DuckDB session (README), against the views in warehouse/locdiff.duckdb.
"""

from __future__ import annotations

import glob
import time

import duckdb

from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method.metrics import THRESHOLDS_KM, accuracy_column

DATABASE = "locdiff.duckdb"
LOCK_WAIT_SECONDS = 120.0  # how long a run waits for another process to close the database file
TOP_PREFIX = "top5_"  # accuracy of the best of a method's five ranked answers
REPORTS = "reports"

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
LATER_COLUMNS = {"training_dataset": "VARCHAR", "top_error_km": "DOUBLE"}


def accuracy_sql(source: str = "predictions", columns: set[str] | None = None) -> str:
    """The accuracy report's SQL over `source`, whose `columns` (default: all of today's) decide which of
    LATER_COLUMNS read as NULL, so a warehouse written by an earlier version still reports."""
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
    return f"""
SELECT dataset, {value["training_dataset"]} AS training_dataset, method, model_version, encoder,
    bool_and(encoder_pretrained) AS encoder_pretrained,
    count(DISTINCT image_id) AS count,
    {accuracies},
    median(error_km) AS median_km,
    avg(CASE WHEN region_km IS NULL OR isnan(region_km) THEN NULL
             WHEN error_km <= region_km THEN 1.0 ELSE 0.0 END) AS region_coverage,
    median(CASE WHEN isnan(region_km) THEN NULL ELSE region_km END) AS median_region_km,
    corr(CASE WHEN isnan(spread_km) THEN NULL ELSE ln(1 + spread_km) END, ln(1 + error_km))
        AS spread_error_correlation,
    {ranked}
FROM {source}
GROUP BY ALL
ORDER BY dataset, model_version, method
"""


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
        con.execute(f"CREATE OR REPLACE VIEW accuracy AS {accuracy_sql(columns=columns)}")
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


def markdown_table(rows: list[dict], note: str | None = None) -> str:
    header = [
        "benchmark",
        "trained on",
        "method",
        "model",
        "n",
        *[f"{t} km" for t in THRESHOLDS_KM],
        "median km",
        "in 90% region",
        "spread ~ error",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        accuracies = [f"{100 * r[accuracy_column(t)]:.1f}%" for t in THRESHOLDS_KM]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["dataset"],
                    r["training_dataset"],
                    r["method"],
                    f"v{r['model_version']}",
                    str(r["count"]),
                    *accuracies,
                    f"{r['median_km']:.0f}",
                    _coverage(r),
                    _correlation(r),
                ]
            )
            + " |"
        )
    if note:
        lines.append(f"\n> {note}")
    return "\n".join(lines)


def ranked_markdown_table(rows: list[dict]) -> str:
    """Top-5 accuracy (the truth within the scale of any of five ranked answers) of the methods that give
    ranked answers; empty when none does."""
    ranked = [r for r in rows if r.get(TOP_PREFIX + accuracy_column(THRESHOLDS_KM[0])) is not None]
    if not ranked:
        return ""
    lines = [
        "| method | " + " | ".join(f"top-5 {t} km" for t in THRESHOLDS_KM) + " |",
        "|" + "---|" * (len(THRESHOLDS_KM) + 1),
    ]
    for r in ranked:
        lines.append(
            f"| {r['method']} | "
            + " | ".join(f"{100 * r[TOP_PREFIX + accuracy_column(t)]:.1f}%" for t in THRESHOLDS_KM)
            + " |"
        )
    return "\n".join(lines)


def text_table(rows: list[dict]) -> str:
    """The same table for a terminal."""
    header = (
        f"{'benchmark':<20} {'trained on':<12} {'method':<26} {'model':>5} {'n':>5} "
        + " ".join(f"{str(t) + 'km':>7}" for t in THRESHOLDS_KM)
        + f" {'median km':>10} {'in 90% region':>19} {'spread~error':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        accuracies = " ".join(f"{100 * r[accuracy_column(t)]:>6.1f}%" for t in THRESHOLDS_KM)
        lines.append(
            f"{r['dataset']:<20} {r['training_dataset']:<12} {r['method']:<26} {'v' + str(r['model_version']):>5} "
            f"{r['count']:>5} {accuracies} {r['median_km']:>10.0f} {_coverage(r):>19} {_correlation(r):>12}"
        )
    return "\n".join(lines)


def _coverage(row: dict) -> str:
    """'93.0% (r~812 km)' for methods with confidence regions, '' for the others."""
    if row.get("region_coverage") is None:
        return ""
    return f"{100 * row['region_coverage']:.1f}% (r~{row['median_region_km']:.0f} km)"


def _correlation(row: dict) -> str:
    """The correlation of log sample spread with log error, for methods with a spread; '' for the others."""
    value = row.get("spread_error_correlation")
    return "" if value is None or value != value else f"{value:+.2f}"


# The accuracy table as people read it in the UI: what decides first, LocDiff first.
LEARNED_METHODS = ("locdiff", "locdiff_h", "knn", "cell_classification", "regression")
REFERENCE_METHODS = ("chance", "constant")  # the rows every method must beat
DISPLAY_COLUMNS = (  # (label, accuracy view column); shares shown as percentages
    ("method", "method"),
    ("750 km %", "acc_750km"),
    ("2500 km %", "acc_2500km"),
    ("median km", "median_km"),
    ("in 90% area %", "region_coverage"),  # share of truths inside their 90 % region
    ("200 km %", "acc_200km"),
    ("25 km %", "acc_25km"),
    ("1 km %", "acc_1km"),
    ("n", "count"),
)


def display_rows(rows: list[dict]) -> list[dict]:
    """The accuracy rows for a narrow screen: LocDiff, then the learned baselines, then a NAME/plain twin only
    where its numbers differ from NAME's, then chance and the constant guess (any other method after them);
    columns in DISPLAY_COLUMNS order (the scales that decide first), shares as percentages to 0.1, the
    median to 1 km."""
    by_method = {row["method"]: row for row in rows}

    def numbers(row: dict) -> tuple:
        return tuple(row.get(column) for _, column in DISPLAY_COLUMNS[1:])

    def differing_twin(row: dict) -> bool:
        family = by_method.get(row["method"].split("/")[0])
        return "/" in row["method"] and (family is None or numbers(row) != numbers(family))

    ordered = [by_method[m] for m in LEARNED_METHODS if m in by_method]
    ordered += [row for row in rows if differing_twin(row)]
    ordered += [by_method[m] for m in REFERENCE_METHODS if m in by_method]
    ordered += [row for row in rows if "/" not in row["method"] and row not in ordered]
    return [{label: _display_value(column, row.get(column)) for label, column in DISPLAY_COLUMNS} for row in ordered]


def _display_value(column: str, value):
    if value is None or isinstance(value, str):
        return value
    if column == "count":
        return int(value)
    if column == "median_km":
        return round(float(value))
    return round(100 * float(value), 1)
