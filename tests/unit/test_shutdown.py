"""Worker shutdown completes even when a pool process died holding the Sentry budget's lock.

A prefork child SIGKILLed (OOM, hard time limit) while it counts an event leaves the shared
lock held for good; the main process takes that lock again at ``worker_shutdown``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import pytest
from celery import Celery

from celery_policies.sentry.budget import SHUTDOWN_LOCK_WAIT, EventBudget
from celery_policies.sentry.reporter import SentryReporter
from celery_policies.spec.model import SentryConfig

FINGERPRINT = ["proj.task", "ValueError"]


def _hold_then_wait(budget: EventBudget, held: Any) -> None:
    budget._lock.acquire()
    held.set()
    time.sleep(60)


def lock_held_by_a_killed_process(budget: EventBudget) -> None:
    """Take the budget's lock in a forked process, then SIGKILL it: nothing releases it."""
    context = multiprocessing.get_context("fork")
    held = context.Event()
    child = context.Process(target=_hold_then_wait, args=(budget, held))
    child.start()
    assert held.wait(10), "the child never took the lock"
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL


def finishes_within(seconds: float, call: Any) -> Any:
    """Run ``call`` in a thread; fail unless it returns within ``seconds``."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds}s"
    return result[0] if result else None


class View:
    def label(self, name: str) -> str | None:
        return None

    def retries_allowed(self, name: str, exc_type: type[BaseException]) -> int | None:
        return 0

    def routes_taken(self, name: str, exc_type: type[BaseException]) -> list[tuple[str, str]]:
        return []

    def effective(self, name: str) -> dict[str, Any]:
        return {}


def test_held_back_gives_up_on_a_lock_a_killed_process_holds() -> None:
    """The count is still read (best effort) once the bounded wait is over."""
    budget = EventBudget(1)
    budget.admit(FINGERPRINT, 1.0)
    budget.admit(FINGERPRINT, 1.0)
    lock_held_by_a_killed_process(budget)
    started = time.monotonic()
    assert finishes_within(SHUTDOWN_LOCK_WAIT + 5, budget.held_back) == 1
    assert time.monotonic() - started >= SHUTDOWN_LOCK_WAIT * 0.9


def test_worker_shutdown_completes_when_a_killed_pool_process_holds_the_lock(
        caplog: pytest.LogCaptureFixture) -> None:
    reporter = SentryReporter(Celery("shutdown", set_as_current=False),
                              SentryConfig(max_events_per_minute=1, flush_timeout=0.1), View())
    reporter.budget.admit(FINGERPRINT, time.time())
    reporter.budget.admit(FINGERPRINT, time.time())
    lock_held_by_a_killed_process(reporter.budget)
    with caplog.at_level(logging.WARNING, logger="celery_policies"):
        finishes_within(SHUTDOWN_LOCK_WAIT + 5, reporter.on_worker_shutdown)
    assert "1 Sentry event(s) over max_events_per_minute" in caplog.text


def test_a_failing_shutdown_report_is_logged_once_and_shutdown_goes_on(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    reporter = SentryReporter(Celery("shutdown", set_as_current=False),
                              SentryConfig(flush_timeout=0.1), View())
    flushed: list[bool] = []
    monkeypatch.setattr(reporter.budget, "held_back", lambda: 1 / 0)
    monkeypatch.setattr(reporter, "_flush", lambda: flushed.append(True))
    with caplog.at_level(logging.WARNING, logger="celery_policies"):
        reporter.on_worker_shutdown()
    assert flushed == [True]
    [record] = [r for r in caplog.records if r.name == "celery_policies"]
    assert "ZeroDivisionError" in record.getMessage()
