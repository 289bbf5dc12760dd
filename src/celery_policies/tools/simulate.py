"""``simulate``: the attempt-by-attempt timeline a policy gives a task that keeps failing."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from celery.app.task import Task

from ..appinfo import effective_settings
from ..policy import compile_policy
from ..spec.backoff import Step, simulate
from ..spec.exception_refs import (
    builtin_exception,
    import_exception,
    names_only,
    placeholder_exception,
    resolve_refs,
)
from ..spec.matching import Matcher

#: How many attempts a timeline shows at most (``max_retries: unlimited`` never ends).
DEFAULT_ATTEMPTS = 20


@dataclass(frozen=True)
class Timeline:
    """``steps`` ends with the attempt after which the task gives up (``gave_up``), unless the
    attempts shown ran out first (``gave_up`` None). ``routes`` are the failure routes then
    taken, in order, as ``("dead_letter", queue)`` or ``("task", name)``."""

    task: str
    exception: str
    exception_imported: bool
    matched: tuple[str, ...]
    steps: list[Step]
    gave_up: str | None
    routes: list[tuple[str, str]]
    deadline: float | None
    time_limit: float | None
    soft_time_limit: float | None


def simulate_task(matcher: Matcher, task_name: str, exception: str, *,
                  attempts: int = DEFAULT_ATTEMPTS, app: Celery | None = None,
                  task: Task | None = None,
                  import_modules: bool = True) -> Timeline:
    """Simulate ``task_name`` raising ``exception`` (a dotted path or builtin name) every time.

    Without ``import_modules`` nothing is imported (importing a module runs its code): the
    exception classes named, in the file and in ``exception``, are matched by name, and
    ``exception`` is taken as a direct subclass of ``Exception`` unless it is a builtin.
    """
    resolve = resolve_refs if import_modules else names_only
    if not import_modules:
        builtin = builtin_exception(exception)
        exc_type, imported = builtin or placeholder_exception(exception), builtin is not None
    else:
        try:
            exc_type, imported = import_exception(exception), True
        except ValueError:
            exc_type, imported = placeholder_exception(exception), False
    resolved = matcher.resolve(task_name)
    policy = compile_policy(resolved, effective_settings(app, task, resolved),
                            matcher.policies.model.dead_letter_queue, resolve)
    steps = simulate(policy.rules, exc_type, attempts)
    last = steps[-1].outcome if steps else None
    gave_up = last if last in ("not_retryable", "max_retries", "deadline") else None
    routes = policy.routes_for(exc_type) if gave_up else []
    return Timeline(task_name, exception, imported, policy.matched, steps, gave_up, routes,
                    policy.value("retry_deadline"), policy.value("time_limit"),
                    policy.value("soft_time_limit"))
