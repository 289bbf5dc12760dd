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
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from .compat import redis_queue_keys
from .deadletter import DeadLetter, Envelope, queue_size
from .errors import PolicyError

#: Redis reads and removes this many messages per round trip.
REDIS_CHUNK = 1000
#: RabbitMQ: stop reading when no message has arrived for this long (seconds).
AMQP_IDLE = 1.0


class Store(Protocol):
    """The dead letters of one queue."""

    queue: str

    def letters(self) -> Iterator[DeadLetter]:
        """Every dead letter in the queue, oldest first, left in place."""

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        """Take these dead letters (read from this store) out of the queue."""

    def close(self) -> None:
        """Stop reading: whatever was read and not removed stays in the queue."""


def open_store(connection: Connection, queue: str) -> Store:
    driver = connection.transport.driver_type
    if driver == "redis":
        return RedisStore(connection, queue)
    if driver == "amqp":
        return AmqpStore(connection, queue)
    if driver == "filesystem":
        return FileStore(connection, queue)
    raise PolicyError(f"dead-letter queues can be read on Redis, RabbitMQ and the filesystem "
                      f"transport, not on {driver!r} ({connection.as_uri()})")


class RedisStore:
    """kombu keeps a queue as a list per priority step, pushed on the left, popped on the
    right: the oldest message is the last element."""

    def __init__(self, connection: Connection, queue: str) -> None:
        self.queue = queue
        self.channel: Any = cast(Any, connection.default_channel)
        self.client = self.channel.client
        self.keys = redis_queue_keys(self.channel, queue)

    def letters(self) -> Iterator[DeadLetter]:
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
                    message = self.channel.Message(loads(bytes_to_str(raw)),
                                                   channel=self.channel)
                    yield DeadLetter(Envelope.of(message), (key, raw))
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
    delivered until it is acknowledged, and requeues the rest when the channel closes."""

    def __init__(self, connection: Connection, queue: str) -> None:
        self.queue = queue
        self.connection = connection
        self.channel = connection.channel()

    def letters(self) -> Iterator[DeadLetter]:
        try:
            expected = queue_size(self.connection, self.queue)
        except self.connection.channel_errors:
            return  # no such queue
        if not expected:
            return
        received: list[Any] = []
        # auto_declare=False: declaring it again without its arguments (x-max-length) fails
        consumer = Consumer(self.channel, [Queue(self.queue)], no_ack=False,
                            on_message=received.append, accept=None, auto_declare=False)
        self.channel.basic_qos(0, 0, False)  # no prefetch limit: hold every message
        with consumer:
            seen = 0
            while seen < expected:
                try:
                    self.connection.drain_events(timeout=AMQP_IDLE)
                except TimeoutError:
                    break
                for message in received:
                    yield DeadLetter(Envelope.of(message), message)
                seen += len(received)
                received.clear()

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            letter.handle.ack()

    def close(self) -> None:
        self.channel.close()  # requeues what was read and not removed


class FileStore:
    """kombu's filesystem transport: one ``<time>_<uuid>.<queue>.msg`` file per message."""

    def __init__(self, connection: Connection, queue: str) -> None:
        self.queue = queue
        self.channel: Any = cast(Any, connection.default_channel)
        self.folder = self.channel.data_folder_in

    def letters(self) -> Iterator[DeadLetter]:
        suffix = f"{self.queue}.msg"
        for path in sorted((os.path.join(self.folder, name) for name in os.listdir(self.folder)
                            if name.partition(".")[2] == suffix), key=_written):
            try:
                with open(path, "rb") as file:
                    payload = loads(bytes_to_str(file.read()))
            except FileNotFoundError:
                continue  # taken meanwhile
            except ValueError:
                continue  # still being written (kombu writes the file in place)
            message = self.channel.Message(payload, channel=self.channel)
            yield DeadLetter(Envelope.of(message), path)

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            with contextlib.suppress(FileNotFoundError):
                os.remove(letter.handle)

    def close(self) -> None:
        pass


def _written(path: str) -> tuple[int, int]:
    """A file message's order: kombu names it after the millisecond it was written, which
    several messages can share; the modification time (nanoseconds) breaks the tie."""
    name = os.path.basename(path)
    try:
        return int(name.partition("_")[0]), os.stat(path).st_mtime_ns
    except (ValueError, OSError):
        return 0, 0
