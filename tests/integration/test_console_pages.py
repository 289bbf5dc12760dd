"""The console's pages over HTTP, without a browser, on both brokers: what a console that
hides arguments shows, what an unknown letter or a bad filter answers, and a console
listening beyond loopback with a token."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlencode

import pytest
import uvicorn
from benchmarks._deadletters import fabricate
from celery import Celery
from kombu.connection import Connection
from starlette.applications import Starlette
from starlette.routing import Mount

from celery_policies.console import create_app
from celery_policies.headers import DELIVERY_COUNT_HEADER
from tests.support.console import ConsoleProcess, console
from tests.support.workers import AMQP_URL, delete_queue, require, wait_for

SECRET = "card-4111-1111-1111-1111"


@pytest.fixture
def dead_letter_queue(client: Celery) -> Iterator[str]:
    name = f"dlq.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(client, name)


def serve(broker: str, queue: str, tmp_path: Path, *options: str,
          env: dict[str, str] | None = None) -> AbstractContextManager[ConsoleProcess]:
    return console(["--broker", broker, "--queue", queue, "--refresh", "0.1s", *options],
                   tmp_path / f"console-{uuid.uuid4().hex[:6]}.log", env)


def test_a_console_that_hides_arguments_never_shows_them(
        broker: str, dead_letter_queue: str, tmp_path: Path) -> None:
    with Connection(broker) as connection:
        [task_id] = fabricate(connection, dead_letter_queue, 1, origin="work",
                              args_of=lambda i: [SECRET])
    query = urlencode({"queue": dead_letter_queue, "id": task_id})
    with serve(broker, dead_letter_queue, tmp_path) as shown:
        status, page, _ = shown.request(f"/dead-letters/letter?{query}")
        assert status == 200
        assert SECRET in page
    with serve(broker, dead_letter_queue, tmp_path, "--hide-arguments") as hidden:
        status, page, _ = hidden.request(f"/dead-letters/letter?{query}")
        assert status == 200
        assert "This console does not show arguments." in page
        assert SECRET not in page
        assert task_id in page  # the letter itself is there


def test_an_unknown_letter_queue_or_filter_gets_a_clear_answer(
        broker: str, dead_letter_queue: str, tmp_path: Path) -> None:
    with serve(broker, dead_letter_queue, tmp_path) as served:
        status, page, headers = served.request(
            f"/dead-letters/letter?{urlencode({'queue': dead_letter_queue, 'id': 'nope'})}")
        assert status == 404
        assert f"no dead letter of task nope in {dead_letter_queue}" in page
        assert "script-src" not in headers["content-security-policy"]
        assert headers["content-security-policy"].startswith("default-src 'none'")
        status, page, _ = served.request("/dead-letters?queue=elsewhere")
        assert status == 404
        assert "the console does not read queue &#39;elsewhere&#39;" in page
        status, page, _ = served.request("/dead-letters?since=tenish")
        assert status == 400
        assert "since: expected a duration" in page


def test_beyond_loopback_a_token_is_required_and_accepted(
        broker: str, dead_letter_queue: str, tmp_path: Path) -> None:
    with Connection(broker) as connection:
        fabricate(connection, dead_letter_queue, 2, origin="work")
    env = {"CELERY_POLICIES_CONSOLE_TOKEN": "t0ken-" + uuid.uuid4().hex}
    with serve(broker, dead_letter_queue, tmp_path, "--host", "0.0.0.0",
               env=env) as served:
        url = served.url.replace("0.0.0.0", "127.0.0.1")
        served.url = url
        assert served.request("/dead-letters")[0] == 401
        bearer = {"Authorization": f"Bearer {env['CELERY_POLICIES_CONSOLE_TOKEN']}"}
        assert wait_for(lambda: '<p id="total">2 dead letters' in served.request(
            "/dead-letters", headers=bearer)[1], timeout=30)
        status, page, _ = served.request("/dead-letters", headers=bearer)
        assert status == 200
        assert '<p class="who">token' in page
    logs = [path.read_text() for path in tmp_path.glob("console-*.log")]
    assert logs
    assert not any(env["CELERY_POLICIES_CONSOLE_TOKEN"] in log for log in logs)


def test_mounted_in_a_site_under_a_prefix_every_link_and_redirect_keeps_it(
        broker: str, dead_letter_queue: str) -> None:
    with Connection(broker) as connection:
        fabricate(connection, dead_letter_queue, 1, origin="work")
    site = Starlette(routes=[Mount("/ops/celery", app=create_app(
        broker=broker, queues=[dead_letter_queue], refresh=0.1))])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server = uvicorn.Server(uvicorn.Config(site, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}/ops/celery"
    try:
        assert wait_for(lambda: server.started, timeout=10)
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:
            assert response.url == f"{base}/dead-letters"
        assert wait_for(lambda: "1 dead letter in" in fetch(f"{base}/dead-letters"), timeout=30)
        links = set(re.findall(r'(?:href|action)="(/[^"?]*)', fetch(f"{base}/dead-letters")))
        assert links >= {"/ops/celery/dead-letters/list", "/ops/celery/dead-letters/preview",
                         "/ops/celery/policies", "/ops/celery/static/console.css"}
        assert all(link.startswith("/ops/celery/") for link in links), links
        with urllib.request.urlopen(f"{base}/static/console.css", timeout=10) as response:
            assert response.status == 200
    finally:
        server.should_exit = True
        thread.join(10)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_a_purge_started_while_the_index_reads_the_queue_takes_every_letter(
        broker: str, dead_letter_queue: str, tmp_path: Path) -> None:
    """On RabbitMQ a reading holds every message it has read, unacknowledged, until it ends:
    an operation that selected meanwhile would find only the others."""
    total = 3000
    with Connection(broker) as connection:
        fabricate(connection, dead_letter_queue, total, origin="work")
    with serve(broker, dead_letter_queue, tmp_path) as served:
        status, page, _ = served.request(
            f"/dead-letters/preview?queue={dead_letter_queue}&action=purge")
        assert status == 200
        assert f"{total:,} dead letters will be deleted" in page
        token = re.search(r'name="csrf" value="(\w+)"', page)
        assert token
        time.sleep(0.3)  # the reading is stale: the next page starts another
        assert served.request("/dead-letters")[0] == 200
        status, page, _ = served.request("/dead-letters/purge", data=urlencode(
            {"queue": dead_letter_queue, "csrf": token.group(1)}).encode())
        assert status == 200  # the job's page, after the redirect
        job = re.search(r"/jobs/(\w+)", page)
        assert job
        assert wait_for(lambda: '<p id="outcome">' in served.request(
            f"/jobs/{job.group(1)}")[1], timeout=120)
        assert f'<p id="outcome">deleted {total}</p>' in served.request(
            f"/jobs/{job.group(1)}")[1]


def test_a_quorum_queue_is_read_again_only_when_asked_so_no_letter_reaches_its_limit(
        tmp_path: Path) -> None:
    """Each reading of a RabbitMQ quorum queue is a delivery; past ``x-delivery-limit`` the
    queue drops the letter. A console left open must not read it every ``--refresh``."""
    require(AMQP_URL, "rabbitmq")
    queue = f"dlq.quorum.{uuid.uuid4().hex[:12]}"
    with Connection(AMQP_URL) as connection:
        connection.default_channel.queue_declare(
            queue, durable=True, auto_delete=False,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 5})
        try:
            [task_id] = fabricate(connection, queue, 1, origin="work")
            with serve(AMQP_URL, queue, tmp_path) as served:
                assert wait_for(lambda: 'id="counting"' in served.request("/dead-letters")[1],
                                timeout=30)
                for _ in range(10):  # ten pages, each past --refresh
                    time.sleep(0.2)
                    status, page, _ = served.request("/dead-letters")
                    assert status == 200
                    assert '<p id="total">1 dead letter in 1 group.' in page
            channel = connection.channel()
            assert channel.queue_declare(queue, passive=True).message_count == 1
            message = channel.basic_get(queue, no_ack=False)
            assert message.properties["application_headers"]["id"] == task_id
            # read once when the console started (which showed that the queue counts), never
            # again
            assert message.properties["application_headers"][DELIVERY_COUNT_HEADER] == 1
            channel.basic_reject(message.delivery_tag, requeue=True)
            channel.close()
        finally:
            connection.default_channel.queue_delete(queue)
