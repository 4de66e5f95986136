"""Accuracy reports: DuckDB SQL over the predictions Parquet, plus an error-CDF plot and a world map.

The SQL is the report: the same query runs in the pipeline, in the tests' recomputation check, and in
the user's own DuckDB session (README), against the views in warehouse/locdiff.duckdb.
"""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import numpy as np

from locdiff_pipeline.metrics import THRESHOLDS_KM, accuracy_column
from locdiff_pipeline.warehouse import Warehouse

DATABASE = "locdiff.duckdb"
REPORTS = "reports"

# table name -> number of hive partition keys in its folder layout
VIEWS = {"images": 1, "rejected": 1, "embeddings": 1, "shdd": 2, "predictions": 2}


def accuracy_sql(source: str = "predictions") -> str:
    accuracies = ",\n    ".join(f"avg(CASE WHEN error_km <= {t} THEN 1.0 ELSE 0.0 END) AS {accuracy_column(t)}" for t in THRESHOLDS_KM)
    return f"""
SELECT dataset, split, method, model_version, encoder, bool_and(encoder_pretrained) AS encoder_pretrained,
    count(*) AS count,
    {accuracies},
    median(error_km) AS median_km
FROM {source}
GROUP BY ALL
ORDER BY dataset, split, model_version, method
"""


def connect(warehouse: Warehouse, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """The warehouse's DuckDB database (views over the Parquet tables)."""
    warehouse.root.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(warehouse.root / DATABASE), read_only=read_only)


def create_views(warehouse: Warehouse) -> list[str]:
    """(Re)create one view per materialized table, and the `accuracy` view."""
    created = []
    with connect(warehouse) as con:
        for table, depth in VIEWS.items():
            if not any(warehouse.table_dir(table).glob("/".join(["*"] * depth) + "/*.parquet")):
                continue
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{warehouse.glob(table, depth)}', hive_partitioning = true, union_by_name = true)")
            created.append(table)
        if "predictions" in created:
            con.execute(f"CREATE OR REPLACE VIEW accuracy AS {accuracy_sql()}")
            created.append("accuracy")
    return created


def accuracy_table(warehouse: Warehouse, dataset: str | None = None, model_version: int | None = None) -> list[dict]:
    """Rows of the accuracy report, straight from DuckDB over the predictions Parquet."""
    create_views(warehouse)
    where = []
    if dataset is not None:
        where.append(f"dataset = '{dataset}'")
    if model_version is not None:
        where.append(f"model_version = {int(model_version)}")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    with connect(warehouse) as con:
        relation = con.sql(f"SELECT * FROM accuracy {clause}")
        names = relation.columns
        return [dict(zip(names, row)) for row in relation.fetchall()]


def markdown_table(rows: list[dict], note: str | None = None) -> str:
    header = ["dataset", "split", "method", "model", "n", *[f"{t} km" for t in THRESHOLDS_KM], "median km"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        accuracies = [f"{100 * r[accuracy_column(t)]:.1f}%" for t in THRESHOLDS_KM]
        lines.append("| " + " | ".join([r["dataset"], r["split"], r["method"], f"v{r['model_version']}", str(r["count"]), *accuracies, f"{r['median_km']:.0f}"]) + " |")
    if note:
        lines.append(f"\n> {note}")
    return "\n".join(lines)


def text_table(rows: list[dict]) -> str:
    """The same table for a terminal."""
    header = f"{'dataset':<12} {'split':<6} {'method':<14} {'model':>5} {'n':>5} " + " ".join(f"{str(t) + 'km':>7}" for t in THRESHOLDS_KM) + f" {'median km':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        accuracies = " ".join(f"{100 * r[accuracy_column(t)]:>6.1f}%" for t in THRESHOLDS_KM)
        lines.append(f"{r['dataset']:<12} {r['split']:<6} {r['method']:<14} {'v' + str(r['model_version']):>5} {r['count']:>5} {accuracies} {r['median_km']:>10.0f}")
    return "\n".join(lines)


def error_cdf_png(errors_by_method: dict[str, np.ndarray], title: str) -> bytes:
    """Share of predictions within d km, for every method, on a log distance axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    grid = np.logspace(0, np.log10(20040), 300)
    for method, errors in sorted(errors_by_method.items()):
        errors = np.sort(errors)
        axis.plot(grid, np.searchsorted(errors, grid, side="right") / len(errors), label=method)
    for threshold in THRESHOLDS_KM:
        axis.axvline(threshold, color="grey", lw=0.6, ls=":")
    axis.set(xscale="log", xlabel="great-circle error (km)", ylabel="share of images within", title=title, ylim=(0, 1))
    axis.legend(loc="upper left", fontsize=8)
    return _png(figure)


def error_map_png(true_lat: np.ndarray, true_lon: np.ndarray, errors_km: np.ndarray, title: str, background: Path | None = None) -> bytes:
    """True locations on the Blue Marble map, coloured by the log of their error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.8), dpi=110)
    if background is not None and background.is_file():
        from PIL import Image

        with Image.open(background) as image:
            axis.imshow(np.asarray(image.convert("RGB").resize((1080, 540))), extent=(-180, 180, -90, 90), alpha=0.8)
    points = axis.scatter(true_lon, true_lat, c=np.log10(np.maximum(errors_km, 1.0)), cmap="plasma", s=9, vmin=0, vmax=np.log10(20000), edgecolors="none")
    bar = figure.colorbar(points, ax=axis, shrink=0.8)
    bar.set_ticks([0, 1, np.log10(200), np.log10(750), np.log10(2500), 4])
    bar.set_ticklabels(["1", "10", "200", "750", "2500", "10000"])
    bar.set_label("error (km)")
    axis.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude", ylabel="latitude", title=title)
    return _png(figure)


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
