"""Counting what happens to each task, in the worker's main process, for its metrics.

Celery hands every outcome of a task back to the worker's main process through the task's
request class: a success or an ordinary failure comes back from the pool child
(``Request.on_success``, which calls ``on_failure``; ``on_failure`` calls ``on_retry`` for a
``Retry``), time limits come from the pool's timer (``on_timeout``), and a lost process from
the pool (``on_failure`` with ``WorkerLostError``). Counting there means one process and one
registry: prefork children need no shared directory, and nothing is counted twice.

The plugin gives every task of the file's table a request class that counts
(``counted_request_class``), under the failure routes' and the redelivery cap's, which tell
it what they did (``FailureRouter.counting``, ``capped_request_class``). A counting fault is
logged and never reaches Celery (``guard``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import wraps
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery import Celery
from celery.exceptions import Retry, TimeLimitExceeded
from celery.utils.serialization import UnpickleableExceptionWrapper
from celery.worker.request import Request
from kombu.utils.imports import symbol_by_name

from ..compat import lost_worker_outcome, shutting_down, timeout_is_final
from ..deadletters.failure import origin_queue
from ..guard import TO_CELERY, guard
from ..headers import GAVE_UP_ATTR, REDELIVERIES_HEADER
from ..metrics.names import NO_POLICY
from ..metrics.worker import OTHER_QUEUE, TaskLabels, WorkerMetrics
from ..policy import TaskPolicy
from ..redelivery import RedeliveriesExhausted
from ..spec.durations import seconds_until
from ..spec.exception_refs import exception_name
from .redeliveries import lost
from .routes import final_reason

#: Distinct ``(exchange, routing key)`` pairs whose queue label is remembered.
QUEUE_CACHE_SIZE = 256

_COUNTED = "_celery_policies_counted"
_HARD_COUNTED = "_celery_policies_hard_counted"
_SOFT_COUNTED = "_celery_policies_soft_counted"


class Counting:
    """What one worker counts: ``metrics``, with a task's labels worked out from its request."""

    def __init__(self, app: Celery, metrics: WorkerMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._queues: dict[tuple[str, str | None], str] = {}
        self._lock = threading.Lock()

    def labels(self, request: Any, policy: str) -> TaskLabels:
        return (request.name, policy, self.queue(request.delivery_info or {}))

    def queue(self, delivery: dict[str, Any]) -> str:
        """The queue a message came from, if the worker consumes it, else ``OTHER_QUEUE``:
        the label is bounded by the queues the operator gave the worker, whatever routing
        keys messages carry. Read live (``add_consumer`` adds queues), remembered per pair."""
        key = (delivery.get("exchange") or "", delivery.get("routing_key"))
        label = self._queues.get(key)
        if label is None:
            name = origin_queue(self.app, delivery)
            queues = self.app.amqp.queues
            consumed = queues.consume_from or queues
            label = name if name is not None and name in consumed else OTHER_QUEUE
            with self._lock:
                if len(self._queues) < QUEUE_CACHE_SIZE:
                    self._queues[key] = label
        return label

    # -- what the request class tells --------------------------------------------------------
    def succeeded(self, request: Any, policy: str) -> None:
        self.metrics.succeeded(self.labels(request, policy), attempts(request))

    def retried(self, request: Any, policy: str, retry: Retry) -> None:
        self.metrics.retried(self.labels(request, policy), retried_name(retry),
                             seconds_until(retry.when))

    def failed(self, request: Any, policy: str, exc: BaseException) -> None:
        """``on_failure``: a final failure, or a lost process that Celery requeues."""
        if isinstance(exc, TimeLimitExceeded):
            self.timed_out(request, policy, soft=False)
        if getattr(request, _COUNTED, False):
            return
        reason = final_reason(request, exc)
        if reason is None:
            if (lost(request, exc) and not shutting_down()
                    and lost_worker_outcome(request) == "requeued"):
                setattr(request, _COUNTED, True)
                self.redelivered(request, policy)
            return
        setattr(request, _COUNTED, True)
        labels = self.labels(request, policy)
        if reason == "exception":
            reason = _gave_up(exc) or reason
        if isinstance(exc, RedeliveriesExhausted):
            self.metrics.cap_reached(labels)
        self.metrics.failed(labels, reason, attempts(request))

    def timed_out(self, request: Any, policy: str, *, soft: bool) -> None:
        """``on_timeout``: a hard limit is also a final failure unless Celery requeues it.
        Celery may report one hard limit twice (celery#7687, #6077): counted once."""
        flag = _SOFT_COUNTED if soft else _HARD_COUNTED
        if getattr(request, flag, False):
            return
        setattr(request, flag, True)
        labels = self.labels(request, policy)
        self.metrics.timed_out(labels, "soft" if soft else "hard")
        if (not soft and not getattr(request, _COUNTED, False) and not shutting_down()
                and timeout_is_final(request.task)):
            setattr(request, _COUNTED, True)
            self.metrics.failed(labels, "time_limit", attempts(request))

    def redelivered(self, request: Any, policy: str) -> None:
        self.metrics.redelivered(self.labels(request, policy))

    def routed(self, request: Any, policy: str, route: str, ok: bool) -> None:
        self.metrics.routed(self.labels(request, policy), route,
                            "published" if ok else "failed")


def attempts(request: Any) -> int:
    """Runs of the task so far, this one included: its retries and the plugin's
    redeliveries (a redelivery Celery makes itself carries no count)."""
    values = request.request_dict
    return 1 + _count(values.get("retries")) + _count(values.get(REDELIVERIES_HEADER))


def _count(value: Any) -> int:
    """A count from a message (anyone may publish one): anything but a whole number >= 0
    counts as 0, so that a hostile header cannot lose the outcome it comes with."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def retried_name(retry: Retry) -> str:
    """The name of the exception a ``Retry`` carries back from the pool child. One that
    could not be pickled comes as Celery's wrapper, which keeps the class's name
    (celery/utils/serialization.py); a retry without an exception is ``Retry``."""
    exc = retry.exc
    if isinstance(exc, UnpickleableExceptionWrapper):
        module, name = str(exc.exc_module), str(exc.exc_cls_name)
        return name if module == "builtins" else f"{module}.{name}"
    return exception_name(type(exc)) if isinstance(exc, BaseException) else "Retry"


def _gave_up(exc: BaseException) -> str | None:
    """Why the retry wrapper stopped retrying ``exc`` (``not_retryable``, ``max_retries``,
    ``deadline``): the mark travels with the pickled exception from the pool child."""
    reason = getattr(exc, GAVE_UP_ATTR, None)
    return reason if isinstance(reason, str) else None


def _exception(exc_info: ExceptionInfo) -> BaseException:
    exc: BaseException = exc_info.exception
    if isinstance(exc, ExceptionWithTraceback):
        inner: BaseException = exc.exc
        return inner
    return exc


def counted_request_class(request: str | type[Request], counting: Counting,
                          policy: TaskPolicy | None) -> type[Request]:
    """A subclass of a task's request class that counts its outcomes."""
    base: type[Request] = symbol_by_name(request)
    label = (policy.label if policy is not None else None) or NO_POLICY

    class CountedRequest(base):  # type: ignore[misc]
        def __init_subclass__(cls, **kwargs: Any) -> None:
            # The worker runs a subclass of the task's request class that Celery builds per
            # task (celery/worker/request.py ``create_request_cls``, 5.3 to 5.7), whose
            # ``on_success`` handles a success itself and never calls its base's: the only
            # place a success can be counted is that class's own method.
            super().__init_subclass__(**kwargs)
            own = cls.__dict__.get("on_success")
            if own is not None:
                cls.on_success = _counting_success(own, counting, label)

        def on_retry(self, exc_info: ExceptionInfo) -> Any:
            with guard(f"count a retry of {self.name}[{self.id}]", TO_CELERY):
                retry = _exception(exc_info)
                if isinstance(retry, Retry):
                    counting.retried(self, label, retry)
            return super().on_retry(exc_info)

        def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True,
                       return_ok: bool = False) -> Any:
            with guard(f"count the failure of {self.name}[{self.id}]", TO_CELERY):
                counting.failed(self, label, _exception(exc_info))
            return super().on_failure(exc_info, send_failed_event, return_ok)

        def on_timeout(self, soft: bool, timeout: float) -> Any:
            with guard(f"count the time limit of {self.name}[{self.id}]", TO_CELERY):
                counting.timed_out(self, label, soft=soft)
            return super().on_timeout(soft, timeout)

    CountedRequest.__name__ = CountedRequest.__qualname__ = f"CountedRequest[{base.__name__}]"
    return CountedRequest


def _counting_success(on_success: Callable[..., Any], counting: Counting,
                      label: str) -> Callable[..., Any]:
    @wraps(on_success)
    def counted(self: Any, failed__retval__runtime: Any, **kwargs: Any) -> Any:
        result = on_success(self, failed__retval__runtime, **kwargs)
        if not failed__retval__runtime[0]:
            # Every task that succeeds comes through here, in the main process that also
            # receives and acknowledges every message: the guard's description of the
            # request is built only when counting has failed.
            try:
                counting.succeeded(self, label)
            except Exception:
                with guard(f"count the success of {self.name}[{self.id}]"):
                    raise
        return result

    return counted
