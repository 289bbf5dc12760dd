"""``celery -A proj inspect policies``: what each running worker applies, for fleets and tests.

The answer is ``Runtime.report()``: the policy file, a fingerprint of the effective policies
(equal on every worker that runs the same policies for the same tasks), versions, load time
and the per-task settings as the running worker holds them.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import celery
from celery.worker.control import inspect_command

#: The attribute of a Celery app holding its ``Runtime`` (set by ``install``).
RUNTIME_ATTR = "_celery_policies_runtime"


def versions() -> dict[str, str]:
    return {"celery_policies": version("celery-policies"), "celery": celery.__version__}


@inspect_command(name="policies")  # type: ignore[untyped-decorator]
def policies(state: Any, **_: Any) -> dict[str, Any]:
    """The policy file, fingerprint and per-task settings this worker applies."""
    runtime = getattr(state.consumer.app, RUNTIME_ATTR, None)
    if runtime is None:
        return {"file": None, "fingerprint": None, **versions(), "tasks": {}}
    report: dict[str, Any] = runtime.report()
    return report
