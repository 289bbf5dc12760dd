"""Who may use the console, and what a page may do in a browser.

- Authentication (``Auth``): basic-auth credentials or a token, read from the environment, or
  an identity header set by a trusted proxy. With none, the console serves only loopback
  (``cli/console.py`` refuses to bind elsewhere) and names its users ``anonymous``.
- Every state-changing request is a POST carrying a CSRF token derived from a secret the
  process draws at start and the user's identity; a POST from another origin is refused too.
- Every response forbids inline script, framing and foreign resources (``HEADERS``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import PolicyError

#: Basic-auth credentials, one ``user:password`` per line.
CREDENTIALS_ENV = "CELERY_POLICIES_CONSOLE_CREDENTIALS"
#: A token, sent as ``Authorization: Bearer TOKEN`` or as the password of basic auth.
TOKEN_ENV = "CELERY_POLICIES_CONSOLE_TOKEN"
#: The identity of every request when no authentication is configured (loopback only).
ANONYMOUS = "anonymous"

#: Sent with every response. No script at all (the pages need none); styles from the
#: console's own stylesheet only; forms post to the console only; no framing.
HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class Auth:
    """How requests prove who they are; with nothing set, they need not."""

    credentials: Mapping[str, str] = field(default_factory=dict)  # user -> password
    token: str | None = None
    trusted_header: str | None = None  # e.g. X-Forwarded-User, set by the proxy in front

    @property
    def configured(self) -> bool:
        return bool(self.credentials or self.token or self.trusted_header)

    @property
    def challenges(self) -> bool:
        """Whether a refused browser should be asked for a password."""
        return bool(self.credentials or self.token)

    @classmethod
    def from_environment(cls, trusted_header: str | None = None,
                         environ: Mapping[str, str] = os.environ) -> Auth:
        """Credentials and token from ``$CELERY_POLICIES_CONSOLE_CREDENTIALS`` and
        ``$CELERY_POLICIES_CONSOLE_TOKEN``; raises ``PolicyError`` on a malformed line."""
        credentials = {}
        for number, line in enumerate(environ.get(CREDENTIALS_ENV, "").splitlines(), 1):
            if not line.strip():
                continue
            user, colon, password = line.strip().partition(":")
            if not colon or not user or not password:
                raise PolicyError(f"${CREDENTIALS_ENV} line {number}: expected "
                                  "user:password, with neither empty")
            credentials[user] = password
        token = environ.get(TOKEN_ENV) or None
        return cls(credentials, token, trusted_header or None)

    def identify(self, headers: Mapping[str, str]) -> str | None:
        """The identity a request proves (for the audit log), or None: refuse it."""
        if not self.configured:
            return ANONYMOUS
        if self.trusted_header:
            who = headers.get(self.trusted_header.lower(), "").strip()
            if who:
                return who
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token and _same(value.strip(), self.token):
            return "token"
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode(
                    "utf-8").partition(":")
            except (binascii.Error, ValueError):
                return None
            expected = self.credentials.get(user)
            if expected is not None and _same(password, expected):
                return user
            if self.token and _same(password, self.token):
                return f"{user or 'token'} (token)"
        return None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@dataclass(frozen=True)
class Csrf:
    """A token per identity: HMAC of a secret drawn when the process starts (a restart
    invalidates the forms on screen, which then ask to reload)."""

    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def token(self, identity: str) -> str:
        return hmac.new(self.secret, identity.encode("utf-8"), hashlib.sha256).hexdigest()

    def valid(self, identity: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(self.token(identity).encode(),
                                                         given.encode("utf-8", "replace"))


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether a POST comes from the console's own pages: its ``Origin`` (or, failing that,
    ``Referer``) names the host it was sent to. A request with neither (a script) passes
    here and still needs its CSRF token."""
    host = headers.get("host", "")
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return True
    return bool(host) and urlsplit(source).netloc == host
