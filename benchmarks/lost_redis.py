"""Measurement: what a Redis worker killed whole (SIGKILL, main process included) loses.

Each run publishes ``--tasks`` tasks (``bench.lost.collect``: ``--task-seconds`` of work, then a
count of its run) to a fresh queue and starts a prefork worker (2 processes) with the policy
``acks_late`` + ``reject_on_worker_lost``. Mid-run, as tests/integration/test_lost_workers.py
does, the pool processes are killed, then the whole worker (as soon as 30 more tasks are done,
or up to ``--random-delay`` seconds later, at random). At that instant nothing runs, so
the broker is read as it is: every task is counted done, waiting in the queue, or in kombu's
table of unacknowledged messages; a task in none of them was in flight, taken off the queue
by the worker's BRPOP but not yet recorded as unacknowledged (kombu/transport/redis.py,
``_brpop_read`` then ``QoS.append``). A second worker then runs until none of the run's
messages is left in the queue or in the unacknowledged table (every one acknowledged), or
``--timeout`` passes. Tasks that never ran and tasks that ran twice are counted.

kombu 5.7 restores unacknowledged messages every ``unacked_restore_interval`` x
``unacked_restore_throttle`` seconds, set here to ``--sweep`` x 1. Older kombu sweeps every
~100 s with no option, and once when a worker starts consuming: there the second worker starts
only after ``--visibility-timeout`` has passed since the kill.

Run it as ``.venv/bin/python benchmarks/lost_redis.py [--runs 20] [--random-delay 1]
[--broker URL]`` with Redis
on 127.0.0.1 (database 9 by default: it must not be shared, since kombu keeps one table of
unacknowledged messages per database). It prints one line per run and the totals; the exit
code is 0 either way.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script: the repository root makes ``benchmarks`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import celery
import kombu
import redis
from benchmarks._lost_app import TASK_NAME
from celery import Celery
from kombu.transport.redis import Channel

from celery_policies.compat import REDIS_SWEEP_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
#: The policy under test: a killed process's task goes back to the queue.
POLICY_YAML = """\
version: 1
policies:
  - match: "bench.lost.*"
    acks_late: true
    reject_on_worker_lost: true
    max_redeliveries: 2
"""
#: kombu's table of unacknowledged messages (``Channel.unacked_key``, the default).
UNACKED_KEY = "unacked"
#: Seconds a worker may take to say "ready.".
START_TIMEOUT = 60.0


@dataclass
class Run:
    killed_at: int  # tasks done when the worker was killed
    in_flight: int  # taken off the queue, not yet recorded as unacknowledged
    unacked_done: int  # done, but not acknowledged: they will run again
    lost: int
    lost_in_flight: int  # of the lost, those in flight at the kill
    twice: int
    seconds: float  # from the kill until every message was acknowledged


def start_worker(broker: str, queue: str, policies: Path, log: Path, env: dict[str, str]
                 ) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "benchmarks._lost_app", "worker",
               "-Q", queue, "-P", "prefork", "-c", "2", "-l", "INFO",
               "-n", f"lost{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "--policies", str(policies)]
    environment = {**os.environ, **env, "BENCH_BROKER_URL": broker,
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("ab") as out:
        worker = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while " ready." not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return worker


def wait_done(counts: redis.Redis, key: str, at_least: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while counts.hlen(key) < at_least:
        if time.monotonic() > deadline:
            raise SystemExit(f"no progress: {counts.hlen(key)} of {at_least} done")
        time.sleep(0.02)


def task_id(message: dict[str, Any]) -> str:
    return str(message["headers"]["id"])


def waiting(counts: redis.Redis, queue: str, prefix: str) -> tuple[set[str], set[str]]:
    """The run's task ids in its queue, and in the table of unacknowledged messages."""
    queued = {task_id(json.loads(raw)) for name in counts.scan_iter(match=f"{queue}*")
              for raw in counts.lrange(name, 0, -1)}
    # each value: [message, exchange, routing key] (kombu/transport/redis.py QoS.append)
    unacked = {tid for raw in counts.hvals(UNACKED_KEY)
               if (tid := task_id(json.loads(raw)[0])).startswith(prefix)}
    return queued, unacked


def one_run(args: argparse.Namespace, counts: redis.Redis, policies: Path, logs: Path) -> Run:
    run = uuid.uuid4().hex[:10]
    queue, key = f"bench.lost.{run}", f"bench:lost:{run}"
    client = Celery(broker=args.broker, set_as_current=False)
    with client.connection_for_write() as conn, conn.Producer() as producer:
        for item in range(args.tasks):
            client.send_task(TASK_NAME, (key, item, args.task_seconds), queue=queue,
                             task_id=f"{run}-{item}", producer=producer)
    client.close()
    env = {"BENCH_VISIBILITY_TIMEOUT": str(args.visibility_timeout),
           "BENCH_SWEEP": str(args.sweep)}

    first = start_worker(args.broker, queue, policies, logs / f"{run}-1.log", env)
    wait_done(counts, key, 30)
    children = Path(f"/proc/{first.pid}/task/{first.pid}/children").read_text().split()
    for pid in children:  # the pool processes die mid-task (OOM-killer style)
        os.kill(int(pid), signal.SIGKILL)
    wait_done(counts, key, counts.hlen(key) + 30)
    time.sleep(random.uniform(0, args.random_delay))
    os.killpg(first.pid, signal.SIGKILL)  # then the whole worker, main process included
    first.wait(10)
    killed = time.monotonic()

    done = {str(item) for item in counts.hkeys(key)}
    queued, unacked = waiting(counts, queue, f"{run}-")
    everything = {f"{run}-{item}" for item in range(args.tasks)}
    done_ids = {f"{run}-{item}" for item in done}
    in_flight = everything - done_ids - queued - unacked

    if not hasattr(Channel, REDIS_SWEEP_OPTIONS[0]):
        # kombu < 5.7: the new worker's first sweep, when it starts consuming, must find the
        # killed worker's messages past the visibility timeout.
        time.sleep(args.visibility_timeout + 1)
    second = start_worker(args.broker, queue, policies, logs / f"{run}-2.log", env)
    deadline = time.monotonic() + args.timeout
    while any(waiting(counts, queue, f"{run}-")) and time.monotonic() < deadline:
        time.sleep(0.2)
    seconds = time.monotonic() - killed
    os.killpg(second.pid, signal.SIGTERM)
    second.wait(30)

    runs = [int(counts.hget(key, str(item)) or 0) for item in range(args.tasks)]
    counts.delete(key)
    lost = {f"{run}-{item}" for item, n in enumerate(runs) if n == 0}
    return Run(killed_at=len(done), in_flight=len(in_flight),
               unacked_done=len(done_ids & unacked), lost=len(lost),
               lost_in_flight=len(lost & in_flight),
               twice=sum(1 for n in runs if n > 1), seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--task-seconds", type=float, default=0.05)
    parser.add_argument("--visibility-timeout", type=float, default=3.0)
    parser.add_argument("--sweep", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds the second worker gets to finish every task")
    parser.add_argument("--random-delay", type=float, default=0.0,
                        help="kill the whole worker up to this many seconds (uniformly at "
                             "random) after the 30 tasks that follow the pool's death, rather "
                             "than as soon as they are done")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()
    counts = redis.Redis.from_url(args.broker, decode_responses=True)
    print(f"celery {celery.__version__}, kombu {kombu.__version__}, "
          f"visibility_timeout {args.visibility_timeout:g} s, sweep {args.sweep:g} s "
          f"(options: {hasattr(Channel, REDIS_SWEEP_OPTIONS[0])}), {args.tasks} tasks a run")
    totals = {"in_flight": 0, "lost": 0, "lost_in_flight": 0, "twice": 0}
    with tempfile.TemporaryDirectory(prefix="lost-redis-") as tmp:
        policies = Path(tmp) / "policies.yaml"
        policies.write_text(POLICY_YAML)
        for number in range(1, args.runs + 1):
            result = one_run(args, counts, policies, Path(tmp))
            for name in totals:
                totals[name] += getattr(result, name)
            print(f"run {number:3}: killed at {result.killed_at:3} done; at the kill "
                  f"{result.in_flight} in flight, {result.unacked_done} done unacknowledged; "
                  f"lost {result.lost} ({result.lost_in_flight} of them in flight), "
                  f"ran twice {result.twice}; all acknowledged {result.seconds:.1f} s after "
                  "the kill", flush=True)
    print(f"{args.runs} runs: {totals['in_flight']} in flight at the kill, "
          f"{totals['lost']} tasks lost ({totals['lost_in_flight']} of them in flight), "
          f"{totals['twice']} ran twice")


if __name__ == "__main__":
    main()
