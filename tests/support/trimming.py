"""Workers dead-lettering at the same moment into a full queue with ``dead_letter.max_length``.

Each sender is a thread with its own app, its own ``FailureRouter`` and so its own broker
connection, like a worker of its own: it takes the failure route of one failed task after
another, all senders starting together.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

from celery import Celery

from celery_policies.worker.routes import FailureRouter

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def failed_request(task_id: str, origin: str) -> Any:
    """What ``FailureRouter.route`` reads of a worker's request of a failed ``proj.noop``."""
    message = SimpleNamespace(
        body=json.dumps([[], {}, _EMBED]).encode(), content_type="application/json",
        content_encoding="utf-8", properties={"correlation_id": task_id},
        headers={"lang": "py", "task": "proj.noop", "id": task_id, "root_id": task_id,
                 "retries": 0, "eta": None, "expires": None})
    return SimpleNamespace(name="proj.noop", id=task_id, message=message,
                           delivery_info={"exchange": "", "routing_key": origin},
                           time_start=time.time(), hostname="trim@test")


@dataclass
class Senders:
    """What the senders sent: each one's task ids, in the order it dead-lettered them."""

    sent: list[list[str]] = field(default_factory=list)
    failed: list[BaseException] = field(default_factory=list)


def send_together(make_app: Callable[[], Celery], queue: str, max_length: int, *,
                  senders: int, each: int) -> Senders:
    """``senders`` threads, each with its own router and connection, dead-letter ``each``
    failed tasks to ``queue`` (kept at ``max_length``), all starting at once."""
    result = Senders(sent=[[] for _ in range(senders)])
    start = threading.Barrier(senders)

    def send(number: int) -> None:
        app = make_app()
        router = FailureRouter(app, lambda name, exc: [("dead_letter", queue)],
                               lambda name: None, lambda name: None, max_length=max_length)
        try:
            start.wait(timeout=30)
            for _ in range(each):
                task_id = str(uuid4())
                result.sent[number].append(task_id)
                assert router.route(failed_request(task_id, "work"), RuntimeError("boom"),
                                    None, "exception")
        except BaseException as exc:
            result.failed.append(exc)
        finally:
            router.close()
            app.close()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return result


def assert_kept_the_newest(kept: list[str], sent: list[list[str]], old: list[str]) -> None:
    """None of the ``old`` letters is kept, and of each sender's letters the kept ones are
    its last ones (a queue drops its oldest first)."""
    assert not set(kept) & set(old), "an old dead letter outlived newer ones"
    for ids in sent:
        survivors = [task_id for task_id in ids if task_id in set(kept)]
        assert survivors == ids[len(ids) - len(survivors):], "a newer dead letter was dropped"
