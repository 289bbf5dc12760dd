"""Rules that need the app's broker settings: how long the broker waits for an
acknowledgement (CP101 Redis, CP102 RabbitMQ), prefetching with ``acks_late`` (CP109),
dead letters sent to a queue the workers consume (CP110), and a Redis visibility_timeout
that kombu's sweep checks less often than it passes (CP118).

Nothing connects: kombu builds a ``Connection`` without opening it, which tells the transport
apart and carries the app's ``broker_transport_options``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.transport import get_transport_cls

from ..compat import (
    REDIS_SWEEP_OPTIONS,
    redis_sweep_configurable,
    redis_sweep_period,
    uses_quorum_queues,
)
from ..spec.durations import format_duration
from ..spec.loader import Policies
from ._core import Blame, Context, Hit, rule
from .retries import long_countdowns

#: RabbitMQ's consumer_timeout, seconds, since 3.8.17, unless ``broker: consumer_timeout``
#: says what the server really has.
RABBITMQ_CONSUMER_TIMEOUT = 1800.0
#: A task whose time limit is longer than this, seconds, is a long task for CP109.
LONG_TASK = 60.0


@dataclass(frozen=True)
class Broker:
    """What the rules need of the broker the workers consume from."""

    #: kombu's ``driver_type``: ``redis`` (redis://, rediss://, sentinel://), ``amqp``
    #: (amqp://, amqps://, pyamqp://), another kombu transport's, or None if not loadable.
    kind: str | None
    transport_options: dict[str, Any]

    @property
    def visibility_timeout(self) -> float:
        """kombu's Redis channel takes ``visibility_timeout`` from the transport options
        (``from_transport_options`` in kombu/transport/redis.py), which Celery fills from
        ``broker_transport_options`` (``Celery._connection``); else its class default, 1 h."""
        channel = getattr(get_transport_cls("redis"), "Channel", None)
        default = getattr(channel, "visibility_timeout", 3600)
        return float(self.transport_options.get("visibility_timeout", default))


def read_broker(app: Celery) -> Broker:
    """The broker as the worker sees it: Celery tells brokers apart by the transport's
    ``driver_type`` (celery/worker/consumer/tasks.py, mingle.py). Nothing connects."""
    try:
        connection = app.connection_for_read()
    except (ImportError, KeyError, ValueError):  # an unusable URL: no broker's rule applies
        return Broker(None, {})
    with connection:
        try:
            transport = get_transport_cls(connection.transport_cls)
        except (ImportError, KeyError, AttributeError):
            transport = None
        kind = getattr(transport, "driver_type", None)
        return Broker(kind, dict(connection.transport_options or {}))


def consumer_timeout(policies: Policies) -> tuple[float | None, str]:
    """RabbitMQ's consumer_timeout (None: the server has none) and where it comes from."""
    section = policies.model.broker
    if section is not None and "consumer_timeout" in section.model_fields_set:
        return section.consumer_timeout, "broker.consumer_timeout in the file"
    return RABBITMQ_CONSUMER_TIMEOUT, "RabbitMQ's default since 3.8.17"


def _worker_holds_countdowns(app: Celery) -> bool:
    """Whether a worker holds a message with an ETA until it is due. With quorum queues,
    Celery 5.5+ hands countdowns to RabbitMQ's native delayed delivery instead
    (celery/worker/consumer/delayed_delivery.py): the broker holds them."""
    return not uses_quorum_queues(app)


def _broker_of(context: Context, kind: str) -> Broker | None:
    """The app's broker if it is of ``kind`` (``redis``, ``amqp``), for a rule that needs the
    app and applies to that broker alone; None where it does not apply."""
    assert context.app is not None
    broker = read_broker(context.app)
    return broker if broker.kind == kind else None


@rule("CP101", needs="app")
def redis_visibility_timeout(context: Context) -> Iterator[Hit]:
    # kombu#337, celery#4400: Redis has no acknowledgement deadline of its own; a message
    # unacknowledged for visibility_timeout goes back to the queue while it still runs.
    broker = _broker_of(context, "redis")
    if broker is None:
        return
    limit = broker.visibility_timeout
    timeout = f"the Redis visibility_timeout ({format_duration(limit)})"
    fix = "or raise visibility_timeout in the app's broker_transport_options"
    for subject in context.subjects:
        hard = subject.value("time_limit")
        if subject.value("acks_late") and hard is not None and hard > limit:
            yield Hit(context.blame(subject, "time_limit", "acks_late"),
                      f"an acks_late task's time_limit ({format_duration(hard)}) is longer than "
                      f"{timeout}",
                      "Redis gives a message left unacknowledged that long to another worker, "
                      "so a task still running then runs twice (kombu#337, celery#4400); keep "
                      f"time_limit under visibility_timeout, {fix}", subject.name)
        for blame, delay, label in long_countdowns(context, subject, limit):
            yield Hit(blame, f"retries{label} wait up to {format_duration(delay)}, longer than "
                      f"{timeout}",
                      "a retry is a message with an ETA that the worker holds unacknowledged "
                      "until it is due, acks_late or not; Redis redelivers it after "
                      "visibility_timeout, so the retry runs twice (kombu#337, celery#4400); cap "
                      f"the delay with retry_backoff_max or retry_deadline, {fix}",
                      subject.name)


@rule("CP102", needs="app")
def rabbitmq_consumer_timeout(context: Context) -> Iterator[Hit]:
    # celery#6760: RabbitMQ closes the channel of a consumer that holds a delivery
    # unacknowledged past consumer_timeout; every message on it is redelivered.
    assert context.app is not None
    if _broker_of(context, "amqp") is None:
        return
    limit, said = consumer_timeout(context.policies)
    if limit is None:
        return
    timeout = f"RabbitMQ's consumer_timeout ({format_duration(limit)}, {said})"
    effect = ("RabbitMQ closes the worker's channel with PRECONDITION_FAILED once a delivery "
              "stays unacknowledged that long; the worker reconnects and the messages it held "
              "are redelivered and run again (celery#6760)")
    fix = ("or raise consumer_timeout on the server and write its value under "
           "broker: consumer_timeout")
    holds = _worker_holds_countdowns(context.app)
    for subject in context.subjects:
        hard = subject.value("time_limit")
        if subject.value("acks_late") and hard is not None and hard > limit:
            yield Hit(context.blame(subject, "time_limit", "acks_late"),
                      f"an acks_late task's time_limit ({format_duration(hard)}) is longer than "
                      f"{timeout}", f"{effect}; keep time_limit under it, {fix}", subject.name)
        if not holds:
            continue
        for blame, delay, label in long_countdowns(context, subject, limit):
            yield Hit(blame, f"retries{label} wait up to {format_duration(delay)}, longer than "
                      f"{timeout}",
                      f"the worker holds a retry's message unacknowledged until it is due, "
                      f"acks_late or not: {effect}; cap the delay with retry_backoff_max or "
                      f"retry_deadline, {fix}", subject.name)


@rule("CP109", needs="app")
def acks_late_with_prefetch(context: Context) -> Iterator[Hit]:
    # Celery's docs ("Prefetch Limits"): with acks_late and long tasks, a multiplier of 1.
    assert context.app is not None
    multiplier = context.app.conf.worker_prefetch_multiplier
    if multiplier == 1 or (context.app.conf.get("worker_disable_prefetch")
                           and read_broker(context.app).kind == "redis"):
        return
    reserves = f"{multiplier} messages" if multiplier else "every message it can (0: no limit)"
    for subject in context.subjects:
        limit = subject.value("time_limit") or subject.value("soft_time_limit")
        if subject.value("acks_late") and limit is not None and limit > LONG_TASK:
            yield Hit(context.blame(subject, "acks_late", "time_limit", "soft_time_limit"),
                      f"acks_late task with a time limit over {format_duration(LONG_TASK)} "
                      f"while worker_prefetch_multiplier is {multiplier}",
                      f"each worker process reserves {reserves} and acknowledges none of "
                      "them until each has run: those behind a long task wait for it "
                      "instead of going to an idle worker, and count against the broker's "
                      "visibility_timeout or consumer_timeout; set worker_prefetch_multiplier "
                      "= 1 on the workers of long acks_late tasks", subject.name)


@rule("CP110", needs="app")
def dead_letter_queue_consumed(context: Context) -> Iterator[Hit]:
    assert context.app is not None
    # the queues of -Q in a worker; every declared queue (or task_default_queue) otherwise
    consumed = set(context.app.amqp.queues.consume_from)
    default = context.policies.model.dead_letter_queue
    for path, owner, layer in context.layers():
        for index, route in enumerate(layer.on_failure or ()):
            queue = route.dead_letter_queue(default)
            if queue in consumed:
                yield Hit(Blame((*path, "on_failure", index, "dead_letter"), owner),
                          f"dead letters go to queue {queue!r}, which the workers consume",
                          "a worker takes each dead letter as new work: the task runs again, "
                          "fails again and comes back, forever, and nothing stays for "
                          "`celery-policies dlq` to replay; send dead letters to a queue no "
                          "worker consumes (keep it out of task_queues and -Q)")


@rule("CP118", needs="app")
def redis_sweep_slower_than_timeout(context: Context) -> Iterator[Hit]:
    # kombu/transport/redis.py: QoS.restore_visible puts back only the messages it finds
    # past visibility_timeout, and the worker calls it every unacked_restore_interval x
    # unacked_restore_throttle seconds (kombu 5.7; call_repeatedly(10) scanning every 10th
    # call before). A dead worker's messages come back at the first sweep after the timeout.
    broker = _broker_of(context, "redis")
    if broker is None:
        return
    limit = broker.visibility_timeout
    sweep = redis_sweep_period(broker.transport_options)
    if limit >= sweep:
        return
    interval, throttle = REDIS_SWEEP_OPTIONS
    if redis_sweep_configurable():
        fix = (f"set {interval} in broker_transport_options to visibility_timeout or less, "
               f"with {throttle}: 1 (the sweep runs every {interval} x {throttle} seconds)")
    else:
        fix = (f"this kombu sweeps every {format_duration(sweep)} whatever the options "
               f"(kombu 5.7 adds {interval} and {throttle}): raise visibility_timeout to "
               f"{format_duration(sweep)} or more, or upgrade kombu")
    yield Hit(Blame((), None),
              f"the Redis visibility_timeout ({format_duration(limit)}) is shorter than "
              f"kombu's sweep of unacknowledged messages (every {format_duration(sweep)})",
              "kombu puts a message back in its queue only when a sweep finds it past "
              "visibility_timeout, so the messages of a worker that died come back up to "
              f"{format_duration(limit + sweep)} after it died, not {format_duration(limit)}; "
              + fix)
