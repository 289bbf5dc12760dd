"""``max_redeliveries``: a cap on redelivering a task whose worker process died.

With ``acks_late`` and ``reject_on_worker_lost`` Celery requeues the message of a task whose
pool process died (SIGKILL, OOM) and runs it again; a task that kills its process every time
loops forever (celery#9082), and a requeued message carries no count (Redis and RabbitMQ
classic queues alike). So, for such tasks, the worker's main process republishes the message
itself with a redelivery count in a header, then acknowledges the original: at least once,
never lost. Once the count reaches ``max_redeliveries`` the task fails for good with
``RedeliveriesExhausted``, through Celery's ordinary failure path (result backend,
``task_failure``, failure routes).

This works through ``Task.Request``, the request class the worker builds its strategy from
(celery/worker/strategy.py), so it is set at ``worker_init``, before strategies are built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery.exceptions import WorkerLostError
from celery.worker.request import Request
from celery.worker.state import task_ready
from kombu.utils.imports import symbol_by_name

from ..compat import EXIT_IS_LOST_WORKER, cancelled, request_context
from ..guard import TO_CELERY, guard
from ..headers import REDELIVERIES_HEADER
from ..logs import EXHAUSTED_FORMAT
from ..redelivery import RedeliveriesExhausted

log = logging.getLogger("celery_policies")


def lost(request: Any, exc: BaseException) -> bool:
    """Whether ``exc`` reports a lost worker process, as this Celery's ``Request.on_failure``
    decides: from 5.7, a ``SystemExit`` the worker did not cause itself also counts."""
    if isinstance(exc, WorkerLostError):
        return True
    return (EXIT_IS_LOST_WORKER and isinstance(exc, SystemExit | KeyboardInterrupt)
            and not cancelled(request))


#: Told of each redelivery made, for the metrics: (request).
RedeliveredHook = Callable[[Any], None]


def capped_request_class(request: str | type[Request], max_redeliveries: int,
                         redelivered: RedeliveredHook | None = None) -> type[Request]:
    """A subclass of a task's request class (``Task.Request``, a class or its dotted path)
    that redelivers at most ``max_redeliveries`` times; ``redelivered(request)`` is told of
    each redelivery."""
    base: type[Request] = symbol_by_name(request)

    class CappedRequest(base):  # type: ignore[misc]
        def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True,
                       return_ok: bool = False) -> Any:
            given = exc_info
            with guard(f"count the redeliveries of {self.name}[{self.id}]",
                       TO_CELERY) as step:
                exc = exc_info.exception
                if isinstance(exc, ExceptionWithTraceback):
                    exc = exc.exc
                if lost(self, exc):
                    done = int(self.request_dict.get(REDELIVERIES_HEADER) or 0)
                    if done < max_redeliveries:
                        if self._redeliver(done + 1, exc):
                            return None
                    else:
                        exc_info = _exhausted(self, exc, done)
            if step.failed:
                exc_info = given
            return super().on_failure(exc_info, send_failed_event, return_ok)

        def _redeliver(self, count: int, exc: BaseException) -> bool:
            context = request_context(self)
            headers = {**(context.headers or {}), REDELIVERIES_HEADER: count}
            try:
                self.task.signature_from_request(context, headers=headers).apply_async()
            except Exception:
                log.exception("could not redeliver %s[%s] after its worker process was lost; "
                              "leaving it to Celery", self.name, self.id)
                return False
            task_ready(self)
            self.acknowledge()
            log.warning("worker process lost running %s[%s] (%s): redelivered, %d of "
                        "max_redeliveries %d", self.name, self.id, exc, count, max_redeliveries)
            if redelivered is not None:
                with guard(f"count the redelivery of {self.name}[{self.id}]"):
                    redelivered(self)
            return True

    CappedRequest.__name__ = CappedRequest.__qualname__ = f"CappedRequest[{base.__name__}]"
    return CappedRequest


def _exhausted(request: Any, exc: BaseException, done: int) -> ExceptionInfo:
    message = (f"worker process lost running {request.name}[{request.id}] ({exc}) after "
               f"{done} redeliver{'y' if done == 1 else 'ies'}: max_redeliveries reached")
    log.error(EXHAUSTED_FORMAT, message)
    try:
        raise RedeliveriesExhausted(message) from exc
    except RedeliveriesExhausted:
        return ExceptionInfo()
