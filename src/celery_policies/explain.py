"""What a policy file means for each task: effective settings, their sources, and coverage.

The JSON form (``to_json``) is a documented contract (docs/explain-json.md)::

    {"file": str, "tasks": [{"name": str, "matched": [label, ...],
      "settings": {key: {"value": ..., "source": str, "overrides": {"value", "source"}?}}}]}

Durations are seconds; ``overrides`` appears when the file replaces a different value set in
task code or app config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.app.task import Task
from pydantic import BaseModel

from .appinfo import effective_settings
from .loader import Policies
from .matching import Matcher, Setting
from .model import DEFAULT_DEAD_LETTER_QUEUE
from .patterns import parse_pattern


@dataclass(frozen=True)
class Explanation:
    """One task's effective settings: ``settings[key] = (setting, overridden code setting)``."""

    task: str
    matched: tuple[str, ...]
    settings: dict[str, tuple[Setting, Setting | None]]


def explain(matcher: Matcher, names: Iterable[str], app: Celery | None = None,
            tasks: dict[str, Task] | None = None) -> list[Explanation]:
    """Explain each task in ``names``; with ``app`` and ``tasks``, include task-code values."""
    out = []
    for name in names:
        resolved = matcher.resolve(name)
        task = tasks.get(name) if tasks else None
        out.append(Explanation(name, resolved.matched, effective_settings(app, task, resolved)))
    return out


def jsonable(value: Any) -> Any:
    """A setting's value as plain JSON data (models as mappings of their set keys)."""
    if isinstance(value, BaseModel):
        return {k: jsonable(v) for k, v in value.model_dump(exclude_none=True).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def to_json(policies: Policies, explanations: Iterable[Explanation]) -> dict[str, Any]:
    tasks = []
    for item in explanations:
        settings: dict[str, Any] = {}
        for key, (setting, overridden) in item.settings.items():
            entry: dict[str, Any] = {"value": jsonable(setting.value),
                                     "source": str(setting.source)}
            if overridden is not None:
                entry["overrides"] = {"value": jsonable(overridden.value),
                                      "source": str(overridden.source)}
            settings[key] = entry
        tasks.append({"name": item.task, "matched": list(item.matched), "settings": settings})
    return {"file": policies.file, "tasks": tasks}


@dataclass(frozen=True)
class Coverage:
    """Patterns that match no registered task, and tasks that no policy matches."""

    unmatched: list[tuple[int, str, tuple[int, int]]]  # (policy index, pattern, (line, col))
    uncovered: list[str]


def coverage(policies: Policies, matcher: Matcher, names: Iterable[str]) -> Coverage:
    names = list(names)
    unmatched = []
    for index, policy in enumerate(policies.model.policies):
        for j, text in enumerate(policy.match):
            pattern = parse_pattern(text)
            if not any(pattern.matches(n) for n in names):
                # a single pattern written as a string falls back to the 'match' value itself
                where = policies.position(("policies", index, "match", j))
                unmatched.append((index, text, where))
    uncovered = [n for n in names if not matcher.matching(n)]
    return Coverage(unmatched, uncovered)


def dead_letter_queue(policies: Policies) -> str:
    """The queue a ``dead_letter: true`` route publishes to."""
    section = policies.model.dead_letter
    return (section.queue if section is not None else None) or DEFAULT_DEAD_LETTER_QUEUE


def limit_conflicts(explanations: Iterable[Explanation]) -> list[tuple[str, Setting, Setting]]:
    """Tasks whose effective soft time limit is not below the hard one, once the layers merge
    (each layer was valid alone): ``(task, soft_time_limit, time_limit)``. The hard limit then
    kills the task before the soft one can fire."""
    found = []
    for item in explanations:
        soft, _ = item.settings["soft_time_limit"]
        hard, _ = item.settings["time_limit"]
        if (soft.value is not None and hard.value is not None and soft.value >= hard.value
                and (soft.source.from_file or hard.source.from_file)):
            found.append((item.task, soft, hard))
    return found


def fingerprint(matcher: Matcher, names: Iterable[str]) -> str:
    """A short hash of what the file sets for each of ``names``: equal on every worker that
    runs the same policies for the same tasks, whatever the file's layout or key order."""
    resolved = matcher.resolve_all(names)
    data = {name: {key: jsonable(setting.value) for key, setting in policy.settings.items()}
            for name, policy in resolved.items()}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
