"""The report's tables read in one order everywhere (report_tables.py): known rows in, known tables out."""

from __future__ import annotations

from locdiff_pipeline.steps import report_tables


def _row(dataset: str, method: str, acc_750: float, acc_2500: float, **more) -> dict:
    row = {
        "dataset": dataset,
        "training_dataset": "train",
        "method": method,
        "model_version": 2,
        "count": 40,
        "regions": 9,
        "acc_1km": 0.0,
        "acc_25km": 0.0,
        "acc_200km": 0.0,
        "acc_750km": acc_750,
        "acc_2500km": acc_2500,
        "median_km": 3000.0,
        "nll": -0.5,
        "hpd90_coverage": 0.9,
        "hpd90_area": 0.3,
    }
    return {**row, **more}


ROWS = [  # alphabetical, as the SQL view gives them
    _row("b", "chance", 0.01, 0.1),
    _row("b", "constant", 0.0, 0.12),
    _row("b", "knn", 0.2, 0.5),
    _row("b", "knn/plain", 0.15, 0.45),  # differs from knn: shown
    _row("b", "locdiff", 0.3, 0.6),
    _row("b", "locdiff/plain", 0.3, 0.6),  # repeats locdiff: hidden
    _row("a", "locdiff", 0.25, 0.55),
    _row("a", "chance", 0.02, 0.11),
]


def test_each_benchmark_reads_locdiff_first_its_differing_twins_then_chance_and_constant():
    a, b = report_tables.by_benchmark(ROWS)
    assert [r["method"] for r in a] == ["locdiff", "chance"]
    assert [r["method"] for r in b] == ["locdiff", "knn", "knn/plain", "chance", "constant"]
    assert report_tables.heading(b) == "b: model v2, trained on train, 40 images in 9 regions"


def test_the_terminal_and_the_markdown_print_a_block_per_benchmark_in_that_order():
    text = report_tables.text_table(ROWS)
    first, second = text.split("\n\n")
    assert first.splitlines()[0] == "a: model v2, trained on train, 40 images in 9 regions"
    assert first.splitlines()[1].split()[:5] == ["method", "750", "km", "2500", "km"]
    methods = [line.split()[0] for line in second.splitlines()[3:8]]
    assert methods == ["locdiff", "knn", "knn/plain", "chance", "constant"]
    assert "locdiff/plain" not in text
    assert second.splitlines()[3].split()[1:3] == ["30.0%", "60.0%"]
    markdown = report_tables.markdown_table(ROWS)
    assert markdown.count("**a: model v2") == 1 and markdown.index("**a:") < markdown.index("**b:")
    assert "| locdiff | 30.0% | 60.0% |" in markdown


def test_the_headline_fits_in_place_and_names_its_benchmark():
    headline = report_tables.headline_markdown([r for r in ROWS if r["dataset"] == "b"])
    lines = headline.splitlines()
    assert lines[0] == "**b**, model v2" and len(headline) < 1000  # Dagster shows < 1,000 characters in place
    assert lines[2] == "| share within | 750 km | 2500 km |"
    assert lines[4:] == [
        "| **locdiff** | 30.0% | 60.0% |",
        "| knn | 20.0% | 50.0% |",
        "| knn/plain | 15.0% | 45.0% |",
        "| chance | 1.0% | 10.0% |",
        "| constant | 0.0% | 12.0% |",
    ]


def test_dagsters_table_puts_the_deciding_shares_beside_the_method_and_the_benchmark_last():
    shown = report_tables.display_rows([r for r in ROWS if r["dataset"] == "b"])
    assert list(shown[0])[:3] == ["method", "750 km %", "2500 km %"] and list(shown[0])[-1] == "benchmark"
    assert (shown[0]["method"], shown[0]["750 km %"], shown[0]["benchmark"]) == ("locdiff", 30.0, "b")


def test_the_terminal_tables_fit_100_columns_with_paired_differences_and_notes_folded():
    """The widest numbers a report holds (negative intervals, the longest method names) within 100 columns;
    the paired differences follow the main table, a star where the interval excludes zero; the notes fold
    between items, never inside one."""
    differences = {
        "acc_750km_minus_locdiff": -0.213,
        "acc_750km_minus_locdiff_low": -0.289,
        "acc_750km_minus_locdiff_high": -0.144,
        "versus_locdiff_acc_750km": "locdiff better",
        "acc_2500km_minus_locdiff": -0.044,
        "acc_2500km_minus_locdiff_low": -0.118,
        "acc_2500km_minus_locdiff_high": 0.024,
        "versus_locdiff_acc_2500km": "tie",
        "nll_minus_locdiff": 0.44,
        "nll_minus_locdiff_low": 0.23,
        "nll_minus_locdiff_high": 0.67,
        "versus_locdiff_nll": "locdiff better",
        "hpd90_area_minus_locdiff": -0.14,
        "versus_locdiff_hpd90_area": "locdiff worse",
    }
    wide = {"acc_750km_low": 0.036, "acc_750km_high": 0.112, "acc_2500km_low": 0.205, "acc_2500km_high": 0.361}
    wide |= {"nll": -0.55, "nll_low": -0.81, "nll_high": -0.33, "spread_error_correlation": 0.11}
    rows = [
        _row("b", "locdiff", 0.08, 0.303, **wide, acc_200km=0.005),
        _row("b", "cell_classification", 0.031, 0.259, **wide, **differences),
        *(_row("b", f"method_{i}", 0.1, 0.2, **differences) for i in range(12)),
    ]
    text = report_tables.text_table(rows, width=100)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    at = lines.index("minus LocDiff, 95% interval of the paired difference (* excludes zero):")
    assert lines[at + 3].split()[:5] == ["cell_classification", "-21.3", "[-28.9,", "-14.4]*", "-4.4"]
    assert "locdiff " not in " ".join(lines[at + 3 :]).split("median km")[0]  # LocDiff has no difference row
    start = next(i for i, line in enumerate(lines) if line.startswith("median km:"))
    assert lines[start + 1].startswith("  ")  # 14 methods' medians take more than one line ...
    for row in rows:  # ... and each method's median stays on the line with its name
        assert any(f"{row['method']} 3000" in line for line in lines[start : start + 3]), row["method"]
    assert "locdiff 0.5% at 200 km" in text and "every other share 0.0%" in text
