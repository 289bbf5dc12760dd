"""No task argument reaches Sentry by any path, from real workers on real brokers.

Each test sends a task whose argument is a unique marker string and asserts that the marker
appears nowhere in the raw envelopes a loopback Sentry endpoint received (tests/support/
sentry.py): not in events, transactions, breadcrumbs nor Sentry Logs. Failure routes that
cannot be taken (the worker's publishing connection points at a closed port) make the worker
log the whole message, arguments included, to redo it by hand: the worker's log must have
it, Sentry must not.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import sentry_sdk
from celery import Celery

from celery_policies.logs import REDO_MARK
from tests.support import proj
from tests.support.deadletters import of, read
from tests.support.sentry import Recorder, recording
from tests.support.workers import (
    Worker,
    attempts,
    delete_queue,
    iter_lines,
    wait_for,
)

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "sentry_screening.yaml"
#: The app whose module initialises sentry_sdk itself (with TEST_SENTRY_APP_INIT=1).
APP = "tests.support.sentryapp"
#: Whether the installed sentry-sdk has Sentry Logs (sentry-sdk 2.0.0 has not).
LOGS = importlib.util.find_spec("sentry_sdk.logger") is not None


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with recording() as started:
        yield started


@pytest.fixture
def client(broker: str) -> Iterator[Celery]:
    app = proj.create_app(broker, client=True)
    yield app
    app.close()


def closed(url: str) -> str:
    """``url`` on a port of 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}" if credentials else host))


@pytest.fixture
def worker(broker: str, client: Celery, recorder: Recorder,
           tmp_path: Path) -> Iterator[Any]:
    """Start one worker running the screening policies with ``env``; stopped after the
    test, its queues deleted."""
    started: list[Worker] = []

    def start(**env: str) -> Worker:
        queue = f"screen.{uuid.uuid4().hex[:12]}"
        environment = {"TEST_SENTRY_DSN": recorder.dsn, "TEST_DEFAULT_QUEUE": queue,
                       "TEST_DLQ": f"{queue}.dlq", **env}
        one = Worker(broker, queue, tmp_path / "worker.log", POLICIES, app=APP,
                     env=environment)
        started.append(one)
        return one.start()

    yield start
    for one in started:
        one.stop()
        delete_queue(client, one.queue)
        delete_queue(client, f"{one.queue}.dlq")


def redo_lines(worker: Worker, task_id: str) -> list[str]:
    """The worker's "to redo it by hand" lines of ``task_id``, each with its message."""
    return [line for line in iter_lines(worker.log, REDO_MARK) if task_id in line]


def fail_unroutable(client: Celery, worker: Worker, key: str, marker: str) -> str:
    """Fail ``proj.sentry.leaky`` with ``marker`` as its argument; wait until both of its
    failure routes were logged, in full, to redo by hand."""
    task_id = str(client.send_task("proj.sentry.leaky", args=[key, marker],
                                   queue=worker.queue).id)
    assert wait_for(lambda: len(redo_lines(worker, task_id)) == 2, timeout=60), worker.log
    # The whole message, the marker included, is in the worker's log.
    assert all(marker in line for line in redo_lines(worker, task_id))
    return task_id


def test_redo_lines_reach_the_log_in_full_and_sentry_without_arguments(
        broker: str, client: Celery, recorder: Recorder, worker: Any, key: str) -> None:
    """The plugin's own Sentry client: two failures whose routes cannot be taken. Each
    "redo it by hand" line would otherwise be a breadcrumb of the next event (and the
    CRITICAL events of the second failure carry the first's)."""
    started = worker(TEST_BROKER_WRITE_URL=closed(broker))
    marker = f"marker-{uuid.uuid4().hex}"
    first = fail_unroutable(client, started, f"{key}:1", marker)
    second = fail_unroutable(client, started, f"{key}:2", marker)
    # one event per failure from the pool, and the CRITICAL lines as events of their own
    recorder.wait(lambda event: second in json.dumps(event), count=3)
    assert recorder.of_task(first)
    assert recorder.of_task(second)
    critical = [event for event in recorder.events() if event.get("level") == "fatal"]
    assert critical, [event.get("logentry") for event in recorder.events()]
    assert marker.encode() not in recorder.raw(), recorder.where(marker)


def test_an_applications_own_sentry_set_up_sends_no_argument_by_any_path(
        broker: str, client: Celery, recorder: Recorder, worker: Any, key: str) -> None:
    """The application's sentry_sdk.init with CeleryIntegration, send_default_pii, tracing of
    every task and Sentry Logs, and a hook of its own for each kind of item: every item is
    screened, and each of the application's hooks still runs."""
    started = worker(TEST_SENTRY_APP_INIT="1", TEST_BROKER_WRITE_URL=closed(broker))
    marker = f"marker-{uuid.uuid4().hex}"
    task_id = fail_unroutable(client, started, key, marker)
    ok = client.send_task("proj.noop", queue=started.queue)
    assert ok.get(timeout=30) == "ok"
    recorder.wait(lambda event: task_id in json.dumps(event), count=1)
    assert wait_for(lambda: recorder.items("transaction") and (recorder.logs() or not LOGS),
                    timeout=30)
    # every kind of item arrived, each through the application's own hook ...
    transactions = recorder.items("transaction")
    assert {t["tags"].get("app_hook") for t in transactions} == {"transaction"}
    assert any(t.get("extra", {}).get("celery-job") for t in transactions)
    events = recorder.of_task(task_id)
    assert events
    assert all(event["tags"].get("app_hook") == "event" for event in events)
    crumbs = [crumb for event in recorder.events()
              for crumb in (event.get("breadcrumbs") or {}).get("values") or ()]
    assert any((crumb.get("data") or {}).get("app_hook") for crumb in crumbs), crumbs
    logs = recorder.logs()
    assert {log["attributes"].get("app_hook", {}).get("value") for log in logs} == (
        {"log"} if LOGS else set())
    # ... and none carries the task's argument.
    assert marker.encode() not in recorder.raw(), recorder.where(marker)


@pytest.mark.parametrize("init", ["plugin", "app"])
def test_a_task_rejected_for_good_is_one_event_one_dead_letter_and_one_callback(
        broker: str, client: Celery, recorder: Recorder, worker: Any, key: str,
        counters: Any, init: str) -> None:
    """``Reject(requeue=False)`` under ``acks_late`` ends the task for good; Celery 5.7 also
    stores FAILURE and sends ``task_failure`` for it, from the worker's main process
    (celery/worker/request.py ``on_failure``). Still: one event, one set of routes."""
    started = worker(**({"TEST_SENTRY_APP_INIT": "1"} if init == "app" else {}))
    marker = f"marker-{uuid.uuid4().hex}"
    task_id = str(client.send_task("proj.sentry.rejecting", args=[key, marker],
                                   queue=started.queue).id)
    dlq = f"{started.queue}.dlq"
    assert wait_for(lambda: of(read(broker, dlq), task_id), timeout=30), started.log
    assert wait_for(lambda: attempts(counters, f"{key}:callback"), timeout=30), started.log
    events = recorder.wait(lambda event: task_id in json.dumps(event), count=1)
    assert len(events) == 1, [event.get("tags") for event in events]
    [event] = events
    assert event["tags"]["celery.task_id"] == task_id
    assert event["tags"]["failure_reason"] == "rejected"
    assert event["tags"]["dead_lettered"] == dlq
    assert event["exception"]["values"][-1]["type"] == "Reject"
    assert len(of(read(broker, dlq), task_id)) == 1
    assert len(attempts(counters, f"{key}:callback")) == 1
    assert len(attempts(counters, key)) == 1  # it ran once
    assert marker.encode() not in recorder.raw(), recorder.where(marker)


@pytest.mark.skipif(not hasattr(sentry_sdk, "data_collection"),
                    reason="this sentry-sdk has no data_collection option")
@pytest.mark.parametrize("queues", [True, False])
def test_with_include_args_the_applications_data_collection_decides(
        broker: str, client: Celery, recorder: Recorder, worker: Any, key: str,
        queues: bool) -> None:
    """``include_args: true`` sends a task's arguments in the plugin's context only where
    the application's ``data_collection`` collects queue data (its ``queues`` category,
    which governs CeleryIntegration's own copy of them)."""
    collection = {"queues": queues, "stack_frame_variables": False}
    started = worker(TEST_SENTRY_APP_INIT="1", TEST_SENTRY_INCLUDE_ARGS="true",
                     TEST_SENTRY_DATA_COLLECTION=json.dumps(collection))
    marker = f"marker-{uuid.uuid4().hex}"
    task_id = str(client.send_task("proj.sentry.leaky", args=[key, marker],
                                   queue=started.queue).id)
    [event] = recorder.wait(lambda event: task_id in json.dumps(event), count=1)
    context = event["contexts"]["celery_policies"]
    if queues:
        assert context["arguments"] == {"args": [key, marker], "kwargs": {}}
    else:
        assert "arguments" not in context
        assert "args" not in event["extra"]["celery-job"]  # CeleryIntegration agrees
