"""`locdiff run` (materialize every asset and print the accuracy table) and `locdiff report` (print it again
from the warehouse)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path

from locdiff_pipeline.cli.arguments import at_least, disk_hint, one_line


def add_run(commands, common: argparse.ArgumentParser) -> None:
    """`locdiff run`: its help prints the defaults of the dataclasses that hold them."""
    from locdiff_pipeline.data.bundled import BundledRecipe
    from locdiff_pipeline.encoders.encoder_spec import DEFAULT_TEST_VIEWS, EncoderSpec
    from locdiff_pipeline.method.config import LocDiffConfig

    run = commands.add_parser(
        "run",
        help="materialize every asset (bundled data by default) and print the accuracy table",
        parents=[common],
    )
    run.add_argument("--steps", type=at_least(0), help=f"training steps (default {LocDiffConfig.steps})")
    run.add_argument("--L", type=at_least(0), help=f"SHDD degree to train on (default {LocDiffConfig.L})")
    run.add_argument("--device", help=f"auto, cpu, cuda (default {LocDiffConfig.device})")
    run.add_argument(
        "--encoder", help=f"image encoder: descriptors or an open_clip model name (default {EncoderSpec.model_name})"
    )
    run.add_argument("--pretrained", help="open_clip pretrained tag, e.g. openai (from the hub or its local cache)")
    run.add_argument("--encoder-checkpoint", help="local open_clip checkpoint file with real weights")
    run.add_argument(
        "--test-views",
        type=at_least(1),
        help=f"test-time views per validation and benchmark image (default {DEFAULT_TEST_VIEWS})",
    )
    run.add_argument(
        "--loading",
        choices=("auto", "memory", "stream"),  # training_stream.LOADINGS, not imported: torch would load with the CLI
        help="training rows: in memory, streamed from the embeddings' part files in bounded memory, or auto "
        "(default: stream when they would take more than 4 GB)",
    )
    run.add_argument(
        "--decode-workers",
        type=at_least(0),
        help="processes decoding images ahead of the encoder (default: with a GPU one per core but one, on the "
        "CPU none; $LOCDIFF_DECODE_WORKERS)",
    )
    run.add_argument(
        "--count", type=at_least(1), help=f"how many bundled training locations to use (default {BundledRecipe.count})"
    )
    run.add_argument(
        "--gallery-count",
        type=at_least(0),
        help=f"further MP16 locations for bundled training and validation (default {BundledRecipe.gallery_count})",
    )
    run.add_argument(
        "--benchmark-count",
        type=at_least(1),
        help=f"held-out locations per bundled benchmark (default {BundledRecipe.benchmark_count})",
    )
    run.add_argument("--catalog", help="dataset catalog YAML (training + benchmarks); default: the bundled datasets")
    run.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="seconds to wait for another writer of this project folder (default %(default)s: exit at once naming it)",
    )
    run.set_defaults(handler=_run)


def add_report(commands, common: argparse.ArgumentParser) -> None:
    rep = commands.add_parser("report", help="print the accuracy table from the warehouse", parents=[common])
    rep.add_argument("--dataset", default=None)
    rep.set_defaults(handler=_report)


def _run(args: argparse.Namespace) -> int:
    from locdiff_pipeline import settings
    from locdiff_pipeline.coordination.project_lock import project_lock
    from locdiff_pipeline.data.paths import project_root

    root = project_root()
    resources = _run_resources(args, root)
    resources["encoder"].weights_file()  # pretrained weights that cannot be had fail here, before anything runs
    _check_datasets(resources)
    # One writer per project folder, taken before anything is created (two runs initialising Dagster's
    # storage at once corrupt it); a second run waits --wait seconds, then exits naming the holder.
    database = settings.current().lock_database  # a team's stack: the lock lives in its PostgreSQL server
    with project_lock(root, wait_seconds=args.wait, command="locdiff run", database=database):
        return _run_locked(resources, root)


def _check_datasets(resources: dict) -> None:
    """The catalog and each dataset's CSV header, checked before the lock or any write: a typo there fails
    in one line here, not in a Dagster step's traceback minutes later."""
    from locdiff_pipeline.data.catalog import FILES
    from locdiff_pipeline.data.ingest import metadata_header

    datasets, warehouse = resources["datasets"], resources["warehouse"].get()
    for entry in datasets.get().entries:
        if entry.kind == FILES:
            metadata_header(entry.spec(warehouse, datasets.recipe()))


def _run_locked(resources: dict, root: Path) -> int:
    from locdiff_pipeline.defs.instance import prepare_dagster_home

    home = prepare_dagster_home(root)
    os.environ.setdefault("DAGSTER_HOME", str(home))  # runs show up in `dagster dev` started from the same root
    from dagster import DagsterInstance

    from locdiff_pipeline.defs.graph_run import fail_abandoned_runs

    started = time.perf_counter()
    instance = DagsterInstance.get()
    for run_id in fail_abandoned_runs(instance):
        print(f"marked run {run_id} failed: its process is gone", file=sys.stderr)
    result = _materialize_with_progress(resources, instance)
    seconds = time.perf_counter() - started
    if not result.success:
        print(f"locdiff run failed after {seconds:.0f} s (the run's full log: `locdiff dev`)", file=sys.stderr)
        for step, message in result.failures():
            reason = re.sub(r"^[\w.]+(Error|Exception): ", "", one_line(Exception(message)))
            print(f"locdiff run: error: {step}: {reason}{disk_hint(reason)}", file=sys.stderr)
        return 1
    _print_accuracy(resources, root, seconds)
    evaluations = result.get_asset_check_evaluations()
    failed = [e.check_name for e in evaluations if not e.passed and e.severity.value == "ERROR"]
    warnings = sorted({e.check_name for e in evaluations if not e.passed and e.severity.value != "ERROR"})
    if warnings:
        print(f"asset checks warned: {', '.join(warnings)}", file=sys.stderr)
    if failed:
        print(f"asset checks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _run_resources(args: argparse.Namespace, root: Path) -> dict:
    """The resources of `locdiff run`: the options given on the command line, the rest left to defaults."""
    from locdiff_pipeline.defs.resources import (
        DatasetsResource,
        EncoderResource,
        EvaluationResource,
        MlflowResource,
        TrainingResource,
        WarehouseResource,
    )

    def given(**options) -> dict:
        return {name: value for name, value in options.items() if value is not None}

    return {
        "warehouse": WarehouseResource(root=str(root)),
        "datasets": DatasetsResource(
            **given(
                bundled_count=args.count,
                bundled_gallery_count=args.gallery_count,
                bundled_benchmark_count=args.benchmark_count,
                catalog=args.catalog,
            )
        ),
        "encoder": EncoderResource(
            **given(
                model_name=args.encoder,
                pretrained=args.pretrained,
                checkpoint=args.encoder_checkpoint,
                test_views=args.test_views,
                decode_workers=args.decode_workers,
            )
        ),
        "training": TrainingResource(**given(steps=args.steps, L=args.L, device=args.device, loading=args.loading)),
        "evaluation": EvaluationResource(),
        "mlflow": MlflowResource(),
    }


def _materialize_with_progress(resources: dict, instance):
    """Every asset, as the named jobs, tagged with the trigger, dataset and encoder; live bars on a terminal."""
    from locdiff_pipeline.coordination.processes import owner_tags
    from locdiff_pipeline.defs import run_tags
    from locdiff_pipeline.defs.graph_run import materialize_all
    from locdiff_pipeline.steps.progress import terminal_bars

    spec = resources["encoder"].spec()
    run_tags = {
        **owner_tags(),
        run_tags.TRIGGER: "locdiff run",
        run_tags.DATASET: resources["datasets"].training_name(),
        run_tags.ENCODER: spec.describe(),
    }
    bars = _wants_bars()
    if bars:  # live bars instead of the run log's lines; the log keeps every event (the UI shows it)
        print("progress bars below; the full run log: `locdiff dev`, or LOCDIFF_PROGRESS=off", file=sys.stderr)
    with terminal_bars() if bars else contextlib.nullcontext():
        return materialize_all(
            resources,
            instance=instance,
            raise_on_error=False,
            tags=run_tags,
            console_level="CRITICAL" if bars else None,  # with bars, a failure is the one line printed after
        )


def _print_accuracy(resources: dict, root: Path, seconds: float) -> None:
    """The accuracy table of the model just trained, on every benchmark, and where the reports are."""
    from locdiff_pipeline.data.paths import REPORTS
    from locdiff_pipeline.encoders.image_encoder import encoder_note
    from locdiff_pipeline.steps import report_sql, report_tables
    from locdiff_pipeline.steps.locdiff_model import read_latest

    store = resources["warehouse"].get()
    latest = read_latest(store)
    rows = [
        r
        for name in resources["datasets"].get().benchmark_names
        for r in report_sql.accuracy_table(store, dataset=name, model_version=latest["version"])
    ]
    print()
    print(report_tables.text_table(rows))
    print(f"# trained on {latest['training_dataset']}; every benchmark is scored beside chance and a constant guess")
    print(f"# {encoder_note(latest['encoder'])}")
    print(f"# model locdiff v{latest['version']} (MLflow run {latest['run_id']}); wall time {seconds:.0f} s")
    print(f"# reports, plots: {store.root / REPORTS}/<benchmark>/v{latest['version']}")


def _wants_bars() -> bool:
    """Live progress bars when stderr is a terminal; LOCDIFF_PROGRESS=bars or =off overrides."""
    from locdiff_pipeline import settings

    setting = settings.current().progress
    return setting == "bars" or (setting == "auto" and sys.stderr.isatty())


def _report(args: argparse.Namespace) -> int:
    from locdiff_pipeline.data.datasets import check_name
    from locdiff_pipeline.data.paths import warehouse_dir
    from locdiff_pipeline.data.warehouse import Warehouse
    from locdiff_pipeline.steps import report_sql, report_tables
    from locdiff_pipeline.tracking import registry

    dataset = None if args.dataset is None else check_name(args.dataset)
    registry.follow_the_project_folder()  # a copy's store points at its own files before `mlflow models serve`
    store = Warehouse(warehouse_dir())
    rows = report_sql.read_accuracy_table(store, dataset=dataset)
    if not rows:
        print(f"no predictions in {store.root} yet: run `locdiff run` first", file=sys.stderr)
        return 1
    print(report_tables.text_table(rows))
    return 0
