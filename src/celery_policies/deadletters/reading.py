"""What a broker holds, turned back into dead letters without ever raising on it.

The stores (``stores.py``) read raw entries and hand them here. An entry that cannot be read
(not JSON, not a kombu message, compressed with a codec not installed here, or larger than
the size cap once decompressed) becomes a dead letter with a ``problem``: it stays in the
queue, every command shows it, and ``dlq purge --unreadable`` removes it.

A compressed body is decompressed here, never past the size cap, and the letter keeps no
``compression`` header (``Envelope.received``). Dead letters written before that rule
(decompressed body, ``compression`` header still set) do not decompress: their body is
taken as it is.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import contextlib
import json
import lzma
import os
import zlib
from collections.abc import Callable
from typing import Any

from kombu.compression import decompress, get_encoder
from kombu.utils.json import loads

from ..errors import PolicyError
from ..headers import COMPRESSION_HEADER, DELIVERY_COUNT_HEADER
from .envelope import DeadLetter, Envelope

#: A reader decompresses a dead letter's body to at most this many megabytes (2**20 bytes);
#: a larger one is shown as unreadable ("decompressed size over 10 MB"), never held in
#: memory whole: a 242-byte bzip2 body can hold 300 MB.
DEFAULT_MAX_BODY_MB = 10
#: The environment variable that changes ``DEFAULT_MAX_BODY_MB`` (whole megabytes).
MAX_BODY_ENV = "CELERY_POLICIES_DLQ_MAX_BODY_MB"
_MB = 2**20
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


class Unreadable(Exception):
    """Why an entry cannot be read, as a short sentence."""


class _NotCompressed(Exception):
    """The body is not in the format its ``compression`` header names."""


def max_body_bytes() -> int:
    """The size cap in bytes: ``$CELERY_POLICIES_DLQ_MAX_BODY_MB`` or the default."""
    value = os.environ.get(MAX_BODY_ENV)
    if value is None:
        return DEFAULT_MAX_BODY_MB * _MB
    if not value.strip().isdigit() or int(value) < 1:
        raise PolicyError(f"${MAX_BODY_ENV} must be a whole number of megabytes, 1 or more, "
                          f"not {value!r}")
    return int(value) * _MB


def unreadable(raw: bytes, handle: Any, position: int, why: str) -> DeadLetter:
    """The dead letter of an entry that cannot be read: its raw bytes, and why."""
    return DeadLetter(Envelope(raw, None, None, {}, {}), handle,
                      f"entry {position}: {why} ({len(raw)} bytes)")


def from_payload(raw: bytes, handle: Any, position: int, limit: int) -> DeadLetter:
    """A message as kombu's Redis and filesystem transports store it: a JSON object with
    ``body`` (base64 unless ``properties.body_encoding`` is absent), ``content-type``,
    ``content-encoding``, ``headers`` and ``properties`` (kombu/transport/virtual/base.py,
    ``Message``)."""
    try:
        return DeadLetter(_payload_envelope(raw, limit), handle)
    except Unreadable as exc:
        return unreadable(raw, handle, position, str(exc))


def from_amqp(message: Any, position: int, limit: int) -> DeadLetter:
    """A message as py-amqp delivers it: the body as sent, its properties in a dict."""
    properties = message.properties or {}
    handle = message.delivery_tag
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    try:
        headers = properties.get("application_headers")
        envelope = _envelope(body, properties.get("content_type"),
                             properties.get("content_encoding"), headers, properties, limit)
    except Unreadable as exc:
        return unreadable(body, handle, position, str(exc))
    return DeadLetter(envelope, handle)


def counts_deliveries(message: Any) -> bool:
    """Whether a py-amqp message came from a queue that counts deliveries (a RabbitMQ quorum
    queue, which sets ``x-delivery-count`` on every message it delivers)."""
    headers = (message.properties or {}).get("application_headers")
    return isinstance(headers, dict) and DELIVERY_COUNT_HEADER in headers


def from_entry(entry: Any, limit: int) -> DeadLetter:
    """A dead letter from an entry taken off a queue (``trimming.Trimmed.dropped``): kombu's
    stored JSON (Redis, the filesystem) or a py-amqp message (RabbitMQ)."""
    if isinstance(entry, str):
        entry = entry.encode("utf-8", "surrogatepass")
    if isinstance(entry, bytes):
        return from_payload(entry, None, 0, limit)
    return from_amqp(entry, 0, limit)


def is_json(raw: bytes) -> bool:
    """Whether ``raw`` is a whole JSON document (of any shape)."""
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return True


def _payload_envelope(raw: bytes, limit: int) -> Envelope:
    try:
        payload = loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise Unreadable("not JSON") from None
    except Exception as exc:  # kombu's JSON hooks reject a malformed "__type__" object
        raise Unreadable(f"not a kombu message: {type(exc).__name__}") from None
    if not isinstance(payload, dict):
        kind = _JSON_KINDS.get(type(payload), type(payload).__name__)
        raise Unreadable(f"not a kombu message: a JSON {kind}")
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        raise Unreadable("not a kombu message: no properties")
    body = payload.get("body")
    if body is None:
        body = ""
    if not isinstance(body, str):
        raise Unreadable("not a kombu message: its body is not text")
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise Unreadable("not a kombu message: its body is not base64") from None
    elif encoding is None:
        data = body.encode("utf-8", "surrogatepass")
    else:
        raise Unreadable("not a kombu message: unknown body encoding")
    return _envelope(data, payload.get("content-type"), payload.get("content-encoding"),
                     payload.get("headers"), properties, limit)


def _envelope(body: bytes, content_type: Any, content_encoding: Any, headers: Any,
              properties: dict[str, Any], limit: int) -> Envelope:
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise Unreadable("not a kombu message: its headers are not a mapping")
    for value in (content_type, content_encoding):
        if value is not None and not isinstance(value, str):
            raise Unreadable("not a kombu message: its content type or encoding is not text")
    compression = headers.get(COMPRESSION_HEADER)
    if compression:
        # _NotCompressed: written decompressed, with the header, before it was dropped
        with contextlib.suppress(_NotCompressed):
            body = decompressed(body, compression, limit)
    return Envelope.received(body, content_type, content_encoding, headers, properties)


def decompressed(body: bytes, compression: Any, limit: int) -> bytes:
    """``body`` decompressed with ``compression`` (a kombu content type or alias), never
    to more than ``limit`` bytes. Raises ``Unreadable`` when it cannot be decompressed
    here or would be larger; ``_NotCompressed`` when it is not in that format at all."""
    try:
        content_type = get_encoder(compression)[1]
    except (KeyError, TypeError):
        raise Unreadable(f"compressed with {str(compression)[:40]!r}, which is not "
                         "installed here") from None
    bounded = _BOUNDED.get(content_type)
    if bounded is None:
        # No decompressor that stops at a size (brotli): decompressed whole, then checked.
        try:
            data = decompress(body, content_type)
        except Exception:
            raise _NotCompressed from None
        if len(data) > limit:
            raise Unreadable(f"decompressed size over {limit // _MB} MB")
        return bytes(data)
    make = bounded()
    try:
        data = make.decompress(body, limit + 1)
    except Exception:
        raise _NotCompressed from None
    if len(data) > limit:
        raise Unreadable(f"decompressed size over {limit // _MB} MB")
    if not make.eof:
        raise Unreadable("compressed body is cut short")
    return bytes(data)


class _Zlib:
    """kombu's gzip is zlib's format (``zlib.compress``); the same interface as
    ``bz2.BZ2Decompressor``."""

    def __init__(self) -> None:
        self._decompressor = zlib.decompressobj()

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._decompressor.decompress(data, max_length)

    @property
    def eof(self) -> bool:
        return self._decompressor.eof


def _zstd() -> Callable[[], Any] | None:
    """zstd's decompressor, when kombu can use zstd (kombu/compression.py imports it from
    ``compression.zstd`` on Python 3.14, else from ``backports.zstd``)."""
    for module in ("compression.zstd", "backports.zstd"):
        try:
            return __import__(module, fromlist=["ZstdDecompressor"]).ZstdDecompressor  # type: ignore[no-any-return]
        except ImportError:
            continue
    return None


#: Decompressors that stop at a size, by kombu's content type, each with ``decompress(data,
#: max_length)`` and ``eof`` (the interface of ``bz2.BZ2Decompressor``).
_BOUNDED: dict[str, Callable[[], Any]] = {
    "application/x-gzip": _Zlib,
    "application/x-bz2": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor,
}
if (_zstd_decompressor := _zstd()) is not None:
    _BOUNDED["application/zstd"] = _zstd_decompressor
