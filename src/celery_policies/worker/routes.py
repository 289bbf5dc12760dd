"""Failure routes: what happens once a task has failed for good.

All of it happens in the worker's main process, in the task's request class, for three
reasons. Every final failure passes through there: ordinary exceptions come back from the pool
child (``Request.on_success`` → ``on_failure``), and hard time limits and lost worker processes
never reach a child at all (``on_timeout``, ``on_failure`` with ``WorkerLostError``). The
received message is there, so a dead letter is the original, byte for byte. And the
acknowledgement is decided there: routes run before it, so with ``acks_late`` a message is
acknowledged only after its dead letter is stored.

Celery calls these handlers zero, one or two times for one hard time limit depending on pool
and version (celery#7687, #6077: billiard calls ``on_failure`` with ``TimeLimitExceeded`` and
then ``on_timeout``); a request takes its routes at most once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery import Celery
from celery.exceptions import (
    Ignore,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    Terminated,
    TimeLimitExceeded,
)
from celery.worker.request import Request
from kombu.utils.imports import symbol_by_name

from ..compat import (
    EXIT_IS_LOST_WORKER,
    cancelled,
    lost_worker_is_final,
    shutting_down,
    timeout_is_final,
)
from ..deadletters.envelope import (
    MESSAGE_LIMIT,
    Envelope,
    Publisher,
    clip_traceback,
    dead_letter,
    epoch_iso,
    now_iso,
)
from ..deadletters.failure import failure_message, origin_queue
from ..deadletters.reading import from_entry, max_body_bytes
from ..guard import TO_CELERY, guard
from ..headers import FIRST_ATTEMPT_HEADER, GAVE_UP_ATTR, REDELIVERIES_HEADER
from ..logs import REDO_FORMAT, REDO_LOGGER, UNTAKEN_FORMAT
from ..redelivery import RedeliveriesExhausted
from ..sentry.screening import publishing_routes
from ..spec.exception_refs import exception_name
from .redeliveries import lost

log = logging.getLogger("celery_policies")

#: The WARNING naming a dead letter dropped to keep its queue at max_length.
DROPPED_FORMAT = ("dead-letter queue %s is over max_length %d: dropped its oldest dead letter, "
                  "%s[%s] (failed at %s)")
#: The WARNING of a RabbitMQ queue at its x-max-length: RabbitMQ drops without naming.
FULL_FORMAT = ("dead-letter queue %s is full (max_length %d): RabbitMQ drops its oldest dead "
               "letter for each new one, and does not say which")
#: The WARNING, once per queue, of a RabbitMQ queue that exists without our x-max-length.
UNLIMITED_FORMAT = ("dead-letter queue %s exists without the RabbitMQ limit max_length %d "
                    "asks for (x-max-length, set only when a queue is declared; it has none "
                    "or another): the workers drop its surplus themselves; delete the empty "
                    "queue to let RabbitMQ do it")
redo_log = logging.getLogger(REDO_LOGGER)
#: Told of every final failure once its routes were tried: (request, exc, reason, all taken).
FinalHook = Callable[[Any, BaseException, str, bool], None]

#: Told of each route taken, for the metrics: (request, route kind, whether it was taken).
RouteHook = Callable[[Any, str, bool], None]

#: The routes a task takes for an exception type: ``[("dead_letter", queue) | ("task", name)]``.
RoutesFor = Callable[[str, type[BaseException]], list[tuple[str, str]]]


class FailureRouter:
    """Runs failure routes for one worker: publishes dead letters and sends callback tasks.

    ``routes_for(task_name, exc_type)`` says which routes to take; ``label_for(task_name)``
    names the matching policy; ``retry_policy_for(task_name)`` is the publish retry policy.
    """

    def __init__(self, app: Celery, routes_for: RoutesFor,
                 label_for: Callable[[str], str | None],
                 retry_policy_for: Callable[[str], dict[str, Any] | None],
                 max_length: int | None = None) -> None:
        self.app = app
        self.on_final: FinalHook | None = None
        self.counting: RouteHook | None = None
        self.routes_for = routes_for
        self.label_for = label_for
        self.retry_policy_for = retry_policy_for
        self.max_length = max_length
        self._publisher: Publisher | None = None
        self._told: set[str] = set()

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.app.connection_for_write())
        return self._publisher

    def route(self, request: Any, exc: BaseException, traceback: str | None,
              reason: str) -> bool:
        """Take the failure routes of ``request``'s task; False if any could not be taken
        (each such route is then logged at CRITICAL with everything needed to redo it)."""
        taken = self.routes_for(request.name, type(exc))
        if not taken:
            return True
        envelope = Envelope.of(request.message)
        failure = self.failure_record(request, envelope, exc, traceback, reason)
        policy = self.retry_policy_for(request.name) or self.app.conf.task_publish_retry_policy
        ok = True
        for kind, target in taken:
            try:
                if kind == "dead_letter":
                    self._dead_letter(dead_letter(envelope, failure), target, policy)
                    log.info("dead-lettered %s[%s] to %s: %s %s", request.name, request.id,
                             target, reason, failure["exception"])
                else:
                    self._callback(target, request, failure, policy)
                    log.info("sent %s for failed %s[%s]", target, request.name, request.id)
            except Exception as error:
                ok = False
                self._count(request, kind, False)
                if kind == "dead_letter":
                    what = f"dead-letter {request.name}[{request.id}] to {target}"
                    message: Any = dead_letter(envelope, failure).jsonable()
                else:
                    what = f"send {target} for failed {request.name}[{request.id}]"
                    message = self.callback_kwargs(request, failure)
                log.critical(UNTAKEN_FORMAT, what, error, REDO_LOGGER)
                redo_log.critical(REDO_FORMAT, what, error,
                                  json.dumps({"route": kind, "target": target,
                                              "message": message}, default=repr))
            else:
                self._count(request, kind, True)
        return ok

    def _count(self, request: Any, kind: str, ok: bool) -> None:
        if self.counting is not None:
            with guard(f"count a failure route of {request.name}[{request.id}]"):
                self.counting(request, kind, ok)

    def failure_record(self, request: Any, envelope: Envelope, exc: BaseException,
                       traceback: str | None, reason: str) -> dict[str, Any]:
        """The ``celery_policies_failure`` header of a dead letter."""
        headers = envelope.headers
        delivery = request.delivery_info or {}
        first = headers.get(FIRST_ATTEMPT_HEADER)
        return {
            "reason": reason,
            "exception": exception_name(type(exc)),
            "exception_message": failure_message(exc)[:MESSAGE_LIMIT],
            "traceback": clip_traceback(traceback),
            "retries": int(headers.get("retries") or 0),
            "redeliveries": int(headers.get(REDELIVERIES_HEADER) or 0),
            "first_attempt_at": epoch_iso(float(first) if first else request.time_start),
            "last_attempt_at": epoch_iso(request.time_start),
            "failed_at": now_iso(),
            "hostname": request.hostname,
            "policy": self.label_for(request.name),
            "queue": origin_queue(self.app, delivery),
            "exchange": delivery.get("exchange"),
            "routing_key": delivery.get("routing_key"),
            "priority": envelope.properties.get("priority"),
        }

    @staticmethod
    def callback_kwargs(request: Any, failure: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments a ``task:`` route's callback receives: exactly these six,
        so that a callback written as a plain function of them keeps working."""
        return {"task_id": request.id, "task_name": request.name, "args": request.args,
                "kwargs": request.kwargs, "exception_type": failure["exception"],
                "exception_message": failure["exception_message"]}

    def _dead_letter(self, envelope: Envelope, queue: str, policy: dict[str, Any]) -> None:
        self.publisher.publish(envelope, queue, policy, max_length=self.max_length)
        if self.max_length is not None:
            self._trim(queue, self.max_length)

    def _trim(self, queue: str, max_length: int) -> None:
        """Keep ``queue`` at ``max_length`` (``trimming.py``), naming what is dropped. The
        dead letter is stored by now: a failure here is logged, never the route's."""
        if self.publisher.broker_limited(queue) is False and queue not in self._told:
            self._told.add(queue)
            log.warning(UNLIMITED_FORMAT, queue, max_length)
        try:
            trimmed = self.publisher.trim(queue, max_length)
            limit = max_body_bytes()
        except Exception as error:
            log.warning("could not keep dead-letter queue %s at max_length %d (%r); it is "
                        "trimmed again after its next dead letter", queue, max_length, error)
            return
        for old in trimmed.dropped:
            letter = from_entry(old, limit)
            if letter.problem is not None:
                log.warning(DROPPED_FORMAT, queue, max_length, "an unreadable message", "?",
                            "?")
            else:
                log.warning(DROPPED_FORMAT, queue, max_length, letter.task, letter.id,
                            letter.failure.get("failed_at"))
        if trimmed.full:
            log.warning(FULL_FORMAT, queue, max_length)

    def _callback(self, name: str, request: Any, failure: dict[str, Any],
                  policy: dict[str, Any]) -> None:
        self.publisher.send_task(self.app, name, self.callback_kwargs(request, failure), policy)

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()


def final_reason(request: Any, exc: BaseException) -> str | None:
    """Why ``request`` failed for good, or None when Celery does not end it here (a retry, a
    requeue, a revoke, a cold shutdown). Mirrors ``celery/worker/request.py`` ``on_failure``."""
    if isinstance(exc, Retry | Ignore | Terminated) or shutting_down():
        return None
    if isinstance(exc, Reject):
        return None if exc.requeue else "rejected"
    task = request.task
    if isinstance(exc, RedeliveriesExhausted):
        return "worker_lost"
    if (isinstance(exc, SystemExit | KeyboardInterrupt) and EXIT_IS_LOST_WORKER
            and cancelled(request)):
        return None  # killed by a revoke or shutdown of the worker's own
    if lost(request, exc):
        return "worker_lost" if lost_worker_is_final(request) else None
    if isinstance(exc, TimeLimitExceeded):
        return "time_limit" if timeout_is_final(task) else None
    if isinstance(exc, SoftTimeLimitExceeded):
        return "time_limit"
    return "deadline" if getattr(exc, GAVE_UP_ATTR, None) == "deadline" else "exception"


def routed_request_class(request: str | type[Request], router: FailureRouter) -> type[Request]:
    """A subclass of a task's request class that takes the failure routes of final failures."""
    base: type[Request] = symbol_by_name(request)

    class RoutedRequest(base):  # type: ignore[misc]
        _celery_policies_routed = False
        _celery_policies_hold = False

        def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True,
                       return_ok: bool = False) -> Any:
            with guard(f"take the failure routes of {self.name}[{self.id}]", TO_CELERY):
                exc = exc_info.exception
                if isinstance(exc, ExceptionWithTraceback):
                    exc = exc.exc
                if not self._celery_policies_routed:
                    reason = final_reason(self, exc)
                    if reason is not None:
                        self._take_routes(exc, exc_info.traceback, reason)
            return super().on_failure(exc_info, send_failed_event, return_ok)

        def on_timeout(self, soft: bool, timeout: float) -> Any:
            with guard(f"take the failure routes of {self.name}[{self.id}]", TO_CELERY):
                if (not soft and not self._celery_policies_routed and not shutting_down()
                        and timeout_is_final(self.task)):
                    exc = TimeLimitExceeded(timeout)
                    self._take_routes(exc, f"TimeLimitExceeded({timeout})", "time_limit")
            return super().on_timeout(soft, timeout)

        def _take_routes(self, exc: BaseException, traceback: str | None,
                         reason: str) -> None:
            self._celery_policies_routed = True
            try:
                with publishing_routes():  # what the broker's client records quotes the message
                    ok = router.route(self, exc, traceback, reason)
            except Exception:
                log.critical("could not take the failure routes of %s[%s]", self.name,
                             self.id, exc_info=True)
                ok = False
            # With acks_late the broker still holds the message: keep it there (it comes
            # back when the connection does) rather than lose it with its dead letter.
            self._celery_policies_hold = not ok and bool(self.task.acks_late)
            if self._celery_policies_hold:
                log.critical("not acknowledging %s[%s]: its failure routes were not taken; "
                             "the broker redelivers it once this worker reconnects or stops",
                             self.name, self.id)
            if router.on_final is not None:
                router.on_final(self, exc, reason, ok)

        def acknowledge(self) -> None:
            if not self._celery_policies_hold:
                super().acknowledge()

        def reject(self, requeue: bool = False) -> None:
            if not self._celery_policies_hold:
                super().reject(requeue=requeue)

    RoutedRequest.__name__ = RoutedRequest.__qualname__ = f"RoutedRequest[{base.__name__}]"
    return RoutedRequest
