"""docs/grafana/celery-policies.json: every query reads only metrics the plugin exports, every
exported metric has a panel, every query parses, the template variables filter what they
name, and the data source is a variable so that the dashboard imports anywhere."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_policies.metrics.names import (
    EXPORTER_METRICS,
    METRICS,
    WORKER_METRICS,
    Metric,
    sample_names,
)
from tests.conftest import ROOT
from tests.support.promql import metric_names, run_promtool, unknown_metrics

DASHBOARD = ROOT / "docs" / "grafana" / "celery-policies.json"
#: The data source every panel and query names: a variable, set when the dashboard is imported.
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
#: Which variable filters each label of the metrics, by where the metric comes from: a
#: dead-letter queue and a task's queue are different queues.
FILTERS = {
    "worker": {"task": "task", "policy": "policy", "queue": "queue"},
    "exporter": {"queue": "dead_letter_queue"},
}

#: The metric each sample name belongs to.
BY_SAMPLE = {name: metric for metric in METRICS.values() for name in sample_names(metric)}

# Grafana's own variables stand for a duration; the dashboard's template variables for a regex
# inside a matcher's quotes. `$x`, `${x}` and `${x:format}`.
_GRAFANA_INTERVAL = re.compile(r"\$\{?__\w+\}?")
_TEMPLATE_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in rows (collapsed or not) included."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel's targets and every query variable."""
    found = [(f"panel {panel['id']} {panel['title']!r} target {target['refId']}", target["expr"])
             for panel in panels(dashboard()) for target in panel.get("targets", [])]
    for variable in variables().values():
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable["definition"])
            assert match, f"variable {variable['name']}: not label_values(METRIC, LABEL)"
            found.append((f"variable {variable['name']}", match.group(1)))
    return found


def variables() -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard()["templating"]["list"]}


def substituted(expr: str) -> str:
    """``expr`` as Prometheus receives it from Grafana, near enough to parse."""
    return _TEMPLATE_VARIABLE.sub(".*", _GRAFANA_INTERVAL.sub("5m", expr))


QUERIES = queries()


def test_the_dashboard_is_a_grafana_dashboard_of_its_own_uid() -> None:
    board = dashboard()
    assert board["uid"] == "celery-policies"
    assert board["id"] is None
    assert board["schemaVersion"] >= 36
    assert QUERIES


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_every_query_reads_only_exported_metrics(where: str, expr: str) -> None:
    assert metric_names(expr), f"{where} reads no metric"
    assert unknown_metrics(expr) == set()


@pytest.mark.parametrize("metric", [*WORKER_METRICS, *EXPORTER_METRICS],
                         ids=lambda metric: metric.name)
def test_every_exported_metric_has_a_panel(metric: Metric) -> None:
    read: set[str] = set()
    for where, expr in QUERIES:
        if where.startswith("panel"):
            read |= metric_names(expr)
    assert read & set(sample_names(metric)), f"no panel reads {metric.name}"


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_the_template_variables_filter_every_selector_of_a_metric_they_apply_to(
        where: str, expr: str) -> None:
    """A task's panel follows the task, policy and queue chosen at the top; a dead-letter
    queue's panel the dead-letter queue chosen. Variable queries list every value."""
    if where.startswith("variable"):
        return
    for name in metric_names(expr) & BY_SAMPLE.keys():
        metric = BY_SAMPLE[name]
        wanted = [f'{label}=~"${variable}"' for label, variable in FILTERS[metric.where].items()
                  if label in metric.labels]
        selectors = re.findall(rf"(?<![\w:]){re.escape(name)}\b(\s*\{{[^}}]*\}})?", expr)
        assert selectors
        for matchers in selectors:
            for matcher in wanted:
                assert matcher in matchers, f"{where}: {name}{matchers} lacks {matcher}"


def test_the_variables_task_policy_queue_and_dead_letter_queue_exist_and_allow_all() -> None:
    found = variables()
    for name in ("task", "policy", "queue", "dead_letter_queue"):
        assert found[name]["type"] == "query"
        assert found[name]["includeAll"] is True
        assert found[name]["allValue"] == ".*"
        assert found[name]["datasource"] == DATASOURCE


def test_the_data_source_is_a_variable_every_panel_and_query_uses() -> None:
    source = variables()["DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for panel in panels(dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in panels(dashboard())]
    assert len(ids) == len(set(ids))


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses PromQL when it checks rules: each query, its variables substituted,
    becomes a recording rule named after its place in the dashboard."""
    rules = [{"record": f"dashboard:query_{i}", "expr": substituted(expr)}
             for i, (_, expr) in enumerate(QUERIES)]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}),
                    encoding="utf-8")
    result = run_promtool("check", "rules", path)
    places = "\n".join(f"dashboard:query_{i}: {where}" for i, (where, _) in enumerate(QUERIES))
    assert result.returncode == 0, f"{result.stdout}\n{places}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_a_query_with_a_misspelled_metric_is_caught() -> None:
    """The exported-metrics check can fail."""
    expr = 'sum by (queue) (celery_policies_dead_leters{queue=~"$dead_letter_queue"})'
    assert unknown_metrics(expr) == {"celery_policies_dead_leters"}


def test_a_query_that_does_not_parse_is_caught(tmp_path: Path) -> None:
    """The parse check can fail: promtool rejects the rule file of a broken query."""
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": "dashboard:query_0",
         "expr": substituted('sum by (queue (celery_policies_dead_letters{queue=~"$q"})')}]}]}),
        encoding="utf-8")
    result = run_promtool("check", "rules", path)
    assert result.returncode != 0
    assert "dashboard:query_0" in result.stdout
