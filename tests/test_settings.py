"""One home per setting: every LOCDIFF_* variable is read in settings.py, documented in docs/configuration.md,
and the command line's help prints the defaults the code uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from locdiff_pipeline import settings
from locdiff_pipeline.cli import build_parser
from locdiff_pipeline.data.bundled import BundledRecipe
from locdiff_pipeline.encoders.encoder_spec import DEFAULT_TEST_VIEWS, EncoderSpec
from locdiff_pipeline.method.config import LocDiffConfig

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE = REPOSITORY / "locdiff_pipeline"


def test_the_configuration_page_table_is_the_settings_table():
    page = (REPOSITORY / "docs" / "configuration.md").read_text()
    assert settings.markdown_table() in page
    documented = set(re.findall(r"^\| `(LOCDIFF_[A-Z_]+)` \|", page, flags=re.MULTILINE))
    assert documented == {variable.name for variable in settings.VARIABLES}


def test_no_module_but_settings_reads_a_locdiff_variable():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "settings.py":
            continue
        named = set(re.findall(r"LOCDIFF_[A-Z_]+", path.read_text()))
        unknown = named - set(settings.BY_NAME) - set(settings.INTERNAL) - {"LOCDIFF_H"}  # LOCDIFF_H: a method
        assert unknown == set(), (path.relative_to(REPOSITORY).as_posix(), unknown)
        if path.name != "project_lock.py":  # the lock token is the project's own, not a setting
            assert not re.search(r"environ[^\n]*LOCDIFF_", path.read_text()), path.name


def test_unset_variables_take_their_defaults_and_bad_values_name_the_variable():
    defaults = settings.current({})
    assert defaults.shards == 4 and defaults.steps is None and defaults.home is None
    assert defaults.evaluate_sensor and not defaults.data_sensor and defaults.progress == "auto"
    chosen = settings.current({"LOCDIFF_SHARDS": "16", "LOCDIFF_STEPS": "10", "LOCDIFF_DATA_SENSOR": "on"})
    assert (chosen.shards, chosen.steps, chosen.data_sensor) == (16, 10, True)
    for name, value in [("LOCDIFF_SHARDS", "many"), ("LOCDIFF_LOCK_WAIT", "-1"), ("LOCDIFF_PROGRESS", "loud")]:
        with pytest.raises(ValueError, match=f"{name}='{value}'"):
            settings.current({name: value})


def _help(command: str) -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return " ".join(subparsers.choices[command].format_help().split())


@pytest.mark.parametrize(
    "option, default",
    [
        ("--steps", LocDiffConfig.steps),
        ("--L", LocDiffConfig.L),
        ("--device", LocDiffConfig.device),
        ("--encoder", EncoderSpec.model_name),
        ("--test-views", DEFAULT_TEST_VIEWS),
        ("--count", BundledRecipe.count),
        ("--benchmark-count", BundledRecipe.benchmark_count),
        ("--gallery-count", BundledRecipe.gallery_count),
    ],
)
def test_run_help_prints_the_code_defaults(option, default):
    text = _help("run")
    described = re.search(rf"{re.escape(option)} [A-Z_]+ ((?:(?! --).)*?)\(default ([^):]+)", text)
    assert described is not None, option
    assert described.group(2) == str(default)


def test_predict_and_dev_help_print_argparse_defaults():
    predict = _help("predict")
    assert "(default 0)" in predict and "default csv" in predict
    parsed = build_parser().parse_args(["predict", "--model", "m", "x.jpg"])
    assert (parsed.samples, parsed.seed, parsed.format) == (None, 0, "csv")
    assert "(default 3000)" in _help("dev") and "(default 127.0.0.1)" in _help("dev")
