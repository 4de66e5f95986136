"""Where a launched run's steps execute: this machine's processes, or a dask cluster's workers.

Why dask rather than Celery for a team: the graph's fan-out is a few dozen shard steps and one training
step per run, and a `distributed` scheduler places each step on a worker that advertises what the step
needs (`--resources training=1` on the GPU machine), with no broker to run beside it; workers on other
machines join by the scheduler's address. (dagster-dask is installed for the dask versions it is built
against and the tag that names a step's worker resources; its executor is not used, for the reasons below.)

This executor submits the steps itself because dagster-dask names each dask task "<job>.<step>": two runs
of one job at once (two benchmarks' evaluations) share those names on one scheduler, and dask takes two
submissions of one key for one task, so the second run would be handed the first run's events. Here every
task's key carries its run's id, and a step may ask for a worker resource through its op tag.
"""

from __future__ import annotations

import json

import cloudpickle
from dagster import Executor, Field, StringSource, executor, multiple_process_executor_requirements
from dagster._core.execution.retries import RetryMode

from locdiff_pipeline import settings

RESOURCES_TAG = "dagster-dask/resource_requirements"  # dagster-dask's own tag: a JSON dict of dask resources
TRAINING_RESOURCES = {RESOURCES_TAG: json.dumps({"training": 1})}  # the training step: GPU workers only


class DaskClusterExecutor(Executor):
    """Each step of the plan as one dask task on the scheduler at `address`, keyed by run and step."""

    def __init__(self, address: str):
        self.address = address

    @property
    def retries(self) -> RetryMode:
        return RetryMode.DISABLED

    def execute(self, plan_context, execution_plan):
        import dask.distributed

        instance, run = plan_context.instance, plan_context.dagster_run
        with dask.distributed.Client(self.address, security=dask_security(self.address)) as client:
            futures = {}
            for level in execution_plan.get_steps_to_execute_by_level():
                for step in level:  # a step waits for its inputs' futures, on the workers
                    upstream = [futures[key] for put in step.step_inputs for key in put.dependency_keys]
                    # pickled here: dask walks tuple arguments looking for futures, and Dagster's records
                    # refuse iteration ("Iteration is not allowed on `@record`", measured)
                    payload = cloudpickle.dumps(
                        (
                            plan_context.reconstructable_job,
                            run,
                            plan_context.run_config,
                            step.key,
                            instance.get_ref(),
                            execution_plan.known_state,
                            execution_plan.repository_load_data,
                        )
                    )
                    futures[step.key] = client.submit(
                        execute_step_on_worker,
                        upstream,
                        payload,
                        key=f"{run.run_id}.{step.key}",
                        resources=json.loads(step.tags.get(RESOURCES_TAG, "{}")),
                        pure=False,
                    )
            for _, events in dask.distributed.as_completed(list(futures.values()), with_results=True):
                yield from events


def execute_step_on_worker(upstream: list, payload: bytes) -> list:
    """One step on a dask worker, as Dagster's multiprocess executor runs one in its child process: the
    run's own (asset-subset) job, not dagster-dask's re-subset by ops, which loses an asset run's
    partitions (its checks failed with "Cannot access partition_keys for a non-partitioned run",
    measured). `upstream` is unused: it makes dask wait for the steps this one reads."""
    import os

    from dagster import DagsterInstance, MetadataValue
    from dagster._core.events import DagsterEvent
    from dagster._core.execution.api import create_execution_plan, execute_plan_iterator
    from dagster._core.execution.context_creation_job import create_context_free_log_manager

    recon_job, run, run_config, step_key, instance_ref, known_state, repository_load_data = cloudpickle.loads(payload)
    with DagsterInstance.from_ref(instance_ref) as instance:
        started = DagsterEvent.step_worker_started(
            create_context_free_log_manager(instance, run),
            run.job_name,
            message=f'Executing step "{step_key}" on dask worker pid {os.getpid()}.',
            metadata={"pid": MetadataValue.text(str(os.getpid()))},
            step_key=step_key,
        )
        plan = create_execution_plan(
            job=recon_job,
            run_config=run_config,
            step_keys_to_execute=[step_key],
            known_state=known_state,
            repository_load_data=repository_load_data,
        )
        return [started, *execute_plan_iterator(plan, recon_job, run, run_config=run_config, instance=instance)]


def dask_security(address: str):
    """The Security a client of the team's scheduler presents: the certificate in LOCDIFF_DASK_TLS (mutual
    TLS, coordination/dask_identity.py), else dask's own configuration (plain tcp:// for a cluster of one's own)."""
    from distributed import Security

    folder = settings.current().dask_tls
    if folder is None:
        if address.startswith("tls://"):
            raise ValueError(f"{address} speaks TLS: set LOCDIFF_DASK_TLS to this machine's certificate folder")
        return Security()
    from locdiff_pipeline.coordination.dask_identity import load

    identity = load(folder)
    missing = [path.name for path in (identity.authority, identity.certificate, identity.key) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"LOCDIFF_DASK_TLS={folder}: no {', '.join(missing)} (`locdiff stack cert NAME`)")
    return identity.security()


@executor(
    name="dask_cluster",
    config_schema={"address": Field(StringSource, description="the dask scheduler, tls://HOST:PORT")},
    requirements=multiple_process_executor_requirements(),
)
def dask_cluster_executor(init_context) -> DaskClusterExecutor:
    """Steps on the workers of an existing dask scheduler (a team's stack: `locdiff stack up`)."""
    return DaskClusterExecutor(init_context.executor_config["address"])


def job_executor():
    """The jobs' executor: the dask cluster named by LOCDIFF_DASK_SCHEDULER, else None (Dagster's
    multiprocess executor). Read when the definitions load, like the shard count."""
    address = settings.current().dask_scheduler
    if not address:
        return None
    return dask_cluster_executor.configured({"address": address}, name="dask_cluster")
