"""The metric names a PromQL expression reads, and promtool, for checking the shipped alert
rules and Grafana dashboard against metrics/names.py without a Prometheus server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from celery_policies.metrics.names import METRICS, sample_names

#: Every sample name a scrape of a worker or the exporter shows.
EXPORTED = frozenset(name for metric in METRICS.values() for name in sample_names(metric))

#: Words of PromQL that are not followed by ``(`` and name no series.
KEYWORDS = frozenset({
    "and", "or", "unless", "atan2", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
})

# Strings first: a label value or a regex can hold anything, braces and words included.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
# With strings gone, a selector's braces and a range's brackets hold only label names,
# operators and durations.
_BRACES = re.compile(r"\{[^}]*\}")
_BRACKETS = re.compile(r"\[[^\]]*\]")
# by (...), without (...), on (...), ignoring (...), group_left (...), group_right (...):
# label names. PromQL reads `group_left (` as the start of a label list, never an operand.
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
                         re.IGNORECASE)
# Not after a word character (the `m` of `5m`, the `e3` of `1e3`, the `x1F` of `0x1F`), a
# dot (a decimal) or `$` (a Grafana variable such as `$__rate_interval`).
_IDENTIFIER = re.compile(r"(?<![\w.$:])[A-Za-z_:][\w:]*")
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"((?:[^"\\]|\\.)*)"')


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: identifiers that are neither a function or
    aggregation (followed by ``(``), a keyword, a label name nor part of a number or
    duration; plus the value of any ``__name__="..."`` matcher."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = _COMMENT.sub("", text)
    text = _BRACES.sub("{}", text)
    text = _BRACKETS.sub("[]", text)
    text = _LABEL_LIST.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        if match.group().lower() in KEYWORDS:
            continue
        if text[match.end():].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def unknown_metrics(expr: str) -> set[str]:
    """The metric names ``expr`` reads that no worker or exporter exports."""
    return metric_names(expr) - EXPORTED


def prometheus_binary(name: str) -> str:
    """The path of ``name``, one of the executables of Debian's prometheus package. When it is
    not installed: skip with one line; under CI=true, fail (as tests/support/workers.py
    ``require`` does for brokers)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not on PATH (Debian: apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the Prometheus tests must run)", pytrace=False)
    pytest.skip(message)


def promtool() -> str:
    """promtool's path (``prometheus_binary``)."""
    return prometheus_binary("promtool")


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS``, its output (stdout and stderr together) captured. The alerts'
    unit tests evaluate a day of samples minute by minute: seconds, more on a busy machine."""
    return subprocess.run([promtool(), *map(str, args)], cwd=cwd, check=False, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
