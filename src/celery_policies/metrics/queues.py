"""How many dead letters each queue holds and when its oldest one failed, read through the
dead-letter stores (``deadletters/stores.py``) without taking any letter out.

- Redis: ``LLEN`` of each list kombu keeps the queue in, and ``LINDEX`` at the oldest end
  (the right: kombu pushes on the left, ``RedisStore``).
- RabbitMQ: the depth is ``message_count`` of a passive declare, which delivers nothing and
  never declares the queue again with other arguments (quorum, ``x-max-length``). AMQP has no
  peek: the oldest letter can only be fetched (``basic_get``) and handed back, and RabbitMQ
  counts that as a delivery. A quorum queue drops a letter after ``x-delivery-limit`` of them
  (RabbitMQ 4: 20 by default), so the age is read only when asked (``rabbitmq_age``), and
  only on queues that do not count deliveries: a letter that carries ``x-delivery-count`` (a
  quorum queue) is the last one fetched from its queue, and that queue shows no age.
- kombu's filesystem transport (the demo's broker): every letter's file is read, in place.

The figures are only counts and a time: nothing a letter holds (its task, arguments,
exception) leaves this module. An entry that cannot be read never raises (``reading.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kombu.connection import Connection

from ..connections import broker_errors, drop
from ..deadletters.envelope import DeadLetter, queue_size
from ..deadletters.reading import counts_deliveries, from_amqp, from_payload, max_body_bytes
from ..deadletters.stores import FileStore, RedisStore
from ..errors import PolicyError
from ..spec.model import DEFAULT_DEAD_LETTER_QUEUE, PolicyFile

log = logging.getLogger("celery_policies.metrics")

#: Redis: entries looked at from the oldest end for one with a failure time, so that a few
#: unreadable entries at the end do not hide the age of the letters behind them.
OLDEST_PROBE = 10


@dataclass(frozen=True)
class Depth:
    """What one read of a dead-letter queue found."""

    #: Dead letters in the queue (0 when it does not exist).
    letters: int
    #: When the oldest letter failed, in seconds since the epoch; None when the queue is
    #: empty, its age is not read (RabbitMQ without ``rabbitmq_age``), or no letter near the
    #: oldest end records a failure time.
    oldest_failed_at: float | None = None


def dead_letter_queues(model: PolicyFile | None, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The queues the exporter reads, sorted: the file's ``dead_letter.queue``, every queue an
    ``on_failure`` route names, and ``extra``. Without a file: ``extra``, else the default
    dead-letter queue."""
    names = set(extra)
    if model is not None:
        default = model.dead_letter_queue
        names.add(default)
        for layer in (model.defaults, *model.policies):
            for route in (layer.on_failure or ()) if layer is not None else ():
                queue = route.dead_letter_queue(default)
                if queue is not None:
                    names.add(queue)
    elif not names:
        names.add(DEFAULT_DEAD_LETTER_QUEUE)
    return tuple(sorted(names))


def _failed_at(letter: DeadLetter) -> float | None:
    when = letter.failed_at
    return when.timestamp() if when is not None else None


def _redis(connection: Connection, queue: str, max_body: int) -> Depth:
    store = RedisStore(connection, queue, max_body)
    total, oldest = 0, None
    for key in store.keys:  # one list per priority step; the worker uses one
        length = int(store.client.llen(key))
        total += length
        for index in range(1, min(length, OLDEST_PROBE) + 1):
            raw = store.client.lindex(key, -index)
            if raw is None:
                break  # emptied meanwhile
            failed_at = _failed_at(from_payload(raw, key, index, max_body))
            if failed_at is not None:
                oldest = failed_at if oldest is None else min(oldest, failed_at)
                break
    return Depth(total, oldest)


def _files(connection: Connection, queue: str, max_body: int) -> Depth:
    # kombu's filesystem transport (the demo's broker) keeps no count: every file is read.
    total, oldest = 0, None
    for letter in FileStore(connection, queue, max_body).letters():
        total += 1
        if oldest is None and total <= OLDEST_PROBE:
            oldest = _failed_at(letter)
    return Depth(total, oldest)


class QueueReader:
    """Reads every queue in one connection, made by ``connect`` for each read.

    ``read`` never raises: a queue it could not read maps to None (and the reason is
    logged); the broker going away mid-read leaves the queues after it unread too.
    """

    def __init__(self, connect: Callable[[], Connection], queues: Iterable[str], *,
                 rabbitmq_age: bool = False, max_body: int | None = None) -> None:
        self.connect = connect
        self.queues = tuple(queues)
        self.rabbitmq_age = rabbitmq_age
        self.max_body = max_body_bytes() if max_body is None else max_body
        #: RabbitMQ queues found counting deliveries: their age is not fetched again.
        self.counting: set[str] = set()

    def read(self) -> Mapping[str, Depth | None]:
        found: dict[str, Depth | None] = dict.fromkeys(self.queues)
        try:
            connection = self.connect()
        except PolicyError as exc:
            log.warning("dead-letter queues not read: %s", exc)
            return found
        except Exception:
            log.exception("dead-letter queues not read")
            return found
        lost = False
        try:
            for queue in self.queues:
                try:
                    found[queue] = self._read(connection, queue)
                except broker_errors(connection) as exc:
                    log.warning("dead-letter queue %r not read, nor those after it: %s",
                                queue, exc or type(exc).__name__)
                    lost = True
                    break
                except Exception as exc:  # refused: a Redis key of another type
                    log.error("dead-letter queue %r not read: %s: %s", queue,
                              type(exc).__name__, exc)
        finally:
            if lost:
                drop(connection)  # no goodbyes to a broker that does not answer
            else:
                try:
                    connection.release()
                except Exception:
                    drop(connection)
        return found

    def _read(self, connection: Connection, queue: str) -> Depth:
        driver = connection.transport.driver_type
        if driver == "redis":
            return _redis(connection, queue, self.max_body)
        if driver == "amqp":
            return self._amqp(connection, queue)
        if driver == "filesystem":
            return _files(connection, queue, self.max_body)
        raise PolicyError(f"the exporter reads dead-letter queues on Redis, RabbitMQ and the "
                          f"filesystem transport, not on {driver!r}")

    def _amqp(self, connection: Connection, queue: str) -> Depth:
        try:
            count = queue_size(connection, queue)  # a passive declare: nothing delivered
        except connection.channel_errors:
            return Depth(0)  # no such queue: nothing in it
        if not count or not self.rabbitmq_age or queue in self.counting:
            return Depth(count)
        channel: Any = connection.channel()
        try:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                return Depth(count)
            # Handed back at once; RabbitMQ puts it back in its place at the head.
            channel.basic_reject(message.delivery_tag, requeue=True)
        finally:
            channel.close()
        if counts_deliveries(message):
            self.counting.add(queue)
            log.warning("dead-letter queue %r counts deliveries (a quorum queue): its age is "
                        "not read, so that no letter reaches its delivery limit", queue)
            return Depth(count)
        return Depth(count, _failed_at(from_amqp(message, 1, self.max_body)))


def age(depth: Depth, now: Callable[[], float] = time.time) -> float | None:
    """Seconds since the oldest letter of ``depth`` failed (never below 0: clocks differ)."""
    if depth.oldest_failed_at is None or not depth.letters:
        return None
    return max(0.0, now() - depth.oldest_failed_at)
