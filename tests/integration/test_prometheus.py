"""Metrics as a real Prometheus server sees them: it scrapes a real worker and the
dead-letter exporter, and PromQL shows each decision counted exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.support.prometheus import free_port, running


@pytest.fixture
def exposed() -> Iterator[tuple[str, Counter]]:
    """A throwaway prometheus_client HTTP server on 127.0.0.1 and the one counter it serves."""
    registry = CollectorRegistry()
    counter = Counter("harness_events", "Events the test counted.", registry=registry)
    port = free_port()
    server: WSGIServer
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}", counter
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_the_harness_reads_exactly_what_a_target_exposes(
        exposed: tuple[str, Counter], tmp_path: Path) -> None:
    """Prometheus scrapes the target and the query API answers its exact value, after each
    change, with no sleep: the harness waits for the next scrape."""
    target, counter = exposed
    counter.inc(3)
    with running({"harness": [target]}, tmp_path) as prometheus:
        prometheus.wait_for_targets_up()
        samples = prometheus.wait_until("harness_events_total",
                                        lambda found: bool(found) and found[0].value == 3)
        assert samples[0].labels == {"__name__": "harness_events_total", "job": "harness",
                                     "instance": target}
        counter.inc(4)
        prometheus.next_scrape()
        assert [s.value for s in prometheus.query("harness_events_total")] == [7]
        assert prometheus.values('sum by (job) (harness_events_total)', by="job") == {
            "harness": 7}


def test_a_target_added_while_the_server_runs_is_scraped(
        exposed: tuple[str, Counter], tmp_path: Path) -> None:
    target, counter = exposed
    counter.inc()
    with running({"first": [target]}, tmp_path) as prometheus:
        prometheus.wait_for_targets_up()
        prometheus.set_targets("second", [target])
        prometheus.wait_for_targets_up()
        prometheus.next_scrape()
        assert prometheus.values("harness_events_total", by="job") == {"first": 1, "second": 1}
