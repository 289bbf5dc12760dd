"""The commands' broker connections (``dlq``, ``fleet``): bounded in time, failing in one line.

kombu waits as long as the operating system lets it: a Redis server that accepts connections
and never answers blocks a command forever (redis-py has no socket timeout unless given one),
and a RabbitMQ listener that never speaks AMQP blocks it for the connection timeout of each
retry. A command's connection therefore has a timeout on connecting and on every read and
write: kombu passes ``socket_timeout``/``socket_connect_timeout`` to redis-py
(kombu/transport/redis.py) and ``read_timeout``/``write_timeout`` to py-amqp
(kombu/transport/pyamqp.py, amqp/transport.py ``_init_socket``), and ``connect_timeout`` to
both. Workers are not affected: only the commands open these connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from kombu.connection import Connection
from kombu.exceptions import OperationalError

from .errors import PolicyError

#: Seconds a command waits for the broker in any one operation (connecting, a read, a
#: write) before it fails; ``--broker-timeout`` or this environment variable change it.
DEFAULT_BROKER_TIMEOUT = 10.0
#: The environment variable giving the commands' broker timeout, in seconds.
BROKER_TIMEOUT_ENV = "CELERY_POLICIES_BROKER_TIMEOUT"

#: The transport options that bound each socket operation, by kombu driver type.
_SOCKET_OPTIONS = {"redis": ("socket_timeout", "socket_connect_timeout"),
                   "amqp": ("read_timeout", "write_timeout")}


class BrokerError(PolicyError):
    """A broker a command cannot use: an invalid URL, or one that does not answer in time."""


def _safe(url: str) -> str:
    """A URL as it may be printed: without its password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, credentials = head.partition("://")
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:**@{tail}" if sep else f"{user}:**@{tail}"


def connect(make: Callable[[], Connection], timeout: float, what: str) -> Connection:
    """A connection, made by ``make`` (``Connection(url)``, ``app.connection_for_write``),
    bounded by ``timeout`` seconds per operation and connected once, without retries.
    ``what`` names it in errors (the URL as the user gave it)."""
    try:
        given = make()
        driver = given.transport.driver_type
    except ImportError as exc:  # the transport's client library (redis, librabbitmq...)
        raise BrokerError(f"cannot use the broker URL {_safe(what)}: {exc}") from exc
    except (KeyError, ValueError, TypeError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise BrokerError(f"invalid broker URL {_safe(what)}: {reason}") from exc
    options = dict(given.transport_options or {})
    for name in _SOCKET_OPTIONS.get(driver, ()):
        options[name] = timeout
    connection: Connection = given.clone(connect_timeout=timeout, transport_options=options)
    given.release()
    try:
        connection.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as exc:
        drop(connection)
        raise BrokerError(f"cannot reach the broker at {_safe(what)} within "
                          f"{timeout:g}s: {exc or type(exc).__name__}") from exc
    return connection


def broker_errors(connection: Connection) -> tuple[type[BaseException], ...]:
    """What a broker that stops answering, or drops the connection, raises."""
    return (*connection.connection_errors, TimeoutError, ConnectionError, OperationalError)


def drop(connection: Connection) -> None:
    """Let go of a connection whose broker does not answer, without the goodbyes a polite
    close waits for (AMQP's ``channel.close``/``connection.close``): kombu's ``collect``."""
    with suppress(Exception):
        connection.collect()


@contextmanager
def talking(connection: Connection, timeout: float, what: str) -> Iterator[None]:
    """Turn a broker that stops answering, or drops the connection, while a command uses
    it into one ``BrokerError`` (``what``: the broker URL as the user gave it)."""
    try:
        yield
    except broker_errors(connection) as exc:
        raise BrokerError(f"cannot reach the broker at {_safe(what)}: "
                          f"{exc or type(exc).__name__} (waiting at most {timeout:g}s for "
                          "each answer)") from exc


@contextmanager
def connected(make: Callable[[], Connection], timeout: float,
              what: str) -> Iterator[Connection]:
    """A connection (``connect``) for the time of a block: released when the broker answers,
    dropped when it does not; a broker that stops answering in the block comes out as one
    ``BrokerError`` (``talking``)."""
    connection = connect(make, timeout, what)
    try:
        with talking(connection, timeout, what):
            yield connection
    except BrokerError:
        drop(connection)  # no goodbyes to a broker that does not answer
        raise
    except BaseException:
        connection.release()
        raise
    connection.release()


def describe(app: Any, url: str | None) -> str:
    """The broker a command talks to, for messages: ``url``, else the app's setting."""
    if url:
        return url
    configured = getattr(app.conf, "broker_write_url", None) or app.conf.broker_url
    if configured:
        return str(configured)
    try:  # no URL set: Celery's default (amqp://guest@localhost//)
        return str(app.connection_for_write().as_uri())
    except Exception:
        return "the app's default broker"
