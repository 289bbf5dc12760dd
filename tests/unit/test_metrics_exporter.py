"""The dead-letter exporter without a network broker: the cache and its interval, what a
scrape shows, which queues are read, and the command's errors (``metrics serve``).

Real Redis and RabbitMQ queues, scraped over HTTP from a real exporter process, are in
tests/integration/test_metrics_exporter.py.
"""

from __future__ import annotations

import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_policies.cli import policies
from celery_policies.metrics import names
from celery_policies.metrics.exporter import DeadLetterCache, DeadLetterCollector
from celery_policies.metrics.queues import Depth, QueueReader, dead_letter_queues
from celery_policies.spec.loader import load_policies
from celery_policies.spec.model import DEFAULT_DEAD_LETTER_QUEUE
from tests.support.workers import wait_for
from tests.unit.test_dlq_cli import APP_MODULE, Broker, broker  # noqa: F401 - the fixture


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingReader:
    """Answers every read with ``depth`` for each queue (None: a failed read)."""

    def __init__(self, queues: tuple[str, ...]) -> None:
        self.queues = queues
        self.depth: Depth | None = Depth(3)
        self.reads = 0

    def __call__(self) -> Mapping[str, Depth | None]:
        self.reads += 1
        return dict.fromkeys(self.queues, self.depth)


def test_scrapes_within_the_interval_share_one_read() -> None:
    clock = Clock()
    reader = CountingReader(("dlq",))
    cache = DeadLetterCache(reader, reader.queues, interval=15, wait=5, clock=clock)
    for _ in range(6):
        assert cache.figures().depths == {"dlq": Depth(3)}
        clock.now += 2.5
    assert reader.reads == 1  # 6 scrapes over 12.5 s
    clock.now += 2.5
    cache.figures()
    assert reader.reads == 2


def test_a_slow_read_answers_the_scrape_with_the_last_figures_and_is_not_started_twice(
        ) -> None:
    clock = Clock()
    release = threading.Event()
    reads = []

    def slow() -> Mapping[str, Depth | None]:
        reads.append(1)
        if len(reads) > 1:
            release.wait(30)
        return {"dlq": Depth(len(reads))}

    cache = DeadLetterCache(slow, ("dlq",), interval=1, wait=0.05, clock=clock)
    assert cache.figures().depths == {"dlq": Depth(1)}
    clock.now += 1
    assert cache.figures().depths == {"dlq": Depth(1)}  # the second read is still running
    clock.now += 1
    assert cache.figures().depths == {"dlq": Depth(1)}
    assert len(reads) == 2  # due again, but one read at a time
    release.set()
    clock.now += 1
    # due, and started as soon as the second one is over
    assert wait_for(lambda: cache.figures() and len(reads) == 3, timeout=30)


def test_a_failed_read_counts_an_error_and_keeps_the_last_good_figures() -> None:
    clock = Clock()
    reader = CountingReader(("a", "b"))
    cache = DeadLetterCache(reader, reader.queues, interval=1, wait=5, clock=clock)
    cache.figures()
    reader.depth = None
    clock.now += 1
    cache.figures()
    clock.now += 1
    figures = cache.figures()
    assert figures.depths == {"a": Depth(3), "b": Depth(3)}
    assert figures.errors == {"a": 2, "b": 2}


def test_a_reader_that_raises_counts_as_a_failed_read() -> None:
    def broken() -> Mapping[str, Depth | None]:
        raise RuntimeError("bug")

    cache = DeadLetterCache(broken, ("dlq",), interval=1, wait=5)
    assert cache.figures().errors == {"dlq": 1}


def scrape(cache: DeadLetterCache, now: float) -> dict[str, dict[str, float]]:
    """``{sample name: {queue: value}}`` as Prometheus would read it."""
    registry = CollectorRegistry()
    registry.register(DeadLetterCollector(cache, now=lambda: now))
    text = generate_latest(registry).decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[sample.labels["queue"]] = sample.value
    return found


def test_a_scrape_shows_the_exporter_metrics_of_names_py_and_nothing_else() -> None:
    reads = {"full": Depth(4, 500.0), "empty": Depth(0), "unread": None}
    cache = DeadLetterCache(lambda: reads, tuple(reads), interval=15, wait=5)
    found = scrape(cache, now=530.0)
    assert set(found) == {metric.name for metric in names.EXPORTER_METRICS}
    assert found[names.PREFIX + "dead_letters"] == {"full": 4, "empty": 0}
    # the age grows between reads: worked out at the scrape, from when the letter failed
    assert found[names.PREFIX + "dead_letter_oldest_age_seconds"] == {"full": 30.0}
    assert found[names.PREFIX + "dead_letter_read_errors_total"] == {
        "full": 0, "empty": 0, "unread": 1}


def test_a_letter_that_failed_after_the_scrape_clock_is_zero_seconds_old() -> None:
    cache = DeadLetterCache(lambda: {"q": Depth(1, 600.0)}, ("q",), interval=15, wait=5)
    assert scrape(cache, now=590.0)[names.PREFIX + "dead_letter_oldest_age_seconds"] == {
        "q": 0.0}


def test_the_queues_are_the_files_dead_letter_queue_its_routes_and_the_extra_ones(
        tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        dead_letter: {queue: dlq.main}
        defaults:
          on_failure: [{dead_letter: true}]
        policies:
          - match: "billing.*"
            on_failure: [{dead_letter: dlq.billing}, {task: alerts.notify}]
          - match: "mail.*"
            on_failure: [{dead_letter: true, when: [ValueError]}]
        """), encoding="utf-8")
    model = load_policies(str(path)).model
    assert dead_letter_queues(model, ["extra", "dlq.main"]) == (
        "dlq.billing", "dlq.main", "extra")


def test_without_a_file_the_queues_are_the_extra_ones_else_the_default() -> None:
    assert dead_letter_queues(None, ["a"]) == ("a",)
    assert dead_letter_queues(None) == (DEFAULT_DEAD_LETTER_QUEUE,)


def test_a_file_without_dead_letter_routes_still_reads_its_dead_letter_queue(
        tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("version: 1\n", encoding="utf-8")
    assert dead_letter_queues(load_policies(str(path)).model) == (DEFAULT_DEAD_LETTER_QUEUE,)


def test_the_reader_counts_every_letter_and_dates_the_oldest(
        broker: Broker) -> None:  # noqa: F811 - the fixture
    before = time.time()
    broker.fabricate(3)
    (broker.queues / f"0_junk.{DEFAULT_DEAD_LETTER_QUEUE}.msg").write_bytes(b'"not a message"')
    reader = QueueReader(broker.app.connection_for_write,
                         [DEFAULT_DEAD_LETTER_QUEUE, "absent"])
    found = reader.read()
    letters = found[DEFAULT_DEAD_LETTER_QUEUE]
    assert letters is not None
    assert letters.letters == 4  # the unreadable entry counts
    # dated by the letter behind the unreadable one (failure times are to the millisecond)
    assert letters.oldest_failed_at is not None
    assert before - 0.001 <= letters.oldest_failed_at <= time.time()
    assert found["absent"] == Depth(0)


def test_a_broker_that_cannot_be_reached_is_a_failed_read_of_every_queue() -> None:
    def unreachable() -> object:
        raise ConnectionRefusedError("refused")

    reader = QueueReader(unreachable, ["a", "b"])  # type: ignore[arg-type]
    assert reader.read() == {"a": None, "b": None}


def metrics(*args: str) -> Result:
    return CliRunner().invoke(policies, ["metrics", "serve", *args])


@pytest.mark.parametrize("interval", ["0s", "-5", "soon", "inf"])
def test_a_bad_interval_is_a_usage_error(broker: Broker, interval: str  # noqa: F811
                                         ) -> None:
    result = metrics("--app", APP_MODULE, "--interval", interval)
    assert result.exit_code == 2
    assert "Invalid value for '--interval'" in result.output


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_a_bad_port_is_a_usage_error(broker: Broker, port: str) -> None:  # noqa: F811
    result = metrics("--app", APP_MODULE, "--port", port)
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.output


def test_without_an_app_the_command_says_it_needs_one(broker: Broker) -> None:  # noqa: F811
    result = metrics()
    assert result.exit_code == 2
    assert "this command needs --app MODULE" in result.output


def test_an_app_that_cannot_be_loaded_is_named(broker: Broker) -> None:  # noqa: F811
    result = metrics("--app", "no_such_module_here")
    assert result.exit_code == 2
    assert "cannot load app 'no_such_module_here'" in result.output


def test_an_invalid_policy_file_lists_its_problems_and_exits_1(
        broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\ndead_letter: {queue: 5}\n", encoding="utf-8")
    result = metrics("--app", APP_MODULE, "--file", str(path))
    assert result.exit_code == 1
    assert "bad.yaml:2:" in result.output


@pytest.fixture
def taken_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    yield holder.getsockname()[1]
    holder.close()


def test_a_port_in_use_is_one_line_and_exit_1(broker: Broker, taken_port: int  # noqa: F811
                                              ) -> None:
    result = metrics("--app", APP_MODULE, "--port", str(taken_port))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: cannot serve on 127.0.0.1:{taken_port}: Address already in use"]


def test_without_prometheus_client_the_command_says_how_to_install_it(
        broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # makes the import fail
    result = metrics("--app", APP_MODULE)
    assert result.exit_code == 1
    assert "pip install 'celery-policies[metrics]'" in result.output
