"""A real prefork worker counts what happens to its tasks and serves it on /metrics: each
test sends tasks, scrapes the worker over HTTP before and after, and asserts that each
counter and histogram moved by exactly the expected amount (the worker is shared by the
module; the labels of one test's task and the deltas keep tests apart)."""

from __future__ import annotations

import os
import re
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from celery_policies.worker.runtime import EXIT_CONFIG
from tests.support.deadletters import of, read
from tests.support.sentry import Recorder, recording
from tests.support.workers import Worker, Workers, attempts, delete_queue, wait_for

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "metrics.yaml"
SENTRY_POLICIES = HERE / "sentry.yaml"
APP = "tests.support.metricsproj"
SERVING = re.compile(r"WARNING/MainProcess\] serving metrics on (http://127\.0\.0\.1:(\d+)/metrics)")
#: Seconds for a task's last counted event to show in a scrape.
TIMEOUT = 45.0
FLAKY = "tests.support.proj.Flaky"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class Scraper:
    """Scrapes one worker; ``delta`` is how far a sample moved since ``mark``."""

    def __init__(self, url: str, queue: str) -> None:
        self.url, self.queue = url, queue
        self.before: Samples = {}

    def mark(self) -> None:
        self.before = scrape(self.url)

    def delta(self, name: str, task: str, policy: str, **labels: str) -> float:
        key = (name, frozenset({"task": task, "policy": policy, "queue": self.queue,
                                **labels}.items()))
        return scrape(self.url).get(key, 0.0) - self.before.get(key, 0.0)

    def moved(self, task: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of ``task`` that moved since ``mark`` (buckets and sums left out)."""
        now = scrape(self.url)
        return {key: value - self.before.get(key, 0.0) for key, value in now.items()
                if ("task", task) in key[1] and value != self.before.get(key, 0.0)
                and not key[0].endswith(("_bucket", "_sum", "_created"))}

    def wait(self, check: Callable[[], bool]) -> None:
        assert wait_for(check, TIMEOUT, interval=0.2), scrape(self.url)

    def expect(self, task: str, expected: dict[Any, float]) -> None:
        """Wait until exactly ``expected`` moved for ``task`` (a final failure and its
        attempts are two increments a scrape may fall between), then check it."""
        wait_for(lambda: self.moved(task) == expected, TIMEOUT, interval=0.2)
        assert self.moved(task) == expected


#: One sample: its name and its labels.
Series = tuple[str, frozenset[tuple[str, str]]]


def series(name: str, queue: str, task: str, policy: str, **labels: str) -> Series:
    return name, frozenset({"task": task, "policy": policy, "queue": queue, **labels}.items())


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    with recording() as started:
        yield started


@pytest.fixture(scope="module")
def dead_letter_queue(client: Celery) -> Iterator[str]:
    name = f"metrics.dlq.{uuid.uuid4().hex[:8]}"
    yield name
    delete_queue(client, name)


@pytest.fixture(scope="module")
def worker(broker: str, client: Celery, dead_letter_queue: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    queue = f"metrics.{uuid.uuid4().hex[:12]}"
    log = tmp_path_factory.mktemp("metrics") / "worker.log"
    started = Worker(broker, queue, log, POLICIES, concurrency=3, app=APP,
                     extra=["--policies-metrics-port", "0"],
                     env={"TEST_DLQ": dead_letter_queue, "TEST_DEFAULT_QUEUE": queue}).start()
    yield started
    started.stop()
    delete_queue(client, queue)


@pytest.fixture
def scraper(worker: Worker) -> Scraper:
    found = SERVING.search(worker.log)
    assert found, worker.log
    scraper = Scraper(found.group(1), worker.queue)
    scraper.mark()
    return scraper


def send(client: Celery, worker: Worker, task: str, *args: Any) -> Any:
    return client.send_task(task, list(args), queue=worker.queue)


# -- serving ---------------------------------------------------------------------------------
def test_the_worker_logs_where_it_serves_and_which_file_it_applied(
        worker: Worker, scraper: Scraper) -> None:
    """The info gauge carries the fingerprint the worker logged; the registry is the
    plugin's own (none of prometheus_client's default process metrics)."""
    fingerprint = re.search(r"fingerprint (\w+)", worker.log)
    assert fingerprint
    samples = scrape(scraper.url)
    info = [dict(labels) for (name, labels), value in samples.items()
            if name == "celery_policies_info" and value == 1.0]
    assert len(info) == 1
    assert info[0]["fingerprint"] == fingerprint.group(1)
    assert info[0]["file"].endswith("metrics.yaml")
    assert samples[("celery_policies_loaded_timestamp_seconds", frozenset())] > 0
    assert not [name for name, _ in samples if not name.startswith("celery_policies_")]


def test_a_port_already_taken_stops_the_worker_with_the_reason(
        workers: Workers, worker: Worker, scraper: Scraper) -> None:
    port = scraper.url.rsplit(":", 1)[1].split("/")[0]
    refused = workers(POLICIES, wait=False, app=APP, extra=["--policies-metrics-port", port],
                      env={"TEST_DLQ": "unused"})
    assert refused.wait_exit() == EXIT_CONFIG
    assert f"cannot serve metrics on 127.0.0.1 port {port}" in refused.log


def listening_inode(port: int) -> str:
    """The inode of the socket listening on 127.0.0.1:``port`` (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if local == f"0100007F:{port:04X}" and state == "0A":  # 0A: LISTEN
            return inode
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def holders(pids: list[int], inode: str) -> list[int]:
    """Which of ``pids`` hold the socket ``inode`` open."""
    def holds(pid: int) -> bool:
        fds = Path(f"/proc/{pid}/fd")
        return any(os.readlink(fd) == f"socket:[{inode}]" for fd in fds.iterdir())
    return [pid for pid in pids if holds(pid)]


def test_only_the_main_process_holds_the_metrics_socket(worker: Worker, scraper: Scraper) -> None:
    """Pool processes fork with the listening socket and close their copy, so that the port
    is free once the main process is gone."""
    assert worker.process is not None
    inode = listening_inode(int(scraper.url.rsplit(":", 1)[1].split("/")[0]))
    children = worker.pool_pids()
    assert children
    assert holders([worker.process.pid, *children], inode) == [worker.process.pid]


# -- counting --------------------------------------------------------------------------------
def test_a_task_that_succeeds_at_once_counts_one_attempt(
        client: Celery, worker: Worker, scraper: Scraper, key: str) -> None:
    assert send(client, worker, "metrics.flaky", key, 0).get(timeout=TIMEOUT) == "ok"
    scraper.wait(lambda: scraper.delta("celery_policies_attempts_count", "metrics.flaky",
                                       "flaky", outcome="success") == 1)
    q = worker.queue
    scraper.expect("metrics.flaky", {
        series("celery_policies_attempts_count", q, "metrics.flaky", "flaky",
               outcome="success"): 1.0})


def test_retries_then_success_count_each_retry_its_delay_and_the_attempts(
        client: Celery, worker: Worker, scraper: Scraper, key: str) -> None:
    """Backoff 0.2 s without jitter: retries wait 0.2 and 0.4 s."""
    assert send(client, worker, "metrics.flaky", key, 2).get(timeout=TIMEOUT) == "ok"
    scraper.wait(lambda: scraper.delta("celery_policies_attempts_count", "metrics.flaky",
                                       "flaky", outcome="success") == 1)
    q = worker.queue
    scraper.expect("metrics.flaky", {
        series("celery_policies_retries_total", q, "metrics.flaky", "flaky",
               exception=FLAKY): 2.0,
        series("celery_policies_retry_delay_seconds_count", q, "metrics.flaky", "flaky"): 2.0,
        series("celery_policies_attempts_count", q, "metrics.flaky", "flaky",
               outcome="success"): 1.0})
    assert scraper.delta("celery_policies_retry_delay_seconds_sum", "metrics.flaky",
                         "flaky") == pytest.approx(0.6)
    assert scraper.delta("celery_policies_attempts_sum", "metrics.flaky", "flaky",
                         outcome="success") == 3.0


def failed_for_good(q: str, task: str, policy: str, reason: str) -> dict[Series, float]:
    """The series of one final failure: its reason, and the attempts of a failed task."""
    return {series("celery_policies_final_failures_total", q, task, policy, reason=reason): 1.0,
            series("celery_policies_attempts_count", q, task, policy, outcome="failure"): 1.0}


def final_failure(client: Celery, worker: Worker, scraper: Scraper, task: str, policy: str,
                  reason: str, *args: Any) -> None:
    send(client, worker, task, *args)
    scraper.wait(lambda: scraper.delta("celery_policies_final_failures_total", task, policy,
                                       reason=reason) == 1)


def test_max_retries_reached_is_its_own_reason(
        client: Celery, worker: Worker, scraper: Scraper, key: str) -> None:
    final_failure(client, worker, scraper, "metrics.flaky", "flaky", "max_retries", key, 99)
    q = worker.queue
    scraper.expect("metrics.flaky", {
        series("celery_policies_retries_total", q, "metrics.flaky", "flaky",
               exception=FLAKY): 2.0,
        series("celery_policies_retry_delay_seconds_count", q, "metrics.flaky", "flaky"): 2.0,
        **failed_for_good(q, "metrics.flaky", "flaky", "max_retries")})
    assert scraper.delta("celery_policies_attempts_sum", "metrics.flaky", "flaky",
                         outcome="failure") == 3.0


def test_an_exception_the_policy_does_not_retry_is_not_retryable(
        client: Celery, worker: Worker, scraper: Scraper, key: str) -> None:
    final_failure(client, worker, scraper, "metrics.flaky", "flaky", "not_retryable",
                  key, 1, "Fatal")
    q = worker.queue
    scraper.expect("metrics.flaky", {
        **failed_for_good(q, "metrics.flaky", "flaky", "not_retryable")})


def test_a_retry_deadline_is_its_own_reason(
        client: Celery, worker: Worker, scraper: Scraper, counters: Any, key: str) -> None:
    final_failure(client, worker, scraper, "metrics.deadline", "deadline", "deadline", key, 99)
    runs = len(attempts(counters, key))
    q = worker.queue
    assert runs >= 2
    scraper.expect("metrics.deadline", {
        series("celery_policies_retries_total", q, "metrics.deadline", "deadline",
               exception=FLAKY): runs - 1,
        series("celery_policies_retry_delay_seconds_count", q, "metrics.deadline",
               "deadline"): runs - 1,
        **failed_for_good(q, "metrics.deadline", "deadline", "deadline")})


def expect_doomed(scraper: Scraper, q: str) -> None:
    """One ``metrics.doomed`` failed for good: an exception, its dead letter published."""
    scraper.expect("metrics.doomed", {
        series("celery_policies_final_failures_total", q, "metrics.doomed", "doomed",
               reason="exception"): 1.0,
        series("celery_policies_failure_routes_total", q, "metrics.doomed", "doomed",
               route="dead_letter", outcome="published"): 1.0,
        series("celery_policies_attempts_count", q, "metrics.doomed", "doomed",
               outcome="failure"): 1.0})


def test_a_plain_failure_is_an_exception_and_its_dead_letter_is_counted_published(
        client: Celery, worker: Worker, scraper: Scraper, broker: str,
        dead_letter_queue: str, key: str) -> None:
    result = send(client, worker, "metrics.doomed", key)
    scraper.wait(lambda: scraper.delta("celery_policies_failure_routes_total",
                                       "metrics.doomed", "doomed", route="dead_letter",
                                       outcome="published") == 1)
    assert wait_for(lambda: len(of(read(broker, dead_letter_queue), result.id)) == 1, TIMEOUT)
    expect_doomed(scraper, worker.queue)


def test_a_message_rejected_without_requeue_is_rejected_under_no_policy(
        client: Celery, worker: Worker, scraper: Scraper, key: str) -> None:
    final_failure(client, worker, scraper, "metrics.rejected", "none", "rejected", key)
    q = worker.queue
    scraper.expect("metrics.rejected", {
        **failed_for_good(q, "metrics.rejected", "none", "rejected")})


def test_a_soft_time_limit_that_ends_the_task_counts_soft_and_a_time_limit_failure(
        client: Celery, worker: Worker, scraper: Scraper, key: str) -> None:
    task = "metrics.limits.sleepy"
    final_failure(client, worker, scraper, task, "limits", "time_limit", key, 5)
    q = worker.queue
    scraper.expect(task, {
        series("celery_policies_time_limits_total", q, task, "limits", kind="soft"): 1.0,
        series("celery_policies_final_failures_total", q, task, "limits",
               reason="time_limit"): 1.0,
        series("celery_policies_attempts_count", q, task, "limits", outcome="failure"): 1.0})


def test_a_hard_time_limit_counts_once_after_the_ignored_soft_one(
        client: Celery, worker: Worker, scraper: Scraper, key: str) -> None:
    """Celery may report one hard limit twice (celery#7687): it is counted once."""
    task = "metrics.limits.stubborn"
    final_failure(client, worker, scraper, task, "limits", "time_limit", key, 5)
    q = worker.queue
    scraper.expect(task, {
        series("celery_policies_time_limits_total", q, task, "limits", kind="soft"): 1.0,
        series("celery_policies_time_limits_total", q, task, "limits", kind="hard"): 1.0,
        series("celery_policies_final_failures_total", q, task, "limits",
               reason="time_limit"): 1.0,
        series("celery_policies_attempts_count", q, task, "limits", outcome="failure"): 1.0})


def test_a_task_that_kills_its_process_counts_each_redelivery_and_the_cap(
        client: Celery, worker: Worker, scraper: Scraper, counters: Any, key: str) -> None:
    """max_redeliveries 2: three losses reported, two redeliveries, then worker_lost at the
    cap. The task records its run, then SIGKILLs its process at once: when the process dies
    before the main process has read that it accepted the job, Celery's pool writes the same
    job to another process (celery/concurrency/asynpool.py ``on_job_process_down`` ->
    ``on_partial_read`` -> ``_put_back``) and reports no loss for that run. Such runs come in
    pairs about 0.1 s apart (seen in CI on 5.5.3 and 5.7: 4 runs); the counters below, which
    count the losses Celery reports, stay exact."""
    final_failure(client, worker, scraper, "metrics.lost", "lost", "worker_lost", key)
    assert len(attempts(counters, key)) >= 3
    q = worker.queue
    scraper.expect("metrics.lost", {
        series("celery_policies_redeliveries_total", q, "metrics.lost", "lost"): 2.0,
        series("celery_policies_redelivery_cap_reached_total", q, "metrics.lost", "lost"): 1.0,
        **failed_for_good(q, "metrics.lost", "lost", "worker_lost")})
    assert scraper.delta("celery_policies_attempts_sum", "metrics.lost", "lost",
                         outcome="failure") == 3.0


# -- other pools ----------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_pools_without_children_count_the_same_way(
        pool: str, workers: Workers, client: Celery, key: str, dead_letter_queue: str) -> None:
    """threads and solo run tasks in the main process and report through the same request
    callbacks: a retried success and a final failure with its dead letter are counted."""
    started = workers(POLICIES, app=APP, pool=pool, concurrency=1,
                      extra=["--policies-metrics-port", "0"],
                      env={"TEST_DLQ": dead_letter_queue, "TEST_DEFAULT_QUEUE": workers.queue})
    found = SERVING.search(started.log)
    assert found, started.log
    scraper = Scraper(found.group(1), started.queue)
    assert send(client, started, "metrics.flaky", key, 1).get(timeout=TIMEOUT) == "ok"
    send(client, started, "metrics.doomed", key)
    q = started.queue
    scraper.expect("metrics.flaky", {
        series("celery_policies_retries_total", q, "metrics.flaky", "flaky",
               exception=FLAKY): 1.0,
        series("celery_policies_retry_delay_seconds_count", q, "metrics.flaky", "flaky"): 1.0,
        series("celery_policies_attempts_count", q, "metrics.flaky", "flaky",
               outcome="success"): 1.0})
    expect_doomed(scraper, q)


# -- Sentry ----------------------------------------------------------------------------------
def test_sentry_events_built_in_pool_processes_are_counted_by_outcome(
        workers: Workers, client: Celery, recorder: Recorder, key: str) -> None:
    """A budget of 2 per fingerprint: of 5 failures of one task, 2 are sent and 3 held back;
    the failure of another task is discarded by the application's before_send. The pool
    processes count them in shared memory; the main process serves the counts. Metrics
    turned on by the environment variable alone."""
    dlq = f"{key}.dlq"
    started = workers(SENTRY_POLICIES, app=APP, concurrency=2, env={
        "CELERY_POLICIES_METRICS_PORT": "0", "TEST_SENTRY_DSN": recorder.dsn,
        "TEST_SENTRY_BUDGET": "2", "TEST_SENTRY_DROP": "drop me", "TEST_DLQ": dlq})
    found = SERVING.search(started.log)
    assert found, started.log
    budget = [send(client, started, "proj.dlq.slow_fail", f"{key}:{n}", 0) for n in range(5)]
    dropped = send(client, started, "metrics.doomed", f"{key}: drop me")
    for result in [*budget, dropped]:
        result.get(propagate=False, timeout=TIMEOUT)
    ids = {result.id for result in budget}
    sent = recorder.wait(lambda event: event.get("tags", {}).get("celery.task_id") in ids,
                         count=2)
    assert len(sent) == 2

    def outcomes() -> dict[str, float]:
        return {dict(labels)["outcome"]: value for (name, labels), value
                in scrape(found.group(1)).items() if name == "celery_policies_sentry_events_total"}

    expected = {"sent": 2.0, "over_budget": 3.0, "dropped": 1.0}
    wait_for(lambda: outcomes() == expected, TIMEOUT)
    assert outcomes() == expected
    delete_queue(client, dlq)
