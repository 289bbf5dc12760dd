"""The dead-letter exporter: ``EXPORTER_METRICS`` (``names.py``) served over HTTP from a cache.

A scrape never reads the broker itself. It asks the cache, which starts a read (in a thread
of its own, one at a time) when the last one started ``interval`` seconds ago or more, and
waits for it at most ``wait`` seconds (the broker timeout): a slow broker answers the scrape
with the last figures, never a hanging request. A queue that could not be read keeps its
last good figures and counts a read error. The age of an oldest letter is worked out at each
scrape from when it failed, so it keeps growing between reads.

prometheus_client is imported here only, when the exporter is built (``metrics`` extra).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..errors import PolicyError
from .names import EXPORTER_METRICS, Metric
from .queues import Depth, age

#: Seconds between two reads of the dead-letter queues, unless ``--interval`` says otherwise.
DEFAULT_INTERVAL = 15.0
#: The port the exporter serves on unless told otherwise.
DEFAULT_PORT = 9808
#: The address it binds unless told otherwise: this machine only.
DEFAULT_ADDRESS = "127.0.0.1"
#: What the command prints on stderr once it serves (with the real port when it was 0).
SERVING_LINE = "serving dead-letter metrics on http://{address}:{port}/metrics"

_INSTALL = "pip install 'celery-policies[metrics]'"


@dataclass(frozen=True)
class Figures:
    """What a scrape shows: the last good read of each queue, and the failed reads."""

    depths: Mapping[str, Depth]
    errors: Mapping[str, int]


class DeadLetterCache:
    """The last figures of each queue, refreshed by ``read`` at most once per ``interval``
    seconds. ``read`` returns, for each queue, its depth or None when it could not be read."""

    def __init__(self, read: Callable[[], Mapping[str, Depth | None]], queues: Sequence[str],
                 interval: float, wait: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self.interval = interval
        self.wait = wait
        self._clock = clock
        self._lock = threading.Lock()
        self._depths: dict[str, Depth] = {}
        self._errors: dict[str, int] = dict.fromkeys(queues, 0)
        self._started: float | None = None
        self._done = threading.Event()
        self._done.set()

    def figures(self) -> Figures:
        """The figures, after a fresh read if one is due (waiting at most ``wait``)."""
        with self._lock:
            now = self._clock()
            due = self._started is None or now - self._started >= self.interval
            if due and self._done.is_set():
                self._started = now
                self._done = threading.Event()
                threading.Thread(target=self._refresh, args=(self._done,),
                                 name="dead-letter-read", daemon=True).start()
            done = self._done
        done.wait(self.wait)
        with self._lock:
            return Figures(dict(self._depths), dict(self._errors))

    def _refresh(self, done: threading.Event) -> None:
        try:
            try:
                found: Mapping[str, Depth | None] = self._read()
            except Exception:  # the reader logs and never raises; this guards the cache
                found = dict.fromkeys(self._errors)
            with self._lock:
                for queue, depth in found.items():
                    if depth is None:
                        self._errors[queue] = self._errors.get(queue, 0) + 1
                    else:
                        self._depths[queue] = depth
        finally:
            done.set()


class DeadLetterCollector:
    """A prometheus_client collector answering from a ``DeadLetterCache``."""

    def __init__(self, cache: DeadLetterCache, now: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self._now = now

    def describe(self) -> Iterator[Any]:
        # Families without samples: what the registry checks names against, with no read.
        yield from (_family(metric) for metric in EXPORTER_METRICS)

    def collect(self) -> Iterator[Any]:
        figures = self.cache.figures()
        depth, oldest, errors = (_family(metric) for metric in EXPORTER_METRICS)
        for queue, found in sorted(figures.depths.items()):
            depth.add_metric([queue], found.letters)
            seconds = age(found, self._now)
            if seconds is not None:
                oldest.add_metric([queue], seconds)
        for queue, count in sorted(figures.errors.items()):
            errors.add_metric([queue], count)
        yield from (depth, oldest, errors)


def _family(metric: Metric) -> Any:
    from prometheus_client.core import (  # noqa: PLC0415 - the optional extra
        CounterMetricFamily,
        GaugeMetricFamily,
    )

    kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
    return kind(metric.name, metric.help, labels=metric.labels)


def require_client() -> None:
    """Raise ``PolicyError`` saying how to install prometheus_client when it is missing."""
    try:
        import prometheus_client  # noqa: F401, PLC0415 - only checking that it is there
    except ImportError as exc:
        raise PolicyError(f"the metrics exporter needs prometheus_client: {_INSTALL}") from exc


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: a slow scrape never holds up another."""

    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per scrape


def serve(cache: DeadLetterCache, address: str, port: int) -> WSGIServer:
    """A server of the cache's figures on ``address:port`` (0: a free port; its
    ``server_address`` has the real one), on a registry of their own; ``serve_forever``
    serves. Raises ``PolicyError`` when prometheus_client is missing or the address cannot
    be bound."""
    require_client()
    from prometheus_client import CollectorRegistry, make_wsgi_app  # noqa: PLC0415

    registry = CollectorRegistry()
    registry.register(DeadLetterCollector(cache))
    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("Server", (_Server,), {"address_family": family})
        return make_server(address, port, make_wsgi_app(registry), server_class, _Quiet)
    except OSError as exc:
        raise PolicyError(f"cannot serve on {address}:{port}: {exc.strerror or exc}") from exc
