"""A worker's metrics: prometheus_client objects on a registry of the plugin's own.

Built from ``names.WORKER_METRICS`` (the one table of names and labels) in the worker's main
process, which counts every outcome (``worker/counting.py``) and serves them
(``worker/serving.py``). The registry is never prometheus_client's global one, so that an
application's own metrics, and a second app in the same process, are left alone.

Every label value is bounded: a task name comes from the app's registry, a policy from the
file, a queue from the queues the worker consumes (else ``OTHER_QUEUE``), an exception name
from the first ``max_exception_names`` distinct ones seen (else ``names.OTHER_EXCEPTION``).
No argument and no exception message ever becomes a label.

prometheus_client is imported only here, and only when metrics are turned on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import PolicyError
from . import names

#: How to get prometheus_client, for the error that says it is missing.
INSTALL_HINT = "pip install 'celery-policies[metrics]'"
#: The ``queue`` label of a message that came from a queue the worker does not consume
#: (another binding's routing key, a queue added later by ``add_consumer``).
OTHER_QUEUE = "other"
#: The longest exception label kept (``module.Qualname``); longer names are cut.
MAX_EXCEPTION_LABEL = 200

#: The labels of a per-task metric: ``(task, policy, queue)``, as ``names.TASK_LABELS``.
TaskLabels = tuple[str, str, str]

RETRIES = names.PREFIX + "retries_total"
FINAL_FAILURES = names.PREFIX + "final_failures_total"
FAILURE_ROUTES = names.PREFIX + "failure_routes_total"
REDELIVERIES = names.PREFIX + "redeliveries_total"
REDELIVERY_CAP = names.PREFIX + "redelivery_cap_reached_total"
TIME_LIMITS = names.PREFIX + "time_limits_total"
SENTRY_EVENTS = names.PREFIX + "sentry_events_total"
RETRY_DELAY = names.PREFIX + "retry_delay_seconds"
ATTEMPTS = names.PREFIX + "attempts"
INFO = names.PREFIX + "info"
LOADED = names.PREFIX + "loaded_timestamp_seconds"

_BUCKETS = {RETRY_DELAY: names.DELAY_BUCKETS, ATTEMPTS: names.ATTEMPT_BUCKETS}


class MetricsUnavailable(PolicyError):
    """Metrics were asked for, and prometheus_client is not installed."""


def prometheus() -> Any:
    """prometheus_client, or ``MetricsUnavailable`` saying how to install it."""
    try:
        import prometheus_client  # noqa: PLC0415 - the optional ``metrics`` extra
        import prometheus_client.core  # noqa: PLC0415 - its metric families, for collectors
    except ImportError as exc:
        raise MetricsUnavailable(f"metrics need prometheus_client, which is not installed "
                                 f"({INSTALL_HINT})") from exc
    return prometheus_client


class ExceptionNames:
    """The ``exception`` label: the first ``limit`` distinct names seen keep their own value,
    every later one is ``names.OTHER_EXCEPTION``, so that no run of odd exceptions can grow
    the scrape without bound."""

    def __init__(self, limit: int = names.MAX_EXCEPTION_NAMES) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, name: str) -> str:
        name = name[:MAX_EXCEPTION_LABEL]
        if name in self._seen:
            return name
        with self._lock:
            if name in self._seen or len(self._seen) < self.limit:
                self._seen.add(name)
                return name
        return names.OTHER_EXCEPTION


#: Reads the Sentry outcomes counted in shared memory: ``{outcome: count}``.
SentryReader = Callable[[], Mapping[str, int]]


class _SentryEvents:
    """A collector read at scrape time: the Sentry events are built and counted in the pool
    children, in the shared-memory table of ``sentry/budget.py``, which only this (main)
    process turns into samples."""

    def __init__(self, read: SentryReader) -> None:
        self.read = read
        self.metric = names.METRICS[SENTRY_EVENTS]

    def _family(self) -> Any:
        return prometheus().core.CounterMetricFamily(self.metric.name, self.metric.help,
                                                     labels=self.metric.labels)

    def describe(self) -> Iterator[Any]:
        yield self._family()

    def collect(self) -> Iterator[Any]:
        family = self._family()
        counts = self.read()
        for outcome in names.SENTRY_OUTCOMES:
            family.add_metric([outcome], float(counts.get(outcome, 0)))
        yield family


class WorkerMetrics:
    """One worker's metrics on their own ``CollectorRegistry`` (``registry``)."""

    def __init__(self, max_exception_names: int = names.MAX_EXCEPTION_NAMES) -> None:
        client = prometheus()
        self.registry = client.CollectorRegistry()
        self.exceptions = ExceptionNames(max_exception_names)
        self._metrics: dict[str, Any] = {}
        for metric in names.WORKER_METRICS:
            if metric.name == SENTRY_EVENTS:
                continue  # a collector reads it from shared memory: ``count_sentry``
            self._metrics[metric.name] = _make(client, metric, self.registry)

    def count_sentry(self, read: SentryReader) -> None:
        """Export the Sentry outcomes ``read()`` returns at each scrape."""
        self.registry.register(_SentryEvents(read))

    def loaded(self, fingerprint: str, file: str, plugin_version: str, celery_version: str,
               timestamp: float) -> None:
        """The policy file this worker applied, when (seconds since the epoch)."""
        info = self._metrics[INFO]
        info.clear()
        info.labels(fingerprint, file, plugin_version, celery_version).set(1)
        self._metrics[LOADED].set(timestamp)

    def retried(self, task: TaskLabels, exception: str, delay: float | None) -> None:
        """A retry the task scheduled after ``exception`` (a name), ``delay`` seconds on."""
        self._metrics[RETRIES].labels(*task, self.exceptions.label(exception)).inc()
        if delay is not None:
            self._metrics[RETRY_DELAY].labels(*task).observe(max(delay, 0.0))

    def failed(self, task: TaskLabels, reason: str, attempts: int) -> None:
        """A final failure, for ``reason`` (one of ``names.FINAL_REASONS``)."""
        self._metrics[FINAL_FAILURES].labels(*task, reason).inc()
        self._metrics[ATTEMPTS].labels(*task, "failure").observe(attempts)

    def succeeded(self, task: TaskLabels, attempts: int) -> None:
        self._metrics[ATTEMPTS].labels(*task, "success").observe(attempts)

    def routed(self, task: TaskLabels, route: str, outcome: str) -> None:
        """A failure route taken (``names.ROUTES``) and what came of it (``ROUTE_OUTCOMES``)."""
        self._metrics[FAILURE_ROUTES].labels(*task, route, outcome).inc()

    def redelivered(self, task: TaskLabels) -> None:
        self._metrics[REDELIVERIES].labels(*task).inc()

    def cap_reached(self, task: TaskLabels) -> None:
        self._metrics[REDELIVERY_CAP].labels(*task).inc()

    def timed_out(self, task: TaskLabels, kind: str) -> None:
        """A time limit hit (``names.TIME_LIMIT_KINDS``)."""
        self._metrics[TIME_LIMITS].labels(*task, kind).inc()


def _make(client: Any, metric: names.Metric, registry: Any) -> Any:
    if metric.kind == "counter":
        return client.Counter(metric.name, metric.help, metric.labels, registry=registry)
    if metric.kind == "histogram":
        return client.Histogram(metric.name, metric.help, metric.labels, registry=registry,
                                buckets=_BUCKETS[metric.name])
    return client.Gauge(metric.name, metric.help, metric.labels, registry=registry)
