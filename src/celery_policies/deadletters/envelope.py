"""Dead letters: a failed task's own message, with what happened to it in one header.

A dead letter is the task message exactly as the worker received it (the serialized body,
untouched, with its content type and encoding; the task's headers; ``correlation_id`` and
``reply_to``) plus the header ``celery_policies_failure``, a dict that says why, where and when
the task failed. Nothing is deserialized or re-serialized on the way in or out, so a dead
letter replays byte for byte whatever serializer the app uses. A compressed task message is
kept decompressed (kombu has decompressed it before the worker sees it), without its
``compression`` header.

The plugin publishes dead letters itself, on every broker the same way, to a durable queue
through the default exchange. Redis has no dead-lettering (kombu deletes a message rejected
without requeue) and RabbitMQ's dead-letter exchanges need queue arguments fixed when a queue
is first declared, which fail with PRECONDITION_FAILED on queues that already exist.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Producer
from kombu.serialization import loads

from ..headers import (
    COMPRESSION_HEADER,
    FAILURE_HEADER,
    REPLAYS_HEADER,
    RUN_HEADERS,
)

# Re-exported for worker/routes.py; the alias is how mypy --strict reads an explicit export.
from .trimming import Trimmed, limit_arguments, trim

#: A dead letter's traceback keeps at most this many characters: the end, where it failed.
TRACEBACK_LIMIT = 8192
#: A dead letter's exception message keeps at most this many characters.
MESSAGE_LIMIT = 2048
#: Content types whose bodies are decoded to show args and kwargs (never pickle).
SAFE_CONTENT = frozenset({"application/json", "application/x-msgpack", "application/x-yaml"})
#: The message properties a dead letter keeps (priority goes into the failure record, so
#: that Redis keeps every dead letter in one list rather than one per priority).
_PROPERTIES = ("correlation_id", "reply_to")


@dataclass(frozen=True)
class Envelope:
    """A serialized message and what describes it, ready to publish."""

    body: bytes
    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any]
    properties: dict[str, Any]

    @classmethod
    def of(cls, message: Any) -> Envelope:
        """The envelope of a received kombu message."""
        body = message.body
        if isinstance(body, str):
            body = body.encode(message.content_encoding or "utf-8")
        return cls.received(body, message.content_type, message.content_encoding,
                            message.headers or {}, message.properties or {})

    @classmethod
    def received(cls, body: bytes, content_type: str | None, content_encoding: str | None,
                 headers: dict[str, Any], properties: dict[str, Any]) -> Envelope:
        """The envelope of a message whose body is no longer compressed.

        kombu's ``Message`` decompresses the body on receipt and leaves the ``compression``
        header in place (kombu/message.py, ``Message.__init__``): published again with that
        header, the plain body cannot be decompressed and the worker drops it ("Can't decode
        message body"). The header goes, as kombu's own ``Message.serializable`` drops it
        (kombu/transport/virtual/base.py).
        """
        headers = {k: v for k, v in headers.items() if k != COMPRESSION_HEADER}
        kept = {key: properties[key] for key in (*_PROPERTIES, "priority")
                if properties.get(key) is not None}
        return cls(body, content_type, content_encoding, headers, kept)

    def jsonable(self) -> dict[str, Any]:
        """Everything needed to publish it again by hand, as JSON-friendly data."""
        try:
            body, encoding = self.body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(self.body).decode("ascii"), "base64"
        return {"body": body, "body_encoding": encoding, "content_type": self.content_type,
                "content_encoding": self.content_encoding, "headers": self.headers,
                "properties": self.properties}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def epoch_iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def clip_traceback(text: str | None) -> str | None:
    """The last ``TRACEBACK_LIMIT`` characters of a traceback, saying how much was cut."""
    if text is None or len(text) <= TRACEBACK_LIMIT:
        return text
    cut = len(text) - TRACEBACK_LIMIT
    return f"[{cut} characters cut]\n{text[-TRACEBACK_LIMIT:]}"


def dead_letter(envelope: Envelope, failure: dict[str, Any]) -> Envelope:
    """The dead letter of a failed task's message."""
    properties = {k: v for k, v in envelope.properties.items() if k in _PROPERTIES}
    return Envelope(envelope.body, envelope.content_type, envelope.content_encoding,
                    {**envelope.headers, FAILURE_HEADER: failure}, properties)


@dataclass(frozen=True)
class DeadLetter:
    """One message read from a dead-letter queue. ``handle`` is the store's own reference
    to it (what ``remove`` needs). A letter with a ``problem`` (a short sentence: "entry 3:
    not JSON (412 bytes)") could not be read: its envelope holds the raw bytes and nothing
    else, no filter matches it, and it is never replayed."""

    envelope: Envelope
    handle: Any = None
    problem: str | None = None

    @property
    def failure(self) -> dict[str, Any]:
        record = self.envelope.headers.get(FAILURE_HEADER)
        return record if isinstance(record, dict) else {}

    @property
    def id(self) -> str:
        return str(self.envelope.headers.get("id")
                   or self.envelope.properties.get("correlation_id") or "?")

    @property
    def task(self) -> str:
        return str(self.envelope.headers.get("task") or "?")

    @property
    def failed_at(self) -> datetime | None:
        value = self.failure.get("failed_at")
        try:
            when = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)  # written elsewhere: taken as UTC
        return when

    def arguments(self) -> tuple[Any, Any]:
        """``(args, kwargs)`` decoded from the body, or ``(None, None)`` when its content
        type is not one read safely here (pickle is never loaded)."""
        envelope = self.envelope
        if envelope.content_type not in SAFE_CONTENT:
            return None, None
        try:
            body = loads(envelope.body, envelope.content_type, envelope.content_encoding,
                         accept=SAFE_CONTENT)
        except Exception:
            return None, None
        if isinstance(body, dict):  # task protocol 1
            return body.get("args"), body.get("kwargs")
        if isinstance(body, list | tuple) and len(body) >= 2:
            return body[0], body[1]
        return None, None

    def summary(self) -> dict[str, Any]:
        """What ``dlq list --format json`` prints for it."""
        failure = self.failure
        args, kwargs = self.arguments()
        return {"id": self.id, "task": self.task, "reason": failure.get("reason"),
                "exception": failure.get("exception"),
                "exception_message": failure.get("exception_message"),
                "retries": failure.get("retries"), "failed_at": failure.get("failed_at"),
                "queue": failure.get("queue"), "policy": failure.get("policy"),
                "hostname": failure.get("hostname"), "args": args, "kwargs": kwargs,
                "problem": self.problem}

    def replay(self, *, new_id: bool = False) -> Envelope:
        """The message to put back on a work queue: the original, with a fresh retry budget
        (``retries`` 0, no first-attempt time), no ``eta`` or ``expires`` (an expired task
        would be discarded unrun), and the replay counted.

        Raises ``ValueError`` naming the header at fault when the letter is not one a worker
        could run again: unreadable, no failure record, no task name or id, a replay count or
        priority that is not a whole number."""
        if self.problem is not None:
            raise ValueError(self.problem)
        envelope = self.envelope
        # Task protocol 2 names the task and its id in headers; protocol 1 in the body, and
        # has neither header.
        protocol_2 = "task" in envelope.headers or "id" in envelope.headers
        for name, what in (("task", "a task name"), ("id", "a task id")):
            value = envelope.headers.get(name)
            if protocol_2 and (not isinstance(value, str) or not value):
                raise ValueError(f"header {name!r} is {_shown(value)}, not {what}")
        if not isinstance(envelope.headers.get(FAILURE_HEADER), dict):
            raise ValueError(f"header {FAILURE_HEADER!r} is "
                             f"{_shown(envelope.headers.get(FAILURE_HEADER))}, not a record")
        replays = _count(envelope.headers.get(REPLAYS_HEADER), REPLAYS_HEADER)
        priority = self.failure.get("priority")
        if priority is not None:
            _count(priority, f"{FAILURE_HEADER}.priority")
        headers = {k: v for k, v in envelope.headers.items() if k not in RUN_HEADERS}
        headers.update(retries=0, eta=None, expires=None)
        headers[REPLAYS_HEADER] = replays + 1
        properties = dict(envelope.properties)
        if priority is not None:
            properties["priority"] = priority
        if new_id:
            old, new = headers.get("id"), str(uuid4())
            headers["id"] = properties["correlation_id"] = new
            if headers.get("root_id") == old:
                headers["root_id"] = new
        return Envelope(envelope.body, envelope.content_type, envelope.content_encoding,
                        headers, properties)

    def origin(self) -> str | None:
        """The queue the task came from."""
        queue = self.failure.get("queue")
        return queue if isinstance(queue, str) and queue else None


def _count(value: Any, name: str) -> int:
    """A header holding a count: absent (0) or a whole number >= 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"header {name!r} is {_shown(value)}, not a whole number >= 0")
    return value


def _shown(value: Any) -> str:
    """A header value as an error message quotes it: its type, and the start of its repr."""
    if value is None:
        return "missing"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


class Publisher:
    """Publishes envelopes to queues by name, declaring each queue durable the first time.

    On RabbitMQ it waits for the broker's confirm (``confirm_publish``), so a publish that
    returns is stored; Redis confirms by answering the LPUSH. Thread-safe.
    """

    def __init__(self, connection: Connection) -> None:
        if connection.transport.driver_type == "amqp":
            connection = connection.clone(transport_options={
                **(connection.transport_options or {}), "confirm_publish": True})
        self.connection = connection
        self._declared: set[str] = set()
        #: queue -> the length limit RabbitMQ keeps for it (None: none we can rely on)
        self._limited: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def publish(self, envelope: Envelope, queue: str,
                retry_policy: dict[str, Any] | None = None, *, declare: bool = True,
                max_length: int | None = None) -> None:
        """Publish ``envelope`` to ``queue`` (declared first unless ``declare`` is false,
        on RabbitMQ with ``max_length`` as its limit when it is new); retry as
        ``retry_policy`` says (kombu's ``ensure`` keys), then raise."""
        with self._connected(retry_policy) as policy:
            self.connection.ensure(self, self._publish, **policy)(envelope, queue, declare,
                                                                  max_length)

    def trim(self, queue: str, max_length: int) -> Trimmed:
        """Drop the oldest messages of ``queue`` over ``max_length`` (``trimming.trim``)."""
        with self._lock:
            return trim(self.connection, queue, max_length,
                        broker_limited=self._limited.get(queue) == max_length)

    def broker_limited(self, queue: str) -> bool | None:
        """Whether RabbitMQ keeps ``queue``'s length limit itself: True when this publisher
        declared it with one or found it with the same, False when it exists without (or with
        another), None when the queue was not declared with a limit here."""
        if queue not in self._limited:
            return None
        return self._limited[queue] is not None

    def send_task(self, app: Any, name: str, kwargs: dict[str, Any],
                  retry_policy: dict[str, Any] | None = None) -> None:
        """Send task ``name`` by name through this connection (confirmed on RabbitMQ)."""
        with self._connected(retry_policy) as policy:
            app.send_task(name, kwargs=kwargs, producer=self.connection.Producer(),
                          retry=True, retry_policy=policy)

    @contextmanager
    def _connected(self, retry_policy: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        """Hold the lock on a connected connection; yield the retry policy, which retries
        nothing unless it says so (kombu's default is forever)."""
        policy = {"max_retries": 0, **(retry_policy or {})}
        with self._lock:
            self.connection.ensure_connection(**_connect_policy(policy))
            yield policy

    def missing(self, queues: Iterable[str]) -> list[str]:
        """The queues that do not exist, on RabbitMQ (which drops what is published to
        them). Redis and the filesystem create a queue with its first message."""
        if self.connection.transport.driver_type != "amqp":
            return []
        with self._lock:
            return [queue for queue in queues if not _exists(self.connection, queue)]

    def revive(self, channel: Any) -> None:
        """Called by kombu's ``ensure`` after reconnecting."""
        self._declared.clear()
        self._limited.clear()

    def _publish(self, envelope: Envelope, queue: str, declare: bool,
                 max_length: int | None = None) -> None:
        channel = self.connection.default_channel
        if declare and queue not in self._declared:
            limited = declare_queue(self.connection, queue, max_length)
            if max_length is not None and self.connection.transport.driver_type == "amqp":
                self._limited[queue] = max_length if limited else None
            self._declared.add(queue)
        Producer(channel).publish(
            envelope.body, exchange="", routing_key=queue, serializer=None,
            content_type=envelope.content_type or "application/data",
            content_encoding=envelope.content_encoding or "binary",
            headers=envelope.headers, delivery_mode=2, **envelope.properties)

    def close(self) -> None:
        self.connection.release()


def declare_queue(connection: Connection, name: str, max_length: int | None = None) -> bool:
    """Make sure queue ``name`` exists: used as it is if it does (its arguments may differ
    from ours: declaring it again with other arguments fails), else declared durable, on
    RabbitMQ with ``max_length`` as its limit. True when RabbitMQ keeps that limit for it."""
    amqp = connection.transport.driver_type == "amqp"
    arguments = limit_arguments(max_length) if amqp and max_length is not None else None
    if not _exists(connection, name):
        with connection.channel() as channel:
            Queue(name, durable=True, auto_delete=False,
                  queue_arguments=arguments)(channel).declare()
        return arguments is not None
    if arguments is None:
        return False
    # RabbitMQ accepts declaring an existing queue again only with its very arguments: the
    # way to ask whether it has ours (PRECONDITION_FAILED closes that channel otherwise).
    with connection.channel() as channel:
        try:
            Queue(name, durable=True, auto_delete=False,
                  queue_arguments=arguments)(channel).declare()
            return True
        except connection.channel_errors:
            return False


def queue_size(connection: Connection, name: str) -> int:
    """Messages ready in queue ``name``; raises one of ``connection.channel_errors`` if there
    is no such queue."""
    with connection.channel() as channel:
        return int(Queue(name)(channel).queue_declare(passive=True).message_count)


def _exists(connection: Connection, name: str) -> bool:
    with connection.channel() as channel:
        try:
            Queue(name)(channel).queue_declare(passive=True)
            return True
        except connection.channel_errors:
            return False  # NOT_FOUND; RabbitMQ has closed that channel


def _connect_policy(policy: dict[str, Any]) -> dict[str, Any]:
    keys = ("max_retries", "interval_start", "interval_step", "interval_max")
    return {key: policy[key] for key in keys if key in policy}


def matches_exception(letter: Any, names: Iterable[str]) -> bool:
    """Whether the dead letter's exception is one of ``names`` (dotted or bare class name)."""
    recorded = str(letter.failure.get("exception") or "")
    short = recorded.rpartition(".")[2]
    return any(name in (recorded, short) for name in names)
