"""One dead-letter queue, opened for a command or the console: connected within a timeout,
closed politely when the broker answers and dropped when it does not.

Every broker error while the queue is in use comes out as one ``BrokerError``
(``connections.py``); whatever was read and not removed stays in the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kombu.connection import Connection

from ..connections import broker_errors, connected
from .stores import Store, open_store


@contextmanager
def opened(make: Callable[[], Connection], where: str, queue: str,
           timeout: float) -> Iterator[tuple[Store, Connection]]:
    """The store of ``queue`` and its connection, made by ``make`` (``where`` names the
    broker in errors), each broker operation bounded by ``timeout`` seconds."""
    with connected(make, timeout, where) as connection:
        store = open_store(connection, queue)
        try:
            yield store, connection
        except broker_errors(connection):
            raise  # no goodbyes to a broker that does not answer: dropped by connected()
        except BaseException:
            store.close()
            raise
        store.close()
