"""Patching one task with its compiled policy: attributes, the retry wrapper, the request class.

Done once per task at ``worker_init``, in the worker's main process, before the consumer
copies ``acks_late``, the time limits and ``rate_limit`` into its request classes (celery#9342).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from celery.app.task import Task

from ..compat import forget_exec_options, set_acks_on_failure_or_timeout
from ..metrics.names import NO_POLICY
from ..policy import TaskPolicy, unlimited_as_none
from ..spec.backoff import GiveUpReason, RetrySettings
from ..spec.settings import ATTRIBUTE_KEYS
from .counting import Counting, counted_request_class
from .redeliveries import capped_request_class
from .retrying import wrap_run
from .routes import FailureRouter, routed_request_class

#: Told of each give-up of the retry wrapper: (task, exception, why, retries made).
GaveUp = Callable[[Task, BaseException, GiveUpReason, int], None]


def patch(task: Task, policy: TaskPolicy, retry_settings: Callable[[], RetrySettings | None],
          gave_up: GaveUp, router: FailureRouter, *, reporting: bool,
          counting: Counting | None = None) -> None:
    """Set the attributes the file gives ``task``; wrap its run; cap its redeliveries.
    ``reporting``: whether a Sentry reporter needs the main process's failures;
    ``counting``: the worker's metrics, when it serves them (every task is then counted)."""
    from_file = policy.from_file()
    for key in ATTRIBUTE_KEYS:
        if key not in from_file:
            continue
        if key == "acks_on_failure_or_timeout":
            set_acks_on_failure_or_timeout(task, from_file[key])
            continue
        value: Any = from_file[key]
        if key in ("autoretry_for", "dont_autoretry_for"):
            value = getattr(policy.rules, key)  # the classes, imported when compiled
        setattr(task, key, unlimited_as_none(value))
    forget_exec_options(task)  # a cached copy of the time limits, used when publishing
    if policy.retry is not None:
        wrap_run(task, retry_settings, gave_up)
    # The request class runs in the worker's main process: the cap on redeliveries (which
    # hands the final failure down), then failure routes and the reports of main-process
    # failures, then the counting of what came of it all, each calling the next.
    request = task.__dict__.setdefault("_celery_policies_request", task.Request)
    if counting is not None:
        request = counted_request_class(request, counting, policy)
    if policy.value("on_failure") or reporting:
        request = routed_request_class(request, router)
    redeliveries = policy.value("max_redeliveries")
    if (policy.value("acks_late") and policy.value("reject_on_worker_lost")
            and isinstance(redeliveries, int)):
        label = policy.label or NO_POLICY
        request = capped_request_class(
            request, redeliveries,
            None if counting is None else partial(counting.redelivered, policy=label))
    task.Request = request
