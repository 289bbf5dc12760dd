"""Reporting task failures to Sentry: one event per final failure, with the policy's context.

Where a failure is reported depends on where Celery learns of it:

* An exception raised by the task ends in the process that ran it (a prefork pool child):
  Celery's tracer sends ``task_failure`` there, inside its ``except``, so the event has the
  real stack and, with sentry_sdk's CeleryIntegration, the task's own scope and breadcrumbs.
* A hard time limit, a lost worker process and exhausted ``max_redeliveries`` never reach a
  child: the worker's main process reports them from the task's request class, after the
  failure routes (``worker/routes.py``), so ``dead_lettered`` says what really happened.

The Celery and sentry-python traps this module exists for:

* sentry_sdk initialised in ``worker_process_init`` sends nothing from prefork children
  (sentry-python#1512): the plugin initialises it in ``worker_init``, before the pool forks.
* CeleryIntegration captures each failing run itself, and where its wrapper sits relative to
  a retry wrapper decides whether it sees every attempt. Its events (mechanism ``celery``) are
  dropped and this module's replace them: one event with or without it.
* Celery logs every failure at ERROR; through sentry_sdk's logging integration those lines
  arrive as context-free duplicates, and Celery's trace and strategy log records carry the
  task's arguments in their ``extra``. Those loggers are ignored, those lines dropped.
* sentry_sdk sends stack-frame locals by default (sentry-python#7582), and a task's arguments
  are locals of its frames: unless ``include_args``, every frame's ``vars`` are removed.
* Arguments travel by more than events: CeleryIntegration's ``celery-job`` extra rides on
  transactions too, log lines become breadcrumbs and Sentry Logs, and other integrations quote
  them in spans. Every hook sentry_sdk offers for those is screened, around the application's.
* ``Reject(requeue=False)`` ends a task for good, but only Celery 5.7 sends ``task_failure``
  for it, from the main process without the task's request (celery#4222): it is reported,
  once, with the failure routes.
* A prefork child inherits the main process's transport: its queue, locks and sockets, maybe
  mid-use by a thread the child does not have (sentry-python#6164). A child forked after the
  main process had reported an event held its own first event until a second one came; each
  child gets a transport of its own.
* A child's buffered events die with it (sentry-python#285): children flush when they exit,
  the main process at worker shutdown, each for at most ``flush_timeout``.

sentry_sdk is imported only when a file has a ``sentry:`` section. Nothing here may stop or
slow a task: every hook catches its own errors, and an event over budget costs a counter.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timezone
from functools import wraps
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol

from celery import Celery, signals
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from ..compat import running_task
from ..deadletters.failure import failure_message, origin_queue
from ..guard import guard
from ..headers import GAVE_UP_ATTR, RETRY_HISTORY_HEADER
from ..logs import EXHAUSTED_FORMAT, GIVE_UP_LOGGER, REDO_FORMAT, REDO_LOGGER, REDO_MARK
from ..redelivery import RedeliveriesExhausted
from ..spec.durations import seconds_until
from ..spec.exception_refs import exception_name
from .budget import EventBudget
from .screening import in_publishing_routes

if TYPE_CHECKING:
    from ..spec.model import SentryConfig

log = logging.getLogger("celery_policies")

#: The ``mechanism`` of the plugin's events; CeleryIntegration's is ``celery``.
MECHANISM = "celery_policies"
#: The name of the event context holding the task's effective policy.
CONTEXT = "celery_policies"
#: Retries kept in that header (the most recent), and the length kept of each message.
HISTORY_LIMIT = 20
HISTORY_MESSAGE_LIMIT = 200
#: Failures reported from the worker's main process. The first five reach no pool child.
#: ``Reject(requeue=False)`` does, but sends ``task_failure`` only from the main process and
#: only from Celery 5.7 (celery#4222, compat.REJECT_SENDS_FAILURE), without the task's
#: request: reported with the failure routes, where the request is, on every release.
MAIN_PROCESS_FAILURES = (TimeLimitExceeded, WorkerLostError, RedeliveriesExhausted,
                         SystemExit, KeyboardInterrupt, Reject)

#: Loggers whose records repeat a failure this module reports, or carry task arguments in
#: their ``extra`` (celery/app/trace.py ``_log_error``, celery/worker/strategy.py "received").
#: Sentry's logging integration skips them: no event, no breadcrumb, no Sentry log. Besides
#: privacy this is speed: each failing task writes two of these lines, and each would cost a
#: breadcrumb and a Sentry Logs handler call in the pool process.
IGNORED_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.worker.job",
                   GIVE_UP_LOGGER, REDO_LOGGER)
#: What replaces an argument value the screens remove.
NOT_SENT = "[not sent: include_args is false]"
#: Shortest string argument (characters) the screens also look for inside any text a pool
#: process sends while it runs the task (a span of another integration, a log line, an
#: exception message built from it). Shorter ones ("eu", "42") would blank unrelated text.
MIN_SEARCHED_LENGTH = 8
#: Most string arguments of one task searched for that way (the first found, depth first).
MAX_SEARCHED_VALUES = 64
#: sentry_sdk's hooks the plugin screens through, each wrapped around the application's own:
#: ``before_send`` (errors and log events), ``before_send_transaction`` (tracing, whose
#: events carry CeleryIntegration's ``celery-job`` extra too) and ``before_breadcrumb``
#: exist in every sentry-sdk 2.x; ``before_send_log`` (Sentry Logs) is an option since Sentry
#: Logs left ``_experiments``, and an experiment before that.
SCREENED_HOOKS = ("before_send", "before_send_transaction", "before_breadcrumb",
                  "before_send_log")
#: Where sentry-sdk kept experimental options (``enable_logs``, ``before_send_log``).
EXPERIMENTS = "_experiments"
#: Log lines (logger, format) that repeat a main-process failure this module reports.
DUPLICATE_LOG_LINES = frozenset({
    ("celery.worker.request", "Hard time limit (%ss) exceeded for %s[%s]"),
    ("celery.worker.request", "Task handler raised error: %r"),
    ("multiprocessing", "Process %r pid:%r exited with %r"),
    ("celery_policies", EXHAUSTED_FORMAT),
})


class PolicyView(Protocol):
    """What the reporter asks the runtime about a task."""

    def label(self, name: str) -> str | None: ...

    def retries_allowed(self, name: str, exc_type: type[BaseException]) -> int | None: ...

    def routes_taken(self, name: str,
                     exc_type: type[BaseException]) -> list[tuple[str, str]]: ...

    def effective(self, name: str) -> dict[str, Any]: ...


class SentryReporter:
    """Reports one worker's task failures (and, if asked, retries) to Sentry."""

    def __init__(self, app: Celery, config: SentryConfig, view: PolicyView) -> None:
        self.app = app
        self.config = config
        self.view = view
        # The model's types allow None for "not set"; its validators never leave one here.
        self.include_args = bool(config.include_args)
        self.flush_timeout = float(config.flush_timeout or 0.0)
        self.budget = EventBudget(int(config.max_events_per_minute or 1))
        self.owns_client = False
        self._main_pid = os.getpid()

    # -- set-up, in the worker's main process before the pool forks --------------------------
    def start(self) -> tuple[int, str]:
        """Initialise sentry_sdk or adopt the application's client; connect the hooks.
        Returns what to log (level, message): a broken Sentry set-up never stops a worker."""
        try:
            import sentry_sdk
        except ImportError:
            return logging.ERROR, ("celery-policies: the file has a sentry: section but "
                                   "sentry_sdk is not installed (pip install "
                                   "'celery-policies[sentry]'); nothing is reported to Sentry")
        config = self.config
        if not _supported(sentry_sdk.VERSION):
            return logging.ERROR, (f"celery-policies: sentry-sdk {sentry_sdk.VERSION} is not "
                                   f"supported (this release supports {SUPPORTED_SDK}: pip "
                                   f"install 'sentry-sdk{SUPPORTED_SDK}'); nothing is reported "
                                   "to Sentry by the plugin")
        if sentry_sdk.get_client().is_active():
            how = "the application's Sentry client (the file's dsn, environment and " \
                  "release are not used)"
        elif config.dsn:
            try:
                # Only sentry_sdk's default integrations (logging, excepthook...): the
                # auto-enabled ones (Celery, Redis, ...) instrument every task run and every
                # command for tracing this client does not do, and CeleryIntegration builds an
                # event for every failure that this module then drops.
                sentry_sdk.init(dsn=config.dsn, environment=config.environment,
                                release=config.release,
                                include_local_variables=self.include_args,
                                shutdown_timeout=self.flush_timeout,
                                auto_enabling_integrations=False)
            except Exception as exc:
                return logging.ERROR, (f"celery-policies: could not set up Sentry ({exc!r}); "
                                       "nothing is reported to Sentry")
            self.owns_client = True
            how = "a Sentry client set up from the policy file"
        else:
            return logging.WARNING, ("celery-policies: the sentry: section has no dsn and the "
                                     "application has not initialised sentry_sdk; nothing is "
                                     "reported to Sentry")
        from sentry_sdk.integrations import logging as sentry_logging

        # Since sentry-python PR 5698 ignore_logger no longer covers Sentry Logs, which have
        # an ignore list of their own; before it, the one call covered both.
        ignore_for_logs = getattr(sentry_logging, "ignore_logger_for_sentry_logs", None)
        for name in IGNORED_LOGGERS:
            sentry_logging.ignore_logger(name)
            if ignore_for_logs is not None:
                ignore_for_logs(name)
        options = sentry_sdk.get_client().options
        # The application's data_collection, where sentry-sdk has it, decides over include_args
        # whether the plugin may send arguments (its "queues" category: CeleryIntegration's
        # arguments); include_args: false is never widened by it.
        self.include_args = self.include_args and _queues_collected(options)
        _install_screens(options, self.include_args)
        self._connect(celery_integration=sentry_sdk.get_client().get_integration("celery")
                      is not None)
        return logging.INFO, (f"celery-policies: reporting failures to Sentry through {how}; "
                              f"retries: {config.report_retries}; arguments "
                              f"{'included' if self.include_args else 'never sent'}")

    def _connect(self, *, celery_integration: bool) -> None:
        uid = f"celery_policies.sentry.reporter:{id(self.app)}"
        hooks: list[tuple[Any, Callable[..., None]]] = [
            (signals.worker_process_init, self.on_process_init),
            (signals.task_failure, self.on_task_failure),
            (signals.worker_shutdown, self.on_worker_shutdown),
        ]
        if not celery_integration:
            # CeleryIntegration gives each task a scope of its own, and flushes each pool
            # process as it exits (a second flush would wait twice on an endpoint that does
            # not answer). Without it, the plugin does both.
            hooks.append((signals.worker_process_shutdown, self.on_process_shutdown))
        self._clear_breadcrumbs = not celery_integration
        if self._clear_breadcrumbs or not self.include_args:
            hooks.append((signals.task_prerun, self.on_task_prerun))
        if self.config.report_retries == "event":
            hooks.append((signals.task_retry, self.on_task_retry))
        elif self.config.report_retries == "breadcrumb":
            hooks.append((signals.before_task_publish, self.on_before_publish))
        for signal, receiver in hooks:
            signal.connect(receiver, weak=False, dispatch_uid=uid)

    # -- in the process that runs the task ---------------------------------------------------
    def on_process_init(self, **_: Any) -> None:
        """A new pool child: replace the transport it inherited with one of its own."""
        with _guard("give a pool process its own Sentry transport"):
            import sentry_sdk
            from sentry_sdk.transport import make_transport

            client = sentry_sdk.get_client()
            if client.is_active() and getattr(client, "transport", None) is not None:
                client.transport = make_transport(client.options)

    def on_task_prerun(self, args: Any = None, kwargs: Any = None, **_: Any) -> None:
        """A task starts: unless ``include_args``, its string arguments become what the
        screens search for in what this process sends until the next task starts (a task's
        transaction is sent after it ends). Without CeleryIntegration a pool child's scope
        outlives its tasks: start each task with no breadcrumbs, so an event shows only its
        own."""
        with _guard("start a task's Sentry scope"):
            if not self.include_args:
                _searched.set(_searched_values((args, kwargs)))
            if self._clear_breadcrumbs:
                import sentry_sdk

                # Scope.get_isolation_scope: sentry-sdk 2.0 has no module-level function
                sentry_sdk.Scope.get_isolation_scope().clear_breadcrumbs()

    def on_task_failure(self, sender: Any = None, exception: BaseException | None = None,
                        traceback: Any = None, **_: Any) -> None:
        """A task's exception, in the process that ran it (Celery 5.7 also sends this signal
        from the main process, for the failures ``report_main`` reports)."""
        if exception is None or isinstance(exception, MAIN_PROCESS_FAILURES):
            return
        if isinstance(exception, getattr(sender, "throws", ())):
            return  # "expected errors": Celery logs them at INFO, without a traceback
        with _guard(f"report the failure of {getattr(sender, 'name', sender)} to Sentry"):
            fingerprint = _fingerprint(sender.name, exception)
            held = self.budget.admit(fingerprint, time.time())
            if held is None:
                return
            request = sender.request
            if getattr(exception, GAVE_UP_ATTR, None) == "deadline":
                reason = "deadline"
            elif isinstance(exception, SoftTimeLimitExceeded):
                reason = "time_limit"
            else:
                reason = "exception"
            routes = self.view.routes_taken(sender.name, type(exception))
            dead_lettered = _queues(routes)
            self._capture(sender.name, request.id, _facts(self.app, request), exception,
                          (type(exception), exception, traceback), reason, dead_lettered,
                          fingerprint=fingerprint, held=held)

    def on_task_retry(self, sender: Any = None, request: Any = None, reason: Any = None,
                      **_: Any) -> None:
        """``report_retries: event``: a warning-level event per retry."""
        exc = getattr(reason, "exc", None)
        if sender is None or request is None or not isinstance(exc, BaseException):
            return
        with _guard(f"report a retry of {sender.name} to Sentry"):
            fingerprint = [*_fingerprint(sender.name, exc), "retry"]
            held = self.budget.admit(fingerprint, time.time())
            if held is None:
                return
            retry = int(request.retries or 0) + 1
            when = getattr(reason, "when", None)
            delay = seconds_until(when)
            self._capture(sender.name, request.id, _facts(self.app, request), exc,
                          (type(exc), exc, exc.__traceback__), None, None,
                          fingerprint=fingerprint, held=held, retry=(retry, delay))

    def on_before_publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        """``report_retries: breadcrumb``: a retry's message carries the retries so far, so
        that the final failure, wherever it happens, shows each one."""
        if not headers:
            return
        with _guard("record a retry for Sentry"):
            task = running_task()
            if task is None or task.request.id != headers.get("id"):
                return
            retry = int(headers.get("retries") or 0)
            if retry != int(task.request.retries or 0) + 1:
                return
            exc = sys.exc_info()[1]
            delay = seconds_until(headers.get("eta")) or 0.0
            entry = {"retry": retry, "delay": round(delay, 2),
                     "exception": exception_name(type(exc)) if exc else None,
                     "message": str(exc)[:HISTORY_MESSAGE_LIMIT] if exc else None,
                     "at": round(time.time(), 3)}
            history = _history(vars(task.request))[-(HISTORY_LIMIT - 1):]
            headers[RETRY_HISTORY_HEADER] = [*history, entry]

    # -- in the worker's main process -------------------------------------------------------
    def report_main(self, request: Any, exc: BaseException, reason: str, routed: bool) -> None:
        """A final failure the worker's main process handled: time limit, lost process,
        exhausted redeliveries, a message rejected for good. ``routed``: whether every
        failure route was taken."""
        if not isinstance(exc, MAIN_PROCESS_FAILURES):
            return
        with _guard(f"report the failure of {request.name}[{request.id}] to Sentry"):
            fingerprint = _fingerprint(request.name, exc)
            held = self.budget.admit(fingerprint, time.time())
            if held is None:
                return
            if isinstance(exc, RedeliveriesExhausted):
                reason = "redeliveries"
            routes = self.view.routes_taken(request.name, type(exc))
            dead_lettered = _queues(routes) if routed else "failed"
            facts = _facts_of_message(request)
            self._capture(request.name, request.id, facts, exc, (type(exc), exc, None),
                          reason, dead_lettered, fingerprint=fingerprint, held=held, main=True)

    def on_process_shutdown(self, **_: Any) -> None:
        self._flush()

    def on_worker_shutdown(self, **_: Any) -> None:
        with _guard("count the Sentry events held back"):
            held = self.budget.held_back()
            if held:
                log.warning("celery-policies: %d Sentry event(s) over max_events_per_minute "
                            "were counted and not sent since the last event of their kind",
                            held)
        self._flush()

    def _flush(self) -> None:
        with _guard("flush Sentry events"):
            import sentry_sdk

            client = sentry_sdk.get_client()
            if self.owns_client and os.getpid() == self._main_pid:
                client.close(timeout=self.flush_timeout)
            else:
                client.flush(timeout=self.flush_timeout)

    # -- the event --------------------------------------------------------------------------
    def _capture(self, name: str, task_id: str, facts: dict[str, Any], exc: BaseException,
                 exc_info: tuple[type[BaseException], BaseException, Any],
                 reason: str | None, dead_lettered: str | None, *, fingerprint: list[str],
                 held: int, retry: tuple[int, float | None] | None = None,
                 main: bool = False) -> None:
        """Build and send one event (its fingerprint already admitted by the budget, with
        ``held`` events of it held back since the last one sent)."""
        import sentry_sdk
        from sentry_sdk.utils import event_from_exception

        client = sentry_sdk.get_client()
        event, hint = event_from_exception(exc_info, client_options=client.options,
                                           mechanism={"type": MECHANISM, "handled": False})
        if main:  # no stack: say what happened ("hard time limit (1.0s) exceeded")
            event["exception"]["values"][-1]["value"] = failure_message(exc)
        allowed = self.view.retries_allowed(name, type(exc))
        tags = {"celery.task": name, "celery.task_id": task_id,
                "celery.queue": facts.get("queue") or "unknown",
                "policy": self.view.label(name) or "none",
                "retries": f"{facts['retries']}/{'unlimited' if allowed is None else allowed}"}
        context: dict[str, Any] = {"task_id": task_id, "hostname": facts.get("hostname"),
                                   "policy": self.view.effective(name)}
        if retry is None:
            event["level"] = "error"
            tags.update(failure_reason=str(reason), dead_lettered=dead_lettered or "none")
            context["failure_reason"] = reason
        else:
            event["level"] = "warning"
            tags["retry"] = str(retry[0])
            context["retry"] = {"number": retry[0], "delay": retry[1]}
        if held:
            context["suppressed"] = {"events": held, "window_seconds": 60,
                                     "note": "events of this fingerprint counted and not sent "
                                             "(max_events_per_minute) since the last one"}
        if self.include_args:
            context["arguments"] = {"args": facts.get("args"), "kwargs": facts.get("kwargs")}
        event["tags"] = tags
        event["contexts"] = {CONTEXT: context}
        event["fingerprint"] = fingerprint
        crumbs = _breadcrumbs(facts.get("history") or [])
        if crumbs:
            event["breadcrumbs"] = {"values": crumbs}
        if main:
            # The main process's scope holds breadcrumbs of every task it has handled. Both
            # scopes: sentry-sdk 2.0 records a span's breadcrumb on the current scope.
            with sentry_sdk.isolation_scope() as scope:
                scope.clear_breadcrumbs()
                sentry_sdk.Scope.get_current_scope().clear_breadcrumbs()
                sent = sentry_sdk.capture_event(event, hint=hint)
        else:
            sent = sentry_sdk.capture_event(event, hint=hint)
        # capture_event gives no id when a before_send hook or sentry_sdk discarded the event
        self.budget.count("sent" if sent else "dropped")


def _fingerprint(name: str, exc: BaseException) -> list[str]:
    """One Sentry issue per task and exception type, however many runs hit it."""
    return [name, exception_name(type(exc))]


def _facts(app: Celery, request: Any) -> dict[str, Any]:
    """What an event says about a run, from the task's request context (in the child)."""
    return {"retries": int(request.retries or 0), "hostname": request.hostname,
            "queue": origin_queue(app, request.delivery_info or {}),
            "history": _history(vars(request)), "args": request.args,
            "kwargs": request.kwargs}


def _facts_of_message(request: Any) -> dict[str, Any]:
    """The same, from a worker request (in the main process)."""
    headers = request.request_dict
    return {"retries": int(headers.get("retries") or 0), "hostname": request.hostname,
            "queue": origin_queue(request.task.app, request.delivery_info or {}),
            "history": _history(headers), "args": request.args, "kwargs": request.kwargs}


def _history(headers: dict[str, Any]) -> list[dict[str, Any]]:
    value = headers.get(RETRY_HISTORY_HEADER)
    if value is None:
        value = (headers.get("headers") or {}).get(RETRY_HISTORY_HEADER)
    return [entry for entry in value or () if isinstance(entry, dict)]


def _breadcrumbs(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    crumbs = []
    for entry in history:
        delay = entry.get("delay")
        exc = entry.get("exception") or "an exception"
        text = f"retry {entry.get('retry')} in {delay}s after {exc}"
        if entry.get("message"):
            text += f": {entry['message']}"
        crumbs.append({"type": "default", "category": "celery.retry", "level": "warning",
                       "message": text,
                       "timestamp": datetime.fromtimestamp(float(entry.get("at") or 0),
                                                           timezone.utc),
                       "data": {"retry": entry.get("retry"), "delay": delay,
                                "exception": entry.get("exception")}})
    return crumbs


def _queues(routes: list[tuple[str, str]]) -> str:
    queues = [target for kind, target in routes if kind == "dead_letter"]
    return ",".join(queues) or "none"


def _install_screens(options: dict[str, Any], include_args: bool) -> None:
    """Wrap each of sentry_sdk's hooks (``SCREENED_HOOKS``) that the installed sentry-sdk has
    around the application's own. The client reads its hooks from ``options`` whenever it
    sends, so replacing them here covers every item sent after this."""
    options["before_send"] = _screen(options.get("before_send"), include_args)
    options["before_send_transaction"] = _screen_transaction(
        options.get("before_send_transaction"), include_args)
    options["before_breadcrumb"] = _screen_breadcrumb(options.get("before_breadcrumb"))
    # Sentry Logs: sentry_sdk reads ``before_send_log`` first, then the experiment's
    # (sentry_sdk/utils.py get_before_send_log); older releases only the experiment's.
    experiments = options.get(EXPERIMENTS)
    if "before_send_log" in options:
        app_hook = options.get("before_send_log") or (experiments or {}).get("before_send_log")
        options["before_send_log"] = _screen_log(app_hook)
    elif isinstance(experiments, dict):
        experiments["before_send_log"] = _screen_log(experiments.get("before_send_log"))


SUPPORTED_SDK = ">=2.0,<3"


def _supported(version: str) -> bool:
    """Whether the reporter was built for this sentry-sdk release (2.x: 3.0 rejects
    ``include_local_variables`` and changed the scopes and hooks it uses)."""
    major = version.split(".", 1)[0]
    return major.isdigit() and int(major) == 2


def _queues_collected(options: dict[str, Any]) -> bool:
    """Whether the application's ``data_collection`` (sentry-sdk with that option, which
    resolves it into ``options`` at init, ``provided_by_user`` when the application gave it)
    lets task arguments be collected; True where it is absent or was not given."""
    data_collection = options.get("data_collection")
    if not isinstance(data_collection, dict) or not data_collection.get("provided_by_user"):
        return True
    return bool(data_collection.get("queues", True))


#: A sentry_sdk hook as the client calls it: (event, breadcrumb or log record; hint).
_Hook = Callable[[dict[str, Any], dict[str, Any]], Any]
_P = ParamSpec("_P")
#: The attribute that marks a hook as one of the plugin's screens.
_SCREEN_MARK = "_celery_policies"


def _once(make: Callable[Concatenate[Callable[..., Any] | None, _P], _Hook],
          ) -> Callable[Concatenate[Callable[..., Any] | None, _P], _Hook]:
    """``make(before, ...)``, which wraps the application's hook ``before`` in a screen, made
    idempotent: each screen it makes is marked, and a marked ``before`` comes back as it is,
    so that screening the same options twice wraps each hook once."""

    @wraps(make)
    def make_once(before: Callable[..., Any] | None, /,
                  *args: _P.args, **kwargs: _P.kwargs) -> _Hook:
        if getattr(before, _SCREEN_MARK, False):
            return before  # type: ignore[return-value]
        screen = make(before, *args, **kwargs)
        setattr(screen, _SCREEN_MARK, True)
        return screen

    return make_once


def _screen(before_send: Callable[..., Any] | None, include_args: bool) -> _Hook:
    """A ``before_send`` that drops duplicates and, unless ``include_args``, argument values,
    after the application's own ``before_send`` (which may add data of its own)."""
    return _screen_events(before_send, include_args, drop_duplicates=True)


def _screen_transaction(before: Callable[..., Any] | None, include_args: bool) -> _Hook:
    """A ``before_send_transaction``: CeleryIntegration puts its ``celery-job`` extra, with the
    task's arguments under ``send_default_pii``, on each task's transaction too."""
    return _screen_events(before, include_args, drop_duplicates=False)


@_once
def _screen_events(before: Callable[..., Any] | None, include_args: bool,
                   drop_duplicates: bool) -> _Hook:
    def screen(event: dict[str, Any], hint: dict[str, Any]) -> Any:
        if drop_duplicates and _is_duplicate(event):
            return None
        _strip_redo_breadcrumbs(event)
        if before is not None:
            event = before(event, hint)
            if event is None:
                return None
        if not include_args:
            _strip_arguments(event)
            _scrub_running(event)
        return event

    return screen


def _searched_values(arguments: Any) -> tuple[str, ...]:
    """The string leaves of a task's arguments worth searching for, each also as JSON and
    ``repr`` escape it (a span or a log line quotes it that way), longest first."""
    found: list[str] = []

    def walk(value: Any, depth: int) -> None:
        if len(found) >= MAX_SEARCHED_VALUES or depth > 8:
            return
        if isinstance(value, str):
            if len(value) >= MIN_SEARCHED_LENGTH:
                found.append(value)
        elif isinstance(value, dict):
            for inner in value.values():
                walk(inner, depth + 1)
        elif isinstance(value, list | tuple | set | frozenset):
            for inner in value:
                walk(inner, depth + 1)

    walk(arguments, 0)
    forms = {form for value in found
             for form in (value, json.dumps(value)[1:-1], repr(value)[1:-1])}
    return tuple(sorted(forms, key=len, reverse=True))


def _scrub(item: Any, values: tuple[str, ...]) -> Any:
    """``item`` with every occurrence of ``values`` in its strings replaced (in place for
    dicts and lists, which sentry_sdk's hooks may modify)."""
    if isinstance(item, str):
        for value in values:
            if value in item:
                item = item.replace(value, NOT_SENT)
        return item
    if isinstance(item, dict):
        for key, inner in item.items():
            item[key] = _scrub(inner, values)
    elif isinstance(item, list):
        item[:] = [_scrub(inner, values) for inner in item]
    elif isinstance(item, tuple):
        return tuple(_scrub(inner, values) for inner in item)
    return item


def _scrub_running(item: Any) -> Any:
    values = _searched.get()
    return _scrub(item, values) if values else item


#: The searched-for string arguments of the task this process (thread, greenlet) runs.
_searched: ContextVar[tuple[str, ...]] = ContextVar("celery_policies_searched", default=())


@_once
def _screen_breadcrumb(before: Callable[..., Any] | None) -> _Hook:
    """A ``before_breadcrumb`` that drops the lines of ``IGNORED_LOGGERS`` (the message of a
    route not taken, Celery's lines with arguments), before the application's hook sees them.
    sentry_sdk's logging integration already ignores those loggers; this also covers a
    breadcrumb recorded some other way, or a logger the application un-ignored. It also drops
    every breadcrumb recorded while failure routes publish (``screening.py``)."""

    def screen(crumb: dict[str, Any], hint: dict[str, Any]) -> Any:
        if _is_screened_crumb(crumb) or in_publishing_routes():
            return None
        return _scrub_running(crumb if before is None else before(crumb, hint))

    return screen


@_once
def _screen_log(before: Callable[..., Any] | None) -> _Hook:
    """A ``before_send_log`` (Sentry Logs) that drops the records of ``IGNORED_LOGGERS``
    and any record of the "to redo it by hand" line, before the application's hook."""

    def screen(record: dict[str, Any], hint: dict[str, Any]) -> Any:
        attributes = record.get("attributes") or {}
        if (_attribute(attributes, "logger.name") in IGNORED_LOGGERS
                or _attribute(attributes, "sentry.message.template") == REDO_FORMAT):
            return None
        return _scrub_running(record if before is None else before(record, hint))

    return screen


def _attribute(attributes: dict[str, Any], name: str) -> Any:
    """A Sentry Log attribute: its value, plain or ``{"value": ..., "type": ...}``."""
    value = attributes.get(name)
    return value.get("value") if isinstance(value, dict) else value


def _is_screened_crumb(crumb: dict[str, Any]) -> bool:
    if crumb.get("category") in IGNORED_LOGGERS:
        return True
    message = crumb.get("message")
    # the logging integration gives a crumb the formatted line, not its template
    return isinstance(message, str) and REDO_MARK in message


def _strip_redo_breadcrumbs(event: dict[str, Any]) -> None:
    """Breadcrumbs recorded before the screens were installed, or by a scope that did not
    consult ``before_breadcrumb``, are screened once more on the event that carries them."""
    crumbs = event.get("breadcrumbs")
    values = crumbs.get("values") if isinstance(crumbs, dict) else crumbs
    if isinstance(values, list):
        values[:] = [crumb for crumb in values
                     if not (isinstance(crumb, dict) and _is_screened_crumb(crumb))]


def _is_duplicate(event: dict[str, Any]) -> bool:
    for value in (event.get("exception") or {}).get("values") or ():
        if (value.get("mechanism") or {}).get("type") == "celery":
            return True  # CeleryIntegration's own capture of a failing run
    if event.get("logger") in IGNORED_LOGGERS:
        return True
    entry = event.get("logentry") or {}
    return (event.get("logger"), entry.get("message")) in DUPLICATE_LOG_LINES


def _strip_arguments(event: dict[str, Any]) -> None:
    """Remove every place a task's argument values travel: frame locals, CeleryIntegration's
    ``celery-job`` extra, and the payload of a "to redo it by hand" line."""
    for section in ("exception", "threads"):
        for value in (event.get(section) or {}).get("values") or ():
            for frame in (value.get("stacktrace") or {}).get("frames") or ():
                frame.pop("vars", None)
    job = (event.get("extra") or {}).get("celery-job")
    if isinstance(job, dict):
        for key in ("args", "kwargs"):
            if key in job:
                job[key] = NOT_SENT
    entry = event.get("logentry") or {}
    if entry.get("message") == REDO_FORMAT:
        params = list(entry.get("params") or ())[:2]
        entry["params"] = params
        entry["formatted"] = REDO_FORMAT % (*params, "see the worker's log")
        event.pop("message", None)


def _guard(what: str) -> guard:
    """Hooks never break the host: log what failed, at WARNING, and carry on (a lost report
    is not a task's failure)."""
    return guard(what, level=logging.WARNING)
