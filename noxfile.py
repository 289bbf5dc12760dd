"""The Celery version matrix: the whole test suite and the demo on each supported Celery.

Each session installs the project as a user would, ``pip install celery-policies[test]``
beside ``celery[redis]==X``, and lets the resolver choose kombu, redis-py and billiard. The
results (JUnit XML, versions, demo outcomes) go to ``build/matrix/``, from which
``docs/compatibility.py`` writes the table in docs/compatibility.md.

    nox                                # the suite and the demos on every supported Celery
    nox -s "matrix(5.3.6)" "demo(5.3.6)"   # one release (about 13 minutes)
    nox -s "matrix(5.3.6)" -- -x tests/unit   # pytest arguments after --

Needs Redis and RabbitMQ on 127.0.0.1, as the integration tests do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["matrix", "demo"]

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "build" / "matrix"
#: The newest release of each supported Celery minor version, oldest first.
CELERY = ["5.3.6", "5.4.0", "5.5.3", "5.6.3", "5.7.0"]
#: Where the demo runs: (name, environment). Results go to Redis when RabbitMQ brokers.
DEMOS = {
    "embedded": {},
    "redis": {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/7"},
    "rabbitmq": {"CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
                 "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/8"},
}
VERSIONS = """
import json, importlib.metadata as m
print(json.dumps({n: m.version(n) for n in ("celery", "kombu", "billiard", "redis", "amqp")}))
"""


def _install(session: nox.Session, celery: str) -> None:
    """Install as a user would; record which kombu, redis-py... the resolver chose."""
    session.install("-e", ".[test]", f"celery[redis]=={celery}")
    printed = session.run("python", "-c", VERSIONS, silent=True)
    _record(celery, versions=json.loads(str(printed).strip().splitlines()[-1]))
    _record_commit(session, celery)


def _record_commit(session: nox.Session, celery: str) -> None:
    """Which code a session tested: the commit, and whether the work tree differed from it."""
    commit = str(session.run("git", "rev-parse", "--short", "HEAD", silent=True,
                             external=True)).strip()
    dirty = str(session.run("git", "status", "--porcelain", "--", "src", "tests",
                            silent=True, external=True)).strip()
    path = RESULTS / f"celery-{celery}.json"
    record = json.loads(path.read_text())
    record.setdefault("commits", {})[session.name.split("(")[0]] = (
        commit + ("+changes" if dirty else ""))
    path.write_text(json.dumps(record, indent=2) + "\n")


def _record(celery: str, versions: dict[str, str] | None = None, **outcomes: bool) -> None:
    """Merge what a session found into build/matrix/celery-X.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"celery-{celery}.json"
    record: dict[str, Any] = (json.loads(path.read_text()) if path.exists()
                              else {"celery": celery, "versions": {}, "outcomes": {}})
    if versions is not None:
        record["versions"] = versions
    record["outcomes"].update(outcomes)
    path.write_text(json.dumps(record, indent=2) + "\n")


@nox.session
@nox.parametrize("celery", CELERY, ids=CELERY)
def matrix(session: nox.Session, celery: str) -> None:
    """The whole test suite on one Celery release (JUnit XML in build/matrix/)."""
    _install(session, celery)
    junit = RESULTS / f"celery-{celery}.xml"
    junit.unlink(missing_ok=True)
    try:
        session.run("pytest", f"--junitxml={junit}", "-p", "no:cacheprovider",
                    *session.posargs, env={"CI": os.environ.get("CI", "true")})
    except nox.command.CommandFailed:
        _record(celery, pytest=False)
        raise
    _record(celery, pytest=True)


@nox.session
@nox.parametrize("celery", CELERY, ids=CELERY)
def demo(session: nox.Session, celery: str) -> None:
    """The demo on one Celery release: embedded broker, Redis, RabbitMQ.

    The demos use fixed queue names: run one demo session at a time.
    """
    _install(session, celery)
    failed = []
    for name, env in DEMOS.items():
        try:
            session.run("python", "-m", "examples.shop.demo", env=env)
        except nox.command.CommandFailed:
            failed.append(name)
        _record(celery, None, **{f"demo {name}": name not in failed})
    if failed:
        session.error(f"celery {celery}: the demo failed on {', '.join(failed)}")
