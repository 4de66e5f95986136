"""The accuracy report of one dataset and model version, as files in warehouse/reports/<dataset>/v<N>/.

accuracy.md (every method side by side, from the DuckDB `accuracy` view), error_cdf.png (all methods),
error_map.png (LocDiff's errors on the map), calibration.png/.json (coverage of LocDiff's confidence
regions at several levels) and density_maps.png (for a few test images, the mixture of the samples
at the model's degree: LocDiff's own density, several modes where its samples disagree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locdiff_pipeline.data.bundled import BLUE_MARBLE
from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method import uncertainty
from locdiff_pipeline.steps import figures, report_sql

DENSITY_MAP_IMAGES = 6
REPORT_VERSION = 6  # the Dagster code version of accuracy_report: bump when the report's content changes


@dataclass
class ReportBundle:
    folder: Path
    rows: list[dict]
    markdown: str
    calibration: list[tuple[float, float]]
    pngs: dict[str, bytes]


def _fetch(warehouse: Warehouse, sql: str, parameters: list) -> list[tuple]:
    with report_sql.connect(warehouse) as con:
        return con.execute(sql, parameters).fetchall()


def _locdiff_with_samples(warehouse: Warehouse, dataset: str, version: int, columns: str, order_by: str) -> list[tuple]:
    """LocDiff's prediction rows (`columns` of `predictions p`, code-chosen column lists) joined with
    their stored samples; each row ends with sample_lat, sample_lon, bandwidth_km."""
    return _fetch(
        warehouse,
        f"""SELECT {columns}, s.sample_lat, s.sample_lon, s.bandwidth_km
        FROM predictions p JOIN prediction_samples s USING (dataset, model_version, image_id, method)
        WHERE p.dataset = $1 AND p.model_version = $2 AND p.method = 'locdiff'
        ORDER BY {order_by}""",
        [dataset, int(version)],
    )


def calibration_points(warehouse: Warehouse, dataset: str, version: int) -> list[tuple[float, float]]:
    """Coverage of LocDiff's regions at CALIBRATION_LEVELS, recomputed from the stored samples."""
    rows = _locdiff_with_samples(warehouse, dataset, version, "p.error_km, p.pred_lat, p.pred_lon", "p.image_id")
    if not rows:
        return []
    errors, pred_lat, pred_lon, sample_lat, sample_lon, bandwidth = zip(*rows)
    radii = uncertainty.sample_regions(
        np.array(sample_lat), np.array(sample_lon), np.array(pred_lat), np.array(pred_lon), float(bandwidth[0])
    )
    return uncertainty.calibration(np.array(errors), radii)


def density_panels(
    warehouse: Warehouse, dataset: str, version: int, degree: int, count: int = DENSITY_MAP_IMAGES
) -> list[dict]:
    """Panels for `count` test images spread over LocDiff's error range (best to worst, evenly), each with
    the mixture of its samples at the model's degree (uncertainty.mixture_density_on_grid)."""
    rows = _locdiff_with_samples(
        warehouse,
        dataset,
        version,
        "p.image_id, p.true_lat, p.true_lon, p.pred_lat, p.pred_lon, p.error_km, p.region_km",
        "p.error_km, p.image_id",
    )
    picks = sorted({int(round(i)) for i in np.linspace(0, len(rows) - 1, min(count, len(rows)))}) if rows else []
    panels = []
    for index in picks:
        image_id, true_lat, true_lon, pred_lat, pred_lon, error, region, sample_lat, sample_lon, _ = rows[index]
        grid_lat, grid_lon, density = uncertainty.mixture_density_on_grid(sample_lat, sample_lon, degree)
        panels.append(
            dict(
                image_id=image_id,
                true_lat=true_lat,
                true_lon=true_lon,
                pred_lat=pred_lat,
                pred_lon=pred_lon,
                error_km=error,
                region_km=region,
                grid_lat=grid_lat,
                grid_lon=grid_lon,
                density=density,
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


def build_report(warehouse: Warehouse, dataset: str, version: int, degree: int, notes: list[str]) -> ReportBundle:
    """Files of one benchmark's report for one model version (of SHDD degree `degree`); `notes` (the
    encoder caveat, the contamination summary, the protocol) go under the table."""
    rows = report_sql.accuracy_table(warehouse, dataset=dataset, model_version=version)
    markdown = report_sql.markdown_table(rows) + "\n" + "".join(f"\n> {note}" for note in notes)
    ranked = report_sql.ranked_markdown_table(rows)
    if ranked:
        markdown += (
            "\n\n**Ranked answers**: share of images whose truth is within each scale of any of the five:\n\n" + ranked
        )
    errors = _fetch(
        warehouse,
        "SELECT method, error_km, true_lat, true_lon FROM predictions WHERE dataset = $1 AND model_version = $2 "
        "ORDER BY image_id",
        [dataset, int(version)],
    )
    by_method: dict[str, list[tuple]] = {}
    for method, error, lat, lon in errors:
        by_method.setdefault(method, []).append((error, lat, lon))
    title = f"{dataset}, model v{version}"
    main = np.array(by_method.get("locdiff") or next(iter(by_method.values())))
    calibration = calibration_points(warehouse, dataset, version)
    pngs = {
        "error_cdf.png": figures.error_cdf_png({m: np.array([r[0] for r in v]) for m, v in by_method.items()}, title),
        "error_map.png": figures.error_map_png(
            main[:, 1], main[:, 2], main[:, 0], f"LocDiff errors, {title}", BLUE_MARBLE
        ),
    }
    if calibration:
        pngs["calibration.png"] = figures.calibration_png(calibration, f"Calibration, {title}")
        markdown += "\n\n**Calibration of LocDiff's confidence regions** (share of true locations inside):\n\n"
        markdown += "| nominal | observed |\n|---|---|\n"
        markdown += "\n".join(f"| {100 * level:.0f}% | {100 * share:.1f}% |" for level, share in calibration)
    panels = density_panels(warehouse, dataset, version, degree)
    if panels:
        pngs["density_maps.png"] = figures.density_maps_png(
            panels, f"LocDiff's density: the mixture of each image's samples at L = {degree}, {title}", BLUE_MARBLE
        )
    folder = warehouse.root / report_sql.REPORTS / dataset / f"v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "accuracy.md").write_text(markdown + "\n")
    (folder / "calibration.json").write_text(
        json.dumps([{"level": level, "observed": share} for level, share in calibration], indent=2)
    )
    for name, data in pngs.items():
        (folder / name).write_bytes(data)
    return ReportBundle(folder, rows, markdown, calibration, pngs)
