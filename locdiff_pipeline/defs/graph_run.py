"""The whole graph in process, as the named jobs: what `locdiff run`, the ablation and the tests use.

One `locdiff_train` run of ingest, features and training over every shard, then one `locdiff_evaluate`
run per benchmark of the catalog: what `dagster dev`'s backfill and sensor do, without a daemon.
"""

from dataclasses import dataclass

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult, materialize
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

from locdiff_pipeline.defs.assets import ALL_ASSETS
from locdiff_pipeline.defs.checks import ALL_CHECKS
from locdiff_pipeline.defs.jobs import evaluate_job, train_job
from locdiff_pipeline.defs.partitions import all_shards_tags
from locdiff_pipeline.defs.resources import default_resources
from locdiff_pipeline.defs.stages import CODE_LOCATION_LABEL


@dataclass
class GraphRun:
    """The in-process runs of one `materialize_all`: the training run, then one run per benchmark."""

    results: list[ExecuteInProcessResult]

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    def get_asset_check_evaluations(self) -> list:
        return [e for r in self.results for e in r.get_asset_check_evaluations()]

    def get_asset_materialization_events(self) -> list:
        return [e for r in self.results for e in r.get_asset_materialization_events()]

    def failures(self) -> list[tuple[str, str]]:
        """(step, the error's own message) of each failed step: the user code's exception, not Dagster's
        wrapper around it, so a person reads what was wrong with which input."""
        found = []
        for result in self.results:
            for event in result.all_events:
                if event.is_step_failure:
                    error = event.step_failure_data.error
                    while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
                        error = error.cause  # past Dagster's wrappers to the user code's own error
                    message = (error.message if error else "failed").strip()
                    if error is not None and error.cls_name == "DagsterAssetCheckFailedError":
                        message = _failed_checks(result) or message  # Dagster's names no figure
                    found.append((event.step_key, message))
        return found

    def metadata(self, asset: str, partition: str | None = None) -> dict:
        """The metadata of an asset's materialization in these runs (of one partition, if given)."""
        for event in self.get_asset_materialization_events():
            materialization = event.event_specific_data.materialization
            if materialization.asset_key.path[-1] == asset and (
                partition is None or materialization.partition == partition
            ):
                return materialization.metadata
        raise KeyError(f"{asset} ({partition}) was not materialized in these runs")


def materialize_all(
    resources: dict,
    instance: DagsterInstance | None = None,
    selection=None,
    raise_on_error: bool = True,
    tags: dict[str, str] | None = None,
    console_level: str | None = None,
) -> GraphRun:
    """The graph in process, with its checks, as the named jobs: one `locdiff_train` run of ingest, features
    and training over every shard, then one `locdiff_evaluate` run per benchmark of the catalog (what
    `dagster dev`'s backfill and sensor do). With `selection`, only that selection of the training side
    (an ad-hoc run). Resources not given take their defaults; `tags` go on every run; `console_level`
    (e.g. WARNING) quiets the terminal's copy of the run log (the instance keeps every event)."""
    resources = {**default_resources(), **resources}
    run_config = {"loggers": {"console": {"config": {"log_level": console_level}}}} if console_level else None
    instance = instance or DagsterInstance.ephemeral()
    tags = {**(tags or {})}
    training_tags = {**all_shards_tags(), **tags}
    if selection is not None:
        everything = [*ALL_ASSETS, *ALL_CHECKS]
        run = materialize(
            everything,
            resources=resources,
            instance=instance,
            selection=selection,
            tags=training_tags,
            raise_on_error=raise_on_error,
            run_config=run_config,
        )
        return GraphRun([run])
    definitions = Definitions(
        assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=[train_job, evaluate_job], resources=resources
    )
    # the label of the code location's runs, so the job pages list these in-process runs beside the UI's own
    tags[REPOSITORY_LABEL_TAG] = training_tags[REPOSITORY_LABEL_TAG] = CODE_LOCATION_LABEL
    first = definitions.resolve_job_def(train_job.name).execute_in_process(
        instance=instance, tags=training_tags, raise_on_error=raise_on_error, run_config=run_config
    )
    results = [first]
    if first.success:
        evaluate = definitions.resolve_job_def(evaluate_job.name)
        for benchmark in resources["datasets"].get().benchmark_names:
            results.append(
                evaluate.execute_in_process(
                    instance=instance,
                    partition_key=benchmark,
                    tags=tags,
                    raise_on_error=raise_on_error,
                    run_config=run_config,
                )
            )
    return GraphRun(results)


def fail_abandoned_runs(instance: DagsterInstance) -> list[str]:
    """Mark as failed the runs still STARTED or STARTING whose process (recorded in its tags by
    `locdiff run`) is gone: a run killed from outside (SIGKILL, a lost machine) otherwise stays STARTED in
    Dagster for ever. Runs of live processes and runs without the tags are left alone. Returns their ids."""
    from dagster import DagsterRunStatus, RunsFilter

    from locdiff_pipeline.coordination.processes import owner_is_gone

    abandoned = [
        run
        for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]))
        if owner_is_gone(run.tags)
    ]
    for run in abandoned:
        instance.report_run_failed(run, message=f"its process (pid {run.tags.get('locdiff.pid')}) is gone")
    return [run.run_id for run in abandoned]


def _failed_checks(result: ExecuteInProcessResult) -> str:
    """Each failed blocking check of a run on one line: its name and asset, then its description (what it
    found against what it allows), else its metadata's figures."""
    said = []
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.passed or evaluation.severity.value != "ERROR" or not evaluation.blocking:
            continue
        figures = evaluation.description or ", ".join(
            f"{name} {value.value}" for name, value in evaluation.metadata.items()
        )
        said.append(
            f"blocking check {evaluation.check_name} on {evaluation.asset_key.to_user_string()} failed: {figures}"
        )
    return "; ".join(said)
