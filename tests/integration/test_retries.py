"""Retries follow the policy file inside a real worker, on Redis and on RabbitMQ.

Delays are measured between the starts of attempts, as recorded by the tasks themselves.
They can only be late (the worker's timer, the broker round trip), never early, so each gap
must lie in ``[low - EARLY, high + LATE]`` of what the policy allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from celery_policies.compat import has_pool_start_method
from tests.support.workers import Worker, Workers, attempts, gaps

from .conftest import RUNTIME_POLICIES

#: Clock tolerance between processes of one machine.
EARLY = 0.05
#: Scheduling slack on a busy 2-CPU machine.
LATE = 0.6
#: How long a test waits for a task's final result.
RESULT_TIMEOUT = 30


def run(client: Celery, worker: Worker, name: str, *args: Any) -> Any:
    """Send task ``name`` to ``worker``'s queue; its final result (the exception if failed)."""
    return send(client, worker, name, *args).get(timeout=RESULT_TIMEOUT, propagate=False)


def send(client: Celery, worker: Worker, name: str, *args: Any) -> AsyncResult:
    return client.send_task(name, args, queue=worker.queue)


def assert_within(measured: list[float], bounds: list[tuple[float, float]]) -> None:
    assert len(measured) == len(bounds), (measured, bounds)
    for gap, (low, high) in zip(measured, bounds, strict=True):
        assert low - EARLY <= gap <= high + LATE, (measured, bounds)


def test_a_task_failing_twice_retries_within_the_backoff_bounds_then_succeeds(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    # backoff 0.4s, equal jitter: retry 1 waits 0.2-0.4s, retry 2 waits 0.4-0.8s
    assert run(client, shared, "proj.retry.backoff", key, 2) == "ok"
    records = attempts(counters, key)
    assert [r[3] for r in records] == [0, 1, 2]
    assert_within(gaps(records), [(0.2, 0.4), (0.4, 0.8)])


def test_changing_the_backoff_in_the_file_changes_the_measured_delay(
        client: Celery, shared: Worker, workers: Workers, counters: Any, key: str,
        tmp_path: Path) -> None:
    slower = tmp_path / "slower.yaml"
    text = RUNTIME_POLICIES.read_text()
    assert "    retry_backoff: 0.4s\n    retry_jitter: equal" in text
    slower.write_text(text.replace("    retry_backoff: 0.4s\n    retry_jitter: equal",
                                   "    retry_backoff: 1.2s\n    retry_jitter: equal"))
    worker = workers(slower)

    assert run(client, shared, "proj.retry.backoff", f"{key}:fast", 2) == "ok"
    assert run(client, worker, "proj.retry.backoff", f"{key}:slow", 2) == "ok"

    fast, slow = gaps(attempts(counters, f"{key}:fast")), gaps(attempts(counters, f"{key}:slow"))
    assert_within(fast, [(0.2, 0.4), (0.4, 0.8)])
    assert_within(slow, [(0.6, 1.2), (1.2, 2.4)])
    # equal jitter draws each delay from [d/2, d]: the slow pair is at least 1.8 s in all,
    # the fast pair at most 1.2 s, whatever the draws
    assert sum(slow) > sum(fast) + 0.5


def test_an_exception_in_dont_autoretry_for_fails_at_once_with_its_own_type(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    error = run(client, shared, "proj.retry.fatal", key, 5, "Fatal")
    assert type(error).__name__ == "Fatal"
    assert type(error).__module__ == "tests.support.proj"
    assert len(attempts(counters, key)) == 1


def test_an_exception_autoretry_for_does_not_list_fails_at_once(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    error = run(client, shared, "proj.retry.limited", key, 5, "Throttled")
    assert type(error).__name__ == "Throttled"
    assert len(attempts(counters, key)) == 1


def test_max_retries_exhausted_ends_with_the_original_exception(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    result = send(client, shared, "proj.retry.limited", key, 10)
    error = result.get(timeout=RESULT_TIMEOUT, propagate=False)
    assert result.state == "FAILURE"
    assert type(error).__name__ == "Flaky"  # not MaxRetriesExceededError (celery#5061)
    records = attempts(counters, key)
    assert [r[3] for r in records] == [0, 1, 2]  # max_retries 2: three attempts
    assert_within(gaps(records), [(0.2, 0.2), (0.4, 0.4)])
    assert (f"giving up on proj.retry.limited[{result.id}] after 2 retries: Flaky "
            "max_retries reached (policy limited)") in shared.log


def test_retry_deadline_stops_retries_that_would_start_after_it(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    error = run(client, shared, "proj.retry.deadline", key, 100)
    assert type(error).__name__ == "Flaky"
    records = attempts(counters, key)
    # max_retries is unlimited; attempts start at 0, 0.4 and 1.2s; the 4th would at 2.8s > 2s
    assert [r[3] for r in records] == [0, 1, 2]
    assert_within(gaps(records), [(0.4, 0.4), (0.8, 0.8)])


def test_retry_per_exception_gives_each_exception_its_own_delays_and_limit(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    assert run(client, shared, "proj.retry.per_exception", f"{key}:flaky", 2, "Flaky") == "ok"
    error = run(client, shared, "proj.retry.per_exception", f"{key}:throttled", 10, "Throttled")
    assert type(error).__name__ == "Throttled"

    flaky = attempts(counters, f"{key}:flaky")
    throttled = attempts(counters, f"{key}:throttled")
    assert len(flaky) == 3  # the task's max_retries 3 was not reached
    assert_within(gaps(flaky), [(0.2, 0.2), (0.4, 0.4)])
    assert len(throttled) == 2  # Throttled's own max_retries 1
    assert_within(gaps(throttled), [(1.5, 1.5)])


def test_task_code_retry_options_lose_to_the_file(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    # The code retries Flaky 5 times; the file retries only Throttled, once.
    error = run(client, shared, "proj.code.coded", f"{key}:flaky", 3, "Flaky")
    assert type(error).__name__ == "Flaky"
    assert len(attempts(counters, f"{key}:flaky")) == 1
    error = run(client, shared, "proj.code.coded", f"{key}:throttled", 3, "Throttled")
    assert type(error).__name__ == "Throttled"
    assert len(attempts(counters, f"{key}:throttled")) == 2


@pytest.mark.skipif(not has_pool_start_method(),
                    reason="worker_pool_start_method is new in Celery 5.7")
def test_pool_children_started_without_fork_apply_the_policies_too(
        client: Celery, workers: Workers, counters: Any, key: str) -> None:
    worker = workers(RUNTIME_POLICIES, env={"TEST_POOL_START_METHOD": "spawn"})
    assert run(client, worker, "proj.retry.backoff", key, 2) == "ok"
    records = attempts(counters, key)
    assert [r[3] for r in records] == [0, 1, 2]
    assert_within(gaps(records), [(0.2, 0.4), (0.4, 0.8)])
    assert "SpawnPoolWorker" in worker.log
