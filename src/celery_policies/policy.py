"""The compiled policy of one task: built once when a file is applied, then only read.

``compile_policies`` turns a policy file and what the app's code sets into one ``TaskPolicy``
per task: every effective setting with its source, the retry rules and the failure routes
with the exception classes they name already imported, the label of the winning policy, the
publish retry policy and what the task adds to the fleet fingerprint. The worker's patching,
its retry wrapper and failure routes, the Sentry reporter, ``inspect policies``, ``fleet``,
``explain``, ``simulate`` and lint all read it; none of them matches a pattern or imports an
exception class afterwards.

It holds no Celery object: what a task's code sets comes in as settings (``appinfo``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel

from .spec.backoff import ExceptionRef, RetrySettings
from .spec.exception_refs import mro_distance, resolve_refs
from .spec.matching import Matcher, ResolvedPolicy, Setting
from .spec.model import FailureRoute
from .spec.settings import RETRY_KEYS
from .spec.values import UNLIMITED

#: A task's effective settings: ``key -> (setting, the code or config setting it overrides)``.
Settings = Mapping[str, tuple[Setting, Setting | None]]
#: Turns exception names into classes (``resolve_refs``), or keeps them as names
#: (``exception_refs.names_only``, for commands that must not import the app's modules).
Resolve = Callable[[Iterable[str]], tuple[ExceptionRef, ...]]


@dataclass(frozen=True)
class Route:
    """One failure route: a dead letter to ``target`` (a queue) or a callback task ``target``,
    taken for the exception classes ``when`` names (all, when None)."""

    kind: Literal["dead_letter", "task"]
    target: str
    when: tuple[ExceptionRef, ...] | None

    def applies_to(self, exc_type: type[BaseException]) -> bool:
        return self.when is None or mro_distance(exc_type, self.when) is not None


@dataclass(frozen=True)
class TaskPolicy:
    """Everything the plugin does to one task, compiled once."""

    task: str
    #: The labels of the matching policies, in the order they apply (the last wins).
    matched: tuple[str, ...]
    #: The indexes of those policies in the file.
    order: tuple[int, ...]
    settings: Settings
    #: The retry rules the task follows (the file's values over its code's).
    rules: RetrySettings
    #: Whether the file sets a retry key for it: the plugin's retry wrapper then runs it.
    owns_retries: bool
    routes: tuple[Route, ...]
    publish_retry_policy: Mapping[str, Any] | None
    #: What the file sets for the task, as JSON data: its part of the fleet fingerprint.
    file_values: Mapping[str, Any]

    @property
    def label(self) -> str | None:
        """The label of the policy that matched last (the most specific), if any."""
        return self.matched[-1] if self.matched else None

    @property
    def retry(self) -> RetrySettings | None:
        """The retry wrapper's settings, when the plugin runs the task's retries."""
        return self.rules if self.owns_retries else None

    def value(self, key: str) -> Any:
        return self.settings[key][0].value

    def from_file(self) -> dict[str, Any]:
        """The values the file sets for the task (what the worker patches in)."""
        return {key: setting.value for key, (setting, _) in self.settings.items()
                if setting.source.from_file}

    def routes_for(self, exc_type: type[BaseException]) -> list[tuple[str, str]]:
        """The routes taken when the task fails for good with ``exc_type``, in order:
        ``("dead_letter", queue)`` or ``("task", name)``."""
        return [(route.kind, route.target) for route in self.routes
                if route.applies_to(exc_type)]

    def retries_allowed(self, exc_type: type[BaseException]) -> int | None:
        """The retries the task may make after ``exc_type``; None for no limit."""
        return (self.rules.rule_for(exc_type) or self.rules.rule).max_retries


def jsonable(value: Any) -> Any:
    """A setting's value as plain JSON data (models as mappings of their set keys)."""
    if isinstance(value, BaseModel):
        return {k: jsonable(v) for k, v in value.model_dump(exclude_none=True).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _routes(routes: Iterable[FailureRoute], dead_letter_queue: str,
            resolve: Resolve) -> tuple[Route, ...]:
    out = []
    for route in routes:
        when = None if route.when is None else resolve(route.when)
        queue = route.dead_letter_queue(dead_letter_queue)
        if queue is not None:
            out.append(Route("dead_letter", queue, when))
        elif route.task is not None:
            out.append(Route("task", route.task, when))
    return tuple(out)


def compile_policy(resolved: ResolvedPolicy, settings: Settings, dead_letter_queue: str,
                   resolve: Resolve = resolve_refs) -> TaskPolicy:
    """The ``TaskPolicy`` of one task, from what the file sets for it (``resolved``) and its
    effective settings (``appinfo.effective_settings``)."""
    def get(key: str) -> Any:
        return settings[key][0].value if key in settings else None

    publish = resolved.get("publish_retry_policy")
    return TaskPolicy(
        task=resolved.task, matched=resolved.matched, order=resolved.order,
        settings=MappingProxyType(dict(settings)),
        rules=RetrySettings.from_values(get, resolve),
        owns_retries=any(settings[key][0].source.from_file for key in RETRY_KEYS
                         if key in settings),
        routes=_routes(get("on_failure") or (), dead_letter_queue, resolve),
        publish_retry_policy=None if publish is None else MappingProxyType(publish.set_values()),
        file_values=MappingProxyType({key: jsonable(setting.value)
                                      for key, setting in resolved.settings.items()}),
    )


def compile_policies(matcher: Matcher, names: Iterable[str],
                     settings_of: Callable[[ResolvedPolicy], Settings], dead_letter_queue: str,
                     resolve: Resolve = resolve_refs) -> dict[str, TaskPolicy]:
    """``compile_policy`` for every task in ``names``, matched all at once."""
    return {name: compile_policy(resolved, settings_of(resolved), dead_letter_queue, resolve)
            for name, resolved in matcher.resolve_all(names).items()}


def fingerprint(policies: Iterable[TaskPolicy]) -> str:
    """A short hash of what the file sets for each task: equal on every worker that runs the
    same policies for the same tasks, whatever the file's layout or key order."""
    data = {policy.task: dict(policy.file_values) for policy in policies}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def unlimited_as_none(value: Any) -> Any:
    """``unlimited`` as Celery writes it (``None``)."""
    return None if value == UNLIMITED else value
