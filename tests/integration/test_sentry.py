"""Failures reach Sentry as one clear event each, from real workers on real brokers.

Every assertion is on the envelopes a loopback Sentry endpoint received (tests/support/
sentry.py). The workers run in three set-ups: the plugin initialises sentry_sdk from the
file (its defaults auto-enable CeleryIntegration), and the application initialises it itself
with CeleryIntegration (and send_default_pii, the worst case for leaks) or without it.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.support import proj
from tests.support.sentry import Hanging, Recorder, closed_port_dsn, recording
from tests.support.workers import BROKERS, Worker, delete_queue, require, wait_for

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "sentry.yaml"
#: (broker, set-up): every set-up on Redis, and the main-process paths on RabbitMQ too.
SETUPS = [("redis", "plugin"), ("redis", "celery"), ("redis", "plain"),
          ("rabbitmq", "celery")]
INIT = {"plugin": {}, "celery": {"TEST_SENTRY_INIT": "celery"},
        "plain": {"TEST_SENTRY_INIT": "plain"}}
#: Loggers whose lines would repeat, without context, a failure the plugin reports.
CELERY_LOGGERS = {"celery.app.trace", "celery.worker.request", "multiprocessing",
                  "celery.worker.strategy"}


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    with recording() as started:
        yield started


def start_worker(broker: str, tmp: Path, recorder_dsn: str, **env: str) -> tuple[Worker, str]:
    queue = f"sentry.{uuid.uuid4().hex[:12]}"
    dlq = f"{queue}.dlq"
    environment = {"TEST_SENTRY_DSN": recorder_dsn, "TEST_DEFAULT_QUEUE": queue,
                   "TEST_DLQ": dlq, **env}
    worker = Worker(broker, queue, tmp / "worker.log", POLICIES, concurrency=2,
                    env=environment)
    return worker.start(), dlq


@pytest.fixture(scope="module", params=SETUPS, ids=["-".join(p) for p in SETUPS])
def setup(request: pytest.FixtureRequest, recorder: Recorder, counters: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    broker_name, init = request.param
    broker = BROKERS[broker_name]
    require(broker, broker_name)
    client = proj.create_app(broker, client=True)
    worker, dlq = start_worker(broker, tmp_path_factory.mktemp("sentry"), recorder.dsn,
                               **INIT[init])
    yield {"worker": worker, "client": client, "dlq": dlq, "init": init}
    worker.stop()
    for name in (worker.queue, dlq):
        delete_queue(client, name)
    client.close()


def send(setup: dict[str, Any], name: str, *args: Any) -> str:
    client: Celery = setup["client"]
    return str(client.send_task(name, args=args, queue=setup["worker"].queue).id)


def events_of(recorder: Recorder, task_id: str, count: int = 1) -> list[dict[str, Any]]:
    """Every event naming ``task_id``, once ``count`` of them arrived and a quiet spell
    showed no more were coming."""
    recorder.wait(lambda event: task_id in json.dumps(event), count=count)
    return recorder.of_task(task_id)


def exception_of(event: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = event["exception"]["values"][-1]
    return value


def finished(setup: dict[str, Any], task_id: str, timeout: float = 30) -> str:
    result = setup["client"].AsyncResult(task_id)
    assert wait_for(lambda: result.state in ("SUCCESS", "FAILURE"), timeout), result.state
    return str(result.state)


def test_retries_that_end_in_success_send_no_event(setup: dict[str, Any],
                                                   recorder: Recorder, key: str) -> None:
    task_id = send(setup, "proj.retry.limited", key, 2)
    assert finished(setup, task_id) == "SUCCESS"
    assert events_of(recorder, task_id, count=0) == []


def test_exhausted_retries_send_one_error_event_with_a_breadcrumb_per_retry(
        setup: dict[str, Any], recorder: Recorder, key: str) -> None:
    task_id = send(setup, "proj.retry.limited", key, 10)
    [event] = events_of(recorder, task_id)
    assert event["level"] == "error"
    assert exception_of(event)["type"] == "Flaky"
    assert exception_of(event)["mechanism"]["type"] == "celery_policies"
    assert event["fingerprint"] == ["proj.retry.limited", "tests.support.proj.Flaky"]
    tags = event["tags"]
    assert {k: tags[k] for k in ("celery.task", "celery.task_id", "celery.queue", "policy",
                                 "retries", "failure_reason", "dead_lettered")} == {
        "celery.task": "proj.retry.limited", "celery.task_id": task_id,
        "celery.queue": setup["worker"].queue, "policy": "limited", "retries": "2/2",
        "failure_reason": "exception", "dead_lettered": setup["dlq"]}
    context = event["contexts"]["celery_policies"]
    assert context["policy"]["matched"] == ["limited"]
    assert context["policy"]["settings"]["max_retries"] == 2
    assert context["failure_reason"] == "exception"
    retries = [crumb for crumb in event["breadcrumbs"]["values"]
               if crumb.get("category") == "celery.retry"]
    assert [crumb["data"]["retry"] for crumb in retries] == [1, 2]
    # retry_backoff 0.2s, no jitter: 0.2 s then 0.4 s
    assert [round(crumb["data"]["delay"], 1) for crumb in retries] == [0.2, 0.4]
    assert all(crumb["data"]["exception"] == "tests.support.proj.Flaky" for crumb in retries)
    # the plugin's own "giving up on ..." line repeats the event: not a breadcrumb of it
    assert not [crumb for crumb in event["breadcrumbs"]["values"]
                if "giving up" in str(crumb.get("message"))]
    # the stack is the task's own, from the process that ran it
    frames = exception_of(event)["stacktrace"]["frames"]
    assert frames[-1]["function"] == "_flaky"


def test_a_hard_time_limit_is_one_event_from_the_main_process(
        setup: dict[str, Any], recorder: Recorder, key: str) -> None:
    task_id = send(setup, "proj.limits.stubborn", key, 5)
    [event] = events_of(recorder, task_id)
    assert exception_of(event)["type"] == "TimeLimitExceeded"
    assert "stacktrace" not in exception_of(event)  # no child was left to report it
    assert event["tags"]["failure_reason"] == "time_limit"
    assert event["tags"]["policy"] == "limits"
    assert event["contexts"]["celery_policies"]["policy"]["settings"]["time_limit"] == 1.0
    assert recorder.events(lambda e: e.get("logger") in CELERY_LOGGERS) == []


def test_a_lost_worker_process_is_one_event(setup: dict[str, Any], recorder: Recorder,
                                            key: str) -> None:
    task_id = send(setup, "proj.sentry.doomed", key)
    [event] = events_of(recorder, task_id)
    assert exception_of(event)["type"] == "WorkerLostError"
    assert event["tags"]["failure_reason"] == "worker_lost"
    assert event["fingerprint"] == ["proj.sentry.doomed",
                                    "billiard.exceptions.WorkerLostError"]
    assert recorder.events(lambda e: e.get("logger") in CELERY_LOGGERS) == []


def test_exhausted_redeliveries_are_one_event(setup: dict[str, Any], recorder: Recorder,
                                              key: str, counters: Any) -> None:
    task_id = send(setup, "proj.lost.suicide", key)
    [event] = events_of(recorder, task_id)
    assert counters.llen(key) == 2  # the first run and its one redelivery
    assert exception_of(event)["type"] == "RedeliveriesExhausted"
    assert event["tags"]["failure_reason"] == "redeliveries"
    assert recorder.events(lambda e: e.get("logger") in CELERY_LOGGERS) == []


def test_no_argument_value_reaches_sentry(setup: dict[str, Any], recorder: Recorder,
                                          key: str) -> None:
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    leaky = send(setup, "proj.sentry.leaky", key, sentinel)  # a retry, then a failure
    stubborn = send(setup, "proj.limits.stubborn", sentinel, 5)  # the main process
    doomed = send(setup, "proj.sentry.doomed", sentinel)
    events = [*events_of(recorder, leaky), *events_of(recorder, stubborn),
              *events_of(recorder, doomed)]
    assert len(events) == 3, [(e["tags"]["celery.task"], e["tags"]["failure_reason"])
                              for e in recorder.events()][-6:]
    # The failure had frames whose locals held the sentinel ...
    frames = exception_of(events[0])["stacktrace"]["frames"]
    assert [frame["function"] for frame in frames][-2:] == ["leaky", "_process"]
    assert all("vars" not in frame for frame in frames)
    # ... and the sentinel is nowhere in anything the worker sent.
    assert sentinel.encode() not in recorder.raw()


@pytest.fixture(scope="module")
def redis_client(counters: Any) -> Iterator[Celery]:
    require(BROKERS["redis"], "redis")
    client = proj.create_app(BROKERS["redis"], client=True)
    yield client
    client.close()


@pytest.fixture
def alone(redis_client: Celery, recorder: Recorder,
          tmp_path: Path) -> Iterator[Any]:
    """Start a worker of its own on Redis with ``env``; stopped after the test."""
    started: list[Worker] = []

    def start(**env: str) -> dict[str, Any]:
        worker, dlq = start_worker(BROKERS["redis"], tmp_path, env.pop("dsn", recorder.dsn),
                                   **env)
        started.append(worker)
        return {"worker": worker, "client": redis_client, "dlq": dlq}

    yield start
    for worker in started:
        worker.stop()
        delete_queue(redis_client, worker.queue)


def test_report_retries_event_sends_a_warning_per_retry_and_no_error(
        alone: Any, recorder: Recorder, key: str) -> None:
    setup = alone(TEST_SENTRY_RETRIES="event")
    task_id = send(setup, "proj.retry.limited", key, 2)
    assert finished(setup, task_id) == "SUCCESS"
    events = events_of(recorder, task_id, count=2)
    assert sorted(event["tags"]["retry"] for event in events) == ["1", "2"]
    assert {event["level"] for event in events} == {"warning"}
    assert {exception_of(event)["type"] for event in events} == {"Flaky"}


def test_a_storm_sends_at_most_the_budget_then_says_how_many_were_held_back(
        alone: Any, recorder: Recorder, key: str) -> None:
    budget, storm = 20, 500
    setup = alone(TEST_SENTRY_BUDGET=str(budget))
    ids = [send(setup, "proj.dlq.slow_fail", f"{key}:{n}", 0) for n in range(storm)]
    first = time.monotonic()  # the budget's window starts with the first failure, after this
    for task_id in ids:
        assert finished(setup, task_id, timeout=120) == "FAILURE"

    def of_storm(event: dict[str, Any]) -> bool:
        return event.get("tags", {}).get("celery.task_id") in ids

    sent = recorder.wait(of_storm, count=budget)
    # Two pool processes share one budget: not 2 x 20.
    assert len(sent) == budget
    # The next event after the minute says how many were counted and not sent.
    time.sleep(max(0.0, 63 - (time.monotonic() - first)))
    last = send(setup, "proj.dlq.slow_fail", f"{key}:last", 0)
    [event] = events_of(recorder, last)
    assert event["contexts"]["celery_policies"]["suppressed"]["events"] == storm - budget


@pytest.mark.parametrize("endpoint", ["hanging", "closed"])
def test_an_unresponsive_sentry_never_holds_up_tasks_or_shutdown(
        alone: Any, key: str, endpoint: str) -> None:
    hanging = Hanging()
    try:
        dsn = hanging.dsn if endpoint == "hanging" else closed_port_dsn()
        setup = alone(dsn=dsn, TEST_SENTRY_FLUSH="1s")
        started = time.monotonic()
        failing = [send(setup, "proj.dlq.slow_fail", f"{key}:{n}", 0) for n in range(200)]
        fine = [send(setup, "proj.retry.limited", f"{key}:ok{n}", 0) for n in range(50)]
        assert all(finished(setup, task_id) == "FAILURE" for task_id in failing)
        assert all(finished(setup, task_id) == "SUCCESS" for task_id in fine)
        # 250 tasks on two processes take well under a second each way; a stall on Sentry's
        # 30 s HTTP timeout would show.
        assert time.monotonic() - started < 20
        worker: Worker = setup["worker"]
        assert worker.process is not None
        stopping = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)  # warm shutdown: flushes, at most 1 s
        assert worker.wait_exit(timeout=30) == 0
        assert time.monotonic() - stopping < 10
    finally:
        hanging.close()


def handed_back(setup: dict[str, Any], task_id: str) -> bool:
    """Whether the worker's main process has taken the task's outcome from its pool process:
    the task is no longer among its active ones."""
    worker: Worker = setup["worker"]
    replies = setup["client"].control.inspect(destination=[worker.hostname],
                                              timeout=1.0).active() or {}
    active = replies.get(worker.hostname)
    return active is not None and all(task["id"] != task_id for task in active)


def test_an_event_raised_just_before_shutdown_is_delivered(
        alone: Any, recorder: Recorder, key: str) -> None:
    setup = alone()
    task_id = send(setup, "proj.dlq.slow_fail", key, 0)
    assert finished(setup, task_id) == "FAILURE"
    # The pool process stores FAILURE before it hands the outcome back; a SIGTERM in between
    # meets a Celery 5.3-5.6 race that holds the stop for 30 s (docs/compatibility.md), which
    # test_warm_shutdown.py covers. Here the stop begins once the task is done, while its
    # event, captured in the pool process, may still be on its way.
    assert wait_for(lambda: handed_back(setup, task_id), timeout=30)
    worker: Worker = setup["worker"]
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait_exit(timeout=30) == 0
    assert len(recorder.of_task(task_id)) == 1


def test_a_misconfigured_sentry_never_stops_the_worker(alone: Any, key: str) -> None:
    setup = alone(dsn="not-a-dsn")
    assert "could not set up Sentry" in setup["worker"].log
    assert finished(setup, send(setup, "proj.retry.limited", key, 1)) == "SUCCESS"
    assert finished(setup, send(setup, "proj.dlq.slow_fail", key, 0)) == "FAILURE"
