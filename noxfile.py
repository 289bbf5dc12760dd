"""The Celery version matrix: the whole test suite and the demo on each supported Celery.

Each session installs the project as a user would, ``pip install celery-policies[test]``
beside ``celery[redis]==X``, and lets the resolver choose kombu, redis-py and billiard. The
results (JUnit XML, versions, demo outcomes) go to ``build/matrix/``, from which
``docs/compatibility.py`` writes the table in docs/compatibility.md.

    nox -s matrix                      # every supported Celery (about 15 minutes each)
    nox -s "matrix(celery='5.3.6')"    # one
    nox -s matrix -- -x tests/unit     # pytest arguments after --

Needs Redis and RabbitMQ on 127.0.0.1, as the integration tests do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["matrix"]

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


@nox.session
@nox.parametrize("celery", CELERY, ids=CELERY)
def matrix(session: nox.Session, celery: str) -> None:
    """The test suite and the demo on one Celery release."""
    session.install("-e", ".[test]", f"celery[redis]=={celery}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {"celery": celery}
    printed = session.run("python", "-c", VERSIONS, silent=True)
    record["versions"] = json.loads(str(printed).strip().splitlines()[-1])
    junit = RESULTS / f"celery-{celery}.xml"
    junit.unlink(missing_ok=True)
    outcomes: dict[str, bool] = {}
    try:
        session.run("pytest", f"--junitxml={junit}", "-p", "no:cacheprovider",
                    *session.posargs, env={"CI": os.environ.get("CI", "true")})
    except nox.command.CommandFailed:
        outcomes["pytest"] = False
    for name, env in DEMOS.items():
        try:
            session.run("python", "-m", "examples.shop.demo", env=env)
            outcomes[f"demo {name}"] = True
        except nox.command.CommandFailed:
            outcomes[f"demo {name}"] = False
    record["outcomes"] = outcomes
    (RESULTS / f"celery-{celery}.json").write_text(json.dumps(record, indent=2) + "\n")
    if not all(outcomes.values()):
        session.error(f"celery {celery}: failed: "
                      + ", ".join(k for k, ok in outcomes.items() if not ok))
