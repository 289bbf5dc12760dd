"""Keeping a dead-letter queue at ``dead_letter.max_length`` while many workers dead-letter.

Reading a queue's length and then dropping the excess is a race: workers that publish at the
same moment all see the same excess and all drop it, emptying a full queue. Each broker is
trimmed so that only the surplus can go:

- Redis: one Lua script counts and trims in a single step (Redis runs a script atomically),
  and returns what it dropped so that the worker can name it.
- RabbitMQ: the broker keeps the limit itself when the queue was declared with it
  (``x-max-length`` with ``x-overflow: drop-head``, ``queue_arguments``); RabbitMQ then drops
  the oldest message for each new one past the limit, without saying which. A queue that
  already exists without these arguments cannot be declared again with them (RabbitMQ closes
  the channel with PRECONDITION_FAILED), so there the worker drops the surplus itself: it
  takes the oldest message and drops it only if at least ``max_length`` others are still
  ready in the queue (``basic.get-ok`` says how many), else puts it back and stops.
- Filesystem (one file per message): each worker deletes the oldest files over the limit; a
  file deleted by another worker first is not counted twice, so only the surplus goes. A file
  still being written is never deleted: the queue can keep one more until the next trim.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, cast

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.transport.filesystem import LOCK_SH, lock, unlock

from ..compat import redis_server_keys

#: Drops the oldest messages of a queue's lists (KEYS, kombu's lists per priority step) over
#: ARGV[1] messages in all, in one atomic step; returns them, oldest first. kombu pushes on the
#: left and pops on the right, so the oldest of a list is at its right end. Dead letters are
#: published without a priority, so they all sit in one list; were there several, the lists
#: consumed last (the last keys) are trimmed first. LRANGE and LTRIM, not ``RPOP key count``,
#: which needs Redis 6.2.
REDIS_TRIM_SCRIPT = """
local surplus = -tonumber(ARGV[1])
for i = 1, #KEYS do surplus = surplus + redis.call('LLEN', KEYS[i]) end
local dropped = {}
for i = #KEYS, 1, -1 do
  if surplus <= 0 then break end
  local count = math.min(surplus, redis.call('LLEN', KEYS[i]))
  if count > 0 then
    local oldest = redis.call('LRANGE', KEYS[i], -count, -1)
    redis.call('LTRIM', KEYS[i], 0, -count - 1)
    for j = #oldest, 1, -1 do dropped[#dropped + 1] = oldest[j] end
    surplus = surplus - count
  end
end
return dropped
"""
#: RabbitMQ's queue argument for the most messages a queue keeps.
AMQP_MAX_LENGTH = "x-max-length"
#: RabbitMQ's queue argument saying what happens past it: drop the oldest (RabbitMQ's default,
#: said explicitly so that a queue declared by hand with another choice is told apart).
AMQP_OVERFLOW = ("x-overflow", "drop-head")


def limit_arguments(max_length: int) -> dict[str, Any]:
    """The arguments a RabbitMQ queue is declared with to keep at most ``max_length``."""
    return {AMQP_MAX_LENGTH: max_length, AMQP_OVERFLOW[0]: AMQP_OVERFLOW[1]}


@dataclass(frozen=True)
class Trimmed:
    """What trimming a queue did.

    ``dropped``: the entries taken out, oldest first, as stored: kombu's JSON (Redis, the
    filesystem) or py-amqp messages (RabbitMQ); ``reading.from_entry`` reads either, never
    decompressing past the size cap. ``full``: the broker keeps the limit itself and the queue is
    at it, so it dropped its oldest message for the new one (which one, it does not say)."""

    dropped: list[Any] = field(default_factory=list)
    full: bool = False


def trim(connection: Connection, queue: str, max_length: int, *,
         broker_limited: bool = False) -> Trimmed:
    """Drop the oldest messages of ``queue`` over ``max_length``, and only those, however
    many workers trim it at the same moment. ``broker_limited``: RabbitMQ keeps the limit
    (the queue has ``limit_arguments``)."""
    driver = connection.transport.driver_type
    if driver == "redis":
        return Trimmed(_trim_redis(connection, queue, max_length))
    if driver == "amqp":
        if broker_limited:
            return Trimmed(full=_ready(connection, queue) >= max_length)
        return Trimmed(_trim_amqp(connection, queue, max_length))
    if driver == "filesystem":
        return Trimmed(_trim_files(connection, queue, max_length))
    return Trimmed()  # a transport with no dead-letter tools (docs/deadletters.md)


def _trim_redis(connection: Connection, queue: str, max_length: int) -> list[Any]:
    channel: Any = cast(Any, connection.default_channel)
    keys = redis_server_keys(channel, queue)
    dropped = channel.client.eval(REDIS_TRIM_SCRIPT, len(keys), *keys, max_length)
    return list(dropped)


def _ready(connection: Connection, queue: str) -> int:
    with connection.channel() as channel:
        return int(Queue(queue)(channel).queue_declare(passive=True).message_count)


def _trim_amqp(connection: Connection, queue: str, max_length: int) -> list[Any]:
    dropped = []
    with connection.channel() as channel:
        for _ in range(_ready(connection, queue) - max_length):
            # py-amqp's basic_get, not kombu's Queue.get: kombu's Message would decompress
            # the body whole (a compression bomb in the worker's memory); reading.py reads it.
            message = channel.basic_get(queue=queue, no_ack=False)
            if message is None:
                break
            # Ready messages left besides this one: dropping it must leave max_length. Fewer
            # means other workers dropped the surplus meanwhile (or hold messages they will
            # put back): put this one back, in its place, and stop.
            if int(message.delivery_info.get("message_count", 0)) < max_length:
                channel.basic_reject(message.delivery_tag, requeue=True)
                break
            channel.basic_ack(message.delivery_tag)
            dropped.append(message)
    return dropped


def _trim_files(connection: Connection, queue: str, max_length: int) -> list[Any]:
    channel: Any = cast(Any, connection.default_channel)
    folder, suffix = channel.data_folder_in, f"{queue}.msg"
    names = [name for name in os.listdir(folder) if name.partition(".")[2] == suffix]
    surplus = len(names) - max_length
    if surplus <= 0:
        return []
    paths = sorted((os.path.join(folder, name) for name in names), key=written_order)
    dropped = []
    for path in paths[:surplus]:
        with contextlib.suppress(FileNotFoundError):
            with open(path, "rb") as file:
                # kombu writes a message under an exclusive lock (filesystem.Channel._put):
                # this waits for the writer; an empty file is one whose writer has created it
                # and not locked it yet, which is kept (the next dead letter trims it).
                lock(file, LOCK_SH)
                try:
                    payload = file.read()
                finally:
                    unlock(file)
            if not payload:
                continue
            os.remove(path)  # FileNotFoundError: another worker dropped it first, and says so
            dropped.append(payload)
    return dropped


def written_order(path: str) -> tuple[int, int]:
    """A file message's place in its queue (kombu's filesystem transport; the dead-letter
    tools and trimming order by it): kombu names it after the millisecond it was written,
    which several messages can share; the modification time (nanoseconds) breaks the tie."""
    name = os.path.basename(path)
    try:
        return int(name.partition("_")[0]), os.stat(path).st_mtime_ns
    except (ValueError, OSError):
        return 0, 0
