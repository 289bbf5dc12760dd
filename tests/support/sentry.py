"""Sentry endpoints on 127.0.0.1 for the tests: one that records envelopes, one that accepts
connections and never answers, and a port nothing listens on.

``Recorder`` accepts what sentry_sdk sends to a DSN's ingest path
(``POST /api/<project>/envelope/``), keeps each body as received (decompressed), and parses
its items, so that tests assert on what really left the worker: no mock of sentry_sdk.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: How long a test waits for an event before it concludes none is coming, in seconds.
QUIET = 3.0


@dataclass(frozen=True)
class Item:
    """One item of an envelope: its header and its payload (parsed when JSON)."""

    header: dict[str, Any]
    payload: Any


def parse_envelope(body: bytes) -> list[Item]:
    """The items of a Sentry envelope (https://develop.sentry.dev/sdk/envelopes/)."""
    _, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        length = header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length + 1:]
        try:
            parsed: Any = json.loads(payload)
        except ValueError:
            parsed = payload
        items.append(Item(header, parsed))
    return items


class Recorder:
    """A Sentry ingest endpoint that records every envelope it receives."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = self.headers.get("Content-Encoding")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":  # sentry-sdk compresses with brotli when installed
                    import brotli  # noqa: PLC0415 - only when the SDK found it

                    body = brotli.decompress(body)
                elif encoding:
                    raise AssertionError(f"unexpected Content-Encoding {encoding}")
                with recorder._lock:
                    recorder.bodies.append(body)
                    recorder.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def raw(self) -> bytes:
        """Everything received so far, as one byte string."""
        with self._lock:
            return b"\n".join(self.bodies)

    def where(self, needle: str) -> list[str]:
        """Where ``needle`` occurs in what was received: ``type:path`` of each item's value
        that holds it (for the message of a failed assertion)."""
        with self._lock:
            bodies = list(self.bodies)
        found: list[str] = []

        def walk(value: Any, path: str) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(inner, f"{path}.{key}")
            elif isinstance(value, list):
                for n, inner in enumerate(value):
                    walk(inner, f"{path}[{n}]")
            elif needle in str(value):
                found.append(f"{path}: {str(value)[:160]}")

        for body in bodies:
            for item in parse_envelope(body):
                walk(item.payload, str(item.header.get("type")))
        return found

    def items(self, kind: str) -> list[Any]:
        """The payloads of every item of type ``kind`` (``event``, ``transaction``, ``log``...)
        received so far."""
        with self._lock:
            bodies = list(self.bodies)
        return [item.payload for body in bodies for item in parse_envelope(body)
                if item.header.get("type") == kind]

    def events(self, predicate: Callable[[dict[str, Any]], bool] = lambda e: True,
               ) -> list[dict[str, Any]]:
        """Events (error and message events, not transactions) matching ``predicate``."""
        return [event for event in self.items("event") if predicate(event)]

    def logs(self) -> list[dict[str, Any]]:
        """Every Sentry Log received (each ``log`` item holds a batch of them)."""
        return [log for batch in self.items("log") for log in batch.get("items") or ()]

    def of_task(self, task_id: str) -> list[dict[str, Any]]:
        """The events that name ``task_id``: the plugin's tag, or anywhere in the event."""
        return self.events(lambda event: task_id in json.dumps(event))

    def wait(self, predicate: Callable[[dict[str, Any]], bool], count: int = 1,
             timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``count`` events match, then ``QUIET`` seconds more for extra ones."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.events(predicate)) < count:
            time.sleep(0.1)
        time.sleep(QUIET)
        return self.events(predicate)


class Hanging:
    """A port that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.sock.getsockname()[1]}/1"

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def closed_port_dsn() -> str:
    """A DSN on a port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://public@127.0.0.1:{port}/1"


@contextmanager
def recording() -> Iterator[Recorder]:
    recorder = Recorder()
    try:
        yield recorder
    finally:
        recorder.close()
