"""The Sentry reporter's pure parts: the shared event budget and the screen every event passes.

What reaches a real Sentry endpoint from real workers is tested in
tests/integration/test_sentry.py.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

import pytest
import sentry_sdk
from celery import Celery, signals

from celery_policies.logs import REDO_FORMAT, REDO_LOGGER
from celery_policies.sentry.budget import LOCK_WAIT, WINDOW, EventBudget
from celery_policies.sentry.reporter import (
    EXPERIMENTS,
    MIN_SEARCHED_LENGTH,
    NOT_SENT,
    SCREENED_HOOKS,
    SentryReporter,
    _breadcrumbs,
    _install_screens,
    _queues_collected,
    _screen,
    _screen_breadcrumb,
    _screen_log,
    _screen_transaction,
    _searched,
    _searched_values,
    _supported,
)
from celery_policies.sentry.screening import publishing_routes
from celery_policies.spec.model import SentryConfig
from celery_policies.worker.runtime import Runtime

FINGERPRINT = ["proj.task", "ValueError"]


def test_the_budget_admits_per_minute_events_then_counts_the_rest() -> None:
    budget = EventBudget(3)
    assert [budget.admit(FINGERPRINT, 100.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert budget.held_back() == 2


def test_the_first_event_of_the_next_window_says_how_many_were_held_back() -> None:
    budget = EventBudget(1)
    budget.admit(FINGERPRINT, 100.0)
    for _ in range(7):
        budget.admit(FINGERPRINT, 130.0)
    assert budget.admit(FINGERPRINT, 100.0 + WINDOW) == 7
    assert budget.held_back() == 0
    assert budget.admit(FINGERPRINT, 100.0 + WINDOW) is None


def test_each_fingerprint_has_its_own_budget() -> None:
    budget = EventBudget(1)
    assert budget.admit(FINGERPRINT, 1.0) == 0
    assert budget.admit(["proj.task", "KeyError"], 1.0) == 0
    assert budget.admit(["proj.other", "ValueError"], 1.0) == 0
    assert budget.admit(FINGERPRINT, 1.0) is None


def test_more_fingerprints_than_slots_reuse_the_stalest() -> None:
    budget = EventBudget(1, slots=4)
    for n in range(40):
        assert budget.admit([f"task{n}", "E"], float(n)) == 0
    assert budget.admit(["task39", "E"], 39.0) is None


def test_forked_processes_share_one_budget() -> None:
    budget = EventBudget(2)
    assert budget.admit(FINGERPRINT, 1.0) == 0
    pid = os.fork()
    if pid == 0:  # the child spends the rest of the budget, then one over it
        code = 0 if (budget.admit(FINGERPRINT, 2.0), budget.admit(FINGERPRINT, 2.0)) == (
            0, None) else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert budget.admit(FINGERPRINT, 3.0) is None
    assert budget.held_back() == 2


def test_a_lock_never_released_does_not_stall_reporting() -> None:
    """As if a pool process was killed holding it: the event goes out, uncounted."""
    budget = EventBudget(1)
    budget._lock.acquire()
    started = time.monotonic()
    assert budget.admit(FINGERPRINT, 1.0) == 0
    assert time.monotonic() - started < LOCK_WAIT + 0.5


def error_event(**extra: Any) -> dict[str, Any]:
    frame = {"function": "run", "vars": {"secret": "'s3cret'"}}
    return {"exception": {"values": [{"type": "ValueError", "mechanism": {"type": "generic"},
                                      "stacktrace": {"frames": [frame]}}]},
            "threads": {"values": [{"stacktrace": {"frames": [dict(frame)]}}]}, **extra}


def test_the_screen_drops_celery_integrations_own_capture() -> None:
    event = error_event()
    event["exception"]["values"][0]["mechanism"]["type"] = "celery"
    assert _screen(None, include_args=False)(event, {}) is None


@pytest.mark.parametrize(("logger", "message"), [
    ("celery.worker.request", "Hard time limit (%ss) exceeded for %s[%s]"),
    ("celery.worker.request", "Task handler raised error: %r"),
    ("multiprocessing", "Process %r pid:%r exited with %r"),
])
def test_the_screen_drops_celerys_log_lines_for_failures_it_reports(logger: str,
                                                                    message: str) -> None:
    event = {"logger": logger, "logentry": {"message": message, "params": []}}
    assert _screen(None, include_args=True)(event, {}) is None


def test_the_screen_keeps_other_log_events() -> None:
    event = {"logger": "celery.worker.consumer", "logentry": {"message": "Cannot connect"}}
    assert _screen(None, include_args=False)(event, {}) == event


def test_without_include_args_no_frame_keeps_its_locals() -> None:
    event = _screen(None, include_args=False)(error_event(), {})
    frames = [*event["exception"]["values"][0]["stacktrace"]["frames"],
              *event["threads"]["values"][0]["stacktrace"]["frames"]]
    assert len(frames) == 2
    assert all("vars" not in frame for frame in frames)


def test_with_include_args_frames_keep_their_locals() -> None:
    event = _screen(None, include_args=True)(error_event(), {})
    assert event["exception"]["values"][0]["stacktrace"]["frames"][0]["vars"]


def test_without_include_args_celery_integrations_job_extra_loses_its_arguments() -> None:
    job = {"task_name": "proj.task", "args": ["s3cret"], "kwargs": {"k": "s3cret"}}
    event = _screen(None, include_args=False)(error_event(extra={"celery-job": job}), {})
    assert "s3cret" not in repr(event)
    assert event["extra"]["celery-job"]["task_name"] == "proj.task"


def test_without_include_args_the_redo_line_keeps_what_failed_but_not_the_message() -> None:
    """Should the redo logger ever reach Sentry (an application that un-ignores it)."""
    params = ["dead-letter proj.task[1] to dlq", "ConnectionError()",
              '{"message": {"args": ["s3cret"]}}']
    event = {"logger": "celery_policies", "level": "fatal",
             "logentry": {"message": REDO_FORMAT, "params": params,
                          "formatted": REDO_FORMAT % tuple(params)}}
    screened = _screen(None, include_args=False)(event, {})
    assert "s3cret" not in repr(screened)
    assert screened["logentry"]["formatted"].startswith(
        "could not dead-letter proj.task[1] to dlq ('ConnectionError()')")


def test_the_applications_before_send_still_decides() -> None:
    seen = []

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> None:
        seen.append(event)

    assert _screen(before_send, include_args=False)(error_event(), {}) is None
    assert len(seen) == 1


def test_screening_twice_wraps_once() -> None:
    screen = _screen(None, include_args=False)
    assert _screen(screen, include_args=False) is screen


def test_screening_transactions_breadcrumbs_and_logs_twice_wraps_each_once() -> None:
    transaction = _screen_transaction(None, include_args=False)
    assert _screen_transaction(transaction, include_args=False) is transaction
    crumb = _screen_breadcrumb(None)
    assert _screen_breadcrumb(crumb) is crumb
    log = _screen_log(None)
    assert _screen_log(log) is log


def test_only_before_send_drops_duplicates_a_transaction_carrying_one_goes_on() -> None:
    event = error_event()
    event["exception"]["values"][0]["mechanism"]["type"] = "celery"
    assert _screen(None, include_args=True)(dict(event), {}) is None
    assert _screen_transaction(None, include_args=True)(dict(event), {}) == event


REDO_PARAMS = ["dead-letter proj.task[1] to dlq", "ConnectionError()",
               '{"message": {"args": ["s3cret"]}}']
REDO_LINE = REDO_FORMAT % tuple(REDO_PARAMS)


def test_the_event_screen_removes_redo_breadcrumbs_recorded_before_it_was_installed() -> None:
    crumbs = [{"category": "celery_policies", "message": REDO_LINE},
              {"category": REDO_LOGGER, "message": "anything"},
              {"category": "proj", "message": "kept"}]
    event = _screen(None, include_args=False)(error_event(breadcrumbs={"values": crumbs}), {})
    assert [crumb["message"] for crumb in event["breadcrumbs"]["values"]] == ["kept"]


def test_a_transaction_loses_celery_integrations_arguments_after_the_applications_hook(
        ) -> None:
    seen = []

    def before(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        seen.append(event["extra"]["celery-job"]["args"])
        return event

    job = {"task_name": "proj.task", "args": ["s3cret"], "kwargs": {"k": "s3cret"}}
    event = _screen_transaction(before, include_args=False)(
        {"type": "transaction", "extra": {"celery-job": job}}, {})
    assert "s3cret" not in repr(event)
    assert seen == [["s3cret"]]  # the application's hook ran, first


def test_with_include_args_a_transaction_keeps_its_arguments() -> None:
    job = {"task_name": "proj.task", "args": ["s3cret"]}
    event = _screen_transaction(None, include_args=True)({"extra": {"celery-job": job}}, {})
    assert event["extra"]["celery-job"]["args"] == ["s3cret"]


def test_the_applications_transaction_hook_still_decides() -> None:
    screen = _screen_transaction(lambda event, hint: None, include_args=False)
    assert screen({"extra": {}}, {}) is None


@pytest.mark.parametrize("crumb", [
    {"category": "celery_policies", "message": REDO_LINE},
    {"category": REDO_LOGGER, "message": "could not ..."},
    {"category": "celery.app.trace", "message": "Task raised unexpected"},
])
def test_breadcrumbs_of_redo_lines_and_ignored_loggers_are_dropped_before_the_app_sees_them(
        crumb: dict[str, Any]) -> None:
    seen: list[dict[str, Any]] = []
    screen = _screen_breadcrumb(lambda crumb, hint: seen.append(crumb) or crumb)
    assert screen(crumb, {}) is None
    assert seen == []


def test_breadcrumbs_recorded_while_failure_routes_publish_are_dropped() -> None:
    """sentry-sdk 2.0's Redis integration quotes the LPUSH of a dead letter in a breadcrumb."""
    crumb = {"category": "redis", "message": "LPUSH 'dlq' '{\"body\": ...}'"}
    with publishing_routes():
        assert _screen_breadcrumb(None)(dict(crumb), {}) is None
    assert _screen_breadcrumb(None)(dict(crumb), {}) == crumb


def test_other_breadcrumbs_go_through_the_applications_hook() -> None:
    screen = _screen_breadcrumb(lambda crumb, hint: {**crumb, "seen": True})
    assert screen({"category": "proj", "message": "hello"}, {}) == {
        "category": "proj", "message": "hello", "seen": True}


@pytest.mark.parametrize("attributes", [
    {"logger.name": REDO_LOGGER},
    {"logger.name": "celery_policies", "sentry.message.template": REDO_FORMAT},
    {"logger.name": {"value": "celery.worker.strategy", "type": "string"}},
])
def test_sentry_logs_of_redo_lines_and_ignored_loggers_are_dropped(
        attributes: dict[str, Any]) -> None:
    assert _screen_log(None)({"body": REDO_LINE, "attributes": attributes}, {}) is None


def test_other_sentry_logs_go_through_the_applications_hook() -> None:
    screen = _screen_log(lambda log, hint: None)  # the application drops it
    assert screen({"body": "hello", "attributes": {"logger.name": "proj"}}, {}) is None
    kept = {"body": "hello", "attributes": {"logger.name": "proj"}}
    assert _screen_log(None)(dict(kept), {}) == kept


def options_of(**values: Any) -> dict[str, Any]:
    return {"before_send": None, "before_send_transaction": None, "before_breadcrumb": None,
            EXPERIMENTS: {}, **values}


def test_every_hook_is_screened_and_the_applications_own_still_run() -> None:
    calls: list[str] = []

    def hook(name: str) -> Any:
        return lambda item, hint: calls.append(name) or item

    options = options_of(before_send=hook("event"),
                         before_send_transaction=hook("transaction"),
                         before_breadcrumb=hook("breadcrumb"), before_send_log=hook("log"))
    _install_screens(options, include_args=False)
    options["before_send"](error_event(), {})
    options["before_send_transaction"]({"extra": {}}, {})
    options["before_breadcrumb"]({"category": "proj"}, {})
    options["before_send_log"]({"body": "x", "attributes": {}}, {})
    assert calls == ["event", "transaction", "breadcrumb", "log"]
    assert options["before_breadcrumb"]({"category": REDO_LOGGER}, {}) is None


def test_an_sdk_with_sentry_logs_only_as_an_experiment_gets_its_log_screen_there() -> None:
    """sentry-sdk before ``before_send_log`` was an option kept it in ``_experiments``."""
    seen: list[str] = []
    options = options_of(**{EXPERIMENTS: {"enable_logs": True,
                                          "before_send_log": lambda log, hint: seen.append(
                                              "app") or log}})
    _install_screens(options, include_args=False)
    assert "before_send_log" not in options
    screen = options[EXPERIMENTS]["before_send_log"]
    assert screen({"body": "x", "attributes": {"logger.name": REDO_LOGGER}}, {}) is None
    assert screen({"body": "x", "attributes": {}}, {}) is not None
    assert seen == ["app"]


def test_an_experimental_log_hook_is_chained_when_the_option_exists_too() -> None:
    seen: list[str] = []
    options = options_of(before_send_log=None, **{EXPERIMENTS: {
        "before_send_log": lambda log, hint: seen.append("app") or log}})
    _install_screens(options, include_args=False)
    options["before_send_log"]({"body": "x", "attributes": {}}, {})
    assert seen == ["app"]


def test_installing_the_screens_twice_wraps_each_hook_once() -> None:
    options = options_of(before_send_log=None)
    _install_screens(options, include_args=False)
    first = {name: options[name] for name in SCREENED_HOOKS}
    _install_screens(options, include_args=False)
    assert all(options[name] is hook for name, hook in first.items())


@pytest.mark.parametrize(("data_collection", "collected"), [
    (None, True),  # a sentry-sdk without the option
    ({"provided_by_user": False, "queues": False}, True),  # derived from send_default_pii
    ({"provided_by_user": True, "queues": True}, True),
    ({"provided_by_user": True, "queues": False}, False),
])
def test_the_applications_data_collection_decides_whether_arguments_are_collected(
        data_collection: dict[str, Any] | None, collected: bool) -> None:
    assert _queues_collected({"data_collection": data_collection}) is collected


def test_a_running_tasks_long_string_arguments_are_searched_in_every_form() -> None:
    values = _searched_values((["s3cret-value", "short", 12345678], {"k": {"n": ['q"uote-x']}}))
    assert "short" not in values
    assert {"s3cret-value", 'q"uote-x', 'q\\"uote-x'} <= set(values)
    assert all(len(value) >= MIN_SEARCHED_LENGTH for value in values)


def test_a_running_tasks_arguments_are_removed_from_any_text_of_any_item() -> None:
    token = _searched.set(_searched_values((["s3cret-value"], {})))
    try:
        span = {"description": "RPUSH 'key' '[\"s3cret-value\"]'"}
        event = _screen(None, include_args=False)(error_event(spans=[span]), {})
        crumb = _screen_breadcrumb(None)({"category": "proj", "message": "got s3cret-value"},
                                         {})
        log = _screen_log(None)({"body": "got s3cret-value", "attributes": {}}, {})
    finally:
        _searched.reset(token)
    assert "s3cret-value" not in repr((event, crumb, log))
    assert crumb["message"] == f"got {NOT_SENT}"


def test_each_earlier_retry_becomes_a_breadcrumb() -> None:
    history = [{"retry": 1, "delay": 0.2, "exception": "proj.Flaky", "message": "down",
                "at": 1_700_000_000.5},
               {"retry": 2, "delay": 0.4, "exception": "proj.Flaky", "message": None,
                "at": 1_700_000_001.0}]
    crumbs = _breadcrumbs(history)
    assert [crumb["message"] for crumb in crumbs] == [
        "retry 1 in 0.2s after proj.Flaky: down", "retry 2 in 0.4s after proj.Flaky"]
    assert crumbs[0]["timestamp"] == datetime.fromtimestamp(1_700_000_000.5, timezone.utc)
    assert {crumb["category"] for crumb in crumbs} == {"celery.retry"}


@pytest.mark.parametrize(("version", "supported"), [
    ("2.0.0", True), ("2.75.1", True), ("3.0.0", False), ("3.0.0a1", False), ("10.1", False),
    ("1.45.0", False), ("dev", False),
])
def test_only_sentry_sdk_2_is_supported(version: str, supported: bool) -> None:
    assert _supported(version) is supported


def test_an_unsupported_sentry_sdk_is_refused_with_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """sentry-sdk 3 rejects the options the reporter sets up its client with, and its hooks
    differ: the worker says so at ERROR and connects nothing rather than report partly."""
    monkeypatch.setattr(sentry_sdk, "VERSION", "3.0.0")
    app = Celery("unsupported", set_as_current=False)
    reporter = SentryReporter(app, SentryConfig(dsn="http://key@127.0.0.1:9/1"),
                              Runtime(app, None))
    receivers = len(signals.task_failure.receivers)
    level, message = reporter.start()
    assert level == logging.ERROR
    assert "sentry-sdk 3.0.0 is not supported" in message
    assert "pip install 'sentry-sdk>=2.0,<3'" in message
    assert len(signals.task_failure.receivers) == receivers
    assert not sentry_sdk.get_client().is_active()
