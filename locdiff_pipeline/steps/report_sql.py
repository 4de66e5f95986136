"""Accuracy reports: DuckDB SQL over the predictions Parquet (figures live in `figures`).

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
}
# the numbers that carry a bootstrap interval: name -> per-row value whose mean over a benchmark's images it is
INTERVAL_VALUES = {
    **{accuracy_column(t): f"CASE WHEN error_km <= {t} THEN 1.0 ELSE 0.0 END" for t in THRESHOLDS_KM},
    "nll": "-log_density",
    "hpd90_coverage": f"CASE WHEN hpd_level IS NULL THEN NULL WHEN hpd_level <= {LEVEL} THEN 1.0 ELSE 0.0 END",
}
# the numbers each method is set against LocDiff's by their intervals, and whether higher is better
VERSUS_LOCDIFF = {"acc_750km": True, "acc_2500km": True, "nll": False}


def accuracy_sql(source: str = "predictions", columns: set[str] | None = None, resamples: str | None = None) -> str:
    """The accuracy report's SQL over `source`, whose `columns` (default: all of today's) decide which of
    LATER_COLUMNS read as NULL, so a warehouse written by an earlier version still reports. With `resamples`
    (the bootstrap table), every INTERVAL_VALUES number gains its 95 % interval (`_low`, `_high`) and each
    method its verdict against LocDiff (`versus_locdiff_*`); without, those columns are NULL."""
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
    {", ".join(_versus_sql(name, higher) for name, higher in VERSUS_LOCDIFF.items())}
FROM base b
LEFT JOIN intervals i USING (dataset, method, model_version)
LEFT JOIN intervals l ON l.dataset = b.dataset AND l.model_version = b.model_version AND l.method = 'locdiff'
ORDER BY b.dataset, b.model_version, b.method
"""


def _intervals_sql(resamples: str | None) -> str:
    """The `intervals` CTE: per method, the CONFIDENCE interval of each INTERVAL_VALUES mean over the
    bootstrap's replicates (each the ratio of the resampled regions' sums to their counts, as
    method/bootstrap.ratio_interval computes it); NULLs without a bootstrap table."""
    tail = (1.0 - CONFIDENCE) / 2.0
    if resamples is None:
        nulls = ", ".join(f"CAST(NULL AS DOUBLE) AS {n}_low, CAST(NULL AS DOUBLE) AS {n}_high" for n in INTERVAL_VALUES)
        return f"intervals AS (SELECT DISTINCT dataset, method, model_version, {nulls} FROM base)"
    sums = ", ".join(f"sum({v}) AS s_{n}, count({v}) AS c_{n}" for n, v in INTERVAL_VALUES.items())
    ratios = ", ".join(f"sum(b.weight * r.s_{n}) / nullif(sum(b.weight * r.c_{n}), 0) AS {n}" for n in INTERVAL_VALUES)
    quantiles = ", ".join(
        f"quantile_cont({n}, {tail}) AS {n}_low, quantile_cont({n}, {1.0 - tail}) AS {n}_high" for n in INTERVAL_VALUES
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
intervals AS (SELECT dataset, method, model_version, {quantiles} FROM replicates GROUP BY ALL)"""


def _versus_sql(name: str, higher_is_better: bool) -> str:
    """A method's verdict against LocDiff on `name` by their intervals: 'locdiff better', 'locdiff worse' or
    'tie' (the intervals overlap); NULL for LocDiff itself or without intervals."""
    better, worse = ("locdiff better", "locdiff worse") if higher_is_better else ("locdiff worse", "locdiff better")
    return f"""CASE WHEN b.method = 'locdiff' OR i.{name}_low IS NULL OR l.{name}_low IS NULL THEN NULL
        WHEN i.{name}_high < l.{name}_low THEN '{better}'
        WHEN i.{name}_low > l.{name}_high THEN '{worse}'
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


def report_cells(row: dict) -> dict[str, str]:
    """One accuracy row as the report's tables print it, column label -> text: shares as percentages with
    their 95 % bootstrap interval over regions where the row has one, the density's scores (NLL in nats
    relative to the uniform density, lower is better; the share of truths inside the 90 % highest-density
    region and that region's area as a share of the Earth), and each method's verdict against LocDiff."""
    cells = {
        "benchmark": row["dataset"],
        "trained on": str(row["training_dataset"]),
        "method": row["method"],
        "model": f"v{row['model_version']}",
        "n": str(row["count"]),
        "regions": "" if row.get("regions") is None else str(row["regions"]),
    }
    for t in (750, 2500, 200, 25, 1):
        cells[f"{t} km"] = _share(row, accuracy_column(t))
    cells["median km"] = f"{row['median_km']:.0f}"
    cells["NLL"] = "" if row.get("nll") is None else f"{row['nll']:.2f}" + _interval(row, "nll", 1.0, ".2f")
    cells["in 90% HPD"] = _share(row, "hpd90_coverage")
    cells["90% HPD area"] = "" if row.get("hpd90_area") is None else f"{100 * row['hpd90_area']:.1f}%"
    verdicts = [row.get(f"versus_locdiff_{name}") for name in VERSUS_LOCDIFF]
    cells["vs LocDiff 750/2500/NLL"] = "" if all(v is None for v in verdicts) else " / ".join(map(_verdict, verdicts))
    cells["spread ~ error"] = _correlation(row)
    return cells


def _share(row: dict, name: str) -> str:
    if row.get(name) is None:
        return ""
    return f"{100 * row[name]:.1f}%" + _interval(row, name, 100.0, ".1f")


def _interval(row: dict, name: str, scale: float, style: str) -> str:
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    if low is None or high is None:
        return ""
    return f" [{scale * low:{style}}, {scale * high:{style}}]"


def _verdict(value: str | None) -> str:
    return {"locdiff better": "LocDiff better", "locdiff worse": "LocDiff worse"}.get(value, value or "-")


def in_display_order(rows: list[dict]) -> list[dict]:
    """Rows by benchmark and model version, each group in the order people read it: LocDiff, the learned
    baselines, the /plain twins, then chance and the constant guess."""
    order = {
        m: i for i, m in enumerate((*LEARNED_METHODS, *(f"{m}/plain" for m in LEARNED_METHODS), *REFERENCE_METHODS))
    }
    return sorted(
        rows, key=lambda r: (r["dataset"], r["model_version"], order.get(r["method"], len(order)), r["method"])
    )


def markdown_table(rows: list[dict], note: str | None = None) -> str:
    table = [report_cells(r) for r in in_display_order(rows)]
    header = list(table[0]) if table else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells.values()) + " |" for cells in table]
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
    """The same table for a terminal: the same cells, columns padded to their widest."""
    table = [report_cells(r) for r in in_display_order(rows)]
    if not table:
        return ""
    widths = {label: max(len(label), *(len(cells[label]) for cells in table)) for label in table[0]}
    header = "  ".join(label.ljust(widths[label]) for label in widths)
    lines = [header, "-" * len(header)]
    lines += ["  ".join(cells[label].ljust(widths[label]) for label in widths).rstrip() for cells in table]
    return "\n".join(lines)


def _correlation(row: dict) -> str:
    """The correlation of log sample spread with log error, for methods with a spread; '' for the others."""
    value = row.get("spread_error_correlation")
    return "" if value is None or value != value else f"{value:+.2f}"


# The accuracy table as people read it in the UI: what decides first, LocDiff first.
LEARNED_METHODS = ("locdiff", "locdiff_h", "knn", "cell_classification", "regression")
REFERENCE_METHODS = ("chance", "constant")  # the rows every method must beat
CI = ":ci"  # a DISPLAY_COLUMNS column ending so shows that number's 95 % interval
DISPLAY_COLUMNS = (  # (label, accuracy view column); shares shown as percentages
    ("method", "method"),
    ("750 km %", "acc_750km"),
    ("750 km 95% CI", "acc_750km" + CI),
    ("2500 km %", "acc_2500km"),
    ("2500 km 95% CI", "acc_2500km" + CI),
    ("NLL", "nll"),  # nats relative to the uniform density: below 0 knows more than nothing, lower is better
    ("in 90% HPD %", "hpd90_coverage"),  # share of truths inside their 90 % highest-density region
    ("90% HPD area %", "hpd90_area"),  # and that region's area, as a share of the Earth's surface
    ("median km", "median_km"),
    ("200 km %", "acc_200km"),
    ("25 km %", "acc_25km"),
    ("1 km %", "acc_1km"),
    ("n", "count"),
)


def display_rows(rows: list[dict]) -> list[dict]:
    """The accuracy rows for a narrow screen: LocDiff, then the learned baselines, then a NAME/plain twin only
    where its points' numbers differ from NAME's, then chance and the constant guess (any other method after
    them); columns in DISPLAY_COLUMNS order (the scales that decide first), shares as percentages to 0.1 with
    their intervals, the NLL to 0.01 nats, the median to 1 km."""
    by_method = {row["method"]: row for row in rows}

    def numbers(row: dict) -> tuple:  # what a twin has: its points' numbers (no density, no interval)
        return tuple(row.get(column) for _, column in DISPLAY_COLUMNS[1:] if column.startswith(("acc_", "median")))

    def differing_twin(row: dict) -> bool:
        family = by_method.get(row["method"].split("/")[0])
        return "/" in row["method"] and (family is None or numbers(row) != numbers(family))

    ordered = [by_method[m] for m in LEARNED_METHODS if m in by_method]
    ordered += [row for row in rows if differing_twin(row)]
    ordered += [by_method[m] for m in REFERENCE_METHODS if m in by_method]
    ordered += [row for row in rows if "/" not in row["method"] and row not in ordered]
    return [{label: _display_value(column, row) for label, column in DISPLAY_COLUMNS} for row in ordered]


def _display_value(column: str, row: dict):
    if column.endswith(CI):
        name = column.removesuffix(CI)
        low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
        return None if low is None or high is None else f"{100 * low:.1f}-{100 * high:.1f}"
    value = row.get(column)
    if value is None or isinstance(value, str):
        return value
    if column == "count":
        return int(value)
    if column == "median_km":
        return round(float(value))
    if column == "nll":
        return round(float(value), 2)
    return round(100 * float(value), 1)
