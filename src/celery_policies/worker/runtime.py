"""Applying a policy file inside a Celery worker, and its publish settings in any process.

``install(app)`` only connects hooks. The worker loads the file at ``worker_init``, in its main
process: task modules are imported by then, and the consumer has not yet copied ``acks_late``,
the time limits and ``rate_limit`` into its request classes (``create_request_cls``, built at
``update_strategies``; celery#9342): a task attribute patched any later is silently ignored.
Prefork children are forked after that and inherit the patched tasks.

Everything reads one table, compiled once: ``Runtime.tasks`` maps each task name to its
``TaskPolicy`` (policy.py), read through the ``AppliedPolicies`` view (view.py). Nothing
re-reads the file, re-matches patterns or imports exception classes per message.
``install.py`` connects this to Celery's signals; ``patching.py`` changes the tasks.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import datetime, timezone
from functools import partial
from typing import Any, NoReturn

from celery import Celery
from celery.app.task import Task
from celery.apps.worker import Worker as AppWorker

from ..appinfo import effective_settings, registered_tasks
from ..compat import rebuild_tracer
from ..errors import PolicyError, PolicyFileError
from ..guard import guard
from ..lint import lint
from ..lint.pools import pool_name
from ..location import CONF_KEY, DEFAULT_FILE, ENV_VAR, locate_file
from ..logs import GIVE_UP_LOGGER
from ..metrics.names import MAX_EXCEPTION_NAMES, NO_POLICY
from ..metrics.worker import WorkerMetrics
from ..policy import compile_policies, fingerprint
from ..sentry.reporter import SentryReporter
from ..spec.backoff import GiveUpReason
from ..spec.loader import Policies, load_policies
from ..spec.matching import Matcher
from ..tools.fleet import versions
from .counting import Counting
from .patching import patch
from .routes import FailureRouter
from .serving import SERVING_FORMAT, Endpoint, MetricsConfigError, MetricsServer, endpoint
from .view import AppliedPolicies

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


class Runtime(AppliedPolicies):
    """The plugin in one app's worker: loading the file at startup (or refusing to start),
    compiling and applying the task policies, and the publish side in any process."""

    def __init__(self, app: Celery, path: str | os.PathLike[str] | None) -> None:
        super().__init__(app)
        self.path = None if path is None else os.fspath(path)
        self.matcher: Matcher | None = None
        self._applied_pid: int | None = None
        self._publish: dict[str, dict[str, Any] | None] = {}
        self._publisher_read = False
        self._startup_log: list[tuple[int, str]] = []
        self._worker: Any = None
        self.router = FailureRouter(app, self.routes_taken, self.label,
                                    self.publish_retry_policy)
        self.reporter: SentryReporter | None = None
        #: The worker's metrics, counting and ``/metrics`` server, when it serves metrics.
        self.metrics: WorkerMetrics | None = None
        self.counting: Counting | None = None
        self.server: MetricsServer | None = None

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
            policies = load_policies(path, import_exceptions=True)
            where = self._prepare_metrics(options, policies)
            self.apply(policies)
        except PolicyFileError as exc:
            refuse([*map(str, exc.problems), f"{exc.summary}: the worker does not start "
                                              "with an invalid policy file (celery-policies)"])
        self._start_reporter()
        if where is not None:
            self._serve_metrics(where)
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
                    f"{sum(bool(p.matched) for p in self.tasks.values())} of "
                    f"{len(self.tasks)} tasks; fingerprint {self.fingerprint()}")

    def _prepare_metrics(self, options: dict[str, Any], policies: Policies) -> Endpoint | None:
        """Set up counting when metrics are asked for (before ``apply`` patches the tasks);
        a worker asked for metrics it cannot serve does not start."""
        section = policies.model.metrics
        try:
            where = endpoint(options, section, os.environ)
            if where is None:
                return None
            limit = section.max_exception_names if section is not None else None
            self.metrics = WorkerMetrics(limit or MAX_EXCEPTION_NAMES)
        except PolicyError as exc:
            refuse([f"celery-policies: {exc}; the worker does not start"])
        counting = self.counting = Counting(self.app, self.metrics)

        def routed(request: Any, kind: str, ok: bool) -> None:
            counting.routed(request, self.label(request.name) or NO_POLICY, kind, ok)

        self.router.counting = routed
        return where

    def _serve_metrics(self, where: Endpoint) -> None:
        """Say which file this worker applied, then serve, from the main process only."""
        assert self.metrics is not None
        assert self.policies is not None
        info = versions()
        self.metrics.loaded(self.fingerprint() or "", self.policies.file,
                            info["celery_policies"], info["celery"],
                            self.loaded_at.timestamp() if self.loaded_at else 0.0)
        if self.reporter is not None:
            self.metrics.count_sentry(self.reporter.budget.outcomes)
        try:
            self.server = MetricsServer(self.metrics.registry, where)
        except MetricsConfigError as exc:
            refuse([f"celery-policies: {exc}; the worker does not start"])
        self._later(logging.WARNING, SERVING_FORMAT % self.server.url)

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
        if self.server is not None:
            with guard("close the metrics socket a pool process inherited"):
                self.server.forget()
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
        """Compile every registered task's policy once and patch the task; idempotent."""
        self.policies, self.matcher = policies, Matcher(policies)
        self._publish.clear()
        section = policies.model.dead_letter
        self.router.max_length = section.max_length if section is not None else None
        sentry = policies.model.sentry
        self.reporter = SentryReporter(self.app, sentry, self) if sentry is not None else None
        self.router.on_final = self.reporter.report_main if self.reporter else None
        tasks = registered_tasks(self.app)
        self.tasks = compile_policies(
            self.matcher, tasks, lambda resolved: effective_settings(
                self.app, tasks[resolved.task], resolved),
            policies.model.dead_letter_queue)
        self._fingerprint = fingerprint(self.tasks.values())
        for name, policy in self.tasks.items():
            patch(tasks[name], policy, partial(self.retry_settings, name), self.gave_up,
                  self.router, reporting=self.reporter is not None, counting=self.counting)
        self.loaded_at = datetime.now(timezone.utc)
        self._applied_pid = os.getpid()

    def _start_reporter(self) -> None:
        """Set up Sentry now, in the worker's main process, before the pool forks: a client
        initialised in a prefork child sends nothing (sentry-python#1512)."""
        if self.reporter is not None:
            self._later(*self.reporter.start())

    def gave_up(self, task: Task, exc: BaseException, reason: GiveUpReason,
                retries: int) -> None:
        """Log the end of a task the wrapper stops retrying, with the routes it takes."""
        policy = self.tasks.get(task.name)
        give_up_log.warning(
            "giving up on %s[%s] after %d retr%s: %s %s (policy %s); on_failure: %s",
            task.name, task.request.id, retries, "y" if retries == 1 else "ies",
            type(exc).__name__, _REASONS[reason], policy.label if policy else None,
            self.describe_routes(task.name, type(exc)))

    def startup_warnings(self, pool: str) -> list[str]:
        """The lint warnings (docs/lint.md) of the file for this app, its real pool and its
        registered tasks, such as time limits the pool does not enforce; info findings are
        logged here, at INFO."""
        self.pool = pool
        if self.policies is None:
            return []
        findings = lint(self.policies, self.app, pool=pool, compiled=self.tasks.values(),
                        matcher=self.matcher)
        for finding in findings:
            if finding.severity == "info":
                self._later(logging.INFO, f"celery-policies: {finding}")
        return [str(finding) for finding in findings if finding.severity == "warning"]

    def _later(self, level: int, message: str) -> None:
        self._startup_log.append((level, message))

    # -- publish side --------------------------------------------------------------------
    def publish_retry_policy(self, name: str) -> dict[str, Any] | None:
        """The ``retry_policy`` for publishing task ``name``, if the file sets one: compiled
        for the worker's tasks, resolved once per name for any other."""
        compiled = self.tasks.get(name)
        if compiled is not None:
            found = compiled.publish_retry_policy
        elif name in self._publish:
            found = self._publish[name]
        else:
            matcher = self.matcher or self._publisher_matcher()
            value = matcher.resolve(name).get("publish_retry_policy") if matcher else None
            found = self._publish[name] = value.set_values() if value is not None else None
        return None if found is None else dict(found)

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


def refuse(lines: list[str]) -> NoReturn:
    """Stop the worker before it consumes anything: a worker never runs half-configured."""
    for line in lines:
        print(line, file=sys.stderr)
    sys.stderr.flush()
    raise WorkerRefused(lines)


