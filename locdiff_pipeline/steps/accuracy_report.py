"""The accuracy report of one dataset and model version, as files in warehouse/reports/<dataset>/v<N>/.

accuracy.md (every method side by side, from the DuckDB `accuracy` view, with bootstrap intervals over
regions and the proper scores of each method's density), error_cdf.png (all methods), error_map.png
(LocDiff's errors on the map), calibration.png/.json (the share of truths inside each method's 10 ... 90 %
highest-density regions, and the regions' mean areas), coverage_area.png (those shares against those areas:
a sharper density holds as many truths in less of the Earth) and density_maps.png (for a few test images,
LocDiff's scored density with its 50 % and 90 % highest-density regions as contours: several modes where its
samples disagree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locdiff_pipeline.data.bundled import BLUE_MARBLE
from locdiff_pipeline.data.paths import REPORTS
from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method import densities, sphere
from locdiff_pipeline.steps import figures, report_sql, report_tables

DENSITY_MAP_IMAGES = 6
HPD_LEVELS = densities.REGION_LEVELS  # the calibration curve's levels
CONTOUR_LEVELS = (0.5, 0.9)  # the highest-density regions the density maps outline
MAP_GRID_DEG = 1.0
PREVIEWS = "previews"  # the report folder's small copies of its figures, for the asset's page
REPORT_VERSION = 9  # the Dagster code version of accuracy_report: bump when the report's content changes


@dataclass
class ReportBundle:
    folder: Path
    rows: list[dict]
    markdown: str
    calibration: dict[str, list[tuple[float, float]]]
    pngs: dict[str, bytes]


def _fetch(warehouse: Warehouse, sql: str, parameters: list) -> list[tuple]:
    with report_sql.connect(warehouse) as con:
        return con.execute(sql, parameters).fetchall()


def region_curves(warehouse: Warehouse, dataset: str, version: int) -> dict[str, list[tuple[float, float, float]]]:
    """Per method with a density, at each of HPD_LEVELS: (level, share of truths inside its level
    highest-density region, that region's mean area as a share of the Earth), from the predictions' per-image
    `hpd_level` (a truth is inside the q region when it is <= q) and `hpd_areas`. The calibration curve is
    (level, share); the coverage-area curve (area, share)."""
    columns = ", ".join(
        f"avg(CASE WHEN hpd_level <= {q} THEN 1.0 ELSE 0.0 END), avg(hpd_areas[{k + 1}])"
        for k, q in enumerate(HPD_LEVELS)
    )
    rows = _fetch(
        warehouse,
        f"SELECT method, {columns} FROM predictions WHERE dataset = $1 AND model_version = $2 "
        "AND hpd_level IS NOT NULL GROUP BY method ORDER BY method",
        [dataset, int(version)],
    )
    return {method: list(zip(HPD_LEVELS, values[0::2], values[1::2], strict=True)) for method, *values in rows}


def density_panels(warehouse: Warehouse, dataset: str, version: int, count: int = DENSITY_MAP_IMAGES) -> list[dict]:
    """Panels for `count` test images spread over LocDiff's error range (best to worst, evenly), each with
    LocDiff's scored density (its kernels, as stored beside the predictions) on a MAP_GRID_DEG grid and the
    density at the edge of its CONTOUR_LEVELS highest-density regions."""
    rows = _fetch(
        warehouse,
        """SELECT p.image_id, p.true_lat, p.true_lon, p.pred_lat, p.pred_lon, p.error_km, p.hpd_level,
            s.density_lat, s.density_lon, s.density_weight, s.density_bandwidth_km, s.density_floor
        FROM predictions p JOIN prediction_samples s USING (dataset, model_version, image_id, method)
        WHERE p.dataset = $1 AND p.model_version = $2 AND p.method = 'locdiff' AND s.density_lat IS NOT NULL
        ORDER BY p.error_km, p.image_id""",
        [dataset, int(version)],
    )
    picks = sorted({int(round(i)) for i in np.linspace(0, len(rows) - 1, min(count, len(rows)))}) if rows else []
    grid_lat = np.arange(-90 + MAP_GRID_DEG / 2, 90, MAP_GRID_DEG)
    grid_lon = np.arange(-180 + MAP_GRID_DEG / 2, 180, MAP_GRID_DEG)
    mesh_lat, mesh_lon = np.meshgrid(grid_lat, grid_lon, indexing="ij")
    grid = sphere.to_unit(mesh_lat.ravel(), mesh_lon.ravel())
    panels = []
    for index in picks:
        image_id, true_lat, true_lon, pred_lat, pred_lon, error, level, lat, lon, weight, width, floor = rows[index]
        centres = sphere.to_unit(np.asarray(lat, float), np.asarray(lon, float))[None]
        weights = np.asarray(weight, float)[None] / np.sum(weight)
        density = densities.KernelMixture(centres, weights, width, floor)
        values = density.log_density(grid[None])[0].reshape(mesh_lat.shape)
        edges = density.thresholds(CONTOUR_LEVELS, np.random.default_rng(0))[0]
        panels.append(
            dict(
                image_id=image_id,
                true_lat=true_lat,
                true_lon=true_lon,
                pred_lat=pred_lat,
                pred_lon=pred_lon,
                error_km=error,
                hpd_level=level,
                grid_lat=grid_lat,
                grid_lon=grid_lon,
                log_density=values,
                contours=dict(zip(CONTOUR_LEVELS, edges, strict=True)),
            )
        )
    return panels


def scoring_note(contamination: dict, excluded: bool) -> str:
    """What the report says about benchmark images that also appear in the training data."""
    found = contamination["exact"] + contamination["near"]
    share = found / max(contamination["images"], 1)
    head = (
        f"Contamination: {found} of {contamination['images']} benchmark images ({100 * share:.1f}%) have a "
        f"duplicate in "
        f"`{contamination['training_dataset']}` ({contamination['exact']} exact, {contamination['near']} near at "
        f"cosine >= {contamination['threshold']:g} and perceptual hash within "
        f"{contamination['max_hash_distance']} bits)"
    )
    if not found:
        return head + "."
    return head + ("; they were excluded from scoring." if excluded else "; they were scored (not excluded).")


def build_report(warehouse: Warehouse, dataset: str, version: int, notes: list[str]) -> ReportBundle:
    """Files of one benchmark's report for one model version; `notes` (the encoder caveat, the contamination
    summary, the protocol and the densities chosen on validation) go under the table."""
    rows = report_sql.accuracy_table(warehouse, dataset=dataset, model_version=version)
    curves = region_curves(warehouse, dataset, version)
    calibration = {method: [(q, share) for q, share, _ in curve] for method, curve in curves.items()}
    markdown = report_markdown(rows, calibration, notes)
    title = f"{dataset}, model v{version}"
    pngs = error_figures(warehouse, dataset, version, title)
    coverage_area = {method: [(area, share) for _, share, area in curve] for method, curve in curves.items()}
    if calibration:
        pngs["calibration.png"] = figures.calibration_png(calibration, f"Highest-density regions, {title}")
    # predictions scored before their regions' areas were (no hpd_areas) have a calibration but no such figure
    if coverage_area and all(area is not None for curve in coverage_area.values() for area, _ in curve):
        pngs["coverage_area.png"] = figures.coverage_area_png(coverage_area, f"Sharpness and coverage, {title}")
    panels = density_panels(warehouse, dataset, version)
    if panels:
        pngs["density_maps.png"] = figures.density_maps_png(
            panels, f"LocDiff's density and its 50 % / 90 % highest-density regions, {title}", BLUE_MARBLE
        )
    folder = warehouse.root / REPORTS / dataset / f"v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "accuracy.md").write_text(markdown + "\n")
    (folder / "calibration.json").write_text(
        json.dumps(
            {
                method: [{"level": q, "observed": share, "mean_area": area} for q, share, area in curve]
                for method, curve in curves.items()
            },
            indent=2,
        )
    )
    (folder / PREVIEWS).mkdir(exist_ok=True)
    for name, data in pngs.items():
        (folder / name).write_bytes(data)
        (folder / PREVIEWS / name).write_bytes(figures.fit_width(data))
    return ReportBundle(folder, rows, markdown, calibration, pngs)


def report_markdown(rows: list[dict], calibration: dict[str, list[tuple[float, float]]], notes: list[str]) -> str:
    """accuracy.md: the table, its notes, the ranked answers and each method's calibration."""
    markdown = report_tables.markdown_table(rows) + "".join(f"\n\n> {note}" for note in notes)
    ranked = report_tables.ranked_markdown_table(rows)
    if ranked:
        markdown += (
            "\n\n**Ranked answers**: share of images whose truth is within each scale of any of the five:\n\n" + ranked
        )
    if calibration:
        methods = report_tables.in_table_order(calibration)
        markdown += "\n\n**Calibration**: share of true places inside each method's highest-density region:\n\n"
        markdown += "| region | " + " | ".join(methods) + " |\n|" + "---|" * (len(methods) + 1) + "\n"
        markdown += "\n".join(
            f"| {100 * q:.0f}% | " + " | ".join(f"{100 * dict(calibration[m])[q]:.1f}%" for m in methods) + " |"
            for q in HPD_LEVELS
        )
    return markdown


def error_figures(warehouse: Warehouse, dataset: str, version: int, title: str) -> dict[str, bytes]:
    """The error CDF of every method and the map of LocDiff's errors."""
    errors = _fetch(
        warehouse,
        "SELECT method, error_km, true_lat, true_lon FROM predictions WHERE dataset = $1 AND model_version = $2 "
        "ORDER BY image_id",
        [dataset, int(version)],
    )
    by_method: dict[str, list[tuple]] = {}
    for method, error, lat, lon in errors:
        by_method.setdefault(method, []).append((error, lat, lon))
    main = np.array(by_method.get("locdiff") or next(iter(by_method.values())))
    return {
        "error_cdf.png": figures.error_cdf_png({m: np.array([r[0] for r in v]) for m, v in by_method.items()}, title),
        "error_map.png": figures.error_map_png(
            main[:, 1], main[:, 2], main[:, 0], f"LocDiff errors, {title}", BLUE_MARBLE
        ),
    }
