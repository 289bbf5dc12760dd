"""One dead-letter queue, opened for a command or the console: connected within a timeout,
closed politely when the broker answers and dropped when it does not.

Every broker error while the queue is in use comes out as one ``BrokerError``
(``connections.py``); whatever was read and not removed stays in the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kombu.connection import Connection

from ..connections import BrokerError, broker_errors, connect, drop, talking
from .stores import Store, open_store


@contextmanager
def opened(make: Callable[[], Connection], where: str, queue: str,
           timeout: float) -> Iterator[tuple[Store, Connection]]:
    """The store of ``queue`` and its connection, made by ``make`` (``where`` names the
    broker in errors), each broker operation bounded by ``timeout`` seconds."""
    connection = connect(make, timeout, where)
    try:
        with talking(connection, timeout, where):
            store = open_store(connection, queue)
    except BaseException:
        drop(connection)
        raise
    try:
        with talking(connection, timeout, where):
            try:
                yield store, connection
            except broker_errors(connection):
                raise  # no goodbyes to a broker that does not answer: dropped below
            except BaseException:
                store.close()
                raise
            store.close()
    except BrokerError:
        drop(connection)
        raise
    except BaseException:
        connection.release()
        raise
    connection.release()
