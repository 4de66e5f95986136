"""Every LOCDIFF_* environment variable: its name, default and meaning, read in this one module.

The rest of the project never reads os.environ for its own settings: it asks `current()`, which parses
every variable at once and fails naming the variable and the value it could not use. A variable left
unset takes its default below, or, where it has none, the default of the dataclass that owns the
setting (LocDiffConfig, BundledRecipe, EncoderSpec), so each default has one home. The README's table of
variables is checked against VARIABLES by a test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, what it sets, how its text is parsed, and its default as text
    (None: unset means "the default of the dataclass that owns the setting"; `shown` says it in words)."""

    name: str
    help: str
    parse: Callable[[str], object] = str
    default: str | None = None
    shown: str | None = None

    @property
    def documented_default(self) -> str:
        """The default as the README's table shows it."""
        return self.shown or (self.default if self.default is not None else "-")


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}" if high is not None else f"must be at least {low}")
        return value

    return parse


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _switch(raw: str) -> bool:
    if raw not in ("on", "off"):
        raise ValueError("must be 'on' or 'off'")
    return raw == "on"


def _progress(raw: str) -> str:
    if raw not in ("auto", "bars", "off"):
        raise ValueError("must be 'auto', 'bars' or 'off'")
    return raw


def _path(raw: str) -> Path:
    return Path(raw).resolve()


def _paths(raw: str) -> list[Path]:
    return [Path(part).resolve() for part in raw.split(os.pathsep) if part]


VARIABLES = (
    Variable("LOCDIFF_HOME", "project folder: warehouse/, mlruns/, .dagster_home/", _path, shown="current directory"),
    Variable("LOCDIFF_CATALOG", "dataset catalog YAML (training dataset and benchmarks)", shown="bundled datasets"),
    Variable("LOCDIFF_SHARDS", "id-hash shards per dataset (read when the definitions load)", _whole(1, 9999), "4"),
    Variable("LOCDIFF_BUNDLED_COUNT", "bundled training locations to use (BundledRecipe.count)", _whole(1)),
    Variable("LOCDIFF_BUNDLED_BENCHMARK_COUNT", "held-out locations per bundled benchmark", _whole(1)),
    Variable("LOCDIFF_BUNDLED_GALLERY_COUNT", "further MP16 locations for bundled training and validation", _whole(0)),
    Variable("LOCDIFF_ENCODER", "image encoder: descriptors, or an open_clip model name (EncoderSpec)"),
    Variable("LOCDIFF_ENCODER_PRETRAINED", "open_clip pretrained tag, e.g. openai (from the hub or its local cache)"),
    Variable("LOCDIFF_ENCODER_CHECKPOINT", "local open_clip checkpoint file with real weights"),
    Variable("LOCDIFF_DECODE_WORKERS", "processes decoding images ahead of the encoder (0: none)", _whole(0)),
    Variable("LOCDIFF_STEPS", "training steps (LocDiffConfig.steps)", _whole(0)),
    Variable("LOCDIFF_REGRESSION_STEPS", "the regression baseline's training steps (MethodSettings)", _whole(1)),
    Variable("LOCDIFF_MAX_IMAGE_PIXELS", "images declaring more pixels are refused undecoded", _whole(1), "100000000"),
    Variable("LOCDIFF_LOCK_WAIT", "seconds a Dagster run waits for the project's writer lock", _seconds, "7200"),
    Variable("LOCDIFF_MLFLOW_UI", "MLflow UI address, for links in Dagster's metadata", default="", shown="none"),
    Variable("LOCDIFF_RETRAIN_CRON", "cron of the weekly_retrain schedule", default="0 3 * * 1"),
    Variable("LOCDIFF_RETRAIN_SCHEDULE", "on: weekly_retrain starts on", _switch, "off"),
    Variable("LOCDIFF_EVALUATE_SENSOR", "off: evaluate_new_model starts off", _switch, "on"),
    Variable("LOCDIFF_DATA_SENSOR", "on: retrain_on_new_data starts on", _switch, "off"),
    Variable("LOCDIFF_DATA_SENSOR_INTERVAL", "seconds between retrain_on_new_data's looks", _whole(1), "300"),
    Variable(
        "LOCDIFF_SERVE_PATH_ROOT",
        "served model: the folder whose image files the `path` input may read",
        _path,
        shown="none: `path` refused",
    ),
    Variable(
        "LOCDIFF_RUN_CONFIG_ROOTS",
        f"`locdiff dev`: further folders run config may point to ({os.pathsep!r}-separated)",
        _paths,
        shown="none: the project and catalog folders",
    ),
    Variable("LOCDIFF_PROGRESS", "locdiff run: bars, off (the run log), auto (bars on a terminal)", _progress, "auto"),
    Variable(
        "LOCDIFF_DASK_SCHEDULER",
        "launched runs execute their steps on this dask scheduler's workers (tls://HOST:PORT)",
        shown="none: one machine's processes",
    ),
    Variable(
        "LOCDIFF_DASK_TLS",
        "folder of this machine's dask certificate (ca.pem, cert.pem, key.pem: `locdiff stack cert NAME`)",
        _path,
        shown="none: plain tcp:// only",
    ),
    Variable(
        "LOCDIFF_LOCK_DATABASE",
        "PostgreSQL URL whose advisory locks replace the .locdiff.lock file (writers on several machines)",
        shown="none: the lock file",
    ),
)
BY_NAME = {variable.name: variable for variable in VARIABLES}
# Set by the project for its own child processes, never by a user: not settings.
INTERNAL = ("LOCDIFF_LOCK_TOKEN", "LOCDIFF_UI_GUARD")


@dataclass(frozen=True)
class Settings:
    """Parsed values; None where the variable is unset and its default lives in a dataclass."""

    home: Path | None  # None: the current directory
    catalog: str | None
    shards: int
    bundled_count: int | None
    bundled_benchmark_count: int | None
    bundled_gallery_count: int | None
    encoder: str | None
    encoder_pretrained: str | None
    encoder_checkpoint: str | None
    decode_workers: int | None
    steps: int | None
    regression_steps: int | None
    max_image_pixels: int
    lock_wait: float
    mlflow_ui: str
    retrain_cron: str
    retrain_schedule: bool
    evaluate_sensor: bool
    data_sensor: bool
    data_sensor_interval: int
    serve_path_root: Path | None
    run_config_roots: list[Path] | None
    progress: str
    dask_scheduler: str | None
    dask_tls: Path | None
    lock_database: str | None


def _value(variable: Variable, environ: Mapping[str, str]) -> object:
    raw = environ.get(variable.name) or variable.default
    if raw is None:
        return None
    try:
        return variable.parse(raw)
    except ValueError as error:
        raise ValueError(f"{variable.name}={raw!r}: {error}") from None


def current(environ: Mapping[str, str] | None = None) -> Settings:
    """Every setting from the environment (os.environ unless given), parsed and validated at once."""
    environ = os.environ if environ is None else environ
    values = {variable.name.removeprefix("LOCDIFF_").lower(): _value(variable, environ) for variable in VARIABLES}
    return Settings(**values)


def markdown_table() -> str:
    """The README's table of variables (`python -m locdiff_pipeline.settings` prints it)."""
    lines = ["| variable | default | what it sets |", "|---|---|---|"]
    lines += [f"| `{v.name}` | {v.documented_default} | {v.help} |" for v in VARIABLES]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
