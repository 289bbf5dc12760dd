"""What a policy file means for each task: effective settings and their sources.

The JSON form (``to_json``) is a documented contract (docs/explain-json.md)::

    {"file": str, "tasks": [{"name": str, "matched": [label, ...],
      "settings": {key: {"value": ..., "source": str, "overrides": {"value", "source"}?}}}]}

Durations are seconds; ``overrides`` appears when the file replaces a different value set in
task code or app config.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.app.task import Task

from ..appinfo import effective_settings
from ..policy import Resolve, TaskPolicy, compile_policies, jsonable
from ..spec.exception_refs import names_only
from ..spec.loader import Policies
from ..spec.matching import Matcher


def explain(matcher: Matcher, names: Iterable[str], app: Celery | None = None,
            tasks: dict[str, Task] | None = None,
            resolve: Resolve = names_only) -> list[TaskPolicy]:
    """The compiled policy of each task in ``names``, in that order; with ``app`` and
    ``tasks``, over the values their code sets. Exception classes the file names are matched
    by name unless ``resolve`` imports them: importing a module runs its code."""
    def settings_of(resolved: Any) -> Any:
        task = tasks.get(resolved.task) if tasks else None
        return effective_settings(app, task, resolved)

    names = list(names)
    compiled = compile_policies(matcher, names, settings_of,
                                matcher.policies.model.dead_letter_queue, resolve)
    return [compiled[name] for name in names]


def to_json(policies: Policies, explanations: Iterable[TaskPolicy]) -> dict[str, Any]:
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
