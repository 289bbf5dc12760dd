"""How a failure is described, the same way in a dead letter, a Sentry event and the log."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.exceptions import Reject, TimeLimitExceeded


def origin_queue(app: Celery, delivery: dict[str, Any]) -> str | None:
    """The name of the worker queue a message came from (by exchange and routing key)."""
    exchange, key = delivery.get("exchange") or "", delivery.get("routing_key")
    for queue in app.amqp.queues.values():
        if queue.routing_key == key and (queue.exchange.name or "") in (exchange, ""):
            return str(queue.name)
    return key


def failure_message(exc: BaseException) -> str:
    """An exception's message as a person reads it."""
    if isinstance(exc, TimeLimitExceeded) and exc.args:  # str() gives "TimeLimitExceeded(2,)"
        return f"hard time limit ({exc.args[0]}s) exceeded"
    if isinstance(exc, Reject):  # str() gives "('reason', False)"
        return f"rejected without requeue: {exc.reason}"
    return str(exc)
