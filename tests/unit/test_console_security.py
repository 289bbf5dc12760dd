"""Who may use the console: credentials, a token or a trusted proxy's header; CSRF tokens per
identity; POSTs from the console's own origin only."""

from __future__ import annotations

import base64
import sys

import pytest
from click.testing import CliRunner

from celery_policies.cli import policies
from celery_policies.console.security import (
    ANONYMOUS,
    CREDENTIALS_ENV,
    TOKEN_ENV,
    Auth,
    Csrf,
    same_origin,
)
from celery_policies.errors import PolicyError


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = Auth({"alice": "s3cret", "bob": "pa:ss"}, token="tok-123")


def test_without_authentication_everyone_is_anonymous() -> None:
    assert not Auth().configured
    assert Auth().identify({}) == ANONYMOUS


@pytest.mark.parametrize(("headers", "who"), [
    (basic("alice", "s3cret"), "alice"),
    (basic("bob", "pa:ss"), "bob"),  # a colon in a password
    (basic("alice", "S3cret"), None),
    (basic("carol", "s3cret"), None),
    (basic("carol", "tok-123"), "carol (token)"),
    ({"authorization": "Bearer tok-123"}, "token"),
    ({"authorization": "Bearer tok-12"}, None),
    ({"authorization": "Basic !!!"}, None),
    ({"authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}, None),
    ({}, None),
])
def test_credentials_and_token_identify_a_request(headers: dict[str, str],
                                                  who: str | None) -> None:
    assert AUTH.identify(headers) == who


def test_a_trusted_header_names_the_user_and_its_absence_refuses() -> None:
    auth = Auth(trusted_header="X-Forwarded-User")
    assert auth.configured
    assert not auth.challenges
    assert auth.identify({"x-forwarded-user": "dana"}) == "dana"
    assert auth.identify({"x-forwarded-user": "  "}) is None
    assert auth.identify({}) is None


def test_credentials_come_from_the_environment_one_per_line() -> None:
    auth = Auth.from_environment(environ={CREDENTIALS_ENV: "alice:a\n\n bob:b:c \n",
                                          TOKEN_ENV: "t"})
    assert dict(auth.credentials) == {"alice": "a", "bob": "b:c"}
    assert auth.token == "t"


@pytest.mark.parametrize("line", ["alice", "alice:", ":secret"])
def test_a_malformed_credentials_line_is_refused_with_its_number(line: str) -> None:
    with pytest.raises(PolicyError, match=f"{CREDENTIALS_ENV} line 2: expected user:password"):
        Auth.from_environment(environ={CREDENTIALS_ENV: f"ok:fine\n{line}"})


def test_a_csrf_token_is_valid_for_its_identity_and_process_only() -> None:
    csrf = Csrf()
    token = csrf.token("alice")
    assert csrf.valid("alice", token)
    assert not csrf.valid("bob", token)
    assert not csrf.valid("alice", None)
    assert not csrf.valid("alice", token[:-1] + "é")
    assert not Csrf().valid("alice", token)  # a restarted console draws a new secret


@pytest.mark.parametrize(("headers", "same"), [
    ({"host": "127.0.0.1:5580"}, True),  # no Origin or Referer: a script, token still needed
    ({"host": "127.0.0.1:5580", "origin": "http://127.0.0.1:5580"}, True),
    ({"host": "127.0.0.1:5580", "referer": "http://127.0.0.1:5580/dead-letters"}, True),
    ({"host": "127.0.0.1:5580", "origin": "http://evil.example"}, False),
    ({"host": "127.0.0.1:5580", "origin": "null"}, False),
    ({"origin": "http://127.0.0.1:5580"}, False),
])
def test_a_post_must_come_from_the_consoles_own_origin(headers: dict[str, str],
                                                       same: bool) -> None:
    assert same_origin(headers) is same


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "console.example"])
def test_the_console_refuses_to_listen_beyond_loopback_without_authentication(
        host: str) -> None:
    result = CliRunner().invoke(policies, ["console", "--broker", "redis://127.0.0.1:1/0",
                                           "--host", host], env={CREDENTIALS_ENV: "",
                                                                 TOKEN_ENV: ""})
    assert result.exit_code == 2
    assert f"the console listens on {host} only with authentication" in result.output


def test_malformed_credentials_stop_the_console_before_it_starts() -> None:
    result = CliRunner().invoke(policies, ["console", "--broker", "redis://127.0.0.1:1/0"],
                                env={CREDENTIALS_ENV: "alice"})
    assert result.exit_code == 1
    assert f"${CREDENTIALS_ENV} line 1" in result.output


def test_without_the_console_extra_the_command_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    result = CliRunner().invoke(policies, ["console", "--broker", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1
    assert "pip install 'celery-policies[console]'" in result.output
