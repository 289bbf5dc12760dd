"""What a policy file means for each task: effective settings and their sources.

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

from ..appinfo import effective_settings
from ..spec.loader import Policies
from ..spec.matching import Matcher, Setting
from ..spec.model import DEFAULT_DEAD_LETTER_QUEUE


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


def dead_letter_queue(policies: Policies) -> str:
    """The queue a ``dead_letter: true`` route publishes to."""
    section = policies.model.dead_letter
    return (section.queue if section is not None else None) or DEFAULT_DEAD_LETTER_QUEUE


def fingerprint(matcher: Matcher, names: Iterable[str]) -> str:
    """A short hash of what the file sets for each of ``names``: equal on every worker that
    runs the same policies for the same tasks, whatever the file's layout or key order."""
    resolved = matcher.resolve_all(names)
    data = {name: {key: jsonable(setting.value) for key, setting in policy.settings.items()}
            for name, policy in resolved.items()}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
