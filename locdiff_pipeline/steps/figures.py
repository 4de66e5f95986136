"""Report figures as PNG bytes: error CDFs, the world map of errors, calibration, per-image densities.

Plots only: every number drawn here is computed elsewhere (SQL in `report_sql`, densities in
`method/densities`), so the figures show exactly what the tables hold.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from locdiff_pipeline.method.metrics import THRESHOLDS_KM
from locdiff_pipeline.steps.report_tables import LEARNED_METHODS, REFERENCE_METHODS, in_table_order


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _background(axis, background: Path | None, alpha: float = 0.8) -> None:
    if background is not None and background.is_file():
        from PIL import Image

        with Image.open(background) as image:
            axis.imshow(np.asarray(image.convert("RGB").resize((1080, 540))), extent=(-180, 180, -90, 90), alpha=alpha)


HIGHLIGHTED_METHOD = LEARNED_METHODS[0]


EARTH_HALF_CIRCUMFERENCE_KM = 20040  # the largest great-circle error there is


def error_cdf_png(errors_by_method: dict[str, np.ndarray], title: str) -> bytes:
    """Share of predictions within d km, one line per method (its chosen protocol; the NAME/plain twins are
    in the table), on one log distance axis for every benchmark (0.5 km to half the Earth's circumference),
    the report's scales marked and named. LocDiff is black, drawn last and thickest and listed first; every
    other method keeps its colour across benchmarks; chance and the constant guess are dotted references."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    shown = {method: np.sort(errors) for method, errors in errors_by_method.items() if "/" not in method}
    grid = np.logspace(-0.3, np.log10(EARTH_HALF_CIRCUMFERENCE_KM), 300)  # from 0.5 km: the 1 km mark shows
    listed = in_table_order(shown)
    lines = {}
    for method in sorted(listed, key=lambda m: m == HIGHLIGHTED_METHOD):  # LocDiff last: on top
        errors = shown[method]
        (lines[method],) = axis.plot(
            grid,
            np.searchsorted(errors, grid, side="right") / len(errors),
            label=method,
            color=method_colour(method),
            ls=":" if method in REFERENCE_METHODS else "-",
            lw=2.6 if method == HIGHLIGHTED_METHOD else 1.3,
            zorder=3 if method == HIGHLIGHTED_METHOD else 2,
        )
    for threshold in THRESHOLDS_KM:
        axis.axvline(threshold, color="grey", lw=0.6, ls=":")
        axis.text(threshold, 1.01, f"{threshold:,} km", transform=axis.get_xaxis_transform(), ha="center", fontsize=7)
    axis.set(xscale="log", xlabel="great-circle error (km)", ylabel="share of images within", ylim=(0, 1))
    axis.set_title(title, pad=14)
    axis.set_xlim(grid[0], grid[-1])
    axis.legend([lines[m] for m in listed], listed, loc="upper left", fontsize=8)
    return _png(figure)


def method_colour(method: str):
    """One colour per method in every figure and benchmark: LocDiff black, the others from a palette with
    no purple or pink (which read as LocDiff's neighbours), an unknown method grey."""
    others = [m for m in (*LEARNED_METHODS, *REFERENCE_METHODS) if m != HIGHLIGHTED_METHOD]
    if method == HIGHLIGHTED_METHOD:
        return "black"
    if method not in others:
        return "grey"
    return _pyplot().get_cmap("tab10")((0, 1, 2, 3, 8, 7, 5)[others.index(method) % 7])


def error_map_png(
    true_lat: np.ndarray, true_lon: np.ndarray, errors_km: np.ndarray, title: str, background: Path | None = None
) -> bytes:
    """True locations on the Blue Marble map, coloured by the log of their error."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 4.8), dpi=110)
    _background(axis, background)
    points = axis.scatter(
        true_lon,
        true_lat,
        c=np.log10(np.maximum(errors_km, 1.0)),
        cmap="plasma",
        s=9,
        vmin=0,
        vmax=np.log10(20000),
        edgecolors="none",
    )
    bar = figure.colorbar(points, ax=axis, shrink=0.8)
    bar.set_ticks([0, 1, np.log10(200), np.log10(750), np.log10(2500), 4])
    bar.set_ticklabels(["1", "10", "200", "750", "2500", "10000"])
    bar.set_label("error (km)")
    axis.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude", ylabel="latitude", title=title)
    return _png(figure)


def _png(figure) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def calibration_png(curves: dict[str, list[tuple[float, float]]], title: str) -> bytes:
    """Per method, the share of true places inside its highest-density regions against their level (on the
    diagonal: calibrated; above: regions too wide; below: too narrow). LocDiff black, thickest, on top and
    listed first; every method in its error CDF colour."""
    return _unit_square_curves(curves, title, "level of the highest-density region", ("calibrated", "upper left"))


def coverage_area_png(curves: dict[str, list[tuple[float, float]]], title: str) -> bytes:
    """Per method, the share of true places inside its 10 ... 90 % highest-density regions against their mean
    area: a density that is both sharp and calibrated holds many truths in little of the Earth (up and left);
    the diagonal is what a density that knows nothing (uniform) gets. LocDiff black, thickest, on top."""
    return _unit_square_curves(
        curves, title, "mean area of the 10 ... 90 % regions (share of the Earth)", ("uniform density", "lower right")
    )


def _unit_square_curves(
    curves: dict[str, list[tuple[float, float]]], title: str, xlabel: str, diagonal: tuple[str, str]
) -> bytes:
    """Each method's (x, share of true places inside) points in the unit square beside the dashed diagonal
    (named `diagonal[0]`, the legend placed at `diagonal[1]`), in the error CDF's colours and legend order."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 4.5), dpi=110)
    (line_of_reference,) = axis.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    listed, lines = in_table_order(curves), {}
    for method in sorted(listed, key=lambda m: m == HIGHLIGHTED_METHOD):  # LocDiff last: on top
        x, share = np.array(curves[method]).T
        (lines[method],) = axis.plot(
            x,
            share,
            marker="o",
            markersize=3,
            label=method,
            color=method_colour(method),
            ls=":" if method in REFERENCE_METHODS else "-",
            lw=2.6 if method == HIGHLIGHTED_METHOD else 1.2,
            zorder=3 if method == HIGHLIGHTED_METHOD else 2,
        )
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel=xlabel, ylabel="share of true places inside", title=title)
    name, place = diagonal
    axis.legend([lines[m] for m in listed] + [line_of_reference], [*listed, name], loc=place, fontsize=7)
    return _png(figure)


def density_maps_png(panels: list[dict], title: str, background: Path | None = None, decades: float = 3.0) -> bytes:
    """One world map per image: the density (log scale, down to `decades` below each map's peak), its
    highest-density regions outlined (the panel's `contours`: level -> log density at the region's edge),
    the true place and the answer. Each panel: grid_lat, grid_lon, log_density (natural log, rows by
    grid_lat), contours, true_lat, true_lon, pred_lat, pred_lon, error_km, hpd_level, image_id."""
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.2 * rows), dpi=100, squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.axis("off")
    for axis, panel in zip(axes.flat, panels):
        _background(axis, background, alpha=0.6)
        log10 = (panel["log_density"] - panel["log_density"].max()) / np.log(10)
        axis.imshow(
            np.ma.masked_less(log10, -decades),
            extent=(-180, 180, -90, 90),
            origin="lower",
            cmap="inferno",
            alpha=0.7,
            vmin=-decades,
            vmax=0,
        )
        styles = {0.5: "-", 0.9: "--"}
        for level, edge in sorted(panel["contours"].items()):
            axis.contour(
                panel["grid_lon"],
                panel["grid_lat"],
                panel["log_density"],
                levels=[edge],
                colors="cyan",
                linewidths=1.0,
                linestyles=styles.get(level, ":"),
            )
        axis.plot(
            panel["true_lon"],
            panel["true_lat"],
            marker="*",
            color="lime",
            markersize=11,
            markeredgecolor="black",
            ls="none",
            label="true",
        )
        axis.plot(
            panel["pred_lon"],
            panel["pred_lat"],
            marker="X",
            color="cyan",
            markersize=8,
            markeredgecolor="black",
            ls="none",
            label="LocDiff",
        )
        axis.set(xlim=(-180, 180), ylim=(-90, 90), xticks=[], yticks=[])
        inside = "" if panel["hpd_level"] is None else f", truth in its {100 * panel['hpd_level']:.0f}% region"
        axis.set_title(f"{panel['image_id']}: error {panel['error_km']:.0f} km{inside}", fontsize=8)
    axes.flat[0].legend(loc="lower left", fontsize=7)
    figure.text(0.5, 0.01, "outlines: 50 % (solid) and 90 % (dashed) highest-density regions", ha="center", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(hspace=0.28, top=0.9, bottom=0.06)  # room for each row's titles under the row above
    return _png(figure)


PREVIEW_WIDTH_PX = 320  # a figure's preview on the asset's page: inside its metadata table at 1,000 px wide


def fit_width(png: bytes, width: int = PREVIEW_WIDTH_PX) -> bytes:
    """The PNG scaled down to at most `width` pixels wide (aspect kept), for a UI that shows it at its
    natural size; the full-size file stays in the report folder."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        if image.width <= width:
            return png
        height = round(image.height * width / image.width)
        out = io.BytesIO()
        image.resize((width, height), Image.Resampling.LANCZOS).save(out, format="PNG", optimize=True)
        return out.getvalue()
