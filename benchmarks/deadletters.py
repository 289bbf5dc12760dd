"""Benchmark: listing and replaying 10,000 dead letters, on Redis and RabbitMQ.

Goals (see docs/benchmarks.md): ``dlq list`` of 10,000 dead letters under 5 s on either broker;
``dlq replay`` of 10,000 under 10 s on Redis and under 20 s on RabbitMQ.

Each round, per broker: publish 10,000 dead letters to a fresh queue (``fabricate``: what the
worker would publish, without running 10,000 failing tasks), then time the commands as a
person runs them, each in its own process: ``celery-policies dlq list --format json`` and
``celery-policies dlq replay --yes`` to a fresh work queue. The replay is checked: the work
queue holds exactly the 10,000 and the dead-letter queue none. Beside them, in the same round,
the start-up of ``celery-policies --help`` (the interpreter and imports, included in both
figures). Medians over the rounds; the ratio is the median over the goal (under 1 passes).

Run it as ``.venv/bin/python benchmarks/deadletters.py [--count N] [--rounds N]
[--broker redis|rabbitmq]`` with Redis (database 5) and RabbitMQ on 127.0.0.1. The PASS/FAIL
lines inform; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

# Run as a script: the repository root makes ``benchmarks`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._deadletters import fabricate
from kombu.connection import Connection
from kombu.entity import Queue

BROKERS = {"redis": "redis://127.0.0.1:6379/5", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}
#: Seconds: (list, replay) goals per broker.
GOALS = {"redis": (5.0, 10.0), "rabbitmq": (5.0, 20.0)}


def timed(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "celery_policies", *args],
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"celery-policies {' '.join(args)} failed:\n{done.stderr}")
    return elapsed, done.stdout


def size(connection: Connection, queue: str) -> int:
    with connection.channel() as channel:
        try:
            return int(Queue(queue)(channel).queue_declare(passive=True).message_count)
        except connection.channel_errors:
            return 0  # Redis: an empty queue does not exist


def one_round(broker: str, count: int) -> tuple[float, float, float]:
    dead, work = f"bench.dlq.{uuid.uuid4().hex[:8]}", f"bench.work.{uuid.uuid4().hex[:8]}"
    with Connection(broker) as connection:
        try:
            Queue(work, durable=True)(connection.default_channel).declare()
            fabricate(connection, dead, count, origin=work, args_of=lambda i: [i, "x" * 40])
            startup, _ = timed("--help")
            listing, out = timed("dlq", "list", "--broker", broker, "--queue", dead,
                                 "--format", "json")
            if out.count('"id"') != count:
                raise SystemExit(f"listed {out.count(chr(34) + 'id' + chr(34))}, not {count}")
            replay, _ = timed("dlq", "replay", "--broker", broker, "--queue", dead, "--yes")
            if (size(connection, work), size(connection, dead)) != (count, 0):
                raise SystemExit("replay did not move every dead letter exactly once")
        finally:
            for queue in (dead, work):
                connection.default_channel.queue_delete(queue)
    return startup, listing, replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", choices=sorted(BROKERS), action="append")
    options = parser.parse_args()
    for name in options.broker or sorted(BROKERS):
        print(f"{name}: {options.count} dead letters, {options.rounds} rounds")
        rounds = []
        for number in range(1, options.rounds + 1):
            startup, listing, replay = one_round(BROKERS[name], options.count)
            rounds.append((startup, listing, replay))
            print(f"  round {number}: start-up {startup:.2f}s  list {listing:.2f}s  "
                  f"replay {replay:.2f}s")
        for index, (what, goal) in enumerate(
                (("list", GOALS[name][0]), ("replay", GOALS[name][1])), 1):
            values = [r[index] for r in rounds]
            median = statistics.median(values)
            print(f"  {what:6} median {median:.2f}s (min {min(values):.2f}, max "
                  f"{max(values):.2f}); goal {goal:.0f}s; median/goal {median / goal:.2f}  "
                  f"{'PASS' if median < goal else 'FAIL'}")
        print(f"  start-up of celery-policies (in both): median "
              f"{statistics.median(r[0] for r in rounds):.2f}s")


if __name__ == "__main__":
    main()
