"""A worker's metrics: plain counts on a registry of the plugin's own, which renders them.

Built from ``names.WORKER_METRICS`` (the one table of names and labels) in the worker's main
process, which counts every outcome (``worker/counting.py``) and serves them
(``worker/serving.py``). The registry is never prometheus_client's global one, so that an
application's own metrics, and a second app in the same process, are left alone.

Every label value is bounded: a task name comes from the app's registry, a policy from the
file, a queue from the queues the worker consumes (else ``OTHER_QUEUE``), an exception name
from the first ``max_exception_names`` distinct ones seen (else ``names.OTHER_EXCEPTION``).
No argument and no exception message ever becomes a label.

The worker renders its exposition itself (``Registry``) and needs no prometheus_client:
that library's per-sample objects made a scrape of a large worker take a second.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Mapping
from itertools import accumulate
from typing import Any

from . import names

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

#: The exposition format's escapes in a label value (a backslash, a double quote, a newline);
#: HELP text escapes only the backslash and the newline.
_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})
#: What a scrape answers with: Prometheus's text format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _value(value: float) -> str:
    """A sample value as the text format writes it (Python's ``inf`` is not Go's)."""
    if value != value:  # noqa: PLR0124 - NaN is the one value unequal to itself
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _selector(labels: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``{name="value",...}`` with every value escaped: task and exception names are anyone's
    text. Worked out once per series and kept (``_Family._shown``)."""
    pairs = ",".join(f'{name}="{str(value).translate(_LABEL_ESCAPES)}"'
                     for name, value in zip(labels, values, strict=True))
    return "{" + pairs + "}" if pairs else ""


class _Family:
    """One metric's series, ``{label values: state}``, and its text.

    Counting takes the family's lock for a dict update and counts the change (``changes``).
    A scrape takes the lock only to copy the series, then renders outside it, so that it
    never holds up counting for longer than a copy. Rendering is incremental: a family that
    did not change since the last scrape answers with the text it gave then, and in one
    that did, each series' text is kept with the state it shows (``_shown``) and rendered
    again only when that state differs. The sample names and escaped labels of a series are
    worked out once, the first time it is scraped."""

    def __init__(self, metric: names.Metric) -> None:
        self.metric = metric
        self.series: dict[tuple[str, ...], Any] = {}
        self.changes = 0
        self.lock = threading.Lock()
        self._rendering = threading.Lock()
        self._shown: dict[tuple[str, ...], Any] = {}
        self._text: tuple[int, bytes] = (-1, b"")
        self._head = (f"# HELP {metric.name} {metric.help.translate(_HELP_ESCAPES)}\n"
                      f"# TYPE {metric.name} {metric.kind}\n")

    def set(self, key: tuple[str, ...], value: float) -> None:
        with self.lock:
            self.series[key] = value
            self.changes += 1

    def text(self) -> bytes:
        # Scrapes at once render a family one after the other (what is kept is theirs);
        # counting only ever waits for the copy.
        with self._rendering:
            with self.lock:
                changes = self.changes
                if self._text[0] == changes:
                    return self._text[1]
                items = self._copy()
            out = [self._head]
            self._render(items, out)
            text = "".join(out).encode()
            self._text = (changes, text)
            return text

    def _copy(self) -> list[tuple[tuple[str, ...], Any]]:
        return list(self.series.items())

    def _render(self, items: list[tuple[tuple[str, ...], Any]], out: list[str]) -> None:
        shown = self._shown
        for key, value in items:
            known = shown.get(key)
            if known is None or known[0] != value:
                prefix = (known[2] if known is not None else
                          self.metric.name + _selector(self.metric.labels, key) + " ")
                known = shown[key] = (value, f"{prefix}{self._number(value)}\n", prefix)
            out.append(known[1])

    @staticmethod
    def _number(value: Any) -> str:
        return _value(value)


class _Counter(_Family):
    def __init__(self, metric: names.Metric) -> None:
        super().__init__(metric)
        self._lines: list[str] = []
        self._template = ""

    def inc(self, key: tuple[str, ...]) -> None:
        with self.lock:
            self.series[key] = self.series.get(key, 0) + 1
            self.changes += 1

    def _render(self, items: list[tuple[tuple[str, ...], Any]], out: list[str]) -> None:
        # The family's text is one template, a ``%d`` per series, filled in one operation:
        # a counter's series are never removed, so they come in the order they were first
        # counted, and a scrape adds to the template only the series new since the last.
        lines = self._lines
        if len(items) > len(lines):
            name, labels = self.metric.name, self.metric.labels
            lines.extend(f"{name}{_selector(labels, key)} ".replace("%", "%%") + "%d\n"
                         for key, _ in items[len(lines):])
            self._template = "".join(lines)
        out.append(self._template % tuple(count for _, count in items))


class _Histogram(_Family):
    """A series is ``[count in bucket 0, ..., count in +Inf, sum]``: counts per bucket, not
    cumulative, so that an observation adds to one bucket; a scrape adds them up. Its text
    is kept with the state it shows."""

    def __init__(self, metric: names.Metric, bounds: tuple[float, ...]) -> None:
        super().__init__(metric)
        self.bounds = (*bounds, math.inf)
        self._empty = [0] * len(self.bounds)

    def observe(self, key: tuple[str, ...], amount: float) -> None:
        # The first bound not below ``amount``: the text format's ``le`` (less or equal).
        index = bisect_left(self.bounds, amount)
        with self.lock:
            state = self.series.get(key)
            if state is None:
                state = self.series[key] = [*self._empty, 0.0]
            state[index] += 1
            state[-1] += amount
            self.changes += 1

    def _copy(self) -> list[tuple[tuple[str, ...], Any]]:
        return [(key, state.copy()) for key, state in self.series.items()]

    def _render(self, items: list[tuple[tuple[str, ...], Any]], out: list[str]) -> None:
        shown = self._shown
        for key, state in items:
            known = shown.get(key)
            if known is not None and known[0] == state:
                out.append(known[1])
                continue
            template = known[2] if known is not None else self._template(key)
            counts = list(accumulate(state[:-1]))
            text = template % (*counts, counts[-1], _value(state[-1]))
            shown[key] = (state, text, template)
            out.append(text)

    def _template(self, key: tuple[str, ...]) -> str:
        """The series' lines with ``%d`` for each count and ``%s`` for the sum: formatting
        them is one operation, not a dozen."""
        name = self.metric.name
        selector = _selector(self.metric.labels, key).replace("%", "%%")
        inner = selector[1:-1] + ","
        lines = [f'{name}_bucket{{{inner}le="{_value(bound)}"}} %d\n' for bound in self.bounds]
        lines.append(f"{name}_count{selector} %d\n{name}_sum{selector} %s\n")
        return "".join(lines)


class Registry:
    """A worker's metric families, rendered as Prometheus's text format by ``render``.

    Not prometheus_client's: its exposition builds an object per sample on every scrape, a
    second for 1,000 tasks x 20 exception types (docs/benchmarks.md, Metrics). This one
    keeps plain counts and each series' label text, so a scrape writes numbers. It shows
    no ``_created`` samples (docs/metrics.md)."""

    def __init__(self) -> None:
        self.families: list[_Family] = []
        self.sentry: SentryReader | None = None

    def render(self) -> bytes:
        texts = [family.text() for family in self.families]
        if self.sentry is not None:
            texts.append(_sentry(self.sentry))
        return b"".join(texts)


def _sentry(read: SentryReader) -> bytes:
    """Read at scrape time: the Sentry events are built and counted in the pool children, in
    the shared-memory table of ``sentry/budget.py``, which only this (main) process turns
    into samples."""
    metric = names.METRICS[SENTRY_EVENTS]
    counts = read()
    lines = [f"# HELP {metric.name} {metric.help.translate(_HELP_ESCAPES)}\n"
             f"# TYPE {metric.name} counter\n"]
    lines.extend(f'{metric.name}{{outcome="{outcome}"}} {_value(float(counts.get(outcome, 0)))}\n'
                 for outcome in names.SENTRY_OUTCOMES)
    return "".join(lines).encode()


class WorkerMetrics:
    """One worker's metrics, on a ``Registry`` of their own (``registry``)."""

    def __init__(self, max_exception_names: int = names.MAX_EXCEPTION_NAMES) -> None:
        self.registry = Registry()
        self.exceptions = ExceptionNames(max_exception_names)
        self._retries = _Counter(names.METRICS[RETRIES])
        self._final_failures = _Counter(names.METRICS[FINAL_FAILURES])
        self._routes = _Counter(names.METRICS[FAILURE_ROUTES])
        self._redeliveries = _Counter(names.METRICS[REDELIVERIES])
        self._capped = _Counter(names.METRICS[REDELIVERY_CAP])
        self._time_limits = _Counter(names.METRICS[TIME_LIMITS])
        self._delays = _Histogram(names.METRICS[RETRY_DELAY], names.DELAY_BUCKETS)
        self._attempts = _Histogram(names.METRICS[ATTEMPTS], names.ATTEMPT_BUCKETS)
        self._info = _Family(names.METRICS[INFO])
        self._loaded = _Family(names.METRICS[LOADED])
        self._loaded.series[()] = 0.0  # shown before the file is applied, as 0
        families = {family.metric.name: family for family in (
            self._retries, self._final_failures, self._routes, self._redeliveries,
            self._capped, self._time_limits, self._delays, self._attempts, self._info,
            self._loaded)}
        # In the table's order; the Sentry events are read from shared memory at each
        # scrape (``count_sentry``).
        self.registry.families = [families[metric.name] for metric in names.WORKER_METRICS
                                  if metric.name != SENTRY_EVENTS]

    def count_sentry(self, read: SentryReader) -> None:
        """Export the Sentry outcomes ``read()`` returns at each scrape."""
        self.registry.sentry = read

    def loaded(self, fingerprint: str, file: str, plugin_version: str, celery_version: str,
               timestamp: float) -> None:
        """The policy file this worker applied, when (seconds since the epoch)."""
        with self._info.lock:
            self._info.series = {(fingerprint, file, plugin_version, celery_version): 1.0}
            self._info.changes += 1
        self._loaded.set((), float(timestamp))

    def retried(self, task: TaskLabels, exception: str, delay: float | None) -> None:
        """A retry the task scheduled after ``exception`` (a name), ``delay`` seconds on."""
        self._retries.inc((*task, self.exceptions.label(exception)))
        if delay is not None and delay == delay:  # noqa: PLR0124 - no bucket holds a NaN
            self._delays.observe(task, max(delay, 0.0))

    def failed(self, task: TaskLabels, reason: str, attempts: int) -> None:
        """A final failure, for ``reason`` (one of ``names.FINAL_REASONS``)."""
        self._final_failures.inc((*task, reason))
        self._attempts.observe((*task, "failure"), attempts)

    def succeeded(self, task: TaskLabels, attempts: int) -> None:
        self._attempts.observe((*task, "success"), attempts)

    def routed(self, task: TaskLabels, route: str, outcome: str) -> None:
        """A failure route taken (``names.ROUTES``) and what came of it (``ROUTE_OUTCOMES``)."""
        self._routes.inc((*task, route, outcome))

    def redelivered(self, task: TaskLabels) -> None:
        self._redeliveries.inc(task)

    def cap_reached(self, task: TaskLabels) -> None:
        self._capped.inc(task)

    def timed_out(self, task: TaskLabels, kind: str) -> None:
        """A time limit hit (``names.TIME_LIMIT_KINDS``)."""
        self._time_limits.inc((*task, kind))

