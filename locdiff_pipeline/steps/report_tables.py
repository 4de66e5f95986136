"""The accuracy report's tables as people read them: Dagster's table and headline, the report's markdown, a
terminal's text. Rows come from report_sql's `accuracy` view.

One reading order everywhere: per benchmark (and model version) a heading with what is common to its rows,
then LocDiff, the learned baselines, a NAME/plain twin only where its numbers differ from NAME's, then
chance and the constant guess (any other method last); the scales that decide, 750 and 2,500 km, first.
"""

from __future__ import annotations

import shutil
from itertools import groupby
from operator import itemgetter

from locdiff_pipeline.method.metrics import THRESHOLDS_KM, accuracy_column
from locdiff_pipeline.steps.report_sql import TOP_PREFIX, VERSUS_LOCDIFF

LEARNED_METHODS = ("locdiff", "locdiff_h", "knn", "cell_classification", "regression")
REFERENCE_METHODS = ("chance", "constant")  # the rows every method must beat
DECIDING_KM = (750, 2500)  # the scales the headline shows: what image geolocation at this scale decides on
VERSUS_LABELS = {"acc_750km": "750", "acc_2500km": "2500", "nll": "NLL", "hpd90_area": "area"}  # of VERSUS_LOCDIFF
DIFFERENCES_TITLE = "minus LocDiff, 95% interval of the paired difference (* excludes zero):"  # the terminal's
CI = ":ci"  # a DISPLAY_COLUMNS column ending so shows that number's 95 % interval
DISPLAY_COLUMNS = (  # Dagster's table: (label, accuracy view column); shares as percentages
    ("method", "method"),
    ("750 km %", "acc_750km"),
    ("2500 km %", "acc_2500km"),
    ("750 km 95% CI", "acc_750km" + CI),
    ("2500 km 95% CI", "acc_2500km" + CI),
    ("NLL", "nll"),  # nats relative to the uniform density: below 0 knows more than nothing, lower is better
    ("in 90% HPD %", "hpd90_coverage"),  # share of truths inside their 90 % highest-density region
    ("90% HPD area %", "hpd90_area"),  # and that region's area, as a share of the Earth's surface
    ("median km", "median_km"),
    ("200 km %", "acc_200km"),
    ("25 km %", "acc_25km"),
    ("1 km %", "acc_1km"),
    ("n", "count"),
    ("benchmark", "dataset"),
)


# -- which rows, in which order ---------------------------------------------------------------------------


def by_benchmark(rows: list[dict]) -> list[list[dict]]:
    """The rows of each (benchmark, model version), benchmarks in name order, each group's rows shown_rows'."""
    key = itemgetter("dataset", "model_version")
    return [shown_rows(list(group)) for _, group in groupby(sorted(rows, key=key), key=key)]


def shown_rows(rows: list[dict]) -> list[dict]:
    """One benchmark's rows in reading order, a NAME/plain twin kept only where its points' numbers differ
    from NAME's (a twin that repeats its method's numbers says nothing)."""
    by_method = {row["method"]: row for row in rows}

    def points(row: dict) -> tuple:
        return tuple(row.get(accuracy_column(t)) for t in THRESHOLDS_KM) + (row.get("median_km"),)

    def differing_twin(row: dict) -> bool:
        family = by_method.get(row["method"].split("/")[0])
        return "/" in row["method"] and (family is None or points(row) != points(family))

    ordered = [by_method[m] for m in LEARNED_METHODS if m in by_method]
    ordered += sorted((row for row in rows if differing_twin(row)), key=lambda row: _rank(row["method"]))
    ordered += [by_method[m] for m in REFERENCE_METHODS if m in by_method]
    return ordered + sorted((r for r in rows if "/" not in r["method"] and r not in ordered), key=lambda r: r["method"])


def in_table_order(methods) -> list[str]:
    """Method names in the tables' order, twins aside (LocDiff, the baselines, chance, constant), any
    other after them by name: the figures' legends and the calibration table."""
    known = (*LEARNED_METHODS, *REFERENCE_METHODS)
    return [m for m in known if m in methods] + sorted(set(methods) - set(known))


def _rank(method: str) -> tuple[int, str]:
    family = method.split("/")[0]
    return (LEARNED_METHODS.index(family) if family in LEARNED_METHODS else len(LEARNED_METHODS), method)


def heading(rows: list[dict]) -> str:
    """What one benchmark's rows share: 'bluemarble_heldout: model v1, trained on bluemarble, 640 images
    in 93 regions'."""
    first = rows[0]
    regions = f" in {first['regions']} regions" if first.get("regions") else ""
    return (
        f"{first['dataset']}: model v{first['model_version']}, trained on {first['training_dataset']}, "
        f"{first['count']} images{regions}"
    )


# -- cells ------------------------------------------------------------------------------------------------


def report_cells(row: dict) -> dict[str, str]:
    """One row as the markdown and the terminal print it, label -> text: shares as percentages with their
    95 % bootstrap interval over regions where the row has one, the density's scores (NLL in nats relative
    to the uniform density, lower is better; the share of truths inside the 90 % highest-density region and
    that region's area as a share of the Earth), and each method's difference from LocDiff on VERSUS_LOCDIFF's
    numbers with the 95 % interval of that paired difference, and the verdicts those intervals give."""
    cells = {"method": row["method"]}
    for t in DECIDING_KM:
        cells[f"{t} km"] = _share(row, accuracy_column(t))
    cells["NLL"] = "" if row.get("nll") is None else f"{row['nll']:.2f}" + _interval(row, "nll", 1.0, ".2f")
    cells["in 90% HPD"] = _share(row, "hpd90_coverage")
    cells["90% HPD area"] = "" if row.get("hpd90_area") is None else f"{100 * row['hpd90_area']:.1f}%"
    cells["median km"] = f"{row['median_km']:.0f}"
    for t in sorted((t for t in THRESHOLDS_KM if t not in DECIDING_KM), reverse=True):
        cells[f"{t:g} km"] = _share(row, accuracy_column(t))
    for name, label in VERSUS_LABELS.items():
        cells[f"{label} - LocDiff"] = _difference(row, name)
    verdicts = [row.get(f"versus_locdiff_{name}") for name in VERSUS_LOCDIFF]
    cells["vs LocDiff " + "/".join(VERSUS_LABELS.values())] = (
        "" if all(v is None for v in verdicts) else " / ".join(map(_verdict, verdicts))
    )
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


def _difference(row: dict, name: str, with_interval: bool = True) -> str:
    """A method's `name` minus LocDiff's with the interval of that paired difference: percentage points for
    shares and areas, nats for the NLL; '' for LocDiff itself."""
    value = row.get(f"{name}_minus_locdiff")
    if value is None:
        return ""
    scale, style = (1.0, "+.2f") if name == "nll" else (100.0, "+.1f")
    interval = _interval(row, f"{name}_minus_locdiff", scale, style) if with_interval else ""
    return f"{scale * value:{style}}{interval}"


def _verdict(value: str | None) -> str:
    return {"locdiff better": "LocDiff better", "locdiff worse": "LocDiff worse"}.get(value, value or "-")


def _correlation(row: dict) -> str:
    """The correlation of log sample spread with log error, for methods with a spread; '' for the others."""
    value = row.get("spread_error_correlation")
    return "" if value is None or value != value else f"{value:+.2f}"


# -- markdown and text --------------------------------------------------------------------------------------


def markdown_table(rows: list[dict]) -> str:
    """Per benchmark: its heading in bold, then its table."""
    blocks = []
    for group in by_benchmark(rows):
        table = [report_cells(row) for row in group]
        lines = [f"**{heading(group)}**", "", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        blocks.append("\n".join(lines + ["| " + " | ".join(cells.values()) + " |" for cells in table]))
    return "\n\n".join(blocks)


def text_table(rows: list[dict], width: int | None = None) -> str:
    """The tables for a terminal `width` columns wide (default: the terminal's, else $COLUMNS, else 100), per
    benchmark: its heading; each method's deciding shares, NLL and 90 % region; each method's paired
    difference from LocDiff; then the median, the finer scales and the spread-error correlation as lines of
    words (folded at `width`). The tables stay under 100 columns, so no number is split at 100."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    blocks = []
    for group in by_benchmark(rows):
        lines = [heading(group), *_padded([_text_cells(row) for row in group])]
        versus = [_difference_cells(row) for row in group if row.get("acc_750km_minus_locdiff") is not None]
        if versus:
            lines += [DIFFERENCES_TITLE, *_padded(versus)]
        lines += [line for label, items in _notes(group) for line in _fold(label, items, width)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _padded(table: list[dict[str, str]]) -> list[str]:
    """A header, a rule and the rows, each column padded to its widest cell."""
    widths = {label: max(len(label), *(len(cells[label]) for cells in table)) for label in table[0]}
    header = "  ".join(label.ljust(widths[label]) for label in widths).rstrip()
    rows = ["  ".join(cells[label].ljust(widths[label]) for label in widths).rstrip() for cells in table]
    return [header, "-" * len(header), *rows]


def _text_cells(row: dict) -> dict[str, str]:
    """report_cells' method, deciding shares and NLL, and the 90 % region's coverage with its area."""
    cells = report_cells(row)
    chosen = {label: cells[label] for label in ("method", *(f"{t} km" for t in DECIDING_KM), "NLL")}
    area = "" if row.get("hpd90_area") is None else f" ({cells['90% HPD area']})"
    coverage = "" if row.get("hpd90_coverage") is None else f"{100 * row['hpd90_coverage']:.1f}%"
    chosen["in 90% (area)"] = coverage + area
    return chosen


def _difference_cells(row: dict) -> dict[str, str]:
    """A method's paired differences from LocDiff with their intervals (the area's, always a fraction of a
    point wide, left to the markdown), '*' where the interval excludes zero."""
    cells = {"method": row["method"]}
    for name, label in VERSUS_LABELS.items():
        verdict = row.get(f"versus_locdiff_{name}")
        mark = "*" if verdict in ("locdiff better", "locdiff worse") else ""
        text = _difference(row, name, with_interval=name != "hpd90_area")
        cells[label + (" km" if name.startswith("acc_") else "")] = text + mark
    return cells


def _fold(label: str, items: list[str], width: int) -> list[str]:
    """'label: item, item, ...' folded into lines of at most `width` characters between items (an item is
    never split), continuation lines indented."""
    lines, line = [], f"{label}:"
    for i, item in enumerate(items):
        piece = f" {item}" + ("," if i < len(items) - 1 else "")
        if len(line) + len(piece) > width and line.strip():
            lines.append(line)
            line = " "
        line += piece
    return [*lines, line]


def _notes(group: list[dict]) -> list[tuple[str, list[str]]]:
    """What the tables leave out, (label, items) each: the median error, the finer scales (zero everywhere
    said once), the correlation of the samples' spread with the error."""
    notes = [("median km", [f"{r['method']} {r['median_km']:.0f}" for r in group])]
    finer = sorted((t for t in THRESHOLDS_KM if t not in DECIDING_KM), reverse=True)
    above_zero = [
        f"{r['method']} {100 * r[accuracy_column(t)]:.1f}% at {t:g} km"
        for t in finer
        for r in group
        if r.get(accuracy_column(t))
    ]
    scales = " / ".join(f"{t:g}" for t in finer) + " km"
    notes.append((scales, [*above_zero, "every other share 0.0%"] if above_zero else ["0.0% for every method"]))
    correlations = [f"{r['method']} {_correlation(r)}" for r in group if _correlation(r)]
    if correlations:
        notes.append(("spread ~ error (correlation of log spread with log error)", correlations))
    return notes


def headline_markdown(rows: list[dict]) -> str:
    """One benchmark's answer in a few lines, short enough for Dagster to show in place (under 1,000
    characters) and narrow enough for a 1,000-pixel window: each method's share within 750 and 2,500 km."""
    (group,) = by_benchmark(rows)
    first = group[0]
    lines = [
        f"**{first['dataset']}**, model v{first['model_version']}",
        "",
        "| share within | " + " | ".join(f"{t} km" for t in DECIDING_KM) + " |",
        "|---|" + "---:|" * len(DECIDING_KM),
    ]
    for row in group:
        name = f"**{row['method']}**" if row["method"] == LEARNED_METHODS[0] else row["method"]
        lines.append(f"| {name} | " + " | ".join(_share_alone(row, t) for t in DECIDING_KM) + " |")
    return "\n".join(lines)


def _share_alone(row: dict, km: int) -> str:
    value = row.get(accuracy_column(km))
    return "" if value is None else f"{100 * value:.1f}%"


def ranked_markdown_table(rows: list[dict]) -> str:
    """Top-5 accuracy (the truth within the scale of any of five ranked answers) of one benchmark's methods
    that give ranked answers, in reading order; empty when none does."""
    ranked = [r for r in shown_rows(rows) if r.get(TOP_PREFIX + accuracy_column(THRESHOLDS_KM[0])) is not None]
    if not ranked:
        return ""
    scales = sorted(THRESHOLDS_KM, key=lambda t: (t not in DECIDING_KM, -t if t not in DECIDING_KM else t))
    lines = ["| method | " + " | ".join(f"top-5 {t:g} km" for t in scales) + " |", "|" + "---|" * (len(scales) + 1)]
    for r in ranked:
        shares = (f"{100 * r[TOP_PREFIX + accuracy_column(t)]:.1f}%" for t in scales)
        lines.append(f"| {r['method']} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


# -- Dagster's table ----------------------------------------------------------------------------------------


def display_rows(rows: list[dict]) -> list[dict]:
    """The rows for Dagster's table, label -> value in DISPLAY_COLUMNS order: shares as percentages to 0.1
    with their intervals, the NLL to 0.01 nats, the median to 1 km."""
    return [{label: _display_value(column, row) for label, column in DISPLAY_COLUMNS} for row in shown_rows(rows)]


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
