"""The worker's metrics: their names and labels are names.py's, their registry is their own,
exception labels are capped, and where a worker serves them is chosen option, file,
environment, in that order. Counting in a real worker: tests/integration/test_metrics.py."""

from __future__ import annotations

import gzip
import logging
import math
import sys
import urllib.request
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import prometheus_client
import pytest
from billiard.einfo import ExceptionInfo
from celery import Celery
from celery.exceptions import Retry
from celery.utils.serialization import UnpickleableExceptionWrapper
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from celery_policies.guard import CARRY_ON, GUARD_FORMAT
from celery_policies.headers import REDELIVERIES_HEADER
from celery_policies.metrics import names
from celery_policies.metrics.worker import (
    ExceptionNames,
    WorkerMetrics,
)
from celery_policies.sentry.budget import OUTCOMES, EventBudget
from celery_policies.spec import model
from celery_policies.spec.model import MetricsConfig
from celery_policies.worker.counting import (
    Counting,
    attempts,
    counted_request_class,
    retried_name,
)
from celery_policies.worker.routes import FailureRouter
from celery_policies.worker.serving import (
    ADDRESS_ENV,
    ADDRESS_OPTION,
    PORT_ENV,
    PORT_OPTION,
    Endpoint,
    MetricsConfigError,
    MetricsServer,
    endpoint,
    url,
)
from tests.conftest import load, problems
from tests.unit.test_fingerprint import print_of

TASK = ("proj.task", "policy", "queue")


def samples(metrics: WorkerMetrics) -> dict[str, list[Any]]:
    """Every sample of the registry, by metric family name (as a scrape shows them)."""
    text = metrics.registry.render().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def every_event(metrics: WorkerMetrics) -> None:
    metrics.retried(TASK, "ConnectionError", 1.5)
    metrics.failed(TASK, "max_retries", 4)
    metrics.succeeded(TASK, 1)
    metrics.routed(TASK, "dead_letter", "published")
    metrics.redelivered(TASK)
    metrics.cap_reached(TASK)
    metrics.timed_out(TASK, "soft")
    metrics.loaded("abc", "policies.yaml", "1.0", "5.7.0", 1.0)
    metrics.count_sentry(lambda: {"sent": 2})


def test_every_worker_metric_is_exported_with_exactly_the_labels_of_names_py() -> None:
    metrics = WorkerMetrics()
    every_event(metrics)
    exported = samples(metrics)
    for metric in names.WORKER_METRICS:
        family = metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name
        assert family in exported, metric.name
        for sample in exported[family]:
            if sample.name in names.sample_names(metric) and not sample.name.endswith("_bucket"):
                assert tuple(sorted(sample.labels)) == tuple(sorted(metric.labels)), sample


def test_histograms_have_the_buckets_of_names_py() -> None:
    metrics = WorkerMetrics()
    every_event(metrics)
    exported = samples(metrics)
    for name, buckets in (("celery_policies_retry_delay_seconds", names.DELAY_BUCKETS),
                          ("celery_policies_attempts", names.ATTEMPT_BUCKETS)):
        bounds = [float(s.labels["le"]) for s in exported[name] if s.name.endswith("_bucket")]
        assert list(dict.fromkeys(bounds)) == [*buckets, float("inf")]


def test_sentry_outcomes_are_read_at_scrape_time_and_all_three_are_shown() -> None:
    metrics = WorkerMetrics()
    counts = {"sent": 1}
    metrics.count_sentry(lambda: counts)
    counts["dropped"] = 4
    found = {s.labels["outcome"]: s.value for s in samples(metrics)["celery_policies_sentry_events"]
             if s.name == "celery_policies_sentry_events_total"}
    assert found == {"sent": 1.0, "over_budget": 0.0, "dropped": 4.0}


def test_the_info_gauge_names_only_the_file_applied_last() -> None:
    metrics = WorkerMetrics()
    metrics.loaded("one", "a.yaml", "1.0", "5.7.0", 10.0)
    metrics.loaded("two", "b.yaml", "1.0", "5.7.0", 20.0)
    info = samples(metrics)["celery_policies_info"]
    assert [(s.labels["fingerprint"], s.value) for s in info] == [("two", 1.0)]
    assert samples(metrics)["celery_policies_loaded_timestamp_seconds"][0].value == 20.0


def test_the_metrics_live_on_a_registry_of_their_own() -> None:
    """Two workers' metrics in one process do not collide, and the application's global
    registry gains nothing."""
    before = set(prometheus_client.REGISTRY._names_to_collectors)
    first, second = WorkerMetrics(), WorkerMetrics()  # one registry would refuse the second
    every_event(first)
    every_event(second)
    assert set(prometheus_client.REGISTRY._names_to_collectors) == before
    assert not any(name.startswith(names.PREFIX) for name in before)


def test_exception_names_past_the_cap_are_other_and_earlier_ones_keep_theirs() -> None:
    capped = ExceptionNames(limit=2)
    assert [capped.label(n) for n in ("A", "B", "C", "A", "D", "B")] == [
        "A", "B", names.OTHER_EXCEPTION, "A", names.OTHER_EXCEPTION, "B"]


def test_a_flood_of_exception_names_leaves_at_most_the_cap_plus_other_series() -> None:
    metrics = WorkerMetrics(max_exception_names=3)
    for index in range(100):
        metrics.retried(TASK, f"mod.Error{index}", 1.0)
    retries = [s for s in samples(metrics)["celery_policies_retries"]
               if s.name == "celery_policies_retries_total"]
    assert sorted(s.labels["exception"] for s in retries) == [
        "mod.Error0", "mod.Error1", "mod.Error2", names.OTHER_EXCEPTION]
    assert sum(s.value for s in retries) == 100


def test_an_exception_name_of_any_length_is_cut_to_a_bounded_label() -> None:
    assert len(ExceptionNames().label("x" * 10_000)) == 200


# -- the exposition ---------------------------------------------------------------------------
class PrometheusClientMetrics:
    """The same metrics on prometheus_client's own objects: what a worker served before it
    rendered its own text, and what that text must equal, sample for sample."""

    def __init__(self, max_exception_names: int = names.MAX_EXCEPTION_NAMES) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.exceptions = ExceptionNames(max_exception_names)
        buckets = {"celery_policies_retry_delay_seconds": names.DELAY_BUCKETS,
                   "celery_policies_attempts": names.ATTEMPT_BUCKETS}
        self.made: dict[str, Any] = {}
        for metric in names.WORKER_METRICS:
            if metric.kind == "counter":
                made = prometheus_client.Counter(metric.name, metric.help, metric.labels,
                                                 registry=self.registry)
            elif metric.kind == "histogram":
                made = prometheus_client.Histogram(metric.name, metric.help, metric.labels,
                                                   registry=self.registry,
                                                   buckets=buckets[metric.name])
            else:
                made = prometheus_client.Gauge(metric.name, metric.help, metric.labels,
                                               registry=self.registry)
            self.made[metric.name.removeprefix(names.PREFIX)] = made
        self.sentry: Callable[[], Any] = dict

    def count_sentry(self, read: Callable[[], Any]) -> None:
        self.sentry = read

    def loaded(self, *labels: str) -> None:
        self.made["info"].clear()
        self.made["info"].labels(*labels[:4]).set(1)
        self.made["loaded_timestamp_seconds"].set(labels[4])

    def retried(self, task: tuple[str, str, str], exception: str, delay: float | None) -> None:
        self.made["retries_total"].labels(*task, self.exceptions.label(exception)).inc()
        if delay is not None:
            self.made["retry_delay_seconds"].labels(*task).observe(max(delay, 0.0))

    def failed(self, task: tuple[str, str, str], reason: str, attempts: int) -> None:
        self.made["final_failures_total"].labels(*task, reason).inc()
        self.made["attempts"].labels(*task, "failure").observe(attempts)

    def succeeded(self, task: tuple[str, str, str], attempts: int) -> None:
        self.made["attempts"].labels(*task, "success").observe(attempts)

    def routed(self, task: tuple[str, str, str], route: str, outcome: str) -> None:
        self.made["failure_routes_total"].labels(*task, route, outcome).inc()

    def redelivered(self, task: tuple[str, str, str]) -> None:
        self.made["redeliveries_total"].labels(*task).inc()

    def cap_reached(self, task: tuple[str, str, str]) -> None:
        self.made["redelivery_cap_reached_total"].labels(*task).inc()

    def timed_out(self, task: tuple[str, str, str], kind: str) -> None:
        self.made["time_limits_total"].labels(*task, kind).inc()

    def text(self) -> str:
        counts = self.sentry()
        for outcome in names.SENTRY_OUTCOMES:  # the old collector: every outcome, read now
            self.made["sentry_events_total"].labels(outcome)._value.set(counts.get(outcome, 0))
        return prometheus_client.generate_latest(self.registry).decode()


def sample_set(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every sample of an exposition, parsed by prometheus_client, without ``_created``
    (which the worker's own text leaves out, docs/metrics.md)."""
    return {(sample.name, tuple(sorted(sample.labels.items())), sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples
            if not sample.name.endswith("_created")}


#: Text no label may break: the exposition's own escapes, its delimiters, and more.
HOSTILE = '%d %s %% a\\b"c\nd}e,f=g{h\\n\\"\r\tünï €—' + '"} 1\nfake_metric 2\n#'

#: Events that fill a registry: each is a ``WorkerMetrics`` method and its arguments.
_labels = st.tuples(st.sampled_from(("proj.a", "proj.b", HOSTILE)),
                    st.sampled_from(("p", names.NO_POLICY)), st.sampled_from(("q", "other")))
_events = st.lists(st.one_of(
    st.tuples(st.just("retried"), _labels, st.sampled_from(("E1", "mod.E2", HOSTILE, "E4")),
              st.one_of(st.none(), st.floats(-5, 5000, allow_nan=False), st.just(math.inf))),
    st.tuples(st.just("failed"), _labels, st.sampled_from(names.FINAL_REASONS),
              st.integers(1, 60)),
    st.tuples(st.just("succeeded"), _labels, st.integers(1, 60)),
    st.tuples(st.just("routed"), _labels, st.sampled_from(names.ROUTES),
              st.sampled_from(names.ROUTE_OUTCOMES)),
    st.tuples(st.just("redelivered"), _labels),
    st.tuples(st.just("cap_reached"), _labels),
    st.tuples(st.just("timed_out"), _labels, st.sampled_from(names.TIME_LIMIT_KINDS)),
    st.tuples(st.just("loaded"), st.sampled_from(("fp1", HOSTILE)), st.just("f.yaml"),
              st.just("1.0"), st.just("5.7.0"), st.floats(0, 2e9, allow_nan=False))),
    max_size=40)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(_events, min_size=1, max_size=4))
def test_the_exposition_equals_prometheus_clients_sample_for_sample(
        batches: list[list[tuple[Any, ...]]]) -> None:
    """Filled by the same events, the worker's text and prometheus_client's parse to the
    same samples, at every scrape: a scrape after more counting shows all of it, though the
    text of unchanged series and families is kept from the scrape before."""
    ours, theirs = WorkerMetrics(max_exception_names=3), PrometheusClientMetrics(3)
    sentry = {"sent": 0}
    ours.count_sentry(lambda: sentry)
    theirs.count_sentry(lambda: sentry)
    for batch in batches:
        for method, *args in batch:
            getattr(ours, method)(*args)
            getattr(theirs, method)(*args)
        sentry["sent"] += 1
        assert sample_set(ours.registry.render().decode()) == sample_set(theirs.text())


def test_hostile_label_values_parse_back_exactly_as_counted() -> None:
    """A task or exception name holding the exposition's escapes, quotes, newlines and a
    forged sample stays one label value, which prometheus_client's parser gives back as it
    was; no sample is added."""
    metrics = WorkerMetrics()
    task = (HOSTILE, "policy", "queue")
    metrics.retried(task, HOSTILE, 2.0)
    metrics.loaded(HOSTILE, HOSTILE, "1.0", "5.7.0", 1.0)
    exported = samples(metrics)
    retries = exported["celery_policies_retries"]
    assert [(s.labels["task"], s.labels["exception"]) for s in retries] == [(HOSTILE, HOSTILE)]
    buckets = [s for s in exported["celery_policies_retry_delay_seconds"]
               if s.name.endswith("_bucket")]
    assert {s.labels["task"] for s in buckets} == {HOSTILE}
    assert len(buckets) == len(names.DELAY_BUCKETS) + 1
    info = exported["celery_policies_info"]
    assert [(s.labels["fingerprint"], s.labels["file"]) for s in info] == [(HOSTILE, HOSTILE)]
    assert "fake_metric" not in exported


def test_a_delay_that_is_not_a_number_counts_the_retry_and_no_delay() -> None:
    """No bucket holds a NaN, and a NaN sum would stay NaN for good."""
    metrics = WorkerMetrics()
    metrics.retried(TASK, "E", math.nan)
    exported = samples(metrics)
    assert [s.value for s in exported["celery_policies_retries"]] == [1.0]
    assert exported["celery_policies_retry_delay_seconds"] == []


def test_the_server_answers_with_the_registrys_text_as_format_0_0_4() -> None:
    metrics = WorkerMetrics()
    every_event(metrics)
    server = MetricsServer(metrics.registry, Endpoint("127.0.0.1", 0))
    try:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            body = response.read()
        assert body == metrics.registry.render()
        asked = urllib.request.Request(server.url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(asked, timeout=10) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(response.read()) == body
        with pytest.raises(MetricsConfigError, match=f"port {server.port}"):
            MetricsServer(metrics.registry, Endpoint("127.0.0.1", server.port))
    finally:
        server.close()


def test_a_worker_counts_and_renders_without_prometheus_client(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's exposition is its own: only the exporter needs the ``metrics`` extra."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    metrics = WorkerMetrics()
    metrics.timed_out(("t", "p", "q"), "soft")
    assert 'kind="soft"} 1\n' in metrics.registry.render().decode()


def test_the_sentry_budget_counts_the_outcomes_of_names_py() -> None:
    assert OUTCOMES == names.SENTRY_OUTCOMES
    budget = EventBudget(per_minute=1)
    assert budget.admit(["t", "E"], 0.0) == 0
    assert budget.admit(["t", "E"], 1.0) is None
    budget.count("sent")
    budget.count("dropped")
    budget.count("dropped")
    assert budget.outcomes() == {"sent": 1, "over_budget": 1, "dropped": 2}


def test_the_files_default_cap_is_names_pys() -> None:
    assert model.DEFAULT_MAX_EXCEPTION_NAMES == names.MAX_EXCEPTION_NAMES


# -- where a worker serves -------------------------------------------------------------------
SECTION = MetricsConfig(port=9101, address="10.0.0.1")
ENV = {PORT_ENV: "9102", ADDRESS_ENV: "10.0.0.2"}


@pytest.mark.parametrize(("options", "section", "env", "expected"), [
    ({}, None, {}, None),
    ({}, MetricsConfig(), {}, None),
    ({}, None, ENV, Endpoint("10.0.0.2", 9102)),
    ({}, SECTION, ENV, Endpoint("10.0.0.1", 9101)),
    ({PORT_OPTION: 9103, ADDRESS_OPTION: "10.0.0.3"}, SECTION, ENV, Endpoint("10.0.0.3", 9103)),
    ({PORT_OPTION: 0}, None, {}, Endpoint("127.0.0.1", 0)),
    ({PORT_OPTION: 9103}, MetricsConfig(address="::1"), {}, Endpoint("::1", 9103)),
    ({}, MetricsConfig(port=9101), {ADDRESS_ENV: "10.0.0.2"}, Endpoint("10.0.0.2", 9101)),
], ids=["off", "empty-section", "env", "file-over-env", "option-over-all", "port-0-local",
        "address-from-file", "address-from-env"])
def test_the_option_comes_first_then_the_file_then_the_environment(
        options: dict[str, Any], section: MetricsConfig | None, env: dict[str, str],
        expected: Endpoint | None) -> None:
    assert endpoint(options, section, env) == expected


@pytest.mark.parametrize("value", ["http", "-1", "65536", "9100.5"])
def test_an_environment_port_that_is_no_port_is_an_error(value: str) -> None:
    with pytest.raises(MetricsConfigError, match=f"{PORT_ENV}: expected a TCP port"):
        endpoint({}, None, {PORT_ENV: value})


def test_urls_put_ipv6_addresses_in_brackets() -> None:
    assert url("127.0.0.1", 9100) == "http://127.0.0.1:9100/metrics"
    assert url("::1", 9100) == "http://[::1]:9100/metrics"


# -- the metrics: section of the file --------------------------------------------------------
def test_the_metrics_section_is_read_with_its_defaults() -> None:
    section = load("version: 1\nmetrics:\n  port: 9100\n").model.metrics
    assert section == MetricsConfig(port=9100)
    assert section.address is None
    assert section.max_exception_names == names.MAX_EXCEPTION_NAMES


@pytest.mark.parametrize(("text", "expected"), [
    ("port: 70000", "policies.yaml:3:9: metrics.port: expected a TCP port, a whole number "
                    "from 0 to 65535 (0: any free port), got 70000"),
    ("port: -1", "policies.yaml:3:9: metrics.port: expected a TCP port, a whole number "
                 "from 0 to 65535 (0: any free port), got -1"),
    ("port: http", "policies.yaml:3:9: metrics.port: expected a TCP port, a whole number "
                   "from 0 to 65535 (0: any free port), got 'http'"),
    ("port: true", "policies.yaml:3:9: metrics.port: expected a TCP port, a whole number "
                   "from 0 to 65535 (0: any free port), got true"),
    ("max_exception_names: 0", "policies.yaml:3:24: metrics.max_exception_names: expected a "
                               "whole number >= 1, got 0"),
    ("address: ''", "policies.yaml:3:12: metrics.address: expected a non-empty string, "
                    "got ''"),
    ("prot: 9100", "policies.yaml:3:3: metrics.prot: unknown key 'prot' (did you mean "
                   "'port'?)"),
])
def test_a_bad_metrics_key_gets_a_located_error(text: str, expected: str) -> None:
    assert problems(f"version: 1\nmetrics:\n  {text}\n") == [expected]


def test_the_metrics_section_is_not_part_of_the_fingerprint() -> None:
    """It changes no task's behaviour: workers that serve on other ports run the same policies."""
    body = "policies:\n  - match: shop.*\n    max_retries: 3\n"
    plain = print_of(f"version: 1\n{body}")
    served = print_of(f"version: 1\nmetrics:\n  port: 9100\n  max_exception_names: 5\n{body}")
    assert plain == served


# -- what the failure routes and the request class tell the counters -------------------------
class FakePublisher:
    """Publishes to any queue but ``down``."""

    def publish(self, envelope: Any, queue: str, *args: Any, **kwargs: Any) -> None:
        if queue == "down":
            raise ConnectionError("broker unreachable")


def failed_request() -> Any:
    message = SimpleNamespace(body=b"[]", content_type="application/json",
                              content_encoding="utf-8", headers={}, properties={})
    return SimpleNamespace(name="proj.task", id="0f0f", message=message, delivery_info={},
                           time_start=0.0, hostname="w@h", args=[], kwargs={})


def routing(counted: Callable[[Any, str, bool], None]) -> FailureRouter:
    router = FailureRouter(Celery("metrics", set_as_current=False),
                           lambda name, exc: [("dead_letter", "up"), ("dead_letter", "down")],
                           lambda name: None, lambda name: None)
    router._publisher = FakePublisher()  # type: ignore[assignment]
    router.counting = counted
    return router


def test_each_failure_route_is_told_to_the_counters_with_whether_it_was_published() -> None:
    told: list[tuple[str, bool]] = []
    ok = routing(lambda request, kind, taken: told.append((kind, taken))).route(
        failed_request(), ValueError("x"), None, "exception")
    assert not ok
    assert told == [("dead_letter", True), ("dead_letter", False)]


def test_a_counting_fault_never_stops_a_failure_route(
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("counting fault")

    router = routing(broken)
    router.routes_for = lambda name, exc: [("dead_letter", "up")]
    with caplog.at_level(logging.ERROR, logger="celery_policies"):
        assert router.route(failed_request(), ValueError("x"), None, "exception")
    assert [r.msg for r in caplog.records] == [GUARD_FORMAT]
    assert "counting fault" in caplog.records[0].getMessage()


class CeleryRequest:
    """Stands for Celery's ``Request``: records what Celery's own handlers were given."""

    name = "proj.task"
    id = "0f0f"

    def __init__(self) -> None:
        self.failures: list[ExceptionInfo] = []

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True,
                   return_ok: bool = False) -> str:
        self.failures.append(exc_info)
        return "celery"


def test_a_counting_fault_leaves_the_failure_to_celery_with_the_real_exception(
        caplog: pytest.LogCaptureFixture) -> None:
    counting = Counting(Celery("metrics", set_as_current=False), WorkerMetrics())
    request = counted_request_class(CeleryRequest, counting, None)()  # type: ignore[arg-type]
    try:
        raise KeyError("the task's own")
    except KeyError:
        info = ExceptionInfo()
    with caplog.at_level(logging.ERROR, logger="celery_policies"):
        assert request.on_failure(info) == "celery"  # no task, no delivery info: a fault
    assert request.failures == [info]
    assert [r.msg for r in caplog.records] == [GUARD_FORMAT]


def built_request(counting: Counting) -> Any:
    """A request of proj.task[0f0f] whose class is built as Celery's create_request_cls
    builds one (its own on_success, never calling its base's) over the counting class."""
    base = counted_request_class("celery.worker.request:Request", counting, None)

    class Built(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.name, self.id = "proj.task", "0f0f"

        def on_success(self, failed__retval__runtime: Any, **kwargs: Any) -> str:
            return "celery"

    return Built()


def test_celerys_own_request_class_is_counted_on_success() -> None:
    """Celery builds a subclass of the task's request class per task whose on_success never
    calls its base's (create_request_cls): the counting class wraps that subclass's."""
    successes: list[Any] = []

    class Told(Counting):
        def succeeded(self, request: Any, policy: str) -> None:
            successes.append((request, policy))

    request = built_request(Told(Celery("metrics", set_as_current=False), WorkerMetrics()))
    assert request.on_success((False, "ok", 0.1)) == "celery"
    assert successes == [(request, names.NO_POLICY)]
    successes.clear()
    assert request.on_success((True, None, 0.1)) == "celery"  # a failure: on_failure counts
    assert successes == []


def test_a_counting_fault_on_success_is_logged_once_and_leaves_celerys_result(
        caplog: pytest.LogCaptureFixture) -> None:
    """The guard of a success is set up only when counting fails: the fault is still logged,
    with the request it was about, and never reaches Celery."""

    class Broken(Counting):
        def succeeded(self, request: Any, policy: str) -> None:
            raise RuntimeError("counting broke")

    request = built_request(Broken(Celery("metrics", set_as_current=False), WorkerMetrics()))
    with caplog.at_level(logging.ERROR, logger="celery_policies"):
        assert request.on_success((False, "ok", 0.1)) == "celery"
    assert [r.getMessage() for r in caplog.records] == [
        GUARD_FORMAT % ("count the success of proj.task[0f0f]",
                        RuntimeError("counting broke"), CARRY_ON)]
    assert caplog.records[0].exc_info is not None


class Unpicklable(Exception):
    def __init__(self, handle: Any) -> None:
        super().__init__(handle)
        self.handle = handle


def test_a_retried_exception_is_named_by_its_class_even_when_it_could_not_be_pickled() -> None:
    """Celery swaps an exception that cannot be pickled for a wrapper keeping its name."""
    assert retried_name(Retry(exc=KeyError("k"), when=1)) == "KeyError"
    wrapped = Retry(exc=Unpicklable(lambda: None), when=1)
    assert isinstance(wrapped.exc, UnpickleableExceptionWrapper)
    assert retried_name(wrapped) == f"{__name__}.Unpicklable"
    assert retried_name(Retry(when=1)) == "Retry"


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, 1), ({"retries": 2}, 3), ({"retries": 2, REDELIVERIES_HEADER: 1}, 4),
    ({"retries": "two", REDELIVERIES_HEADER: -5}, 1), ({"retries": True}, 1),
])
def test_attempts_count_retries_and_redeliveries_and_ignore_hostile_headers(
        headers: dict[str, Any], expected: int) -> None:
    assert attempts(SimpleNamespace(request_dict=headers)) == expected
