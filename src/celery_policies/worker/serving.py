"""Serving a worker's metrics: ``/metrics`` over HTTP, from the worker's main process only.

Off unless a port is given: ``--policies-metrics-port``, else ``metrics.port`` in the file,
else ``$CELERY_POLICIES_METRICS_PORT``. The address is chosen the same way, 127.0.0.1 unless
told otherwise. Port 0 takes any free port; the worker logs the one it got, at WARNING, in
``SERVING_FORMAT``, which tools read.

The server starts at ``worker_init``, before the pool forks, so that a port already taken
stops the worker like any other configuration error (nothing is worse than a fleet whose
alerts are silent because one worker quietly exported nothing). A forked pool child
inherits the listening socket but not the thread serving it: it closes its copy at once
(``forget``), so that the port is free as soon as the main process exits.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import PolicyError
from ..metrics.worker import CONTENT_TYPE, Registry
from ..spec.model import DEFAULT_METRICS_ADDRESS, MetricsConfig

#: The environment variables read after the command line and the file.
PORT_ENV = "CELERY_POLICIES_METRICS_PORT"
ADDRESS_ENV = "CELERY_POLICIES_METRICS_ADDRESS"
#: The worker's options (``WorkController.options``), as ``options.py`` names them.
PORT_OPTION = "policies_metrics_port"
ADDRESS_OPTION = "policies_metrics_address"
#: The WARNING a worker logs when it serves metrics, on the ``celery_policies`` logger:
#: ``serving metrics on http://ADDRESS:PORT/metrics``. Tools parse it: keep its shape.
SERVING_FORMAT = "serving metrics on %s"
#: The path Prometheus scrapes (the server answers on any path).
PATH = "/metrics"
#: How hard a scrape that accepts gzip (Prometheus's do) is compressed: the fastest level
#: still shrinks a large worker's text about 30 times, in a fraction of what the default
#: level costs (docs/benchmarks.md, Metrics).
GZIP_LEVEL = 1


class MetricsConfigError(PolicyError):
    """A metrics setting that cannot be used: an environment variable that is no port, a
    port that cannot be bound."""


@dataclass(frozen=True)
class Endpoint:
    """Where a worker serves its metrics."""

    address: str
    port: int


def endpoint(options: Mapping[str, Any], section: MetricsConfig | None,
             environ: Mapping[str, str]) -> Endpoint | None:
    """Where to serve, from the worker's options, the file's ``metrics:`` section and the
    environment, in that order; None when no port is given anywhere (no metrics)."""
    port = options.get(PORT_OPTION)
    if port is None and section is not None:
        port = section.port
    if port is None and environ.get(PORT_ENV, "").strip():
        text = environ[PORT_ENV].strip()
        if not text.isdigit() or int(text) > 65535:
            raise MetricsConfigError(f"${PORT_ENV}: expected a TCP port, a whole number from "
                                     f"0 to 65535, got {text!r}")
        port = int(text)
    if port is None:
        return None
    address = (options.get(ADDRESS_OPTION) or (section.address if section else None)
               or environ.get(ADDRESS_ENV, "").strip() or DEFAULT_METRICS_ADDRESS)
    return Endpoint(str(address), int(port))


def url(address: str, port: int) -> str:
    """``http://ADDRESS:PORT/metrics`` (an IPv6 address in brackets)."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}{PATH}"


class _Scrape(BaseHTTPRequestHandler):
    """``GET`` on any path: the registry's exposition, gzipped when the scraper accepts it."""

    server: _Server

    def do_GET(self) -> None:
        body = self.server.registry.render()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per scrape


class _Server(ThreadingHTTPServer):
    """One thread per request: a slow scraper never holds up another."""

    daemon_threads = True
    registry: Registry


class MetricsServer:
    """An HTTP server of one registry's exposition, in a daemon thread."""

    def __init__(self, registry: Registry, where: Endpoint) -> None:
        try:
            family = socket.getaddrinfo(where.address, where.port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("Server", (_Server,), {"address_family": family})
            self._server = server_class((where.address, where.port), _Scrape)
        except OSError as exc:
            raise MetricsConfigError(f"cannot serve metrics on {where.address} port "
                                     f"{where.port}: {exc.strerror or exc}") from exc
        self._server.registry = registry
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="celery-policies-metrics", daemon=True)
        self._thread.start()
        self.address = where.address
        self.port = int(self._server.server_address[1])
        self._pid = os.getpid()

    @property
    def url(self) -> str:
        return url(self.address, self.port)

    def forget(self) -> None:
        """In a forked child: close the inherited copy of the listening socket (never stop
        the server: its thread is the parent's). Nothing in the serving process itself: the
        solo pool sends ``worker_process_init`` there (celery/concurrency/solo.py)."""
        if os.getpid() == self._pid:
            return
        with contextlib.suppress(OSError):
            self._server.socket.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
