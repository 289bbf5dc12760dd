"""What the benchmarks that time real worker processes share: the line a worker logs when it
starts consuming, waiting for several workers to log it, the lengths of their queues read at
one instant, and the tail of a log for an error message."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import Celery

#: What a benchmark app's worker logs when it is ready to consume, followed by the time
#: (epoch seconds) and a JSON object of what it set up.
READY_MARK = "bench-ready"


class WorkerFailed(RuntimeError):
    """A worker did not start or did not finish the tasks."""


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path.name}: no file)"
    return f"--- {path.name} ---\n" + "\n".join(text.splitlines()[-lines:])


def read_ready(logfile: Path) -> tuple[float, dict[str, Any]] | None:
    """The worker's ``bench-ready`` line: when it started consuming, and what it set up;
    None while it has not written it."""
    if not logfile.exists():
        return None
    for line in logfile.read_text(errors="replace").splitlines():
        _, mark, rest = line.partition(f"{READY_MARK} ")
        if mark:
            started, _, setup = rest.partition(" ")
            return float(started), dict(json.loads(setup))
    return None


def wait_ready(workers: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path],
               timeout: float) -> dict[str, tuple[float, dict[str, Any]]]:
    """Each worker's ``bench-ready`` line, once every worker has written it."""
    ready: dict[str, tuple[float, dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout
    while len(ready) < len(workers):
        for key, worker in workers.items():
            if key not in ready:
                line = read_ready(logs[key])
                if line is not None:
                    ready[key] = line
                elif worker.poll() is not None or time.monotonic() > deadline:
                    raise WorkerFailed(f"the {key} worker did not start\n{tail(logs[key])}")
        time.sleep(0.01)
    return ready


def queue_lengths(broker: redis.Redis, queues: dict[str, str]) -> dict[str, int]:
    """Messages left in each variant's queue, read at one instant."""
    with broker.pipeline() as pipe:
        for queue in queues.values():
            pipe.llen(queue)
        lengths = pipe.execute()
    return dict(zip(queues, (int(n) for n in lengths), strict=True))


def publisher(task: str) -> Callable[[str, str, int], None]:
    """A ``publish(broker_url, queue, count)`` that sends ``count`` messages of ``task``,
    none of which stores a result (for ``_together.measure_window`` or a script's own loop)."""

    def publish(broker_url: str, queue: str, count: int) -> None:
        app = Celery("bench-publisher", broker=broker_url, set_as_current=False)
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                app.send_task(task, queue=queue, ignore_result=True, producer=producer)
        app.close()

    return publish
