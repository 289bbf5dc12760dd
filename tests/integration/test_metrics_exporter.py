"""``celery-policies metrics serve`` on real brokers: a real exporter process, scraped over
HTTP, reads dead-letter queues filled by the plugin's own publisher without taking a letter
out, survives unreadable entries and a broker that goes away, and reads the broker at most
once per interval.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import amqp
import pytest
from benchmarks._deadletters import fabricate
from celery import Celery
from kombu.connection import Connection
from prometheus_client.parser import text_string_to_metric_families

from celery_policies.deadletters.envelope import declare_queue
from celery_policies.headers import DELIVERY_COUNT_HEADER
from celery_policies.metrics.exporter import SERVING_LINE
from celery_policies.metrics.names import EXPORTER_METRICS
from tests.support import proj
from tests.support.deadletters import read
from tests.support.proxy import Proxy
from tests.support.workers import (
    AMQP_URL,
    BROKERS,
    ROOT,
    delete_queue,
    queue_size,
    require,
    wait_for,
)

from .test_broker_outage import proxy, through  # noqa: F401 - the fixture

DEPTH, AGE, ERRORS = (metric.name for metric in EXPORTER_METRICS)
#: Seconds the exporter may take to start serving.
START = 60.0
#: failed_at is written to the millisecond, cut (not rounded).
MS = 0.001


class Exporter:
    """A ``metrics serve`` process (``celery-policies ...`` or ``celery -A ... policies``)."""

    def __init__(self, broker: str, log: Path, *args: str, celery: bool = False,
                 env: dict[str, str] | None = None) -> None:
        if celery:
            command = [sys.executable, "-m", "celery", "-A", "tests.support.proj",
                       "policies", "metrics", "serve"]
        else:
            command = [sys.executable, "-m", "celery_policies", "metrics", "serve", "--app",
                       "tests.support.proj"]
        inherited = {k: v for k, v in os.environ.items() if k != "CELERY_POLICIES_FILE"}
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, "--port", "0", *args], cwd=ROOT, stdout=out, stderr=out,
                env={**inherited, "TEST_BROKER_URL": broker, **(env or {})})
        self.url = self._wait_serving()

    def _wait_serving(self) -> str:
        prefix = SERVING_LINE.partition("{address}")[0]
        deadline = time.monotonic() + START
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith(prefix):
                    return "http://" + line[len(prefix):]
            assert self.process.poll() is None, f"exporter exited:\n{self.log.read_text()}"
            time.sleep(0.1)
        raise AssertionError(f"exporter not serving after {START}s:\n{self.log.read_text()}")

    def scrape_dated(self) -> tuple[dict[str, dict[str, float]], Span]:
        """A scrape, and when it was made."""
        before = time.time()
        found = self.scrape()
        return found, (before, time.time())

    def scrape(self) -> dict[str, dict[str, float]]:
        """``{sample name: {queue: value}}``."""
        with urllib.request.urlopen(self.url, timeout=60) as response:
            text = response.read().decode()
        found: dict[str, dict[str, float]] = {name: {} for name in (DEPTH, AGE, ERRORS)}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, {})[sample.labels["queue"]] = sample.value
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[Callable[..., Exporter]]:
    started: list[Exporter] = []

    def start(broker: str, *args: str, **options: object) -> Exporter:
        log = tmp_path / f"exporter-{len(started)}.log"
        exporter = Exporter(broker, log, *args, **options)  # type: ignore[arg-type]
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


@pytest.fixture
def dead_letter_queue(client: Celery) -> Iterator[str]:
    name = f"dlq.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(client, name)


def policy_file(tmp_path: Path, queue: str) -> str:
    """A file that sends every task's dead letters to ``queue``."""
    path = tmp_path / "policies.yaml"
    path.write_text(f"version: 1\ndead_letter: {{queue: {queue}}}\n"
                    "defaults:\n  on_failure: [{dead_letter: true}]\n", encoding="utf-8")
    return str(path)


#: (a time just before, a time just after)
Span = tuple[float, float]


def put(broker: str, queue: str, count: int) -> tuple[list[str], Span]:
    """``count`` dead letters published by the plugin's publisher: their ids, and when."""
    before = time.time()
    with Connection(broker) as connection:
        ids = fabricate(connection, queue, count, origin="work")
    return ids, (before, time.time())


def assert_read(found: dict[str, dict[str, float]], queue: str, letters: int) -> None:
    """The scrape shows ``letters`` in ``queue``, read without an error."""
    assert found[DEPTH] == {queue: letters}
    assert found[ERRORS] == {queue: 0}


def assert_age(age: float, published: Span, scraped: Span) -> None:
    """``age`` is that of a letter published during ``published``, seen during ``scraped``."""
    assert scraped[0] - published[1] <= age <= scraped[1] - published[0] + MS


def redelivered(broker: str, queue: str) -> bool:
    """Whether the first letter of a RabbitMQ queue has been delivered before (it is handed
    back, and so delivered once more, by this look)."""
    with Connection(broker) as connection:
        channel = connection.channel()
        message = channel.basic_get(queue, no_ack=False)
        assert message is not None
        channel.close()
        return bool(message.delivery_info["redelivered"])


def test_depth_and_age_are_served_and_no_letter_is_taken_or_delivered(
        broker: str, dead_letter_queue: str, exporters: Callable[..., Exporter],
        tmp_path: Path) -> None:
    ids, published = put(broker, dead_letter_queue, 5)
    exporter = exporters(broker, "--file", policy_file(tmp_path, dead_letter_queue))
    found, scraped = exporter.scrape_dated()
    assert_read(found, dead_letter_queue, 5)
    if broker.startswith("redis"):
        assert_age(found[AGE][dead_letter_queue], published, scraped)
    else:
        assert found[AGE] == {}  # fetching the oldest letter is a delivery: not by default
        assert not redelivered(broker, dead_letter_queue)  # a passive declare delivers none
    assert [letter.id for letter in read(broker, dead_letter_queue)] == ids


def test_two_scrapes_within_the_interval_share_one_read(
        broker: str, dead_letter_queue: str, exporters: Callable[..., Exporter]) -> None:
    put(broker, dead_letter_queue, 2)
    exporter = exporters(broker, "--queue", dead_letter_queue, "--interval", "1h",
                         celery=True)
    assert exporter.scrape()[DEPTH] == {dead_letter_queue: 2}
    put(broker, dead_letter_queue, 3)
    assert exporter.scrape()[DEPTH] == {dead_letter_queue: 2}  # not read again
    assert len(read(broker, dead_letter_queue)) == 5


def test_unreadable_entries_among_valid_ones_are_counted_and_break_nothing(
        broker: str, dead_letter_queue: str, exporters: Callable[..., Exporter]) -> None:
    with Connection(broker) as connection:
        declare_queue(connection, dead_letter_queue)
        producer = connection.Producer()
        # 16 MB of zeros, bzip2-compressed to a few hundred bytes: over the 10 MB cap
        producer.publish(bytes(16 * 2**20), exchange="", routing_key=dead_letter_queue,
                         serializer=None, content_type="application/data",
                         content_encoding="binary", compression="bzip2")
        # no failure record: no time to date it by
        producer.publish(b"\xff not a task", exchange="", routing_key=dead_letter_queue,
                         serializer=None, content_type="application/data",
                         content_encoding="binary")
    _, published = put(broker, dead_letter_queue, 2)
    exporter = exporters(broker, "--queue", dead_letter_queue, "--rabbitmq-age")
    found, scraped = exporter.scrape_dated()
    assert_read(found, dead_letter_queue, 4)
    if broker.startswith("redis"):
        # dated by the oldest letter that records a failure time, behind the two entries
        assert_age(found[AGE][dead_letter_queue], published, scraped)
    else:
        assert found[AGE] == {}  # only the head is fetched, and it has no failure time
    letters = read(broker, dead_letter_queue)  # every entry is still there, in its place
    assert [letter.problem is not None for letter in letters] == [True, False, False, False]
    assert [bool(letter.failure) for letter in letters] == [False, False, True, True]


def test_a_broker_that_goes_away_counts_read_errors_and_keeps_the_last_figures(
        broker: str, dead_letter_queue: str, exporters: Callable[..., Exporter],
        proxy: Proxy) -> None:  # noqa: F811 - the fixture
    put(broker, dead_letter_queue, 2)
    exporter = exporters(through(proxy, broker), "--queue", dead_letter_queue,
                         "--interval", "0.2s", "--broker-timeout", "2")
    assert exporter.scrape()[ERRORS] == {dead_letter_queue: 0}
    proxy.stop()
    scrapes: list[dict[str, dict[str, float]]] = []
    assert wait_for(lambda: scrapes.append(exporter.scrape())
                    or scrapes[-1][ERRORS][dead_letter_queue] >= 2, timeout=60, interval=0.3)
    assert all(found[DEPTH] == {dead_letter_queue: 2} for found in scrapes)
    proxy.start()
    put(broker, dead_letter_queue, 1)
    assert wait_for(lambda: exporter.scrape()[DEPTH] == {dead_letter_queue: 3}, timeout=60,
                    interval=0.3)
    assert exporter.process.poll() is None


def test_a_queue_the_broker_refuses_counts_read_errors_and_the_others_are_read(
        exporters: Callable[..., Exporter]) -> None:
    url = BROKERS["redis"]
    require(url, "redis")
    good, bad = f"dlq.{uuid.uuid4().hex[:12]}", f"dlq.{uuid.uuid4().hex[:12]}"
    with Connection(url) as connection:
        client = connection.default_channel.client
        client.set(bad, "a string, not a list")  # LLEN answers WRONGTYPE
        try:
            put(url, good, 1)
            exporter = exporters(url, "--queue", good, "--queue", bad)
            found = exporter.scrape()
            assert found[DEPTH] == {good: 1}
            assert found[ERRORS] == {good: 0, bad: 1}
            assert "WRONGTYPE" in exporter.log.read_text()
        finally:
            client.delete(good, bad)


@pytest.fixture
def rabbitmq() -> Iterator[Celery]:
    require(AMQP_URL, "rabbitmq")
    app = proj.create_app(AMQP_URL, client=True)
    yield app
    app.close()


@pytest.fixture
def quorum_queue(rabbitmq: Celery) -> Iterator[str]:
    """A quorum queue that drops a letter delivered more than twice."""
    name = f"dlq.quorum.{uuid.uuid4().hex[:12]}"
    with rabbitmq.connection_for_write() as connection:
        connection.default_channel.queue_declare(
            name, durable=True, auto_delete=False,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 2})
    yield name
    delete_queue(rabbitmq, name)


def test_rabbitmq_drops_a_quorum_letter_fetched_and_handed_back_past_its_delivery_limit(
        quorum_queue: str) -> None:
    """Why the exporter does not fetch letters by default: what docs/metrics.md cites."""
    with Connection(AMQP_URL) as connection:
        channel = connection.channel()
        channel.basic_publish(amqp.Message(b"letter", delivery_mode=2), exchange="",
                              routing_key=quorum_queue)
        channel.close()
        fetched = 0
        while wait_for(lambda: _ready(connection, quorum_queue) == 1, timeout=5):
            channel = connection.channel()
            message = channel.basic_get(quorum_queue, no_ack=False)
            assert message is not None
            fetched += 1
            channel.basic_reject(message.delivery_tag, requeue=True)
            channel.close()
            assert fetched < 10, "never dropped"
        assert fetched == 3  # the first delivery and two more; then it was dropped
        assert _ready(connection, quorum_queue) == 0


def _ready(connection: Connection, queue: str) -> int:
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue, passive=True).message_count)
    finally:
        channel.close()


def test_rabbitmq_age_dates_the_oldest_letter_and_hands_it_back_in_place(
        rabbitmq: Celery, exporters: Callable[..., Exporter]) -> None:
    queue = f"dlq.{uuid.uuid4().hex[:12]}"
    try:
        ids, published = put(AMQP_URL, queue, 3)
        exporter = exporters(AMQP_URL, "--queue", queue, "--rabbitmq-age")
        found, scraped = exporter.scrape_dated()
        assert found[DEPTH] == {queue: 3}
        assert_age(found[AGE][queue], published, scraped)
        assert [letter.id for letter in read(AMQP_URL, queue)] == ids
    finally:
        delete_queue(rabbitmq, queue)


def test_rabbitmq_age_leaves_a_quorum_queue_alone_after_one_fetch(
        rabbitmq: Celery, quorum_queue: str, exporters: Callable[..., Exporter]) -> None:
    put(AMQP_URL, quorum_queue, 1)
    exporter = exporters(AMQP_URL, "--queue", quorum_queue, "--rabbitmq-age",
                         "--interval", "0.1s")
    for _ in range(5):  # each scrape past the interval reads the queue
        found = exporter.scrape()
        assert found[DEPTH] == {quorum_queue: 1}
        assert found[AGE] == {}
        time.sleep(0.3)
    put(AMQP_URL, quorum_queue, 1)
    assert wait_for(lambda: exporter.scrape()[DEPTH] == {quorum_queue: 2}, timeout=30)
    assert queue_size(rabbitmq, quorum_queue) == 2
    with Connection(AMQP_URL) as connection:
        channel = connection.channel()
        message = channel.basic_get(quorum_queue, no_ack=False)
        channel.close()
    # fetched once by the exporter, however many times it read the queue
    assert message.properties["application_headers"][DELIVERY_COUNT_HEADER] == 1
