"""The compatibility module is the one door to Celery's and kombu's internals, and what it
says about this Celery matches this Celery's own code (run on each version of the matrix)."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import celery
import pytest
from celery import Celery
from celery.app.task import Context, Task
from celery.worker import state
from celery.worker.request import Request
from celery.worker.worker import WorkController
from kombu import Connection, Consumer, Producer
from kombu.message import Message
from kombu.transport import virtual

from celery_policies import compat

PACKAGE = Path(compat.__file__).resolve().parent
#: Host objects the plugin handles; any private name of theirs is an internal.
HOSTS = (Task, Request, Context, Celery, WorkController, Connection, Consumer, Producer,
         Message, virtual.Channel, virtual.QoS)
#: Public names whose meaning or existence differs between the supported releases.
VERSIONED = frozenset({"acks_on_failure", "acks_on_timeout", "should_terminate",
                       "detect_quorum_queues", "quorum_queues", "unacked_restore_interval",
                       "unacked_restore_throttle", "worker_pool_start_method",
                       "retry_on_worker_lost", "build_tracer"})


def host_private_names() -> frozenset[str]:
    names = [*(name for host in HOSTS for name in dir(host)), *vars(state)]
    private = {name for name in names
               if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))}
    return frozenset(private | {"__trace__", "_orig_run", "override_max_retries"})


def own_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines itself: its functions, class attributes and
    ``self._name = ...`` attributes (they may share a name with a host's, harmlessly)."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    own.add(target.id)
                elif (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                      and target.value.id == "self"):
                    own.add(target.attr)
    return own


def offences(path: Path, private: frozenset[str], root: Path = PACKAGE.parent
             ) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(root)
    private = private - own_private_names(tree)
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value
        elif isinstance(node, ast.alias):
            name = node.name
        if name is not None and (name in private or name in VERSIONED):
            yield f"{where}:{getattr(node, 'lineno', '?')}: {name}"
        if (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                and node.module.split(".")[0] in ("celery", "kombu", "billiard")
                and any(part.startswith("_") for part in node.module.split("."))):
            yield f"{where}:{node.lineno}: from {node.module}"


def test_no_module_but_compat_touches_a_celery_or_kombu_internal() -> None:
    private = host_private_names()
    found = [offence for path in sorted(PACKAGE.rglob("*.py")) if path.name != "compat.py"
             for offence in offences(path, private)]
    assert found == []


def test_the_scan_catches_an_internal_named_outside_compat(tmp_path: Path) -> None:
    """The check above can fail: a module reading a private attribute is named."""
    module = tmp_path / "probe.py"
    module.write_text("from celery._state import get_current_task\n"
                      "def f(request):\n    return request._context, 'acks_on_timeout'\n")
    found = list(offences(module, host_private_names(), tmp_path))
    assert sorted(found) == ["probe.py:1: from celery._state", "probe.py:3: _context",
                             "probe.py:3: acks_on_timeout"]


def _source(function: object) -> str:
    return inspect.getsource(function)  # type: ignore[arg-type]


def test_version_gates_match_this_celerys_code() -> None:
    """Where compat compares versions, the code it cites says the same on this release."""
    on_failure = _source(Request.on_failure)
    requeues = "isinstance(exc, TimeLimitExceeded) and not" in on_failure or (
        "is_timeout and not ack_flag" in on_failure)
    assert compat.TIMEOUT_REQUEUED is requeues
    reject_branch = on_failure.split("isinstance(exc, Reject)")[1].split(
        "isinstance(exc, Ignore)")[0]
    assert compat.REJECT_SENDS_FAILURE is ("task_failure" in reject_branch)


@pytest.mark.parametrize(("acks_late", "flag", "final_on_5_3", "final_on_5_5"), [
    (False, False, True, True),
    (True, True, True, True),
    (True, False, True, False),
])
def test_a_hard_time_limit_is_final_as_this_celery_decides(
        acks_late: bool, flag: bool, final_on_5_3: bool, final_on_5_5: bool) -> None:
    app = Celery("compat", broker="memory://")

    @app.task(name="compat.t", acks_late=acks_late, shared=False)
    def t() -> None: ...

    compat.set_acks_on_failure_or_timeout(t, flag)
    expected = final_on_5_5 if compat.TIMEOUT_REQUEUED else final_on_5_3
    assert compat.timeout_is_final(t) is expected
    assert compat.acks_on_timeout(t) is flag
    assert compat.acks_on_failure(t) is flag


def test_acks_flags_are_set_where_this_celery_reads_them() -> None:
    app = Celery("compat", broker="memory://")

    @app.task(name="compat.t", acks_late=True, shared=False)
    def t() -> None: ...

    compat.set_acks_on_failure_or_timeout(t, False)
    assert t.acks_on_failure_or_timeout is False
    if compat.SPLIT_ACKS:
        assert (t.acks_on_failure, t.acks_on_timeout) == (False, False)


def test_the_redis_sweep_period_is_what_kombu_uses() -> None:
    pytest.importorskip("redis")
    options = {"unacked_restore_interval": 1, "unacked_restore_throttle": 2}
    if hasattr(__import__("kombu.transport.redis").transport.redis.Channel,
               "unacked_restore_interval"):
        assert compat.redis_sweep_period(options) == 2.0
        assert compat.redis_sweep_period({}) == 100.0
        # kombu 5.7 takes a non-positive interval as its default (10 s)
        assert compat.redis_sweep_period({"unacked_restore_interval": 0,
                                          "unacked_restore_throttle": 1}) == 10.0
    else:  # fixed in kombu before 5.7: options are ignored
        assert compat.redis_sweep_period(options) == 100.0


def test_quorum_queue_detection_exists_from_celery_5_5() -> None:
    assert (compat.detect_quorum_queues is not None) is (celery.VERSION >= (5, 5))
