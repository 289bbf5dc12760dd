"""The table of settings (spec/settings.py): one row per key of the model, agreeing with the
model and with Celery, and every list of keys the package uses derived from it unchanged."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any, get_args

import pytest
from celery.app import autoretry
from celery.app.task import Task
from pydantic import ValidationError

from celery_policies import appinfo, policy
from celery_policies.spec import settings
from celery_policies.spec.model import (
    FailureRoute,
    PolicySettings,
    PublishRetryPolicy,
    RetryOverride,
)
from celery_policies.spec.settings import (
    ATTRIBUTE_KEYS,
    AUTORETRY_DEFAULTS,
    PLUGIN_DEFAULTS,
    RETRY_KEYS,
    SETTING_KEYS,
    SETTINGS,
    Kind,
)
from celery_policies.spec.values import (
    UNLIMITED,
    Backoff,
    Boolean,
    CountOrUnlimited,
    Duration,
    ExceptionList,
    Jitter,
    OptionalDuration,
    RateLimit,
)
from celery_policies.tools.schema import json_schema, render_markdown
from celery_policies.tools.wording import human
from celery_policies.worker import patching
from tests.conftest import load

_VALUE_TYPES: dict[Any, Kind] = {
    Boolean: "bool", CountOrUnlimited: "count", Duration: "duration",
    OptionalDuration: "duration", RateLimit: "rate", ExceptionList: "exceptions",
    Backoff: "backoff", Jitter: "jitter",
}
_SECTION_TYPES: dict[type, Kind] = {
    RetryOverride: "overrides", FailureRoute: "routes", PublishRetryPolicy: "mapping",
}


def _kind_in_model(key: str) -> Kind:
    """The kind the model's type of ``key`` says: its value type, or the section it holds."""
    field = PolicySettings.model_fields[key]
    for value_type, kind in _VALUE_TYPES.items():
        if field.metadata == list(value_type.__metadata__):
            return kind
    held = {inner for arg in get_args(field.annotation) for inner in (arg, *get_args(arg))}
    kinds = [kind for section, kind in _SECTION_TYPES.items() if section in held]
    assert len(kinds) == 1, f"{key}: no kind for {field.annotation}"
    return kinds[0]


def test_the_table_has_one_row_per_setting_in_the_models_order() -> None:
    assert tuple(PolicySettings.model_fields) == SETTING_KEYS
    assert all(key == info.key for key, info in SETTINGS.items())


@pytest.mark.parametrize("key", SETTING_KEYS)
def test_a_settings_kind_is_its_type_in_the_model(key: str) -> None:
    assert SETTINGS[key].kind == _kind_in_model(key)


@pytest.mark.parametrize("key", SETTING_KEYS)
def test_no_limit_is_the_spelling_the_loader_takes_for_no_limit(key: str) -> None:
    """``null`` is accepted exactly where the table says it lifts the limit, ``unlimited``
    read as no limit exactly where the table says so."""
    def parsed(value: object) -> object:
        try:
            return PolicySettings.model_validate({key: value}).set_values()[key]
        except ValidationError:
            return "refused"

    no_limit = SETTINGS[key].no_limit
    assert (parsed(None) is None) == (no_limit == "null")
    assert (parsed(UNLIMITED) == UNLIMITED) == (no_limit == UNLIMITED)


def test_attribute_keys_are_the_keys_celery_knows_in_the_order_the_worker_sets_them() -> None:
    assert ATTRIBUTE_KEYS == (
        "acks_late", "acks_on_failure_or_timeout", "reject_on_worker_lost", "time_limit",
        "soft_time_limit", "rate_limit", "max_retries", "default_retry_delay", "autoretry_for",
        "dont_autoretry_for", "retry_backoff", "retry_backoff_max", "retry_jitter")
    assert set(ATTRIBUTE_KEYS) == {key for key, info in SETTINGS.items() if info.celery}


def test_retry_keys_are_the_rows_that_hand_retries_to_the_wrapper() -> None:
    assert frozenset({
        "autoretry_for", "dont_autoretry_for", "max_retries", "default_retry_delay",
        "retry_backoff", "retry_backoff_max", "retry_jitter", "retry_deadline",
        "retry_per_exception"}) == RETRY_KEYS
    assert {key for key, info in SETTINGS.items() if info.retry} == RETRY_KEYS


def test_plugin_defaults_are_the_keys_celery_does_not_know() -> None:
    assert PLUGIN_DEFAULTS == {"max_redeliveries": None, "retry_deadline": None,
                               "retry_per_exception": None, "on_failure": None,
                               "publish_retry_policy": None}
    assert set(PLUGIN_DEFAULTS) == {key for key, info in SETTINGS.items() if info.celery is None}
    assert set(PLUGIN_DEFAULTS).isdisjoint(ATTRIBUTE_KEYS)


def test_the_worker_and_appinfo_read_the_table_itself() -> None:
    """Their names are the table's own objects, not copies that could drift."""
    assert vars(patching)["ATTRIBUTE_KEYS"] is ATTRIBUTE_KEYS
    assert vars(policy)["RETRY_KEYS"] is RETRY_KEYS
    assert appinfo.PLUGIN_DEFAULTS is PLUGIN_DEFAULTS
    assert appinfo.SETTING_KEYS is SETTING_KEYS


def test_task_rows_are_attributes_of_celerys_task_class_and_autoretry_rows_are_not() -> None:
    for key, info in SETTINGS.items():
        if info.celery == "task":
            assert hasattr(Task, key), key
        elif info.celery == "autoretry":
            assert not hasattr(Task, key), key
    configured = {key for key, _ in Task.from_config if key in SETTINGS}
    assert all(SETTINGS[key].celery == "task" for key in configured)


def test_autoretry_defaults_are_the_ones_celerys_autoretry_reads() -> None:
    """As in ``getattr(task, 'retry_backoff_max', 600)``, in celery/app/autoretry.py."""
    found = {}
    for node in ast.walk(ast.parse(inspect.getsource(autoretry))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "getattr" and len(node.args) == 3
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in AUTORETRY_DEFAULTS):
            found[node.args[1].value] = ast.literal_eval(node.args[2])
    assert found == AUTORETRY_DEFAULTS
    assert set(AUTORETRY_DEFAULTS) == {
        key for key, info in SETTINGS.items() if info.celery == "autoretry"}


def test_the_table_imports_nothing_of_celery() -> None:
    """spec/ is the file language: it must load where Celery is not installed."""
    tree = ast.parse(Path(inspect.getfile(settings)).read_text(encoding="utf-8"))
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in modules if m.split(".")[0] in ("celery", "kombu")}


def test_every_setting_is_in_the_schema_and_nullable_where_null_lifts_its_limit() -> None:
    for section in ("Defaults", "Policy"):
        properties = json_schema()["$defs"][section]["properties"]
        assert set(SETTING_KEYS) <= set(properties)
        for key, info in SETTINGS.items():
            nullable = {"type": "null"} in properties[key].get("anyOf", [])
            assert nullable == (info.no_limit == "null"), key


def test_every_setting_is_in_the_reference_in_the_tables_order() -> None:
    settings_section = render_markdown().split("## Settings")[1].split("\n## ")[0]
    assert tuple(re.findall(r"^\| `(\w+)` \|", settings_section, re.MULTILINE)) == SETTING_KEYS


EVERY_KEY = """
version: 1
dead_letter: {queue: failed}
defaults:
  acks_late: true
  acks_on_failure_or_timeout: false
  reject_on_worker_lost: true
  max_redeliveries: 5
  time_limit: 90
  soft_time_limit: 1m
  rate_limit: 10/s
  autoretry_for: [ConnectionError, requests.exceptions.Timeout]
  dont_autoretry_for: []
  max_retries: unlimited
  default_retry_delay: 45s
  retry_backoff: true
  retry_backoff_max: 10m
  retry_jitter: equal
  retry_deadline: 1h
  retry_per_exception: {TimeoutError: {max_retries: 2, retry_backoff: 5s}}
  on_failure: [{task: alerts.failed, when: [ValueError]}, {dead_letter: true}]
  publish_retry_policy: {max_retries: 3, interval_start: 0}
"""

#: How explain shows each setting of EVERY_KEY.
SHOWN = {
    "acks_late": "true",
    "acks_on_failure_or_timeout": "false",
    "reject_on_worker_lost": "true",
    "max_redeliveries": "5",
    "time_limit": "1m30s",
    "soft_time_limit": "1m",
    "rate_limit": "10/s",
    "autoretry_for": "ConnectionError, requests.exceptions.Timeout",
    "dont_autoretry_for": "(none)",
    "max_retries": "unlimited",
    "default_retry_delay": "45s",
    "retry_backoff": "1s",
    "retry_backoff_max": "10m",
    "retry_jitter": "equal",
    "retry_deadline": "1h",
    "retry_per_exception": "TimeoutError: max_retries=2, retry_backoff=5s",
    "on_failure": "task alerts.failed when ValueError; dead letter to failed",
    "publish_retry_policy": "max_retries=3, interval_start=0.0",
}


def test_every_setting_is_shown_as_a_person_reads_it() -> None:
    values = load(EVERY_KEY).model.defaults
    assert values is not None
    assert tuple(SHOWN) == SETTING_KEYS
    assert {key: human(key, getattr(values, key), dead_letter_queue="failed")
            for key in SETTING_KEYS} == SHOWN
