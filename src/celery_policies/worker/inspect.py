"""``celery -A proj inspect policies``: what each running worker applies, for fleets and tests.

The answer is ``Runtime.report()``: the policy file, a fingerprint of the effective policies
(equal on every worker that runs the same policies for the same tasks), versions, load time
and the per-task settings as the running worker holds them.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

from ..tools.fleet import COMMAND, versions

#: The attribute of a Celery app holding its ``Runtime`` (set by ``install``).
RUNTIME_ATTR = "_celery_policies_runtime"


@inspect_command(name=COMMAND)  # type: ignore[untyped-decorator]
def policies(state: Any, tasks: bool = True, **_: Any) -> dict[str, Any]:
    """The policy file, fingerprint and per-task settings this worker applies.

    ``tasks=False`` (what ``celery-policies fleet`` sends) leaves out the per-task table, so
    that a large fleet's answers stay small however many tasks the app has.
    """
    runtime = getattr(state.consumer.app, RUNTIME_ATTR, None)
    if runtime is None:
        report: dict[str, Any] = {"file": None, "fingerprint": None, **versions(), "tasks": {}}
    else:
        report = runtime.report()
    if not tasks:
        report.pop("tasks", None)
    return report
