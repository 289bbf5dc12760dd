"""Time limits from the file, enforced by a real prefork worker; pools that cannot are named."""

from __future__ import annotations

from typing import Any

from celery import Celery

from tests.support.workers import Worker, Workers, attempts, wait_for

from .conftest import RUNTIME_POLICIES
from .test_retries import RESULT_TIMEOUT, run


def test_soft_time_limit_raises_inside_the_task(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    error = run(client, shared, "proj.limits.sleepy", key, 5)
    assert type(error).__name__ == "SoftTimeLimitExceeded"
    assert [r[3] for r in attempts(counters, key)] == ["start", "soft"]


def test_time_limit_kills_the_task_and_the_worker_keeps_serving(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    result = client.send_task("proj.limits.stubborn", (key, 6), queue=shared.queue)
    error = result.get(timeout=RESULT_TIMEOUT, propagate=False)
    assert result.state == "FAILURE"
    assert type(error).__name__ == "TimeLimitExceeded"
    assert error.args[0] == 2.0  # the file's time_limit
    events = [r[3] for r in attempts(counters, key)]
    assert events[0] == "start"
    assert "soft ignored" in events  # the soft limit (1s) fired first
    assert "done" not in events
    line = f"Hard time limit (2.0s) exceeded for proj.limits.stubborn[{result.id}]"
    assert wait_for(lambda: line in shared.log, timeout=5)
    assert run(client, shared, "proj.noop") == "ok"


def test_a_pool_that_ignores_time_limits_is_named_at_startup(workers: Workers) -> None:
    worker = workers(RUNTIME_POLICIES, pool="solo")
    warning = next(line for line in worker.log.splitlines()
                   if "solo pool does not enforce time_limit" in line)
    assert "WARNING" in warning
    assert " CP103 warning: " in warning
    assert "proj.limits.sleepy" in warning
    assert "proj.limits.stubborn" in warning
    assert "proj.retry.backoff" not in warning


def test_strict_refuses_to_start_a_worker_whose_pool_ignores_time_limits(
        workers: Workers) -> None:
    worker = workers(RUNTIME_POLICIES, pool="threads", extra=["--strict"], wait=False)
    assert worker.wait_exit() == 78
    assert "the threads pool does not enforce time_limit" in worker.log
    assert "refusing to start" in worker.log
    assert " ready." not in worker.log


def test_prefork_gets_no_time_limit_warning(shared: Worker) -> None:
    assert "does not enforce" not in shared.log
    assert "celery-policies: applied" in shared.log
