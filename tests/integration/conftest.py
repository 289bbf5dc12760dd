"""Fixtures for tests that run real workers on real brokers (Redis and RabbitMQ).

Every test runs once per broker. A test gets its own queue and Redis keys, so leftovers of
one test never reach another.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.support import proj
from tests.support.workers import BROKERS, Worker, Workers, delete_queue, require

HERE = Path(__file__).resolve().parent
#: The shared worker's policy file.
RUNTIME_POLICIES = HERE / "runtime.yaml"



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def counters() -> redis.Redis:
    require(proj.COUNTERS_URL, "Redis (counters and result backend)")
    return proj.counters


@pytest.fixture(scope="module", params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest, counters: redis.Redis) -> str:
    url = BROKERS[request.param]
    require(url, request.param)
    return url


@pytest.fixture(scope="module")
def client(broker: str) -> Iterator[Celery]:
    """An app that publishes to ``broker`` and reads results, as a web app would."""
    app = proj.create_app(broker, client=True)
    yield app
    app.close()


@pytest.fixture
def key() -> str:
    """A Redis key prefix unique to the test."""
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
def queue(client: Celery) -> Iterator[str]:
    name = f"test.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(client, name)


@pytest.fixture
def workers(broker: str, queue: str, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(broker, queue, tmp_path)
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def shared(broker: str, client: Celery, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Worker]:
    """One prefork worker per broker running tests/integration/runtime.yaml, for the tests
    that only send tasks and watch what happens."""
    queue = f"shared.{uuid.uuid4().hex[:12]}"
    log = tmp_path_factory.mktemp("shared") / "worker.log"
    worker = Worker(broker, queue, log, RUNTIME_POLICIES, concurrency=3).start()
    yield worker
    worker.stop()
    delete_queue(client, queue)
