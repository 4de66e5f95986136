"""One writer per project folder, with real processes: a second writer is refused naming the holder, a
killed holder's lock is taken over, the holder's own child processes work under its lock; runs killed
from outside are marked failed in Dagster on the next start, and live runs are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from locdiff_pipeline.coordination.processes import owner_is_gone, owner_tags
from locdiff_pipeline.coordination.project_lock import LOCK_TOKEN_ENV, ProjectLocked, holder, project_lock

HOLD = textwrap.dedent(
    """
    import sys, time
    from locdiff_pipeline.coordination.project_lock import project_lock
    with project_lock(sys.argv[1], command="holder under test"):
        print("held", flush=True)
        time.sleep(120)
    """
)


def _start_holder(root) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    process = _start_holder(tmp_path)
    try:
        with pytest.raises(ProjectLocked, match=rf"being written by pid {process.pid} \(holder under test"):
            with project_lock(tmp_path, wait_seconds=0):
                pass
        started = time.monotonic()
        with pytest.raises(ProjectLocked):
            with project_lock(tmp_path, wait_seconds=1.0):
                pass
        assert time.monotonic() - started >= 1.0  # it waited before giving up
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with project_lock(tmp_path, wait_seconds=5) as record:  # the kernel freed the dead holder's lock
        assert holder(tmp_path)["pid"] == os.getpid() == record["pid"]
    assert holder(tmp_path) == {}  # released: the file no longer names anyone


def test_processes_started_by_the_holder_work_under_its_lock(tmp_path):
    with project_lock(tmp_path) as record:
        assert os.environ[LOCK_TOKEN_ENV] == record["token"]
        child = subprocess.run(
            [sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert child.returncode == 0 and "held" in child.stdout, child.stderr
        stranger = subprocess.run(
            [sys.executable, "-c", HOLD, str(tmp_path)],
            env={k: v for k, v in os.environ.items() if k != LOCK_TOKEN_ENV},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stranger.returncode != 0 and "ProjectLocked" in stranger.stderr
    assert LOCK_TOKEN_ENV not in os.environ


RUN_AND_HANG = textwrap.dedent(
    """
    import sys, time
    from dagster import DagsterInstance, asset, materialize
    from locdiff_pipeline.coordination.processes import owner_tags

    @asset
    def slow() -> None:
        print("running", flush=True)
        time.sleep(120)

    materialize([slow], instance=DagsterInstance.get(), tags=owner_tags())
    """
)


def test_a_run_killed_from_outside_is_marked_failed_and_a_live_one_is_not(tmp_path, monkeypatch):
    from dagster import DagsterInstance, DagsterRunStatus

    from locdiff_pipeline.defs.graph_run import fail_abandoned_runs
    from locdiff_pipeline.defs.instance import prepare_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(prepare_dagster_home(tmp_path)))  # the project's own dagster.yaml
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_AND_HANG], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        assert process.stdout.readline().strip() == "running"
        with DagsterInstance.get() as instance:
            (run,) = instance.get_runs()
            assert run.status == DagsterRunStatus.STARTED and not owner_is_gone(run.tags)
            assert fail_abandoned_runs(instance) == []  # its process is alive: left alone
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED  # what SIGKILL leaves
        assert fail_abandoned_runs(instance) == [run.run_id]
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    assert not owner_is_gone(owner_tags())  # this process is alive


def test_single_partition_writers_share_the_lock_but_never_with_an_exclusive_writer(tmp_path):
    shared_holder = HOLD.replace('command="holder under test"', 'command="shard run", shared=True')
    process = subprocess.Popen([sys.executable, "-c", shared_holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        with project_lock(tmp_path, shared=True) as record:  # a second shard run: side by side
            assert record["shared"] and holder(tmp_path)["pid"] == process.pid
        with pytest.raises(ProjectLocked, match=rf"pid {process.pid} \(shard run"):
            with project_lock(tmp_path):
                pass
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with project_lock(tmp_path, wait_seconds=5):
        assert holder(tmp_path)["pid"] == os.getpid()


def test_a_killed_shard_runs_record_never_names_the_next_holder(tmp_path):
    """kill -9 of a single-partition run leaves its record in the lock file; the next holder's refusal
    message names the live holder, not the dead pid."""
    shared_holder = HOLD.replace('command="holder under test"', 'command="shard run", shared=True')
    dead = subprocess.Popen([sys.executable, "-c", shared_holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert dead.stdout.readline().strip() == "held"
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    assert f'"pid": {dead.pid}' in (tmp_path / ".locdiff.lock").read_text()  # what SIGKILL leaves behind
    assert holder(tmp_path) == {}  # ... names nobody alive
    live = subprocess.Popen([sys.executable, "-c", shared_holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "held"
        with pytest.raises(ProjectLocked, match=rf"pid {live.pid} \(shard run") as refused:
            with project_lock(tmp_path):
                pass
        assert str(dead.pid) not in str(refused.value)
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
