"""Dead letters made without running a worker, for the dead-letter benchmarks and tests.

Each is what the worker would publish for a task that failed for good: a protocol-2 task
message (JSON) with a failure record.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any
from uuid import uuid4

from kombu.connection import Connection

from celery_policies.deadletters.envelope import Envelope, Publisher, dead_letter, now_iso

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def fabricate(connection: Connection, queue: str, count: int, *, origin: str,
              task: str = "proj.noop",
              args_of: Callable[[int], list[Any]] = lambda i: []) -> list[str]:
    """Publish ``count`` dead letters of ``task`` (from queue ``origin``) to ``queue``;
    return their task ids, oldest first."""
    publisher = Publisher(connection)
    ids = []
    try:
        for number in range(count):
            task_id = str(uuid4())
            args = args_of(number)
            body = json.dumps([args, {}, _EMBED]).encode()
            headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                       "parent_id": None, "group": None, "retries": 3, "eta": None,
                       "expires": None, "timelimit": [None, None], "argsrepr": repr(args),
                       "kwargsrepr": "{}", "origin": f"fabricate@{socket.gethostname()}"}
            failure = {"reason": "exception", "exception": "ConnectionError",
                       "exception_message": f"fabricated {number}", "traceback": None,
                       "retries": 3, "redeliveries": 0, "failed_at": now_iso(),
                       "hostname": "fabricate", "policy": None, "queue": origin}
            envelope = Envelope(body, "application/json", "utf-8", headers,
                                {"correlation_id": task_id})
            publisher.publish(dead_letter(envelope, failure), queue, declare=number == 0)
            ids.append(task_id)
    finally:
        if publisher.connection is not connection:
            publisher.close()
    return ids
