"""What a running worker applies, read-only: the answers the retry wrapper, the failure routes,
the Sentry reporter and ``celery inspect policies`` ask for.

Every answer is a lookup in the table of ``TaskPolicy`` compiled when the file was applied;
nothing here matches a pattern or imports an exception class.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from celery import Celery

from ..appinfo import PLUGIN_DEFAULTS, SETTING_KEYS, code_setting
from ..policy import TaskPolicy, jsonable
from ..spec.backoff import RetrySettings
from ..spec.loader import Policies
from ..tools.fleet import versions


class AppliedPolicies:
    """The policies one app's worker applies, task by task."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.policies: Policies | None = None
        self.tasks: Mapping[str, TaskPolicy] = {}
        self.loaded_at: datetime | None = None
        self.pool: str | None = None
        self._fingerprint: str | None = None

    def label(self, name: str) -> str | None:
        policy = self.tasks.get(name)
        return policy.label if policy else None

    def retry_settings(self, name: str) -> RetrySettings | None:
        policy = self.tasks.get(name)
        return None if policy is None else policy.retry

    def routes_taken(self, name: str, exc_type: type[BaseException]) -> list[tuple[str, str]]:
        """The failure routes task ``name`` takes when it fails for good with ``exc_type``."""
        policy = self.tasks.get(name)
        return policy.routes_for(exc_type) if policy else []

    def describe_routes(self, name: str, exc_type: type[BaseException]) -> str:
        taken = self.routes_taken(name, exc_type)
        return ", ".join(f"{kind} {target}" for kind, target in taken) or "none"

    def retries_allowed(self, name: str, exc_type: type[BaseException]) -> int | None:
        """The retries task ``name`` may make after ``exc_type``; None for no limit."""
        policy = self.tasks.get(name)
        if policy is not None:
            return policy.retries_allowed(exc_type)
        max_retries: int | None = getattr(self.app.tasks.get(name), "max_retries", None)
        return max_retries

    def fingerprint(self) -> str | None:
        return self._fingerprint

    def effective(self, name: str) -> dict[str, Any]:
        """Task ``name``'s policies and effective settings, as ``inspect policies`` gives them."""
        policy = self.tasks.get(name)
        if policy is None:
            return {"file": self.file, "matched": []}
        return {"file": self.file, **self._task_report(name, policy)}

    @property
    def file(self) -> str | None:
        return self.policies.file if self.policies else None

    def report(self) -> dict[str, Any]:
        """This worker's answer to ``celery inspect policies``: per task, plain attributes
        read back from the live task objects, the plugin's own keys from its table."""
        tasks = {name: self._task_report(name, policy) for name, policy in self.tasks.items()}
        return {"file": self.file, "fingerprint": self.fingerprint(), **versions(),
                "loaded_at": self.loaded_at.isoformat() if self.loaded_at else None,
                "pool": self.pool, "tasks": tasks}

    def _task_report(self, name: str, policy: TaskPolicy) -> dict[str, Any]:
        task = self.app.tasks[name]
        settings = {key: jsonable(policy.value(key) if key in PLUGIN_DEFAULTS
                                  else code_setting(self.app, task, key).value)
                    for key in SETTING_KEYS}
        request = task.Request
        return {"matched": list(policy.matched),
                "retry_wrapper": policy.retry is not None,
                "request_class": request if isinstance(request, str)
                else f"{request.__module__}.{request.__qualname__}",
                "settings": settings}
