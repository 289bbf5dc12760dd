"""The Celery app the integration tests run in real workers (``celery -A tests.support.proj``).

Its tasks carry no reliability options (but ``proj.code.coded``, which sets its own, to show
the file wins): everything comes from the policy file the test gives the worker. Each task
records what happened to it in Redis, under a key the test chooses, so the test can observe
attempts, their times and the process that ran them.

Environment: ``TEST_BROKER_URL``, ``TEST_RESULT_BACKEND``, ``TEST_COUNTERS_URL``,
``TEST_VISIBILITY_TIMEOUT`` (seconds; Redis redelivers unacknowledged messages after it),
``TEST_DEFAULT_QUEUE`` (where tasks sent by name without a queue go, such as failure
callbacks: the test worker's own queue), ``TEST_BROKER_WRITE_URL`` (the connection
publishes use, when it differs from the one the worker consumes on) and
``TEST_CONTROL_EXCHANGE`` (Celery's ``control_exchange``: workers answer only the remote-control
broadcasts sent on it, so a test's workers and commands keep to themselves) and
``TEST_BEAT_TASK`` (a task ``celery beat`` sends every half second).

``TEST_SENTRY_INIT`` makes the app initialise sentry_sdk itself, as applications do, with
``TEST_SENTRY_DSN``: ``celery`` with sentry_sdk's CeleryIntegration (and, the worst case for
leaks, ``send_default_pii``), ``plain`` with every default integration but that one. Unset,
the app leaves Sentry to the policy file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

import celery_policies
from tests.support.recording import BROKER_URL, COUNTERS_URL, RESULT_BACKEND
from tests.support.results import client_backend


def create_app(broker_url: str = BROKER_URL, *, client: bool = False) -> Celery:
    """The app; ``client=True`` for a test's own publishing and result-reading app."""
    backend = client_backend(RESULT_BACKEND) if client else RESULT_BACKEND
    app = Celery("proj", broker=broker_url, backend=backend)
    visibility = float(os.environ.get("TEST_VISIBILITY_TIMEOUT", "3600"))
    app.conf.update(
        # ETA retries run on time, not up to a second late (the default precision).
        worker_timer_precision=0.05,
        broker_transport_options={"visibility_timeout": visibility,
                                  "unacked_restore_interval": 1,
                                  "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True,
        result_expires=600,
        task_track_started=True,
        worker_pool_start_method=os.environ.get("TEST_POOL_START_METHOD", "fork"),
        task_default_queue=os.environ.get("TEST_DEFAULT_QUEUE", "celery"),
        broker_write_url=os.environ.get("TEST_BROKER_WRITE_URL"),
        control_exchange=os.environ.get("TEST_CONTROL_EXCHANGE", "celery"),
    )
    if os.environ.get("TEST_BEAT_TASK"):  # for `celery beat`: that task, every 0.5 s
        app.conf.beat_schedule = {"test": {"task": os.environ["TEST_BEAT_TASK"],
                                           "schedule": 0.5}}
    return app


def init_sentry(mode: str | None) -> None:
    if not mode:
        return
    import sentry_sdk  # noqa: PLC0415 - only the Sentry tests need it
    from sentry_sdk.integrations.celery import CeleryIntegration  # noqa: PLC0415

    if mode == "celery":
        sentry_sdk.init(dsn=os.environ["TEST_SENTRY_DSN"], integrations=[CeleryIntegration()],
                        send_default_pii=True)
    elif mode == "plain":
        sentry_sdk.init(dsn=os.environ["TEST_SENTRY_DSN"],
                        disabled_integrations=[CeleryIntegration()])
    else:
        raise ValueError(f"TEST_SENTRY_INIT: expected celery or plain, got {mode!r}")


init_sentry(os.environ.get("TEST_SENTRY_INIT"))
app = create_app()
celery_policies.install(app)
# Tasks are registered with shared=False: Celery would otherwise add them to every app that
# the test process finalizes later (the example shop's, in the unit tests).
counters = redis.Redis.from_url(COUNTERS_URL)


def record(key: str, event: Any = None, node: str | None = None) -> None:
    """Append ``[time, pid, node, event]`` to the Redis list ``key`` (``node``: the worker's
    name, else the machine's)."""
    counters.rpush(key, json.dumps([time.time(), os.getpid(), node or socket.gethostname(),
                                    event]))


class Flaky(ConnectionError):
    """A transient error the policies retry."""


class Throttled(Exception):
    """A rate-limit error with its own retry settings."""


class Fatal(Exception):
    """An error no retry fixes."""


ERRORS: dict[str, type[Exception]] = {"Flaky": Flaky, "Throttled": Throttled, "Fatal": Fatal}


def _flaky(self: Any, key: str, fail_times: int = 0, error: str = "Flaky") -> str:
    """Fail with ``error`` on the first ``fail_times`` attempts, then succeed."""
    record(key, self.request.retries, self.request.hostname)
    if self.request.retries < fail_times:
        raise ERRORS[error](f"attempt {self.request.retries + 1} of {self.name}")
    return "ok"


# One body under several names, so that each name gets its own policy.
for _name in ("backoff", "limited", "deadline", "per_exception", "fatal", "fleet"):
    app.task(bind=True, name=f"proj.retry.{_name}", shared=False)(_flaky)


@app.task(bind=True, name="proj.code.coded", autoretry_for=(Flaky,), max_retries=5,
          retry_backoff=True, acks_late=True, shared=False)
def coded(self: Any, key: str, fail_times: int = 0, error: str = "Flaky") -> str:
    """Sets its own retry and acknowledgement options; the file overrides them."""
    return _flaky(self, key, fail_times, error)


@app.task(name="proj.sentry.hold_budget", shared=False)
def hold_budget() -> None:
    """Take the Sentry budget's shared lock and die holding it, as an OOM-killed pool
    process counting an event would."""
    from celery_policies.worker.install import runtime_of  # noqa: PLC0415 - only this task needs it

    runtime = runtime_of(app)
    assert runtime is not None
    assert runtime.reporter is not None
    runtime.reporter.budget._lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="proj.limits.sleepy", shared=False)
def sleepy(key: str, seconds: float) -> str:
    """Sleep; record whether the soft time limit interrupted it."""
    record(key, "start")
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        record(key, "soft")
        raise
    record(key, "done")
    return "slept"


@app.task(name="proj.limits.stubborn", shared=False)
def stubborn(key: str, seconds: float) -> str:
    """Ignore the soft time limit (like code stuck in a C call): only the hard one stops it."""
    record(key, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            record(key, "soft ignored")
    record(key, "done")
    return "finished"


@app.task(name="proj.lost.suicide", shared=False)
def suicide(key: str) -> None:
    """Kill the worker process running it, as the OOM killer would."""
    record(key)
    os.kill(os.getpid(), signal.SIGKILL)


# The same, under a name no acks_late policy matches: its loss is final at once.
doomed = app.task(name="proj.sentry.doomed", shared=False)(suicide.run)


@app.task(name="proj.lost.collect", shared=False)
def collect(key: str, item: int, seconds: float = 0.0) -> int:
    """Work for ``seconds``, then add ``item`` to the Redis set ``key``."""
    time.sleep(seconds)
    counters.sadd(key, item)
    return item


@app.task(name="proj.dlq.fixable", shared=False)
def fixable(key: str) -> str:
    """Fail with ``Fatal`` until the test sets ``<key>:fixed`` (the cause is fixed)."""
    fixed = bool(counters.exists(f"{key}:fixed"))
    record(key, "ok" if fixed else "failed")
    if not fixed:
        raise Fatal(f"{key} is not fixed yet")
    return "ok"


@app.task(name="proj.dlq.slow_fail", shared=False)
def slow_fail(key: str, seconds: float) -> None:
    """Work for ``seconds``, then fail for good."""
    record(key, "start")
    time.sleep(seconds)
    raise Fatal(f"{key} failed after {seconds}s")


@app.task(name="proj.callbacks.failed", shared=False)
def failed(**details: Any) -> None:
    """A failure route's callback: record what it was given under ``<args[0]>:callback``."""
    record(f"{details['args'][0]}:callback", details)


@app.task(name="proj.noop", shared=False)
def noop() -> str:
    return "ok"


@app.task(bind=True, name="proj.sentry.leaky", shared=False)
def leaky(self: Any, key: str, secret: str, fail_times: int = 99) -> str:
    """Hold ``secret`` in local variables down the stack, log, then fail ``fail_times``
    times with a message that does not name it."""
    record(key, self.request.retries, self.request.hostname)
    logging.getLogger("proj").info("processing a record for %s", self.name)
    return _process(secret, self.request.retries < fail_times)


def _process(record_value: str, fail: bool) -> str:
    copy = f"value={record_value}"
    if fail:
        raise Fatal(f"the record could not be processed ({len(copy)} characters)")
    return "ok"
