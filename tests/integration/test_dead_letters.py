"""Tasks that fail for good take their failure routes, once, in a real worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.support.deadletters import of, read
from tests.support.workers import Worker, Workers, attempts, delete_queue, wait_for

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "deadletters.yaml"
#: After the first dead letter of a task shows up, wait this long for a duplicate.
DUPLICATE_WINDOW = 1.5


@pytest.fixture(scope="module")
def dead_letter_queue(client: Celery) -> Iterator[str]:
    name = f"dlq.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(client, name)
    delete_queue(client, f"{name}.fatal")


@pytest.fixture(scope="module")
def worker(broker: str, client: Celery, dead_letter_queue: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    queue = f"dl.{uuid.uuid4().hex[:12]}"
    log = tmp_path_factory.mktemp("deadletters") / "worker.log"
    started = Worker(broker, queue, log, POLICIES, concurrency=2,
                     env={"TEST_DLQ": dead_letter_queue, "TEST_DEFAULT_QUEUE": queue}).start()
    yield started
    started.stop()
    delete_queue(client, queue)


def the_dead_letter(broker: str, queue: str, task_id: str, timeout: float = 30) -> Any:
    """The one dead letter of ``task_id`` in ``queue`` (fails on none or several)."""
    assert wait_for(lambda: of(read(broker, queue), task_id), timeout=timeout), (
        f"no dead letter of {task_id} in {queue}")
    time.sleep(DUPLICATE_WINDOW)
    found = of(read(broker, queue), task_id)
    assert len(found) == 1, [letter.failure for letter in found]
    return found[0]


@pytest.mark.parametrize(("task", "args", "reason", "exception", "retries"), [
    ("proj.retry.limited", [99], "exception", "tests.support.proj.Flaky", 2),
    ("proj.retry.fatal", [9, "Fatal"], "exception", "tests.support.proj.Fatal", 0),
    ("proj.retry.deadline", [99], "deadline", "tests.support.proj.Flaky", 1),
    ("proj.limits.stubborn", [5], "time_limit", "billiard.exceptions.TimeLimitExceeded", 0),
], ids=["exhausted-retries", "not-retryable", "deadline", "hard-time-limit"])
def test_a_task_that_fails_for_good_leaves_exactly_one_dead_letter(
        client: Celery, worker: Worker, broker: str, dead_letter_queue: str, key: str,
        task: str, args: list[Any], reason: str, exception: str, retries: int) -> None:
    result = client.send_task(task, [key, *args], {}, queue=worker.queue)
    letter = the_dead_letter(broker, dead_letter_queue, result.id)
    assert letter.task == task
    assert letter.arguments() == ([key, *args], {})
    failure = letter.failure
    assert (failure["reason"], failure["exception"], failure["retries"]) == (
        reason, exception, retries)
    assert failure["queue"] == worker.queue
    assert failure["hostname"] == worker.hostname
    assert failure["traceback"]
    assert letter.envelope.headers["id"] == letter.envelope.properties["correlation_id"]
    assert wait_for(lambda: result.state == "FAILURE", timeout=10), result.state


def test_a_lost_process_that_celery_does_not_requeue_is_failed_and_dead_lettered(
        client: Celery, worker: Worker, broker: str, dead_letter_queue: str, key: str) -> None:
    """acks_late without reject_on_worker_lost: the loss is final. The routes decide it as
    this Celery does (only 5.7 first checks whether the task stored SUCCESS)."""
    result = client.send_task("proj.sentry.doomed", [key], queue=worker.queue)
    letter = the_dead_letter(broker, dead_letter_queue, result.id)
    assert letter.arguments() == ([key], {})
    assert (letter.failure["reason"], letter.failure["exception"]) == (
        "worker_lost", "billiard.exceptions.WorkerLostError")
    assert wait_for(lambda: result.state == "FAILURE", timeout=10), result.state


def test_a_worker_lost_past_max_redeliveries_leaves_exactly_one_dead_letter(
        client: Celery, worker: Worker, broker: str, dead_letter_queue: str,
        counters: Any, key: str) -> None:
    result = client.send_task("proj.lost.suicide", [key], queue=worker.queue)
    letter = the_dead_letter(broker, dead_letter_queue, result.id)
    assert len(attempts(counters, key)) == 2  # the first run and one redelivery
    assert letter.arguments() == ([key], {})
    assert letter.failure["reason"] == "worker_lost"
    assert letter.failure["redeliveries"] == 1
    assert letter.failure["exception"] == "celery_policies.redelivery.RedeliveriesExhausted"


def test_when_filters_choose_the_routes_and_the_callback_gets_the_documented_arguments(
        client: Celery, worker: Worker, broker: str, dead_letter_queue: str,
        counters: Any) -> None:
    fatal_key, flaky_key = f"test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"
    fatal = client.send_task("proj.retry.per_exception", [fatal_key, 9, "Fatal"],
                             queue=worker.queue)
    flaky = client.send_task("proj.retry.per_exception", [flaky_key, 9, "Flaky"],
                             queue=worker.queue)

    assert the_dead_letter(broker, f"{dead_letter_queue}.fatal", fatal.id).failure[
        "exception"] == "tests.support.proj.Fatal"
    assert the_dead_letter(broker, dead_letter_queue, flaky.id).failure[
        "exception"] == "tests.support.proj.Flaky"
    assert not of(read(broker, dead_letter_queue), fatal.id)
    assert not of(read(broker, f"{dead_letter_queue}.fatal"), flaky.id)

    for result, key, error in ((fatal, fatal_key, "Fatal"), (flaky, flaky_key, "Flaky")):
        assert wait_for(lambda k=key: attempts(counters, f"{k}:callback"), timeout=20)
        [[_, _, _, details]] = attempts(counters, f"{key}:callback")
        assert details == {
            "task_id": result.id, "task_name": "proj.retry.per_exception",
            "args": [key, 9, error], "kwargs": {},
            "exception_type": f"tests.support.proj.{error}",
            "exception_message": "attempt 1 of proj.retry.per_exception"}


def test_a_thousand_failures_across_two_workers_leave_a_thousand_dead_letters(
        client: Celery, workers: Workers, broker: str, key: str) -> None:
    """Each failure is dead-lettered once: none missing, none twice."""
    queue = f"dlq.{uuid.uuid4().hex[:12]}"
    env = {"TEST_DLQ": queue, "TEST_DEFAULT_QUEUE": workers.queue}
    try:
        workers(POLICIES, env=env, concurrency=2)
        workers(POLICIES, env=env, concurrency=2)
        sent = {client.send_task("proj.retry.fatal", [key, 9, "Fatal"],
                                 queue=workers.queue).id for _ in range(1000)}
        assert wait_for(lambda: len(read(broker, queue)) >= 1000, timeout=120, interval=1)
        time.sleep(DUPLICATE_WINDOW)
        letters = read(broker, queue)
        ids = [letter.id for letter in letters]
        assert len(ids) == 1000
        assert set(ids) == sent
        hosts = {letter.failure["hostname"] for letter in letters}
        assert hosts == {worker.hostname for worker in workers.started}
    finally:
        delete_queue(client, queue)
