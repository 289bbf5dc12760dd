"""``simulate``: the attempt-by-attempt timeline a policy gives a task that keeps failing."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from celery import Celery
from celery.app.task import Task

from ..appinfo import effective_settings, lookup
from ..spec.backoff import ExceptionRef, RetrySettings, Step, simulate
from ..spec.exception_refs import import_exception, mro_distance, resolve_refs
from ..spec.matching import Matcher
from ..spec.model import DEFAULT_DEAD_LETTER_QUEUE, FailureRoute

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


def placeholder_exception(dotted: str) -> type[BaseException]:
    """A stand-in for an exception class that cannot be imported here: a direct subclass of
    ``Exception`` with the same module and name, so rules naming it still match."""
    module, _, name = dotted.rpartition(".")
    return type(name, (Exception,), {"__module__": module or "builtins", "__qualname__": name})


def _builtin(name: str) -> type[BaseException] | None:
    found = getattr(builtins, name, None) if "." not in name else None
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def names_only(names: Iterable[str]) -> tuple[ExceptionRef, ...]:
    """``resolve_refs`` without importing anything: builtin names become their classes, and
    dotted names stay text, matched by name (see ``mro_distance``)."""
    return tuple(_builtin(name) or name for name in names)


def routes_for(routes: tuple[FailureRoute, ...], exc_type: type[BaseException],
               default_queue: str,
               resolve: Callable[[Iterable[str]], tuple[ExceptionRef, ...]] = resolve_refs,
               ) -> list[tuple[str, str]]:
    """The failure routes taken for ``exc_type``, honouring each route's ``when`` filter."""
    taken = []
    for route in routes:
        if route.when is not None and mro_distance(exc_type, resolve(route.when)) is None:
            continue
        if route.dead_letter is not None:
            queue = default_queue if route.dead_letter is True else route.dead_letter
            taken.append(("dead_letter", queue))
        elif route.task is not None:
            taken.append(("task", route.task))
    return taken


def simulate_task(matcher: Matcher, task_name: str, exception: str, *,
                  attempts: int = DEFAULT_ATTEMPTS, app: Celery | None = None,
                  task: Task | None = None, dead_letter_queue: str | None = None,
                  import_modules: bool = True) -> Timeline:
    """Simulate ``task_name`` raising ``exception`` (a dotted path or builtin name) every time.

    Without ``import_modules`` nothing is imported (importing a module runs its code): the
    exception classes named, in the file and in ``exception``, are matched by name, and
    ``exception`` is taken as a direct subclass of ``Exception`` unless it is a builtin.
    """
    resolve = resolve_refs if import_modules else names_only
    if not import_modules:
        builtin = _builtin(exception)
        exc_type, imported = builtin or placeholder_exception(exception), builtin is not None
    else:
        try:
            exc_type, imported = import_exception(exception), True
        except ValueError:
            exc_type, imported = placeholder_exception(exception), False
    resolved = matcher.resolve(task_name)
    settings = effective_settings(app, task, resolved)
    get = lookup(settings)
    steps = simulate(RetrySettings.from_values(get, resolve), exc_type, attempts)
    last = steps[-1].outcome if steps else None
    gave_up = last if last in ("not_retryable", "max_retries", "deadline") else None
    routes = routes_for(get("on_failure") or (), exc_type,
                        dead_letter_queue or DEFAULT_DEAD_LETTER_QUEUE, resolve) if gave_up else []
    return Timeline(task_name, exception, imported, resolved.matched, steps, gave_up, routes,
                    get("retry_deadline"), get("time_limit"), get("soft_time_limit"))
