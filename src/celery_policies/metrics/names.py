"""Every metric the plugin exports, with its labels: the one table that the worker's
counters, the dead-letter exporter, the shipped Grafana dashboard and the Prometheus alert
rules are checked against (docs/metrics.md describes each one).

Names follow Prometheus's conventions: ``_total`` on counters, base units (seconds) in the
name. A histogram is served as ``_bucket``/``_sum``/``_count`` samples; the exporter's
counter, served by prometheus_client, also has a ``_created`` sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "histogram", "gauge"]

#: Every metric's prefix.
PREFIX = "celery_policies_"
#: The ``policy`` label of a task that no policy matches (it runs on defaults alone).
NO_POLICY = "none"
#: The ``exception`` label that stands for every exception name past the cap.
OTHER_EXCEPTION = "other"
#: Distinct ``exception`` label values a worker keeps before it counts the rest as ``other``.
MAX_EXCEPTION_NAMES = 50

#: Why a task failed for good: the ``reason`` label of ``final_failures_total``.
FINAL_REASONS = ("exception", "not_retryable", "max_retries", "deadline", "time_limit",
                 "worker_lost", "rejected")
#: What a failure route did: the ``outcome`` label of ``failure_routes_total``.
ROUTE_OUTCOMES = ("published", "failed")
#: The ``route`` label of ``failure_routes_total``.
ROUTES = ("dead_letter", "task")
#: What became of a Sentry event the plugin built: the ``outcome`` label.
SENTRY_OUTCOMES = ("sent", "over_budget", "dropped")
#: Which time limit a task hit: the ``kind`` label of ``time_limits_total``.
TIME_LIMIT_KINDS = ("soft", "hard")
#: How a task ended: the ``outcome`` label of ``attempts``.
ATTEMPT_OUTCOMES = ("success", "failure")

#: The labels of every per-task metric, in this order.
TASK_LABELS = ("task", "policy", "queue")


@dataclass(frozen=True)
class Metric:
    """One exported metric: its full name, kind, labels and help text."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    where: Literal["worker", "exporter"] = "worker"


WORKER_METRICS = (
    Metric(PREFIX + "retries_total", "counter", (*TASK_LABELS, "exception"),
           "Retries a policy scheduled, by the exception that caused them."),
    Metric(PREFIX + "final_failures_total", "counter", (*TASK_LABELS, "reason"),
           "Tasks that failed for good, by why."),
    Metric(PREFIX + "failure_routes_total", "counter", (*TASK_LABELS, "route", "outcome"),
           "Dead letters and callback tasks published, and those that could not be."),
    Metric(PREFIX + "redeliveries_total", "counter", TASK_LABELS,
           "Messages redelivered after their worker process was lost."),
    Metric(PREFIX + "redelivery_cap_reached_total", "counter", TASK_LABELS,
           "Tasks failed for good because they lost their worker once more after "
           "max_redeliveries."),
    Metric(PREFIX + "time_limits_total", "counter", (*TASK_LABELS, "kind"),
           "Soft and hard time limits that tasks hit."),
    Metric(PREFIX + "sentry_events_total", "counter", ("outcome",),
           "Sentry events the plugin built: sent, held back by max_events_per_minute, or "
           "dropped by a before_send hook."),
    Metric(PREFIX + "retry_delay_seconds", "histogram", TASK_LABELS,
           "The countdown a policy chose for each retry, in seconds."),
    Metric(PREFIX + "attempts", "histogram", (*TASK_LABELS, "outcome"),
           "Attempts a task took, counted when it succeeded or failed for good."),
    Metric(PREFIX + "info", "gauge",
           ("fingerprint", "file", "plugin_version", "celery_version"),
           "1 per worker: the policy file it applied and its fingerprint."),
    Metric(PREFIX + "loaded_timestamp_seconds", "gauge", (),
           "When the worker applied its policy file, in seconds since the epoch."),
)

EXPORTER_METRICS = (
    Metric(PREFIX + "dead_letters", "gauge", ("queue",),
           "Dead letters in each dead-letter queue.", "exporter"),
    Metric(PREFIX + "dead_letter_oldest_age_seconds", "gauge", ("queue",),
           "Age of the oldest dead letter of each queue, in seconds.", "exporter"),
    Metric(PREFIX + "dead_letter_read_errors_total", "counter", ("queue",),
           "Reads of a dead-letter queue that failed (the last good figures are kept).",
           "exporter"),
)

#: Every metric, by name.
METRICS = {metric.name: metric for metric in WORKER_METRICS + EXPORTER_METRICS}

#: Bucket bounds of ``retry_delay_seconds``, in seconds.
DELAY_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: Bucket bounds of ``attempts``.
ATTEMPT_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 25.0, 50.0)


def sample_names(metric: Metric) -> tuple[str, ...]:
    """The sample names a scrape shows for ``metric`` (what PromQL can name)."""
    if metric.kind == "histogram":
        return tuple(metric.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return (metric.name,)
