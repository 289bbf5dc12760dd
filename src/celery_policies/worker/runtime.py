"""Applying a policy file inside a Celery worker, and its publish settings in any process.

``install(app)`` only connects hooks. The worker loads the file at ``worker_init``, in its main
process: task modules are imported by then, and the consumer has not yet copied ``acks_late``,
the time limits and ``rate_limit`` into its request classes (``create_request_cls``, built at
``update_strategies``; celery#9342): a task attribute patched any later is silently ignored.
Prefork children are forked after that and inherit the patched tasks.

Everything reads one table, built once: ``Runtime.tasks`` maps each task name to its
``TaskPolicy`` (the same ``Explanation`` that ``explain`` prints, plus the retry settings the
wrapper uses). Nothing re-reads the file or re-matches patterns per message.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery import Celery, current_app, signals
from celery.app.task import Task
from celery.apps.worker import Worker as AppWorker

from ..appinfo import PLUGIN_DEFAULTS, SETTING_KEYS, code_setting, lookup, registered_tasks
from ..compat import forget_exec_options, real_app, rebuild_tracer, set_acks_on_failure_or_timeout
from ..errors import PolicyFileError
from ..guard import guard
from ..lint import lint
from ..lint.pools import pool_name
from ..location import CONF_KEY, DEFAULT_FILE, ENV_VAR, locate_file
from ..logs import GIVE_UP_LOGGER
from ..redelivery import capped_request_class
from ..sentry.reporter import SentryReporter
from ..spec.backoff import GiveUpReason, RetrySettings
from ..spec.exception_refs import resolve_refs
from ..spec.loader import Policies, load_policies
from ..spec.matching import Matcher
from ..spec.settings import ATTRIBUTE_KEYS, RETRY_KEYS
from ..spec.values import UNLIMITED
from ..tools.explain import Explanation, dead_letter_queue, explain, fingerprint, jsonable
from ..tools.fleet import versions
from ..tools.simulate import routes_for
from .inspect import RUNTIME_ATTR
from .options import add_options, named_file
from .retrying import wrap_run
from .routes import FailureRouter, routed_request_class

log = logging.getLogger("celery_policies")
give_up_log = logging.getLogger(GIVE_UP_LOGGER)

#: Exit status of a worker refused because of its policies (sysexits.h EX_CONFIG).
EXIT_CONFIG = 78
#: What a worker that cannot apply the policies does instead.
WORKER_REFUSES = "the worker does not start"
#: What a pool process that cannot apply the policies does instead.
CHILD_REFUSES = "this pool process runs no task and the worker stops"

_REASONS: dict[GiveUpReason, str] = {
    "not_retryable": "not retryable", "max_retries": "max_retries reached",
    "deadline": "the next attempt would start after retry_deadline"}


@dataclass(frozen=True)
class TaskPolicy:
    """What the worker applies to one task: its explanation (effective settings with their
    sources, as ``explain`` shows them) and, when the plugin owns its retries, the settings
    the retry wrapper follows."""

    explanation: Explanation
    retry: RetrySettings | None

    @property
    def label(self) -> str | None:
        """The label of the policy that matched last (the most specific), if any."""
        matched = self.explanation.matched
        return matched[-1] if matched else None

    def value(self, key: str) -> Any:
        return self.explanation.settings[key][0].value


class Runtime:
    """The plugin's state for one app: the loaded file and the table of task policies."""

    def __init__(self, app: Celery, path: str | os.PathLike[str] | None) -> None:
        self.app = app
        self.path = None if path is None else os.fspath(path)
        self.policies: Policies | None = None
        self.matcher: Matcher | None = None
        self.tasks: dict[str, TaskPolicy] = {}
        self.loaded_at: datetime | None = None
        self.pool: str | None = None
        self._applied_pid: int | None = None
        self._publish: dict[str, dict[str, Any] | None] = {}
        self._publisher_read = False
        self._startup_log: list[tuple[int, str]] = []
        self._worker: Any = None
        self.router = FailureRouter(app, self.routes_taken, self.label,
                                    self.publish_retry_policy)
        self.reporter: SentryReporter | None = None

    # -- where the file comes from -------------------------------------------------------
    def locate(self, option: str | None = None) -> str | None:
        """The policy file: ``install(path=)``, ``--policies``, then as ``locate_file``."""
        return locate_file(self.app, self.path, option)

    # -- worker side ---------------------------------------------------------------------
    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app or self._worker is sender:
            return
        self._worker = sender
        try:
            self._start_worker(sender)
        except Exception as exc:
            # Celery's signal dispatch would log this and carry on with a worker patched
            # half-way; a worker never runs half-configured.
            log.exception("celery-policies: could not apply the policies")
            refuse([f"celery-policies: could not apply the policies: {exc!r}"])
        if not isinstance(sender, AppWorker):
            # A worker built in code (celery.contrib.testing's start_worker, app.Worker
            # subclasses of WorkController) never sends celeryd_after_setup, and its logging
            # is set up already: say it now.
            self.on_after_setup(sender)

    def _start_worker(self, sender: Any) -> None:
        options = getattr(sender, "options", {}) or {}
        path = self.locate(options.get("policies"))
        if path is None:
            self._later(logging.INFO, "celery-policies: no policy file (--policies, "
                        f"${ENV_VAR}, the {CONF_KEY} setting or ./{DEFAULT_FILE}): "
                        "tasks run as their code says")
            return
        try:
            self.apply(load_policies(path, import_exceptions=True))
        except PolicyFileError as exc:
            refuse([*map(str, exc.problems), f"{exc.summary}: the worker does not start "
                                              "with an invalid policy file (celery-policies)"])
        self._start_reporter()
        # Children started without fork (worker_pool_start_method=spawn) find the file here.
        os.environ[ENV_VAR] = os.path.abspath(path)
        warnings = self.startup_warnings(pool_name(getattr(sender, "pool_cls", "prefork")))
        if warnings and options.get("policies_strict"):
            refuse([f"celery-policies: {w}" for w in warnings]
                   + ["celery-policies: refusing to start because of these warnings "
                      "(--policies-strict)"])
        for warning in warnings:
            self._later(logging.WARNING, f"celery-policies: {warning}")
        assert self.policies is not None
        count = len(self.policies.model.policies)
        self._later(logging.INFO, f"celery-policies: applied {self.policies.file} "
                    f"({count} polic{'y' if count == 1 else 'ies'}) to "
                    f"{sum(bool(p.explanation.matched) for p in self.tasks.values())} of "
                    f"{len(self.tasks)} tasks; fingerprint {self.fingerprint()}")

    def on_after_setup(self, instance: Any = None, **_: Any) -> None:
        """Logging is configured only after ``worker_init``: say what happened now."""
        if getattr(instance, "app", None) is not self.app:
            return
        for level, message in self._startup_log:
            log.log(level, "%s", message)
        self._startup_log.clear()

    def on_process_init(self, sender: Any, path: str) -> None:
        """In a pool child started without fork, apply the file the main process applied.

        A child that cannot would run tasks without their policies (Celery's signal
        dispatch logs the error and carries on): like the main process, it refuses instead.
        It exits before taking any task and asks the worker to stop (a warm shutdown), or
        the pool would replace it with another child that fails the same way, forever."""
        if self._applied_pid is not None:
            return  # forked: the child has the main process's patched tasks
        with guard(f"apply {path} in pool process {os.getpid()}", CHILD_REFUSES,
                   level=logging.CRITICAL) as step:
            self.apply(load_policies(path, import_exceptions=True))
            self._start_reporter()
            # The child built its tracers before this signal; they hold the unpatched run.
            for name in self.tasks:
                rebuild_tracer(self.app, self.app.tasks[name], sender)
        if step.failed:
            parent = os.getppid()
            if parent > 1:
                os.kill(parent, signal.SIGTERM)
            raise WorkerRefused([f"celery-policies: could not apply {path} in a pool process"])

    def apply(self, policies: Policies) -> None:
        """Resolve every registered task once and patch it; idempotent."""
        self.policies, self.matcher = policies, Matcher(policies)
        self._publish.clear()
        section = policies.model.dead_letter
        self.router.max_length = section.max_length if section is not None else None
        sentry = policies.model.sentry
        self.reporter = SentryReporter(self.app, sentry, self) if sentry is not None else None
        self.router.on_final = self.reporter.report_main if self.reporter else None
        tasks = registered_tasks(self.app)
        explanations = explain(self.matcher, list(tasks), self.app, tasks)
        self.tasks = {}
        for item in explanations:
            task = tasks[item.task]
            policy = TaskPolicy(item, self._retry_settings(item))
            self.tasks[item.task] = policy
            _patch(task, policy, self)
        self.loaded_at = datetime.now(timezone.utc)
        self._applied_pid = os.getpid()

    @staticmethod
    def _retry_settings(item: Explanation) -> RetrySettings | None:
        """The wrapper's settings, when the file sets any retry key for the task (then the
        file's values, merged over the task code's, replace Celery's frozen closure)."""
        if not any(item.settings[key][0].source.from_file for key in RETRY_KEYS):
            return None
        return RetrySettings.from_values(lookup(item.settings))

    def _start_reporter(self) -> None:
        """Set up Sentry now, in the worker's main process, before the pool forks: a client
        initialised in a prefork child sends nothing (sentry-python#1512)."""
        if self.reporter is not None:
            self._later(*self.reporter.start())

    def retry_settings(self, name: str) -> RetrySettings | None:
        policy = self.tasks.get(name)
        return None if policy is None else policy.retry

    def gave_up(self, task: Task, exc: BaseException, reason: GiveUpReason,
                retries: int) -> None:
        """Log the end of a task the wrapper stops retrying, with the routes it takes."""
        policy = self.tasks.get(task.name)
        routes = policy.value("on_failure") if policy else None
        give_up_log.warning(
            "giving up on %s[%s] after %d retr%s: %s %s (policy %s); on_failure: %s",
            task.name, task.request.id, retries, "y" if retries == 1 else "ies",
            type(exc).__name__, _REASONS[reason], policy.label if policy else None,
            self.describe_routes(routes, type(exc)))

    def describe_routes(self, routes: Any, exc_type: type[BaseException]) -> str:
        if not routes or self.policies is None:
            return "none"
        taken = routes_for(routes, exc_type, dead_letter_queue(self.policies))
        return ", ".join(f"{kind} {target}" for kind, target in taken) or "none"

    def routes_taken(self, name: str, exc_type: type[BaseException]) -> list[tuple[str, str]]:
        """The failure routes task ``name`` takes when it fails for good with ``exc_type``."""
        policy = self.tasks.get(name)
        routes = policy.value("on_failure") if policy else None
        if not routes or self.policies is None:
            return []
        return routes_for(routes, exc_type, dead_letter_queue(self.policies))

    def label(self, name: str) -> str | None:
        policy = self.tasks.get(name)
        return policy.label if policy else None

    def retries_allowed(self, name: str, exc_type: type[BaseException]) -> int | None:
        """The retries task ``name`` may make after ``exc_type``; None for no limit."""
        settings = self.retry_settings(name)
        if settings is not None:
            return (settings.rule_for(exc_type) or settings.rule).max_retries
        max_retries: int | None = getattr(self.app.tasks.get(name), "max_retries", None)
        return max_retries

    def effective(self, name: str) -> dict[str, Any]:
        """Task ``name``'s policies and effective settings, as ``inspect policies`` gives them."""
        policy = self.tasks.get(name)
        if policy is None:
            return {"file": self.policies.file if self.policies else None, "matched": []}
        return {"file": self.policies.file if self.policies else None,
                **self._task_report(name, policy)}

    def startup_warnings(self, pool: str) -> list[str]:
        """The lint warnings (docs/lint.md) of the file for this app, its real pool and its
        registered tasks, such as time limits the pool does not enforce; info findings are
        logged here, at INFO."""
        self.pool = pool
        if self.policies is None:
            return []
        findings = lint(self.policies, self.app, pool=pool,
                        explanations=[p.explanation for p in self.tasks.values()])
        for finding in findings:
            if finding.severity == "info":
                self._later(logging.INFO, f"celery-policies: {finding}")
        return [str(finding) for finding in findings if finding.severity == "warning"]

    def fingerprint(self) -> str | None:
        if self.matcher is None:
            return None
        return fingerprint(self.matcher, self.tasks)

    def report(self) -> dict[str, Any]:
        """This worker's answer to ``celery inspect policies``: per task, plain attributes
        read back from the live task objects, the plugin's own keys from its table."""
        tasks = {name: self._task_report(name, policy) for name, policy in self.tasks.items()}
        return {"file": self.policies.file if self.policies else None,
                "fingerprint": self.fingerprint(), **versions(),
                "loaded_at": self.loaded_at.isoformat() if self.loaded_at else None,
                "pool": self.pool, "tasks": tasks}

    def _task_report(self, name: str, policy: TaskPolicy) -> dict[str, Any]:
        """Plain attributes read back from the live task object, the plugin's keys from
        its table."""
        task = self.app.tasks[name]
        settings = {key: jsonable(policy.value(key) if key in PLUGIN_DEFAULTS
                                  else code_setting(self.app, task, key).value)
                    for key in SETTING_KEYS}
        request = task.Request
        return {"matched": list(policy.explanation.matched),
                "retry_wrapper": policy.retry is not None,
                "request_class": request if isinstance(request, str)
                else f"{request.__module__}.{request.__qualname__}",
                "settings": settings}

    def _later(self, level: int, message: str) -> None:
        self._startup_log.append((level, message))

    # -- publish side --------------------------------------------------------------------
    def publish_retry_policy(self, name: str) -> dict[str, Any] | None:
        """The ``retry_policy`` for publishing task ``name``, if the file sets one."""
        try:
            return self._publish[name]
        except KeyError:
            pass
        matcher = self.matcher or self._publisher_matcher()
        value = matcher.resolve(name).get("publish_retry_policy") if matcher else None
        policy = value.set_values() if value is not None else None
        self._publish[name] = policy
        return policy

    def _publisher_matcher(self) -> Matcher | None:
        """In a process that only publishes, the file is read once, at the first publish."""
        if self._publisher_read:
            return None
        self._publisher_read = True
        path = self.locate()
        if path is None:
            return None
        try:
            self.policies = load_policies(path)
        except PolicyFileError as exc:
            log.error("celery-policies: %s is invalid; publishing with Celery's settings:\n%s",
                      path, exc)
            return None
        self.matcher = Matcher(self.policies)
        return self.matcher


def _patch(task: Task, policy: TaskPolicy, runtime: Runtime) -> None:
    """Set the attributes the file gives ``task``; wrap its run; cap its redeliveries."""
    from_file = {key: setting.value
                 for key, (setting, _) in policy.explanation.settings.items()
                 if setting.source.from_file}
    for key in ATTRIBUTE_KEYS:
        if key == "acks_on_failure_or_timeout" and key in from_file:
            set_acks_on_failure_or_timeout(task, from_file[key])
        elif key in from_file:
            value = from_file[key]
            if key in ("autoretry_for", "dont_autoretry_for"):
                value = resolve_refs(value)
            setattr(task, key, None if value == UNLIMITED else value)
    forget_exec_options(task)  # a cached copy of the time limits, used when publishing
    if policy.retry is not None:
        name = task.name
        wrap_run(task, lambda: runtime.retry_settings(name), runtime.gave_up)
    # The request class runs in the worker's main process: failure routes and the reports of
    # main-process failures, then the cap on redeliveries (which hands the final failure
    # down to the routes).
    request = task.__dict__.setdefault("_celery_policies_request", task.Request)
    if policy.value("on_failure") or runtime.reporter is not None:
        request = routed_request_class(request, runtime.router)
    redeliveries = policy.value("max_redeliveries")
    if (policy.value("acks_late") and policy.value("reject_on_worker_lost")
            and isinstance(redeliveries, int)):
        request = capped_request_class(request, redeliveries)
    task.Request = request


class WorkerRefused(SystemExit):
    """A worker stopped at startup because of its policies. A ``SystemExit`` passes through
    Celery's signal dispatch (which logs and swallows ``Exception``) and out of
    ``WorkController.__init__``, before any consumer starts: ``celery worker`` exits with
    status 78, and a worker started in a test (``start_worker``) fails it with these lines."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(EXIT_CONFIG)
        self.lines = lines

    def __str__(self) -> str:
        return "\n".join(self.lines)


def refuse(lines: list[str]) -> None:
    """Stop the worker before it consumes anything: a worker never runs half-configured."""
    for line in lines:
        print(line, file=sys.stderr)
    sys.stderr.flush()
    raise WorkerRefused(lines)


def install(app: Celery, path: str | os.PathLike[str] | None = None) -> Runtime:
    """Apply the policy file to ``app``'s workers; call it once where the app is created.

    The file is ``path``, else the worker's ``--policies FILE``, else
    ``$CELERY_POLICIES_FILE``, else the ``policies_file`` setting, else ``./policies.yaml``.
    A worker loads it at startup and refuses to start when it is invalid. In a process that
    only publishes, only ``publish_retry_policy`` applies. Calling it again changes nothing.
    """
    runtime: Runtime | None = getattr(app, RUNTIME_ATTR, None)
    if runtime is not None:
        return runtime
    runtime = Runtime(app, path)
    setattr(app, RUNTIME_ATTR, runtime)
    add_options(app.user_options["worker"])
    connect_receivers()
    _wrap_send_task(app, runtime)
    return runtime


def runtime_of(app: Celery | None) -> Runtime | None:
    """The runtime ``install`` attached to ``app``, if any."""
    return getattr(app, RUNTIME_ATTR, None)


# -- the worker's signals -----------------------------------------------------------------------
# One receiver per signal for the whole process, however many apps call install (a test suite
# may create hundreds): each finds the runtime of the app the signal is about, and no app is
# kept alive by the signal.
_RECEIVER_UID = "celery_policies.worker.runtime"


def connect_receivers() -> None:
    """Connect the worker's signal receivers; connecting again changes nothing."""
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid=_RECEIVER_UID)
    signals.celeryd_after_setup.connect(_on_after_setup, weak=False,
                                        dispatch_uid=_RECEIVER_UID)
    signals.worker_process_init.connect(_on_process_init, weak=False,
                                        dispatch_uid=_RECEIVER_UID)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    runtime = runtime_of(app)
    if runtime is None:
        with guard("set up the policies", WORKER_REFUSES, level=logging.CRITICAL) as step:
            if app is None or named_file(app, getattr(sender, "options", None) or {}) is None:
                return  # an app that neither installs the plugin nor names a file: hands off
            runtime = install(app)  # celery -A proj worker --policies FILE, no line of code
        if step.failed or runtime is None:
            refuse(["celery-policies: could not set up the policies; the worker does not "
                    "start"])
            return
    runtime.on_worker_init(sender)


def _on_after_setup(instance: Any = None, **_: Any) -> None:
    runtime = runtime_of(getattr(instance, "app", None))
    if runtime is not None:
        runtime.on_after_setup(instance)


def _on_process_init(sender: Any = None, **_: Any) -> None:
    """A pool child started without fork (``worker_pool_start_method = spawn``) has none of
    the main process's patches. The main process exported the file it applied; such a child
    runs an unpickled copy of the app (``Celery.__reduce__``), made current by
    ``process_initializer`` (celery/concurrency/prefork.py), not the module's app."""
    path = os.environ.get(ENV_VAR)
    if path:
        install(real_app(current_app)).on_process_init(sender, path)


def _wrap_send_task(app: Celery, runtime: Runtime) -> None:
    """Give every publish the task's ``publish_retry_policy`` unless the caller chose one.

    ``Task.apply_async``, ``retry()`` and ``send_task`` by name all publish through
    ``app.send_task``; a retry policy is not a task attribute Celery reads, so it goes here.
    """
    send_task: Callable[..., Any] = app.send_task

    def send_task_with_policy(name: str, *args: Any, **options: Any) -> Any:
        if options.get("retry_policy") is None:
            with guard(f"choose the publish_retry_policy of {name}",
                       "publishing with Celery's settings"):
                policy = runtime.publish_retry_policy(name)
                if policy is not None:
                    options["retry_policy"] = policy
        return send_task(name, *args, **options)

    app.send_task = send_task_with_policy
