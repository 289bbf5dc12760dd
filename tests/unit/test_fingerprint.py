"""The fingerprint of the policies a worker applies: equal for the same meaning, whatever the
file's layout, and different as soon as one value a task gets changes."""

from __future__ import annotations

import pytest

from celery_policies.policy import fingerprint
from celery_policies.spec.matching import Matcher
from celery_policies.tools.explain import explain
from tests.conftest import load

NAMES = ["shop.billing.charge_card", "shop.billing.refund", "shop.emails.send_receipt"]

LAYOUT = """
version: 1
defaults:
  time_limit: 30s
  acks_late: true
policies:
  - name: billing
    match: shop.billing.*
    autoretry_for: ConnectionError
    max_retries: unlimited
    retry_backoff: true
    retry_jitter: true
    rate_limit: 10
    retry_per_exception:
      TimeoutError: {max_retries: 2, retry_backoff: 5s}
      ValueError: {max_retries: 0}
    on_failure:
      - {task: shop.alerts.failed, when: [ValueError]}
      - dead_letter: true
"""

# The same meaning: other names, key order, units, spellings, flow and block styles, comments
# and values from the environment.
SAME_MEANING = """
# billing first this time
version: 1
policies:
  - match: ["shop.billing.*"]
    name: payments
    on_failure:
      - when: [ValueError]
        task: shop.alerts.failed
      - {dead_letter: true}
    retry_per_exception:
      ValueError:
        max_retries: 0
      TimeoutError:
        retry_backoff: 5000ms
        max_retries: ${RETRIES}
    rate_limit: "10"
    retry_jitter: full
    retry_backoff: 1s
    max_retries: unlimited
    autoretry_for: [ConnectionError]
defaults: {acks_late: "${ACKS_LATE}", time_limit: 0.5m}
"""


def print_of(text: str, names: list[str] = NAMES, **environ: str) -> str:
    return fingerprint(explain(Matcher(load(text, environ=environ)), names))


def test_the_same_policies_written_differently_have_the_same_fingerprint() -> None:
    assert print_of(LAYOUT) == print_of(SAME_MEANING, RETRIES="2", ACKS_LATE="true")


def test_the_order_of_task_names_does_not_matter() -> None:
    assert print_of(LAYOUT) == print_of(LAYOUT, list(reversed(NAMES)))


@pytest.mark.parametrize(("old", "new"), [
    ("time_limit: 30s", "time_limit: 31s"),
    ("acks_late: true", "acks_late: false"),
    ("max_retries: unlimited", "max_retries: 100"),
    ("retry_backoff: true", "retry_backoff: 2s"),
    ("{max_retries: 2, retry_backoff: 5s}", "{max_retries: 2, retry_backoff: 6s}"),
    ("autoretry_for: ConnectionError", "autoretry_for: [ConnectionError, OSError]"),
    ("when: [ValueError]", "when: [TypeError]"),
    ("match: shop.billing.*", "match: shop.billing.charge_card"),
])
def test_one_changed_value_changes_the_fingerprint(old: str, new: str) -> None:
    assert old in LAYOUT
    assert print_of(LAYOUT.replace(old, new)) != print_of(LAYOUT)


def test_other_tasks_give_another_fingerprint() -> None:
    """The fingerprint covers what each task gets: a new task is a change of the fleet."""
    assert print_of(LAYOUT, [*NAMES, "shop.emails.send_newsletter"]) != print_of(LAYOUT)


def test_the_fingerprint_is_the_same_in_every_process_and_python_version() -> None:
    """Pinned: sorted, compact JSON of plain values (floats in their shortest repr), hashed;
    no set order, hash seed or object address goes into it."""
    assert print_of(LAYOUT) == "10ca2b9bb43939d7"
