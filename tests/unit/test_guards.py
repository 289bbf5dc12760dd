"""The plugin's code in Celery's own paths never replaces a task's exception or crashes.

Each test injects a fault into one piece of plugin code that runs inside Celery (an inner
function made to raise, or a hostile header) and checks three things: Celery's own behaviour
still happens, the task's real exception is the one that goes on, and the fault is logged in
exactly one line.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery import Celery, signals
from celery.exceptions import WorkerLostError

import celery_policies.sentry.reporter
import celery_policies.worker.install
import celery_policies.worker.routes
import celery_policies.worker.runtime
from celery_policies import install
from celery_policies.guard import GUARD_FORMAT
from celery_policies.headers import FIRST_ATTEMPT_HEADER, REDELIVERIES_HEADER
from celery_policies.location import ENV_VAR
from celery_policies.sentry.reporter import SentryReporter
from celery_policies.spec.model import SentryConfig
from celery_policies.worker.redeliveries import capped_request_class
from celery_policies.worker.retrying import wrap_run
from celery_policies.worker.routes import FailureRouter, routed_request_class
from celery_policies.worker.runtime import EXIT_CONFIG, Runtime, WorkerRefused


class Real(Exception):
    """The task's own exception, which must survive every fault of the plugin."""


class CeleryRequest:
    """Stands for Celery's ``Request``: records what Celery's own handlers were given."""

    name = "proj.task"
    id = "0f0f"

    def __init__(self) -> None:
        self.request_dict: dict[str, Any] = {}
        self.failures: list[ExceptionInfo] = []
        self.timeouts: list[tuple[bool, float]] = []

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True,
                   return_ok: bool = False) -> str:
        self.failures.append(exc_info)
        return "celery"

    def on_timeout(self, soft: bool, timeout: float) -> str:
        self.timeouts.append((soft, timeout))
        return "celery"


def exc_info_of(exc: BaseException) -> ExceptionInfo:
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The plugin's log records (the guard's line among them)."""
    with caplog.at_level(logging.DEBUG, logger="celery_policies"):
        yield caplog


def one_guard_line(logged: pytest.LogCaptureFixture, fault: str) -> logging.LogRecord:
    [record] = [r for r in logged.records if r.name.startswith("celery_policies")]
    assert record.msg == GUARD_FORMAT
    assert fault in record.getMessage()
    return record


def broken(*_: Any, **__: Any) -> Any:
    raise RuntimeError("plugin fault")


def router() -> FailureRouter:
    return FailureRouter(Celery("guards", set_as_current=False), lambda name, exc: [],
                         lambda name: None, lambda name: None)


def test_a_fault_deciding_a_failure_leaves_it_to_celery_with_the_real_exception(
        monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(celery_policies.worker.routes, "final_reason", broken)
    request = routed_request_class(CeleryRequest, router())()  # type: ignore[arg-type]
    info = exc_info_of(Real("the task's own"))
    assert request.on_failure(info) == "celery"
    assert request.failures == [info]
    assert isinstance(request.failures[0].exception.exc, Real)
    one_guard_line(logged, "plugin fault")


def test_a_fault_deciding_a_timeout_leaves_it_to_celery(
        monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(celery_policies.worker.routes, "timeout_is_final", broken)
    request = routed_request_class(CeleryRequest, router())()  # type: ignore[arg-type]
    request.task = object()
    assert request.on_timeout(False, 2.0) == "celery"
    assert request.timeouts == [(False, 2.0)]
    one_guard_line(logged, "plugin fault")


def test_a_hostile_redelivery_header_leaves_the_lost_worker_to_celery(
        logged: pytest.LogCaptureFixture) -> None:
    request = capped_request_class(CeleryRequest, 3)()  # type: ignore[arg-type]
    request.request_dict = {REDELIVERIES_HEADER: "three"}
    info = exc_info_of(WorkerLostError("killed"))
    assert request.on_failure(info) == "celery"
    assert request.failures == [info]
    one_guard_line(logged, "three")


def retrying_task(monkeypatch: pytest.MonkeyPatch, settings: Any,
                  headers: dict[str, Any] | None = None) -> Any:
    app = Celery("guards", set_as_current=False)

    @app.task(bind=True, name="proj.flaky", shared=False)
    def flaky(self: Any) -> None:
        raise Real("the task's own")

    wrap_run(flaky, lambda: settings, broken)
    flaky.push_request(id="0f0f", retries=0, headers=headers or {})
    return flaky


def test_a_fault_deciding_a_retry_raises_the_task_s_own_exception(
        monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture) -> None:
    class Settings:
        decide = broken

    task = retrying_task(monkeypatch, Settings())
    with pytest.raises(Real, match="the task's own"):
        task.run()
    one_guard_line(logged, "plugin fault")


def test_a_hostile_first_attempt_header_raises_the_task_s_own_exception(
        monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture) -> None:
    task = retrying_task(monkeypatch, object(), {FIRST_ATTEMPT_HEADER: "yesterday"})
    with pytest.raises(Real, match="the task's own") as caught:
        task.run()
    assert caught.value.__context__ is None  # nothing of the plugin's chained on it
    one_guard_line(logged, "yesterday")


def test_a_fault_choosing_the_publish_retry_policy_publishes_with_celery_s(
        monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture) -> None:
    app = Celery("guards", set_as_current=False)
    sent: list[tuple[str, dict[str, Any]]] = []
    app.send_task = lambda name, *args, **options: sent.append((name, options))  # type: ignore[method-assign]
    runtime = install(app)
    monkeypatch.setattr(runtime, "publish_retry_policy", broken)
    app.send_task("proj.task", args=(1,))
    assert sent == [("proj.task", {"args": (1,)})]
    one_guard_line(logged, "plugin fault")


def test_a_fault_in_the_sentry_publish_hook_lets_the_publish_go_on(
        monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture) -> None:
    reporter = SentryReporter(Celery("guards", set_as_current=False), SentryConfig(),
                              Runtime(Celery("guards", set_as_current=False), None))
    monkeypatch.setattr(celery_policies.sentry.reporter, "running_task", broken)
    headers = {"id": "0f0f", "retries": 1}
    reporter.on_before_publish(headers=headers)
    assert headers == {"id": "0f0f", "retries": 1}
    one_guard_line(logged, "plugin fault")


def test_a_pool_process_that_cannot_apply_the_policies_refuses_to_run_tasks(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        logged: pytest.LogCaptureFixture) -> None:
    """Through Celery's own dispatch of ``worker_process_init`` (which logs and swallows an
    ``Exception``): the child stops before its first task and asks the worker to stop, as
    the main process refuses to start with policies it cannot apply."""
    path = tmp_path / "policies.yaml"
    path.write_text("version: 1\npolicies: []\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    monkeypatch.setattr(Runtime, "apply", broken)
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(celery_policies.worker.runtime.os, "kill",
                        lambda pid, sig: asked.append((pid, sig)))
    app = Celery("guards", set_as_current=False)
    install(app)
    app.set_current()
    with pytest.raises(WorkerRefused) as caught:
        signals.worker_process_init.send(sender="guards@host")
    assert caught.value.code == EXIT_CONFIG
    assert asked == [(os.getppid(), signal.SIGTERM)]
    record = one_guard_line(logged, "plugin fault")
    assert record.levelno == logging.CRITICAL


def test_a_fault_before_the_policies_are_applied_refuses_the_worker(
        monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture) -> None:
    """``celery worker --policies FILE`` with no line of code: a fault while the plugin
    installs itself must stop the worker, not let it run without the policies it was
    given (Celery's dispatch of ``worker_init`` logs and swallows an ``Exception``)."""
    monkeypatch.setattr(celery_policies.worker.install, "install", broken)
    celery_policies.worker.install.connect_receivers()

    class Worker:
        def __init__(self) -> None:
            self.app = Celery("guards", set_as_current=False)
            self.options = {"policies": "policies.yaml"}

    with pytest.raises(WorkerRefused) as caught:
        signals.worker_init.send(sender=Worker())
    assert caught.value.code == EXIT_CONFIG
    record = one_guard_line(logged, "plugin fault")
    assert record.levelno == logging.CRITICAL
