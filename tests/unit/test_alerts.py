"""docs/prometheus/alerts.yaml: promtool accepts the rules and passes their unit tests, every
alert reads only metrics the plugin exports, and every alert has tests that fire it and that
do not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.support.promql import EXPORTED, metric_names, run_promtool, unknown_metrics

RULES = ROOT / "docs" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "docs" / "prometheus" / "alerts_test.yaml"
SEVERITIES = ("info", "warning", "critical")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


ALERTS = {rule["alert"]: rule for rule in alerts()}


def test_promtool_check_rules_accepts_every_alert() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    # From the tests' directory, as a user runs them: rule_files is relative to it.
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


def test_the_rules_are_one_group_named_celery_policies() -> None:
    assert [group["name"] for group in load(RULES)["groups"]] == ["celery-policies"]


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_every_metric_an_alert_reads_is_exported(name: str) -> None:
    expr = ALERTS[name]["expr"]
    assert metric_names(expr), f"{name} reads no metric"
    assert unknown_metrics(expr) == set()


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_every_alert_has_a_severity_and_says_what_to_do(name: str) -> None:
    rule = ALERTS[name]
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(ALERTS) - fired == set(), "alerts no test fires"
    assert set(ALERTS) - silent == set(), "alerts no test expects to stay silent"
    assert (fired | silent) - set(ALERTS) == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_the_check_catches_a_misspelled_metric_in_each_alert(name: str) -> None:
    """The exported-metrics check can fail: a misspelled name is reported, and nothing
    else is."""
    expr = ALERTS[name]["expr"]
    real = sorted(metric_names(expr))[0]
    misspelled = real.replace("celery_policies_", "celery_policy_", 1)
    assert unknown_metrics(expr.replace(real, misspelled)) == {misspelled}


# -- the extractor ------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "names"), [
    ("up", {"up"}),
    ("rate(foo_total[5m])", {"foo_total"}),
    # label names in selectors and in by/without/on/ignoring/group_left lists are not metrics
    ('sum by (queue, task) (rate(foo_total{queue="q", task=~"a|b"}[5m]))', {"foo_total"}),
    ("sum without(instance)(foo) / on (job) group_left(version) bar", {"foo", "bar"}),
    ("foo * ignoring (le) group_right bar", {"foo", "bar"}),
    ("sum(foo) by (policy)", {"foo"}),
    # words in label values, regexes and strings are not metrics
    ('label_replace(foo, "dst", "$1 bar", "src", "(baz.*)")', {"foo"}),
    ('foo{reason="max retries and more"}', {"foo"}),
    # numbers, durations, offsets, keywords, Grafana's interval variables
    ("foo > bool 3e2 and bar offset 1h30m or baz < Inf", {"foo", "bar", "baz"}),
    ("rate(foo[$__rate_interval]) > 0x1F unless bar", {"foo", "bar"}),
    ("max_over_time(rate(foo[5m])[1h:1m]) @ start()", {"foo"}),
    ("histogram_quantile(0.99, sum by (le) (rate(foo_bucket[5m])))", {"foo_bucket"}),
    # a recording rule's name, and a name given as a matcher
    ("job:foo:rate5m", {"job:foo:rate5m"}),
    ('{__name__="foo", job="x"}', {"foo"}),
    ("count(count by (fingerprint) (foo)) > 1  # one fleet", {"foo"}),
])
def test_metric_names_reads_only_the_series_an_expression_selects(
        expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_histogram_is_known_by_its_bucket_sum_and_count_series_only() -> None:
    assert {"celery_policies_attempts_bucket", "celery_policies_attempts_sum",
            "celery_policies_attempts_count"} <= EXPORTED
    assert unknown_metrics("celery_policies_attempts") == {"celery_policies_attempts"}
