"""Two or more real workers measured side by side over one window of time, on Redis: what
``runtime.py`` and ``metrics.py`` compare their variants with.

A shared, noisy machine slows whatever runs at the moment; workers running at the same moment
are slowed alike. Each variant's queue gets the same number of messages; every worker starts;
the window opens when all of them are consuming (their ``bench-ready`` lines, see
``_workers.py``) and closes when any queue has ``WINDOW_END`` of its messages left, so no worker
ever runs alone. Each rate is the messages its worker took off its queue in the window divided
by the window (a prefetch of at most 8 messages is the error: 0.05% of 20,000).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from benchmarks._workers import WorkerFailed, queue_lengths, wait_ready

#: The Redis transport's hash of delivered, unacknowledged messages (kombu's default name).
UNACKED_KEY = "unacked"
#: The window closes when a queue has this share of its messages left.
WINDOW_END = 0.05


@dataclass(frozen=True)
class Launch:
    """How to start one variant's worker: its command line and environment."""

    command: Sequence[str]
    env: Mapping[str, str]


@dataclass(frozen=True)
class Window:
    """What one window measured: messages each worker took off its queue, the window's length
    in seconds, and what each worker's ``bench-ready`` line said it set up."""

    taken: dict[str, int]
    seconds: float
    setup: dict[str, dict[str, Any]]

    def rate(self, variant: str) -> float:
        return self.taken[variant] / self.seconds


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL to the worker's own process group if needed."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)  # start_new_session: the group is the worker's
        worker.wait()


def clean_up(broker: redis.Redis, results: redis.Redis, queue: str, result_key: str) -> None:
    """Delete the queue, its priority sub-queues and its binding, and the sentinel's result."""
    keys = list(broker.scan_iter(match=f"*{queue}*"))
    if keys:
        broker.delete(*keys)
    if result_key:
        results.delete(result_key)


def measure_window(*, broker_url: str, backend_url: str, root: Path, workdir: Path,
                   queues: Mapping[str, str], launches: Mapping[str, Launch],
                   publish: Callable[[str, str, int], object], tasks: int,
                   during: Callable[[], AbstractContextManager[object]] = nullcontext
                   ) -> Window:
    """Publish ``tasks`` messages to each variant's queue, start every worker (in the order of
    ``queues``), measure one window, stop the workers and clean the databases up.

    ``launches[variant].command`` must log to ``workdir / f"{queues[variant]}.log"``; its
    output goes to the same name ending ``.out``. ``during()`` is entered once every worker
    is ready and left when the window closes (to scrape a worker while it works, say).
    Raises ``WorkerFailed``.
    """
    broker = redis.Redis.from_url(broker_url)
    logs = {v: workdir / f"{queue}.log" for v, queue in queues.items()}
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for queue in queues.values():
            publish(broker_url, queue, tasks)
        for variant, queue in queues.items():
            with (workdir / f"{queue}.out").open("wb") as out:
                workers[variant] = subprocess.Popen(
                    list(launches[variant].command), cwd=root, env=dict(launches[variant].env),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
        ready = wait_ready(workers, logs, timeout=60)
        with during():
            opened, left_at_open = time.time(), queue_lengths(broker, dict(queues))
            end = tasks * WINDOW_END
            while True:
                closed, left = time.time(), queue_lengths(broker, dict(queues))
                if min(left.values()) <= end:
                    break
                if closed - opened > 60 + tasks / 100:
                    raise WorkerFailed(f"the tasks were not done in time: {left}")
                time.sleep(0.005)
    finally:
        for worker in workers.values():
            stop_worker(worker)
        for queue in queues.values():
            clean_up(broker, broker, queue, "")
        broker.delete(UNACKED_KEY, f"{UNACKED_KEY}_index", f"{UNACKED_KEY}_mutex")
        redis.Redis.from_url(backend_url).flushdb()
        broker.close()
    return Window({v: left_at_open[v] - left[v] for v in queues}, closed - opened,
                  {v: ready[v][1] for v in queues})
