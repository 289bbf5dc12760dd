"""The codes of the lint rules (docs/lint.md), their names and severities.

Kept apart from the rules (``lint/``), which read Celery apps: the model needs only the codes,
to refuse an unknown one in ``lint_ignore``. A code never changes meaning once published.
"""

from __future__ import annotations

from typing import Literal

Severity = Literal["warning", "info"]

#: Every rule: code → (short name, severity). ``check --strict`` fails on warnings only.
RULES: dict[str, tuple[str, Severity]] = {
    "CP101": ("redis-visibility-timeout", "warning"),
    "CP102": ("rabbitmq-consumer-timeout", "warning"),
    "CP103": ("pool-ignores-time-limit", "warning"),
    "CP104": ("reject-without-acks-late", "warning"),
    "CP105": ("unbounded-redeliveries", "warning"),
    "CP106": ("acks-on-failure-disabled", "warning"),
    "CP107": ("broad-autoretry", "warning"),
    "CP108": ("unlimited-retries-without-deadline", "warning"),
    "CP109": ("acks-late-with-prefetch", "warning"),
    "CP110": ("dead-letter-queue-consumed", "warning"),
    "CP111": ("backoff-base-above-cap", "warning"),
    "CP112": ("deadline-before-first-retry", "warning"),
    "CP113": ("max-retries-unreachable", "warning"),
    "CP114": ("pattern-matches-no-task", "warning"),
    "CP115": ("task-not-covered", "info"),
    "CP116": ("dead-policy", "warning"),
    "CP117": ("soft-limit-not-below-hard", "warning"),
    "CP118": ("redis-sweep-slower-than-timeout", "warning"),
}

#: Codes by short name, to point a ``lint_ignore`` that names a rule to its code.
CODES_BY_NAME: dict[str, str] = {name: code for code, (name, _) in RULES.items()}
