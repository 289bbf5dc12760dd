"""An exception class's one name, and matching classes against names that were not imported."""

from __future__ import annotations

import pytest
from celery.exceptions import WorkerLostError

from celery_policies.appinfo import _as_file_value
from celery_policies.spec.exception_refs import exception_name, mro_distance


def test_exception_name_is_bare_for_builtins_and_dotted_otherwise() -> None:
    assert exception_name(ConnectionError) == "ConnectionError"
    assert exception_name(WorkerLostError) == "billiard.exceptions.WorkerLostError"


def test_a_task_s_autoretry_for_classes_read_as_the_file_would_write_them() -> None:
    """``explain`` compares the code's autoretry_for with the file's; names stay as written."""
    assert _as_file_value("autoretry_for", (ConnectionError, WorkerLostError, "a.B")) == (
        "ConnectionError", "billiard.exceptions.WorkerLostError", "a.B")


@pytest.mark.parametrize("name", ["ConnectionError", "builtins.ConnectionError"])
def test_a_builtin_is_matched_by_its_bare_or_its_builtins_name(name: str) -> None:
    assert mro_distance(ConnectionResetError, (name,)) == 1


def test_a_class_outside_builtins_is_matched_by_its_dotted_name_only() -> None:
    assert mro_distance(WorkerLostError, ("billiard.exceptions.WorkerLostError",)) == 0
    assert mro_distance(WorkerLostError, ("WorkerLostError",)) is None


def test_no_ref_in_the_mro_is_none() -> None:
    assert mro_distance(KeyError, ("ConnectionError", OSError)) is None
