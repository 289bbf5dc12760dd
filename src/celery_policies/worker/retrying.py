"""The plugin's retry wrapper: Celery's autoretry, driven by the policy file.

Celery freezes ``autoretry_for``, ``retry_backoff`` and friends into a closure when a task is
registered (celery/app/autoretry.py, celery#4684), so setting them later does nothing. The
worker therefore replaces the task's ``run`` with this wrapper, around the task's original
``run`` (under Celery's own wrapper, when the task code had one). The wrapper costs one
``try`` on success; on failure it asks the task's ``RetrySettings``, read at call time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from functools import wraps
from time import time
from typing import Any

from celery.app.task import Task
from celery.exceptions import Ignore, Reject, Retry

from ..compat import celery_original_run, clear_max_retries_override
from ..guard import TO_CELERY, guard
from ..headers import FIRST_ATTEMPT_HEADER, GAVE_UP_ATTR
from ..spec.backoff import GiveUp, GiveUpReason, RetrySettings
from ..spec.backoff import Retry as Delay

log = logging.getLogger("celery_policies")

#: Marks a task whose ``run`` is the plugin's wrapper; holds the run it wraps.
ORIGINAL_RUN = "_celery_policies_run"

# Raised by task code to steer Celery itself: never retried, never counted as a failure here.
_PASS_THROUGH = (Ignore, Retry, Reject)

GiveUpHook = Callable[[Task, BaseException, GiveUpReason, int], None]


def original_run(task: Task) -> Callable[..., Any]:
    """The task's own ``run``, under the plugin's or Celery's autoretry wrapper if any."""
    run = task.__dict__.get(ORIGINAL_RUN) or celery_original_run(task) or task.run
    return run


def wrap_run(task: Task, settings_for: Callable[[], RetrySettings | None],
             gave_up: GiveUpHook) -> None:
    """Make ``task`` retry as ``settings_for()`` says; idempotent.

    ``gave_up(task, exc, reason, retries)`` is told about every failure the wrapper lets
    through, before the original exception is re-raised (so the result backend stores it).
    """
    run = original_run(task)

    @wraps(run)
    def retrying_run(*args: Any, **kwargs: Any) -> Any:
        started = time()
        try:
            return run(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            # A fault of the plugin's here must not replace the task's exception: it is
            # logged, and the exception goes on as if there were no wrapper. Only Celery's
            # own retry() below raises from this block on purpose.
            decision: Delay | GiveUp | None = None
            with guard(f"decide whether to retry {task.name}[{task.request.id}]",
                       TO_CELERY):
                settings = settings_for()
                if settings is not None:
                    request = task.request
                    headers = dict(request.headers or {})
                    first = float(headers.get(FIRST_ATTEMPT_HEADER, started))
                    decision = settings.decide(type(exc), request.retries, time() - first)
            if decision is None:
                raise
            if isinstance(decision, GiveUp):
                with suppress(AttributeError, TypeError):  # no __dict__ to carry it
                    setattr(exc, GAVE_UP_ATTR, decision.reason)
                with guard(f"log the end of {task.name}[{request.id}]"):
                    gave_up(task, exc, decision.reason, request.retries)
                raise
            log.info("retrying %s[%s] in %.2fs after %s (retry %d)", task.name, request.id,
                     decision.countdown, type(exc).__name__, request.retries + 1)
            headers[FIRST_ATTEMPT_HEADER] = first
            try:
                # The decision is made: max_retries here only keeps Celery's own check
                # (celery/app/task.py retry) from second-guessing it.
                raise task.retry(exc=exc, countdown=decision.countdown, headers=headers,
                                 max_retries=request.retries + 1) from exc
            finally:
                clear_max_retries_override(task)

    task.__dict__[ORIGINAL_RUN] = run
    task.run = retrying_run

