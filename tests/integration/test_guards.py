"""A worker never runs tasks without their policies, and never hangs at shutdown, when the
plugin fails inside Celery's own paths (real workers, both brokers).

The unit tests (tests/unit/test_guards.py, tests/unit/test_shutdown.py) inject each fault;
these show the two whose consequence only a real worker shows.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_policies.compat import has_pool_start_method
from celery_policies.worker.runtime import CHILD_REFUSES
from tests.support.workers import Workers, attempts, wait_for

from .conftest import RUNTIME_POLICIES


@pytest.mark.skipif(not has_pool_start_method(),
                    reason="worker_pool_start_method is new in Celery 5.7")
def test_a_spawned_pool_process_that_cannot_apply_the_file_runs_no_task_and_stops_the_worker(
        client: Celery, workers: Workers, counters: Any, key: str, tmp_path: Path) -> None:
    """Each spawned pool process loads the file again. Once the file has become invalid (an
    edit after the worker started), the next pool process must not run tasks without their
    policies; before, Celery's signal dispatch logged its error and it ran them anyway."""
    policies = tmp_path / "policies.yaml"
    shutil.copy(RUNTIME_POLICIES, policies)
    worker = workers(policies, env={"TEST_POOL_START_METHOD": "spawn"}, concurrency=1,
                     extra=["--max-tasks-per-child", "1"])
    first = client.send_task("proj.retry.backoff", args=(f"{key}:first",), queue=worker.queue)
    assert first.get(timeout=60) == "ok"
    policies.write_text("version: 1\npolicies: [{match: '*', max_retries: lots}]\n")
    # The pool process that ran the first task has exited (one task per process); the next
    # one starts now and finds the broken file.
    client.send_task("proj.retry.backoff", args=(f"{key}:second",), queue=worker.queue)
    assert worker.process is not None
    assert wait_for(lambda: worker.process.poll() is not None, 60), worker.log
    assert attempts(counters, f"{key}:second") == []
    refusals = [line for line in worker.log.splitlines() if CHILD_REFUSES in line]
    assert refusals, worker.log
    assert "CRITICAL" in refusals[0]


def test_a_worker_stops_when_a_killed_pool_process_held_the_sentry_budget_lock(
        client: Celery, workers: Workers, tmp_path: Path) -> None:
    """``proj.sentry.hold_budget`` takes the Sentry budget's shared lock in its pool process
    and SIGKILLs that process; the worker's warm shutdown reads the budget and must finish."""
    policies = tmp_path / "policies.yaml"
    policies.write_text("version: 1\nsentry:\n  dsn: http://public@127.0.0.1:9/1\n"
                        "  flush_timeout: 0.5s\n")
    worker = workers(policies, concurrency=1)
    client.send_task("proj.sentry.hold_budget", queue=worker.queue)
    assert wait_for(lambda: "signal 9 (SIGKILL)" in worker.log, 60), worker.log
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    try:
        worker.process.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not stop within 30s:\n{worker.log}")
