"""Lint rules: settings that are each reasonable and together wrong (docs/lint.md).

``lint(policies)`` runs the rules that need only the file, over each policy merged over
``defaults:``. Given the app, the rules read each registered task's effective settings (the
file's cascade over the task's code and the app's config) and the broker settings; given the
worker pool, the time limits it ignores. ``check`` prints the findings; a worker logs them
at startup.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from ..appinfo import effective_settings, registered_tasks
from ..policy import TaskPolicy
from ..spec.lintcodes import RULES
from ..spec.loader import Policies
from ..spec.matching import Matcher
from ..tools.explain import explain
from . import acks, broker, coverage, limits, retries  # noqa: F401  (they register the rules)
from ._core import REGISTRY, Context, Finding, Subject, run

__all__ = ["REGISTRY", "RULES", "Finding", "lint"]


def lint(policies: Policies, app: Celery | None = None, *, pool: str | None = None,
         compiled: Iterable[TaskPolicy] | None = None,
         matcher: Matcher | None = None) -> list[Finding]:
    """The findings of every rule that can run, in file order.

    ``compiled`` are the registered tasks' policies and ``matcher`` the file's, when the caller
    has them already (a worker at startup); by default they are worked out from ``app``.
    ``pool`` is a worker pool alias (``prefork``, ``solo``, ...).
    """
    matcher = matcher or Matcher(policies)
    if app is None:
        subjects = _stand_ins(policies, matcher)
    else:
        if compiled is None:
            tasks = registered_tasks(app)
            compiled = explain(matcher, list(tasks), app, tasks)
        subjects = [Subject(item.task, item.order,
                            {key: setting for key, (setting, _) in item.settings.items()})
                    for item in compiled]
    return run(Context(policies, matcher, subjects, app, pool))


def _stand_ins(policies: Policies, matcher: Matcher) -> list[Subject]:
    """Without an app, which tasks exist is unknown: one stand-in for the tasks no policy
    matches (the defaults alone), and one per policy (that policy over the defaults)."""
    model = policies.model
    places: list[tuple[int | None, str]] = [(None, "tasks no policy matches")]
    places += [(index, f"tasks of {_describe(model.label(index), index)}")
               for index in range(len(model.policies))]
    subjects = []
    for index, name in places:
        resolved = matcher.resolve_alone(index, name)
        settings = effective_settings(None, None, resolved)
        subjects.append(Subject(name, () if index is None else (index,),
                                {key: setting for key, (setting, _) in settings.items()}))
    return subjects


def _describe(label: str, index: int) -> str:
    return label if label == f"policies[{index}]" else f'policies[{index}] "{label}"'
