"""Reading a dead-letter queue without taking anything out of it, on each broker.

A store yields the dead letters of one queue, oldest first, and removes one only when asked
(after its replay is confirmed, or on purge). If the reading process dies half-way, every
message is still in the queue:

- Redis: ``LRANGE`` reads the list in place; ``LREM`` removes one exact message.
- RabbitMQ: there is no peek. The store consumes with acknowledgements and never
  acknowledges what it only reads; when its channel closes, or its connection dies with the
  process, RabbitMQ puts every unacknowledged message back in its place in the queue.
- Filesystem (kombu's ``filesystem://``, the demo's broker): one file per message, read in
  place; removing a dead letter deletes its file.

An entry that cannot be read is yielded as a dead letter with a ``problem`` (``reading.py``),
never raised: it can be listed and removed like any other.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

from kombu.connection import Connection

from ..compat import redis_queue_keys
from ..errors import PolicyError
from .envelope import DeadLetter, queue_size
from .reading import (
    counts_deliveries,
    from_amqp,
    from_payload,
    is_json,
    max_body_bytes,
    unreadable,
)
from .trimming import written_order

#: Redis reads and removes this many messages per round trip.
REDIS_CHUNK = 1000
#: RabbitMQ: stop reading when no message has arrived for this long (seconds).
AMQP_IDLE = 1.0
#: Filesystem: a file that is not JSON is taken as still being written by kombu (which writes
#: it in place, kombu/transport/filesystem.py ``_put``) for this long after its last change
#: (seconds), then shown as unreadable.
FILE_SETTLE = 5.0


class Store(Protocol):
    """The dead letters of one queue."""

    queue: str
    #: Whether the queue counts deliveries (a RabbitMQ quorum queue, which drops a message
    #: after its ``x-delivery-limit``, and reading is a delivery): known once ``letters``
    #: has read a letter.
    counting: bool

    def letters(self) -> Iterator[DeadLetter]:
        """Every dead letter in the queue, oldest first, left in place."""

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        """Take these dead letters (read from this store) out of the queue."""

    def close(self) -> None:
        """Stop reading: whatever was read and not removed stays in the queue."""


def open_store(connection: Connection, queue: str, max_body: int | None = None) -> Store:
    """The store of ``queue``; bodies decompress to at most ``max_body`` bytes (default:
    ``reading.max_body_bytes()``, which raises ``PolicyError`` on a bad setting)."""
    limit = max_body_bytes() if max_body is None else max_body
    driver = connection.transport.driver_type
    if driver == "redis":
        return RedisStore(connection, queue, limit)
    if driver == "amqp":
        return AmqpStore(connection, queue, limit)
    if driver == "filesystem":
        return FileStore(connection, queue, limit)
    raise PolicyError(f"dead-letter queues can be read on Redis, RabbitMQ and the filesystem "
                      f"transport, not on {driver!r} ({connection.as_uri()})")


class RedisStore:
    """kombu keeps a queue as a list per priority step, pushed on the left, popped on the
    right: the oldest message is the last element."""

    counting = False  # reading is no delivery

    def __init__(self, connection: Connection, queue: str, max_body: int) -> None:
        self.queue = queue
        self.max_body = max_body
        self.channel: Any = cast(Any, connection.default_channel)
        self.client = self.channel.client
        self.keys = redis_queue_keys(self.channel, queue)

    def letters(self) -> Iterator[DeadLetter]:
        position = 0
        for key in self.keys:
            # Negative indexes count from the oldest end, which new dead letters (pushed on
            # the other end) do not move; stop at the length seen at the start.
            remaining = int(self.client.llen(key))
            offset = 0
            while offset < remaining:
                size = min(REDIS_CHUNK, remaining - offset)
                chunk = self.client.lrange(key, -(offset + size), -(offset + 1))
                if not chunk:
                    return
                for raw in reversed(chunk):
                    position += 1
                    yield from_payload(raw, (key, raw), position, self.max_body)
                offset += size

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        for start in range(0, len(letters), REDIS_CHUNK):
            with self.client.pipeline(transaction=False) as pipe:
                for letter in letters[start:start + REDIS_CHUNK]:
                    key, raw = letter.handle
                    pipe.lrem(key, -1, raw)  # search from the oldest end, where it is
                pipe.execute()

    def close(self) -> None:
        pass


class AmqpStore:
    """Consumes the queue without acknowledging: RabbitMQ keeps every message it has
    delivered until it is acknowledged, and requeues the rest when the channel closes.

    It consumes on the channel itself (py-amqp's ``basic_consume``), not through kombu's
    ``Consumer``: that one declares its queues first (``Consumer.revive`` ->
    ``declare``) without the arguments the queue was made with (``x-max-length``,
    ``x-queue-type: quorum``, a TTL), which RabbitMQ refuses with PRECONDITION_FAILED; and
    kombu's ``Message`` decompresses a body whole before anyone can check its size.
    """

    def __init__(self, connection: Connection, queue: str, max_body: int) -> None:
        self.queue = queue
        self.max_body = max_body
        self.connection = connection
        self.channel: Any = connection.channel()
        self.counting = False

    def letters(self) -> Iterator[DeadLetter]:
        try:
            expected = queue_size(self.connection, self.queue)  # a passive declare
        except self.connection.channel_errors:
            return  # no such queue
        if not expected:
            return
        # The oldest letter is fetched, the rest consumed: a fetch shows a quorum queue's
        # x-delivery-count from the first delivery (0), a consumer only from the second
        # (measured on RabbitMQ 3.10), and reading must know whether the queue counts.
        first = self.channel.basic_get(self.queue, no_ack=False)
        if first is None:
            return  # taken meanwhile
        self.counting = counts_deliveries(first)
        yield from_amqp(first, 1, self.max_body)
        received: list[Any] = []
        self.channel.basic_qos(0, 0, False)  # no prefetch limit: hold every message
        tag = self.channel.basic_consume(self.queue, no_ack=False, callback=received.append)
        try:
            seen = 1
            while seen < expected:
                try:
                    self.connection.drain_events(timeout=AMQP_IDLE)
                except TimeoutError:
                    break
                for message in received:
                    seen += 1
                    yield from_amqp(message, seen, self.max_body)
                received.clear()
        finally:
            with contextlib.suppress(*self.connection.channel_errors,
                                     *self.connection.connection_errors):
                self.channel.basic_cancel(tag)

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            self.channel.basic_ack(letter.handle)

    def close(self) -> None:
        self.channel.close()  # requeues what was read and not removed


class FileStore:
    """kombu's filesystem transport: one ``<time>_<uuid>.<queue>.msg`` file per message."""

    counting = False  # reading is no delivery

    def __init__(self, connection: Connection, queue: str, max_body: int) -> None:
        self.queue = queue
        self.max_body = max_body
        self.channel: Any = cast(Any, connection.default_channel)
        self.folder = self.channel.data_folder_in

    def letters(self) -> Iterator[DeadLetter]:
        suffix = f"{self.queue}.msg"
        position = 0
        for path in sorted((os.path.join(self.folder, name) for name in os.listdir(self.folder)
                            if name.partition(".")[2] == suffix), key=written_order):
            try:
                with open(path, "rb") as file:
                    raw = file.read()
                changed = os.stat(path).st_mtime
            except FileNotFoundError:
                continue  # taken meanwhile
            except OSError as exc:
                position += 1
                yield unreadable(b"", path, position, f"cannot be read: {exc.strerror}")
                continue
            letter = from_payload(raw, path, position + 1, self.max_body)
            if (letter.problem is not None and time.time() - changed < FILE_SETTLE
                    and not is_json(raw)):
                continue  # maybe still being written
            position += 1
            yield letter

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            with contextlib.suppress(FileNotFoundError):
                os.remove(letter.handle)

    def close(self) -> None:
        pass

