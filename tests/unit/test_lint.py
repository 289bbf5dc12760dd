"""The lint rules: each one fires on a file written to trigger it, at the key to change, and
stays silent on a close variant. Apps here are only configured: nothing connects. (Once the
example shop is imported, Celery adds its shared tasks to every app: assertions allow them.)"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery
from kombu import Queue

from celery_policies import compat, load_policies
from celery_policies.appinfo import load_app
from celery_policies.lint import REGISTRY, Finding, lint
from celery_policies.spec.lintcodes import RULES
from celery_policies.worker.runtime import Runtime
from tests.conftest import EXAMPLE, ROOT, load, problems

REDIS = "redis://127.0.0.1:6379/0"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
TASKS = ("a.one", "a.two", "b.only")


def _body() -> None:
    """A task body: the rules read only the settings."""


def make_app(broker: str = REDIS, names: tuple[str, ...] = TASKS, **conf: object) -> Celery:
    """A configured app with tasks named ``names``; it never connects."""
    app = Celery("linted", broker=broker, set_as_current=False)
    app.conf.update(conf)
    for name in names:
        app.task(name=name, shared=False)(_body)
    return app


def run_lint(text: str, app: Celery | None = None, pool: str | None = None) -> list[Finding]:
    return lint(load(text), app, pool=pool)


def found(text: str, code: str, app: Celery | None = None,
          pool: str | None = None) -> list[Finding]:
    """The findings of rule ``code`` only."""
    return [f for f in run_lint(text, app, pool) if f.code == code]


def one(text: str, code: str, app: Celery | None = None, pool: str | None = None) -> Finding:
    findings = found(text, code, app, pool)
    assert len(findings) == 1, findings
    return findings[0]


# -- the rules and their documentation -------------------------------------------------------

def test_every_code_has_a_rule_and_an_entry_in_the_docs() -> None:
    assert sorted(REGISTRY) == sorted(RULES)
    docs = (ROOT / "docs" / "lint.md").read_text(encoding="utf-8")
    for code, (name, _) in RULES.items():
        assert f"## {code} `{name}`" in docs


def test_the_example_file_stays_silent_with_and_without_its_app() -> None:
    policies = load_policies(EXAMPLE)
    app = load_app("examples.shop")
    assert lint(policies) == []
    assert lint(policies, app, pool="prefork") == []


def test_a_finding_reads_file_line_column_code_severity_message() -> None:
    finding = one("""
        version: 1
        defaults:
          max_retries: unlimited
    """, "CP108")
    assert str(finding).startswith("policies.yaml:3:3: CP108 warning: max_retries is unlimited")
    assert (finding.name, finding.severity) == ("unlimited-retries-without-deadline", "warning")


# -- CP101 Redis visibility_timeout ----------------------------------------------------------

LONG_ACKS_LATE = """
    version: 1
    policies:
      - match: "a.*"
        acks_late: true
        time_limit: 2h
"""


@pytest.mark.parametrize("broker", [REDIS, "rediss://127.0.0.1:6379/0",
                                    "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"])
def test_cp101_an_acks_late_time_limit_beyond_the_redis_visibility_timeout(broker: str) -> None:
    finding = one(LONG_ACKS_LATE, "CP101", make_app(broker))
    assert (finding.line, finding.column) == (5, 5)
    assert "time_limit (2h) is longer than the Redis visibility_timeout (1h)" in finding.message
    assert "(2 tasks: a.one, a.two)" in finding.message
    assert "runs twice (kombu#337, celery#4400)" in finding.message


def test_cp101_reads_the_visibility_timeout_from_broker_transport_options() -> None:
    app = make_app(broker_transport_options={"visibility_timeout": 3 * 3600})
    assert found(LONG_ACKS_LATE, "CP101", app) == []


def test_cp101_does_not_apply_to_rabbitmq_or_without_acks_late() -> None:
    assert found(LONG_ACKS_LATE, "CP101", make_app(RABBITMQ)) == []
    assert found(LONG_ACKS_LATE.replace("acks_late: true", "acks_late: false"), "CP101",
                 make_app()) == []


RETRIES_UP_TO_2H = """
    version: 1
    defaults:
      autoretry_for: [ConnectionError]
      max_retries: 20
      retry_backoff: 1s
      retry_backoff_max: 2h
"""


def test_cp101_a_retry_countdown_beyond_the_visibility_timeout_with_or_without_acks_late() -> None:
    finding = one(RETRIES_UP_TO_2H, "CP101", make_app())
    assert (finding.line, finding.column) == (6, 3)  # the cap, which sets the longest delay
    assert "retries wait up to 2h, longer than the Redis visibility_timeout" in finding.message


def test_cp101_a_deadline_shorter_than_the_visibility_timeout_bounds_the_countdown() -> None:
    assert found(RETRIES_UP_TO_2H + "      retry_deadline: 50m\n", "CP101", make_app()) == []


def test_cp101_few_retries_never_reach_the_long_cap() -> None:
    """1s doubling over 5 retries waits 16s at most, whatever the cap."""
    assert found(RETRIES_UP_TO_2H.replace("20", "5"), "CP101", make_app()) == []


# -- CP118 Redis sweep slower than visibility_timeout -----------------------------------------

ANY_FILE = """
    version: 1
    policies:
      - match: "a.*"
        acks_late: true
"""
#: kombu 5.7+ takes the sweep's period from the transport options; older kombu ignores them.
SWEEP_OPTIONS = compat.redis_sweep_configurable()


def test_cp118_a_visibility_timeout_shorter_than_kombus_sweep_of_unacked_messages() -> None:
    """kombu sweeps every 10 s x 10 unless told (fixed before 5.7): a 1m visibility_timeout
    is checked only every 1m40s."""
    finding = one(ANY_FILE, "CP118", make_app(broker_transport_options={
        "visibility_timeout": 60}))
    assert finding.severity == "warning"
    assert "the Redis visibility_timeout (1m) is shorter than kombu's sweep of " \
        "unacknowledged messages (every 1m40s)" in finding.message
    assert "up to 2m40s after it died, not 1m" in finding.message
    if SWEEP_OPTIONS:
        assert "unacked_restore_interval" in finding.message
    else:
        assert "kombu 5.7" in finding.message


def test_cp118_is_silent_once_the_sweep_is_as_frequent_as_the_timeout() -> None:
    """On kombu 5.7+ the sweep options bring the period under the timeout; before, the
    sweep is fixed at 100 s and only a longer timeout helps."""
    fast = make_app(broker_transport_options={"visibility_timeout": 60,
                                              "unacked_restore_interval": 5,
                                              "unacked_restore_throttle": 2})
    assert len(found(ANY_FILE, "CP118", fast)) == (0 if SWEEP_OPTIONS else 1)
    assert found(ANY_FILE, "CP118", make_app(broker_transport_options={
        "visibility_timeout": 100})) == []
    assert found(ANY_FILE, "CP118", make_app()) == []  # 1 h


def test_cp118_does_not_apply_to_rabbitmq_and_is_silenced_in_defaults() -> None:
    options = {"visibility_timeout": 10}
    assert found(ANY_FILE, "CP118", make_app(RABBITMQ, broker_transport_options=options)) == []
    silenced = ANY_FILE + "    defaults:\n      lint_ignore: [CP118]\n"
    assert found(silenced, "CP118", make_app(broker_transport_options=options)) == []


# -- CP102 RabbitMQ consumer_timeout ---------------------------------------------------------

ACKS_LATE_45M = """
    version: 1
    policies:
      - match: "a.*"
        acks_late: true
        time_limit: 45m
"""


@pytest.mark.parametrize("broker", [RABBITMQ, "pyamqp://guest:guest@127.0.0.1:5672//"])
def test_cp102_an_acks_late_time_limit_beyond_the_default_consumer_timeout(broker: str) -> None:
    finding = one(ACKS_LATE_45M, "CP102", make_app(broker))
    assert (finding.line, finding.column) == (5, 5)
    assert "consumer_timeout (30m, RabbitMQ's default since 3.8.17)" in finding.message
    assert "PRECONDITION_FAILED" in finding.message
    assert "celery#6760" in finding.message


def test_cp102_takes_the_servers_consumer_timeout_from_the_broker_section() -> None:
    raised = ACKS_LATE_45M + "    broker:\n      consumer_timeout: 1h\n"
    assert found(raised, "CP102", make_app(RABBITMQ)) == []
    lowered = ACKS_LATE_45M.replace("45m", "20m") + "    broker:\n      consumer_timeout: 15m\n"
    assert "(15m, broker.consumer_timeout in the file)" in one(
        lowered, "CP102", make_app(RABBITMQ)).message
    disabled = ACKS_LATE_45M + "    broker:\n      consumer_timeout: null\n"
    assert found(disabled, "CP102", make_app(RABBITMQ)) == []


def test_cp102_does_not_apply_to_redis() -> None:
    assert found(ACKS_LATE_45M, "CP102", make_app(REDIS)) == []


RETRIES_UP_TO_45M = """
    version: 1
    defaults:
      autoretry_for: [ConnectionError]
      max_retries: unlimited
      retry_deadline: 3h
      retry_backoff: 1m
      retry_backoff_max: 45m
"""


def test_cp102_a_retry_delay_beyond_the_consumer_timeout() -> None:
    finding = one(RETRIES_UP_TO_45M, "CP102", make_app(RABBITMQ))
    assert (finding.line, finding.column) == (7, 3)
    assert "retries wait up to 45m" in finding.message


def test_cp102_quorum_queues_leave_countdowns_to_the_broker_from_celery_5_5() -> None:
    """Celery 5.5+ hands a quorum queue's countdowns to RabbitMQ (native delayed delivery);
    5.3 and 5.4 hold them in the worker as on any queue, so the finding stands there."""
    quorum = [Queue("celery", queue_arguments={"x-queue-type": "quorum"})]
    findings = found(RETRIES_UP_TO_45M, "CP102", make_app(RABBITMQ, task_queues=quorum))
    assert (findings == []) is (compat.detect_quorum_queues is not None)


# -- CP103 pools that do not enforce time limits ---------------------------------------------

LIMITED = """
    version: 1
    policies:
      - match: "a.*"
        time_limit: 2m
        soft_time_limit: 1m
"""


def test_cp103_solo_enforces_neither_limit() -> None:
    findings = found(LIMITED, "CP103", pool="solo")
    assert [(f.line, f.column) for f in findings] == [(4, 5), (5, 5)]
    assert "the solo pool does not enforce time_limit 2m" in findings[0].message
    assert "the solo pool does not enforce soft_time_limit 1m" in findings[1].message


def test_cp103_gevent_enforces_only_the_hard_limit() -> None:
    finding = one(LIMITED, "CP103", pool="gevent")
    assert "does not enforce soft_time_limit" in finding.message


def test_cp103_prefork_enforces_both_and_without_a_pool_the_rule_does_not_run() -> None:
    assert found(LIMITED, "CP103", pool="prefork") == []
    assert found(LIMITED, "CP103") == []


# -- CP104 / CP105 reject_on_worker_lost -----------------------------------------------------

def test_cp104_reject_on_worker_lost_without_acks_late() -> None:
    finding = one("""
        version: 1
        policies:
          - match: "a.*"
            reject_on_worker_lost: true
    """, "CP104")
    assert (finding.line, finding.column) == (4, 5)
    assert "reject_on_worker_lost is on but acks_late is off" in finding.message


def test_cp104_is_silent_with_acks_late() -> None:
    assert found("""
        version: 1
        policies:
          - match: "a.*"
            reject_on_worker_lost: true
            acks_late: true
    """, "CP104") == []


def test_cp104_blames_the_policy_that_turns_acks_late_off_over_the_defaults() -> None:
    finding = one("""
        version: 1
        defaults: {acks_late: true, reject_on_worker_lost: true}
        policies:
          - match: "a.*"
            acks_late: false
    """, "CP104")
    assert (finding.line, finding.column) == (5, 5)


@pytest.mark.parametrize(("cap", "fires"), [("11", True), ("unlimited", True), ("10", False)])
def test_cp105_redeliveries_above_ten_or_unlimited(cap: str, fires: bool) -> None:
    findings = found(f"""
        version: 1
        policies:
          - match: "a.*"
            acks_late: true
            reject_on_worker_lost: true
            max_redeliveries: {cap}
    """, "CP105")
    assert [(f.line, f.column) for f in findings] == ([(6, 5)] if fires else [])
    if fires:
        assert "celery#9082" in findings[0].message


# -- CP106 acks_on_failure_or_timeout: false -------------------------------------------------

def test_cp106_failures_rejected_without_a_dead_letter_route() -> None:
    finding = one("""
        version: 1
        policies:
          - match: "a.*"
            acks_late: true
            acks_on_failure_or_timeout: false
            on_failure: [{dead_letter: true, when: [ValueError]}]
    """, "CP106")
    assert (finding.line, finding.column) == (5, 5)
    assert "no dead-letter route takes every failure" in finding.message
    assert "rejected without requeue" in finding.message
    assert "celery#4797" in finding.message


def test_cp106_is_silent_with_a_dead_letter_route_and_no_hard_limit() -> None:
    assert found("""
        version: 1
        policies:
          - match: "a.*"
            acks_late: true
            acks_on_failure_or_timeout: false
            on_failure: [{dead_letter: true}]
    """, "CP106") == []


def test_cp106_a_hard_limit_is_requeued_forever_even_with_a_dead_letter_route() -> None:
    finding = one("""
        version: 1
        policies:
          - match: "a.*"
            acks_late: true
            acks_on_failure_or_timeout: false
            time_limit: 1m
            on_failure: [{dead_letter: true}]
    """, "CP106")
    assert "the task has a hard time_limit" in finding.message
    assert "requeued, runs again and is killed again, forever" in finding.message


def test_cp106_does_nothing_without_acks_late() -> None:
    assert found("""
        version: 1
        defaults:
          acks_on_failure_or_timeout: false
    """, "CP106") == []


# -- CP107 broad autoretry_for ---------------------------------------------------------------

def test_cp107_a_programming_error_in_autoretry_for_is_blamed_at_its_list_item() -> None:
    finding = one("""
        version: 1
        policies:
          - match: "a.*"
            autoretry_for: [ConnectionError, KeyError]
    """, "CP107")
    assert (finding.line, finding.column) == (4, 38)
    assert "autoretry_for lists KeyError" in finding.message
    assert "comes back on every attempt" in finding.message


def test_cp107_transient_errors_are_fine() -> None:
    assert found("""
        version: 1
        policies:
          - match: "a.*"
            autoretry_for: [ConnectionError, TimeoutError, requests.exceptions.HTTPError]
    """, "CP107") == []


def test_cp107_covers_retry_per_exception_and_builtins_paths() -> None:
    findings = found("""
        version: 1
        defaults:
          autoretry_for: builtins.Exception
          retry_per_exception:
            TypeError: {max_retries: 1}
    """, "CP107")
    assert [(f.line, f.column) for f in findings] == [(3, 18), (5, 5)]
    assert "catches the errors bugs raise" in findings[0].message


def test_cp107_a_broad_class_in_task_code_is_blamed_at_the_policy_matching_the_task() -> None:
    app = make_app(names=())
    app.task(name="a.coded", autoretry_for=(Exception,), shared=False)(_body)
    finding = one("""
        version: 1
        policies:
          - match: "a.*"
            max_retries: 2
    """, "CP107", app)
    assert (finding.line, finding.column) == (3, 5)
    assert "(1 task: a.coded)" in finding.message


# -- CP108 unlimited retries -----------------------------------------------------------------

def test_cp108_unlimited_retries_without_a_deadline() -> None:
    finding = one("""
        version: 1
        policies:
          - match: "a.*"
            max_retries: unlimited
    """, "CP108")
    assert (finding.line, finding.column) == (4, 5)
    assert "no retry_deadline" in finding.message


def test_cp108_is_silent_with_a_deadline_and_for_a_number() -> None:
    assert found("""
        version: 1
        defaults: {retry_deadline: 1h}
        policies:
          - match: "a.*"
            max_retries: unlimited
          - match: "b.*"
            max_retries: 100
    """, "CP108") == []


def test_cp108_a_per_exception_entry_is_blamed_at_its_own_key() -> None:
    finding = one("""
        version: 1
        defaults:
          max_retries: 3
          retry_per_exception:
            ConnectionError: {max_retries: unlimited}
    """, "CP108")
    assert (finding.line, finding.column) == (5, 23)
    assert "max_retries is unlimited (for ConnectionError)" in finding.message


# -- CP109 acks_late with prefetching --------------------------------------------------------

LONG_TASKS = """
    version: 1
    policies:
      - match: "a.*"
        acks_late: true
        time_limit: 5m
"""


def test_cp109_acks_late_long_tasks_with_the_default_prefetch_multiplier() -> None:
    finding = one(LONG_TASKS, "CP109", make_app())
    assert (finding.line, finding.column) == (4, 5)
    assert "worker_prefetch_multiplier is 4" in finding.message


def test_cp109_a_multiplier_of_zero_prefetches_without_limit() -> None:
    finding = one(LONG_TASKS, "CP109", make_app(worker_prefetch_multiplier=0))
    assert "reserves every message it can (0: no limit)" in finding.message


def test_cp109_is_silent_with_a_multiplier_of_one_or_short_tasks() -> None:
    assert found(LONG_TASKS, "CP109", make_app(worker_prefetch_multiplier=1)) == []
    assert found(LONG_TASKS.replace("5m", "30s"), "CP109", make_app()) == []


# -- CP110 dead letters to a consumed queue --------------------------------------------------

def test_cp110_a_dead_letter_queue_the_workers_consume() -> None:
    app = make_app(task_queues=[Queue("work"), Queue("failed")])
    finding = one("""
        version: 1
        policies:
          - match: "a.*"
            on_failure: [{dead_letter: failed}]
    """, "CP110", app)
    assert (finding.line, finding.column) == (4, 19)
    assert "dead letters go to queue 'failed', which the workers consume" in finding.message


def test_cp110_follows_dead_letter_true_to_the_files_queue_and_the_default_queue() -> None:
    text = """
        version: 1
        dead_letter: {queue: celery}
        defaults:
          on_failure: [{dead_letter: true}]
    """
    assert one(text, "CP110", make_app()).line == 4
    assert found(text.replace("queue: celery", "queue: parked"), "CP110", make_app()) == []


# -- CP111-CP113 backoff arithmetic ----------------------------------------------------------

def test_cp111_a_base_above_celerys_default_cap() -> None:
    finding = one("""
        version: 1
        defaults:
          retry_backoff: 15m
    """, "CP111")
    assert (finding.line, finding.column) == (3, 3)
    assert "retry_backoff 15m is above retry_backoff_max 10m" in finding.message


def test_cp111_a_cap_from_defaults_below_a_policys_base_blames_the_policy() -> None:
    text = """
        version: 1
        defaults:
          retry_backoff_max: 1m
        policies:
          - match: "a.*"
            retry_backoff: 2m
    """
    assert (one(text, "CP111").line, one(text, "CP111").column) == (6, 5)
    assert found(text + "        retry_backoff_max: 1h\n", "CP111") == []


def test_cp111_a_per_exception_base_above_the_inherited_cap() -> None:
    finding = one("""
        version: 1
        defaults:
          retry_backoff_max: 1m
          retry_per_exception:
            ConnectionError: {retry_backoff: 5m}
    """, "CP111")
    assert (finding.line, finding.column) == (5, 23)
    assert "(for ConnectionError)" in finding.message


def test_cp112_a_deadline_before_the_first_retry() -> None:
    text = """
        version: 1
        policies:
          - match: "a.*"
            retry_backoff: 2m
            retry_jitter: none
            retry_deadline: 1m
    """
    finding = one(text, "CP112")
    assert (finding.line, finding.column) == (6, 5)
    assert "retry_deadline 1m is shorter than the first retry's delay (2m)" in finding.message
    assert "never retries" in finding.message
    assert found(text.replace("deadline: 1m", "deadline: 3m"), "CP112") == []


def test_cp112_with_jitter_the_first_retry_depends_on_the_draw() -> None:
    finding = one("""
        version: 1
        defaults: {retry_backoff: 2m, retry_deadline: 1m}
    """, "CP112")
    assert "(0s to 2m)" in finding.message
    assert "only when jitter draws a delay under the deadline" in finding.message


def test_cp112_celerys_fixed_delay_counts_when_there_is_no_backoff() -> None:
    finding = one("""
        version: 1
        defaults: {retry_deadline: 1m}
    """, "CP112")
    assert "first retry's delay (3m)" in finding.message


def test_cp113_max_retries_the_deadline_always_cuts_short() -> None:
    # delays of 10, 20, 40, 80 s: the 5th retry would start after 150 s + 160 s > 5 min
    text = """
        version: 1
        policies:
          - match: "a.*"
            max_retries: 10
            retry_backoff: 10s
            retry_jitter: none
            retry_deadline: 5m
    """
    finding = one(text, "CP113")
    assert (finding.line, finding.column) == (4, 5)
    assert "max_retries 10 cannot be reached within retry_deadline 5m" in finding.message
    assert "allow 4 retries" in finding.message
    assert found(text.replace("max_retries: 10", "max_retries: 4"), "CP113") == []


def test_cp113_full_jitter_can_always_reach_max_retries() -> None:
    assert found("""
        version: 1
        defaults: {max_retries: 10, retry_backoff: 10s, retry_deadline: 5m}
    """, "CP113") == []


# -- CP114-CP116 the file against the app's tasks ---------------------------------------------

def test_cp114_a_pattern_matching_no_registered_task() -> None:
    text = """
        version: 1
        policies:
          - match: ["a.*", "c.*"]
            max_retries: 1
    """
    finding = one(text, "CP114", make_app())
    assert (finding.line, finding.column) == (3, 20)
    assert "pattern 'c.*' matches no registered task" in finding.message
    assert found(text.replace('"c.*"', '"b.*"'), "CP114", make_app()) == []


def test_cp115_tasks_no_policy_covers_are_info() -> None:
    text = """
        version: 1
        policies:
          - match: "a.*"
    """
    finding = one(text, "CP115", make_app())
    assert (finding.severity, finding.line) == ("info", 2)
    assert finding.message.startswith("no policy matches (")
    assert "b.only" in finding.message
    assert "a.one" not in finding.message
    assert found(text.replace('"a.*"', '"*"'), "CP115", make_app()) == []


def test_cp116_a_policy_overridden_for_every_task_it_matches() -> None:
    text = """
        version: 1
        policies:
          - match: "a.o*"
            time_limit: 1m
          - match: a.one
            time_limit: 2m
    """
    finding = one(text, "CP116", make_app())
    assert (finding.line, finding.column) == (3, 5)
    assert "overridden for every task it matches (by policies[1])" in finding.message
    assert found(text.replace('"a.o*"', '"a.*"'), "CP116", make_app()) == []


# -- CP117 soft limit not below the hard one --------------------------------------------------

def test_cp117_merged_layers_put_the_soft_limit_above_the_hard() -> None:
    text = """
        version: 1
        defaults: {time_limit: 5m, soft_time_limit: 4m}
        policies:
          - match: "a.*"
            time_limit: 1m
    """
    finding = one(text, "CP117")
    assert (finding.line, finding.column) == (5, 5)
    assert "soft_time_limit 4m from defaults (policies.yaml:2) is not below time_limit 1m" in (
        finding.message)
    assert found(text.replace("time_limit: 1m", "time_limit: 10m"), "CP117") == []


# -- lint_ignore -----------------------------------------------------------------------------

def test_lint_ignore_silences_exactly_that_code_for_exactly_that_policy() -> None:
    findings = run_lint("""
        version: 1
        policies:
          - match: "a.*"
            max_retries: unlimited
            autoretry_for: [KeyError]
            lint_ignore: [CP108]
          - match: "b.*"
            max_retries: unlimited
    """)
    assert [(f.code, f.line) for f in findings] == [("CP107", 5), ("CP108", 8)]


def test_lint_ignore_under_defaults_silences_what_is_blamed_on_defaults_and_the_file() -> None:
    text = """
        version: 1
        defaults:
          max_retries: unlimited
          lint_ignore: [CP108, CP115]
        policies:
          - match: "a.*"
    """
    assert found(text, "CP108") == []
    assert found(text, "CP115", make_app()) == []
    other = text.replace("[CP108, CP115]", "CP107")
    assert found(other, "CP108") != []
    assert found(other, "CP115", make_app()) != []


def test_an_unknown_code_in_lint_ignore_is_a_located_validation_error() -> None:
    assert problems("""
        version: 1
        policies:
          - match: "a.*"
            lint_ignore: [CP108, CP999, dead-policy]
    """) == [
        "policies.yaml:4:26: policies[0].lint_ignore[1]: unknown lint rule code 'CP999'; the "
        "codes are CP101 to CP118 (docs/lint.md)",
        "policies.yaml:4:33: policies[0].lint_ignore[2]: unknown lint rule code 'dead-policy' "
        "(rule dead-policy is CP116); the codes are CP101 to CP118 (docs/lint.md)",
    ]


def test_lint_ignore_sets_no_task_setting() -> None:
    from celery_policies.spec.matching import Matcher  # noqa: PLC0415

    policies = load("""
        version: 1
        defaults: {lint_ignore: [CP108]}
        policies:
          - {match: "a.*", lint_ignore: [CP107]}
    """)
    assert dict(Matcher(policies).resolve("a.one").settings) == {}


# -- at worker startup -----------------------------------------------------------------------

def test_worker_startup_warns_with_the_real_pool_and_logs_info_at_info(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("version: 1\npolicies:\n  - match: \"a.*\"\n    time_limit: 2m\n",
                    encoding="utf-8")
    app = make_app(RABBITMQ)
    runtime = Runtime(app, path)
    runtime.apply(load_policies(path))
    warnings = runtime.startup_warnings("threads")
    assert any(re.match(rf"{re.escape(str(path))}:4:5: CP103 warning: the threads pool does not "
                        r"enforce time_limit 2m \(2 tasks: a\.one, a\.two\)", w) for w in warnings)
    assert all(" CP103 warning: " in w for w in warnings)  # shared tasks may add their own
    with caplog.at_level(logging.INFO, logger="celery_policies"):
        runtime.on_after_setup(instance=SimpleNamespace(app=app))
    infos = [r for r in caplog.records if "CP115" in r.getMessage()]
    assert [r.levelno for r in infos] == [logging.INFO]
    assert "CP115 info: no policy matches (" in infos[0].getMessage()
    assert "b.only" in infos[0].getMessage()
    assert runtime.startup_warnings("prefork") == []
