"""Metrics as a real Prometheus server sees them: it scrapes a real prefork worker (on Redis
and on RabbitMQ) and the dead-letter exporter, and PromQL shows every decision counted
exactly once, the dead letters the routes published, and drift when a worker loads another
file.

Per broker, one worker set serves every test of this module: a worker running
tests/integration/prometheus.yaml with metrics on, ``celery-policies metrics serve`` reading
its dead-letter queue, and Prometheus scraping both every second. The tasks that succeed,
retry, fail for good in each way, time out and kill their process are all sent once, and the
tests read what they left.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

import pytest
from celery import Celery
from celery.result import AsyncResult
from prometheus_client import CollectorRegistry, Counter, start_http_server

from celery_policies.metrics.names import NO_POLICY, PREFIX
from celery_policies.worker.serving import SERVING_FORMAT
from tests.support.prometheus import Prometheus, Sample, free_port, running
from tests.support.workers import Worker, delete_queue

from .test_metrics_exporter import Exporter
from .test_retries import RESULT_TIMEOUT

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "prometheus.yaml"
#: Seconds a counter may take to reach its figure: a scrape a second, plus the exporter's
#: one-second cache, plus a loaded machine.
SETTLE = 30.0
FLAKY = "tests.support.proj.Flaky"
SERVING = re.compile(re.escape(SERVING_FORMAT.partition("%s")[0]) + r"(http://\S+)")


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


# --- a worker, the exporter and Prometheus, per broker ------------------------------------------

#: What each task is sent with, by a short name the tests use: the task and its keyword
#: arguments; all but ``proj.noop`` also take a Redis key to record their attempts under.
SENT: dict[str, tuple[str, dict[str, Any]]] = {
    "noop-1": ("proj.noop", {}),
    "noop-2": ("proj.noop", {}),
    "noop-3": ("proj.noop", {}),
    "recovers": ("proj.retry.backoff", {"fail_times": 2}),
    "exhausted": ("proj.retry.limited", {"fail_times": 99}),
    "deadline": ("proj.retry.deadline", {"fail_times": 99}),
    "fatal": ("proj.retry.fatal", {"fail_times": 99, "error": "Fatal"}),
    "unpolicied": ("proj.dlq.fixable", {}),
    "stubborn": ("proj.limits.stubborn", {"seconds": 4}),
    "suicide": ("proj.lost.suicide", {}),
}
#: How each ends: SUCCESS, or the class name of the exception it failed with.
ENDS = {"noop-1": "SUCCESS", "noop-2": "SUCCESS", "noop-3": "SUCCESS", "recovers": "SUCCESS",
        "exhausted": "Flaky", "deadline": "Flaky", "fatal": "Fatal", "unpolicied": "Fatal",
        "stubborn": "TimeLimitExceeded", "suicide": "RedeliveriesExhausted"}


@dataclass
class Stack:
    """What one broker's tests share."""

    worker: Worker
    exporter: Exporter
    prometheus: Prometheus
    queue: str
    dead_letter_queue: str
    results: dict[str, AsyncResult]

    def settled(self, expr: str, by: tuple[str, ...], expected: dict[Any, float]
                ) -> None:
        """``expr`` reaches ``expected`` ({label values of ``by``: value}), and still says so
        after one more scrape of every target: a count that moved past it late fails."""
        def grouped(samples: list[Sample]) -> dict[Any, float]:
            return {key(sample, by): sample.value for sample in samples}

        self.prometheus.wait_until(expr, lambda found: grouped(found) == expected, SETTLE)
        self.prometheus.next_scrape()
        assert grouped(self.prometheus.query(expr)) == expected


def key(sample: Sample, by: tuple[str, ...]) -> Any:
    values = tuple(sample.labels.get(label, "") for label in by)
    return values[0] if len(values) == 1 else values


def metrics_address(worker: Worker) -> str:
    """``host:port`` of the worker's /metrics, from the line it logs."""
    found = SERVING.search(worker.log)
    assert found, f"the worker serves no metrics:\n{worker.log}"
    return urlsplit(found[1]).netloc


@pytest.fixture(scope="module")
def stack(broker: str, client: Celery, counters: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("prometheus")
    tag = uuid.uuid4().hex[:12]
    queue, dead_letters = f"prom.{tag}", f"prom.{tag}.dlq"
    env = {"TEST_DLQ": dead_letters, "TEST_VISIBILITY_TIMEOUT": "3"}
    worker = Worker(broker, queue, folder / "worker.log", POLICIES, concurrency=3,
                    extra=["--policies-metrics-port", "0"], env=env)
    exporter: Exporter | None = None
    try:
        worker.start()
        exporter = Exporter(broker, folder / "exporter.log", "--file", str(POLICIES),
                            "--interval", "1s", env=env)
        jobs = {"worker": [metrics_address(worker)],
                "exporter": [urlsplit(exporter.url).netloc]}
        with running(jobs, folder / "server") as prometheus:
            prometheus.wait_for_targets_up()
            results = {name: client.send_task(
                task, () if task == "proj.noop" else (f"test:{tag}:{name}",), kwargs,
                queue=queue) for name, (task, kwargs) in SENT.items()}
            for result in results.values():
                result.get(timeout=RESULT_TIMEOUT, propagate=False)
            yield Stack(worker, exporter, prometheus, queue, dead_letters, results)
    finally:
        if exporter is not None:
            exporter.stop()
        worker.stop()
        delete_queue(client, queue)
        delete_queue(client, dead_letters)


def by_queue(stack: Stack, metric: str, by: str, *, suffix: str = "") -> str:
    """PromQL: ``metric`` of the test worker's queue, summed by the labels ``by``."""
    return f'sum by ({by}) ({PREFIX}{metric}{suffix}{{queue="{stack.queue}"}})'


def scalar(samples: list[Sample]) -> float:
    """The value of a one-sample answer (``count(...)``), 0 when it is empty."""
    return samples[0].value if samples else 0.0


# --- the tests ---------------------------------------------------------------------------------

def test_every_task_ended_as_its_policy_says(stack: Stack) -> None:
    """The ground truth the counters are compared with."""
    ends = {name: result.state if result.state == "SUCCESS" else type(result.result).__name__
            for name, result in stack.results.items()}
    assert ends == ENDS


def test_successes_count_their_attempts_and_retries_their_exception_and_delay(
        stack: Stack) -> None:
    stack.settled(by_queue(stack, "attempts", "task, policy, outcome", suffix="_count"),
                  ("task", "policy", "outcome"), {
                      ("proj.noop", NO_POLICY, "success"): 3,
                      ("proj.retry.backoff", "recovers", "success"): 1,
                      ("proj.retry.limited", "exhausted", "failure"): 1,
                      ("proj.retry.deadline", "deadline", "failure"): 1,
                      ("proj.retry.fatal", "fatal", "failure"): 1,
                      ("proj.dlq.fixable", NO_POLICY, "failure"): 1,
                      ("proj.limits.stubborn", "limits", "failure"): 1,
                      ("proj.lost.suicide", "lost", "failure"): 1})
    # attempts, summed: 1 per no-op; 3 for the task that failed twice; 2 for one retry then
    # a give-up; 2 runs of the task that killed its process (the first and one redelivery)
    stack.settled(by_queue(stack, "attempts", "task, outcome", suffix="_sum"),
                  ("task", "outcome"), {
                      ("proj.noop", "success"): 3,
                      ("proj.retry.backoff", "success"): 3,
                      ("proj.retry.limited", "failure"): 2,
                      ("proj.retry.deadline", "failure"): 2,
                      ("proj.retry.fatal", "failure"): 1,
                      ("proj.dlq.fixable", "failure"): 1,
                      ("proj.limits.stubborn", "failure"): 1,
                      ("proj.lost.suicide", "failure"): 2})
    stack.settled(by_queue(stack, "retries_total", "task, policy, exception"),
                  ("task", "policy", "exception"), {
                      ("proj.retry.backoff", "recovers", FLAKY): 2,
                      ("proj.retry.limited", "exhausted", FLAKY): 1,
                      ("proj.retry.deadline", "deadline", FLAKY): 1})
    # the countdowns the policies chose: 0.2 and 0.4 s; 0.2 s; 0.4 s (no jitter)
    stack.settled(by_queue(stack, "retry_delay_seconds", "task", suffix="_count"), ("task",),
                  {"proj.retry.backoff": 2, "proj.retry.limited": 1,
                   "proj.retry.deadline": 1})
    delays = stack.prometheus.values(by_queue(stack, "retry_delay_seconds", "task",
                                              suffix="_sum"), by="task")
    assert delays == pytest.approx({"proj.retry.backoff": 0.6, "proj.retry.limited": 0.2,
                                    "proj.retry.deadline": 0.4}, abs=0.05)


def test_each_final_failure_is_counted_once_with_its_reason(stack: Stack) -> None:
    stack.settled(by_queue(stack, "final_failures_total", "task, reason"), ("task", "reason"), {
        ("proj.retry.limited", "max_retries"): 1,
        ("proj.retry.deadline", "deadline"): 1,
        ("proj.retry.fatal", "not_retryable"): 1,
        ("proj.dlq.fixable", "exception"): 1,
        ("proj.limits.stubborn", "time_limit"): 1,
        ("proj.lost.suicide", "worker_lost"): 1})


def test_time_limits_and_lost_processes_are_counted(stack: Stack) -> None:
    stack.settled(by_queue(stack, "time_limits_total", "task, kind"), ("task", "kind"),
                  {("proj.limits.stubborn", "soft"): 1, ("proj.limits.stubborn", "hard"): 1})
    stack.settled(by_queue(stack, "redeliveries_total", "task, policy"), ("task", "policy"),
                  {("proj.lost.suicide", "lost"): 1})
    stack.settled(by_queue(stack, "redelivery_cap_reached_total", "task, policy"),
                  ("task", "policy"), {("proj.lost.suicide", "lost"): 1})


def test_every_final_failure_is_dead_lettered_and_the_exporter_shows_them(
        stack: Stack) -> None:
    failed = {"proj.retry.limited", "proj.retry.deadline", "proj.retry.fatal",
              "proj.dlq.fixable", "proj.limits.stubborn", "proj.lost.suicide"}
    stack.settled(by_queue(stack, "failure_routes_total", "task, route, outcome"),
                  ("task", "route", "outcome"),
                  {(task, "dead_letter", "published"): 1 for task in failed})
    dead_letters = f'{PREFIX}dead_letters{{job="exporter", queue="{stack.dead_letter_queue}"}}'
    stack.settled(dead_letters, ("queue",), {stack.dead_letter_queue: len(failed)})


def test_a_worker_that_loads_another_file_shows_as_a_second_fingerprint(
        stack: Stack, broker: str, tmp_path: Path) -> None:
    fleet = f"count(count by (fingerprint) ({PREFIX}info))"
    stack.settled(f"{PREFIX}info", ("job",), {"worker": 1})
    assert scalar(stack.prometheus.query(fleet)) == 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(POLICIES.read_text().replace("max_redeliveries: 1",
                                                    "max_redeliveries: 2"))
    other = Worker(broker, f"{stack.queue}.other", tmp_path / "other.log", changed,
                   extra=["--policies-metrics-port", "0"],
                   env={"TEST_DLQ": stack.dead_letter_queue})
    first = metrics_address(stack.worker)
    try:
        other.start()
        stack.prometheus.set_targets("worker", [first, metrics_address(other)])
        stack.prometheus.wait_for_targets_up()
        stack.prometheus.wait_until(fleet, lambda found: scalar(found) == 2, SETTLE)
        infos = stack.prometheus.query(f"{PREFIX}info")
        assert {sample.labels["instance"] for sample in infos} == {first,
                                                                   metrics_address(other)}
        assert len({sample.labels["fingerprint"] for sample in infos}) == 2
    finally:
        other.stop()
        stack.prometheus.set_targets("worker", [first])
    stack.prometheus.wait_until(fleet, lambda found: scalar(found) == 1, SETTLE)
