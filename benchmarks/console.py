"""Benchmark: the console's grouped dead-letter page with 100,000 dead letters in the queue.

Goal (see docs/benchmarks.md, "The console"): with 100,000 dead letters in the queue, the
grouped page (``GET /dead-letters``) answers in under 1 s and the console process stays under
200 MB (peak resident set, MiB).

Data, made once: 2,000 distinct dead letters published as the worker would (20 tasks in 4
modules, each failing with 2 of 5 exceptions for 3 reasons: 120 groups; two arguments, a
worker's failure record and a 1.5 KB traceback each), then copied entry by entry with LPUSH
until the queue holds ``--count`` (task ids repeat; the console does not mind). Each is about
2.8 KB as Redis stores it.

Each round starts ``celery-policies console --broker URL --port 0 --refresh 1h`` and times:
the index build, from the first ``GET /dead-letters`` until a GET (every 0.1 s) shows every
letter; then 20 GETs of the grouped page and 20 of ``/dead-letters?task=proj.billing.*``, each
timed around ``urlopen(...).read()``; then it reads the process's VmHWM (peak RSS) and VmRSS
and stops it (SIGTERM). Medians over the rounds; the ratio is the median over the goal.

Run it as ``.venv/bin/python benchmarks/console.py [--count N] [--rounds N]`` with Redis on
127.0.0.1 (database 10, queue ``celery.dead_letter``; the keys it makes are deleted at the
end). ``--broker rabbitmq`` uses RabbitMQ's ``/`` vhost on 127.0.0.1 and a queue of its own
(``--queue``), filled by publishing every copy: slower. The PASS/FAIL lines inform; the exit
code is 0 either way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import redis
from kombu.connection import Connection

from celery_policies.deadletters.envelope import Envelope, Publisher, dead_letter

BROKERS = {"redis": "redis://127.0.0.1:6379/10", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}
QUEUE = "celery.dead_letter"  # the console's default dead-letter queue, used on Redis
PAGE_GOAL, RSS_GOAL = 1.0, 200.0  # seconds, MiB
GETS, DISTINCT, TASK_GLOB = 20, 2000, "proj.billing.*"
TASKS = [f"proj.{m}.{t}" for m in ("billing", "mail", "reports", "sync")
         for t in ("create", "update", "notify", "export", "cleanup")]
EXCEPTIONS = ["ConnectionError", "TimeoutError", "ValueError", "KeyError", "IntegrityError"]
REASONS = ["exception", "time_limit", "worker_lost"]
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_FRAME = ('  File "/srv/app/.venv/lib/python3.11/site-packages/{0}.py", line {1}, in {2}\n'
          "    result = {2}(*args, **kwargs)\n")


def letter(number: int) -> Envelope:
    """The ``number``-th distinct dead letter: task, exception and reason from the number."""
    t = number % len(TASKS)
    task, reason = TASKS[t], REASONS[number // len(TASKS) % len(REASONS)]
    exception = EXCEPTIONS[(t + number // (len(TASKS) * len(REASONS)) % 2) % len(EXCEPTIONS)]
    task_id, args = f"{number:08d}-bench-console", [number, f"customer-{number % 977:04d}"]
    frames = "".join(_FRAME.format(f"celery/app/trace{i}", 400 + i, f"step_{i}")
                     for i in range(11))
    traceback = f"Traceback (most recent call last):\n{frames}{exception}: failed {number}\n"
    failed_at = datetime.now(timezone.utc) - timedelta(seconds=37 * number)
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None,
               "group": None, "retries": 3, "eta": None, "expires": None,
               "timelimit": [None, None], "argsrepr": repr(args), "kwargsrepr": "{}",
               "origin": "gen1234@worker-1"}
    failure = {"reason": reason, "exception": exception,
               "exception_message": f"{task} failed for customer {args[1]}",
               "traceback": traceback, "retries": 3, "redeliveries": 0,
               "first_attempt_at": failed_at.isoformat(timespec="milliseconds"),
               "last_attempt_at": failed_at.isoformat(timespec="milliseconds"),
               "failed_at": failed_at.isoformat(timespec="milliseconds"),
               "hostname": "celery@worker-1", "policy": f"{task.rsplit('.', 1)[0]}.*",
               "queue": "celery", "exchange": "", "routing_key": "celery", "priority": None}
    body = json.dumps([args, {}, _EMBED]).encode()
    return dead_letter(Envelope(body, "application/json", "utf-8", headers,
                                {"correlation_id": task_id}), failure)


def fill(url: str, queue: str, count: int) -> int:
    """Put ``count`` dead letters in ``queue``; return their mean size as JSON, in bytes."""
    on_redis = url.startswith("redis")
    with Connection(url) as connection:
        publisher = Publisher(connection)
        try:  # RabbitMQ: every copy published (and confirmed), which takes a minute or two
            for number in range(min(DISTINCT, count) if on_redis else count):
                publisher.publish(letter(number % DISTINCT), queue, declare=number == 0)
        finally:
            if publisher.connection is not connection:
                publisher.close()
    if on_redis:
        client = redis.Redis.from_url(url)
        raws: list[bytes] = client.lrange(queue, 0, -1)  # type: ignore[assignment]
        pipe = client.pipeline(transaction=False)
        for start in range(len(raws), count, len(raws)):
            pipe.lpush(queue, *raws[:count - start])
        pipe.execute()
    distinct = min(DISTINCT, count)
    return sum(len(json.dumps(letter(n).jsonable())) for n in range(distinct)) // distinct


def get(url: str) -> tuple[float, str]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        html = response.read().decode()
    return time.perf_counter() - started, html


def totals(html: str) -> tuple[int, int] | None:
    """(letters, groups) from a complete grouped page; None while the index is being read."""
    found = re.search(r'<p id="total">([\d,]+) dead letters? in ([\d,]+) group', html)
    if found is None or '<table id="groups">' not in html:
        return None
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def memory(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def one_round(url: str, queue: str, count: int) -> dict[str, Any]:
    console = subprocess.Popen(
        [sys.executable, "-m", "celery_policies", "console", "--broker", url, "--port", "0",
         "--refresh", "1h", *(["--queue", queue] if queue != QUEUE else [])],
        stderr=subprocess.PIPE, text=True)
    assert console.stderr is not None
    port = None
    for line in console.stderr:
        if found := re.search(r"serving the console on http://127\.0\.0\.1:(\d+)/", line):
            port = int(found[1])
            break
    if port is None:
        raise SystemExit(f"the console did not start (exit code {console.wait()})")
    stderr = console.stderr  # drained, so that its log never blocks it
    threading.Thread(target=stderr.read, daemon=True).start()
    page = f"http://127.0.0.1:{port}/dead-letters"
    try:
        while True:  # retried until the server answers
            try:
                started = time.perf_counter()
                html = get(page)[1]
                break
            except urllib.error.URLError:
                time.sleep(0.02)
        while (seen := totals(html)) is None:
            time.sleep(0.1)
            html = get(page)[1]
        build = time.perf_counter() - started
        if seen[0] != count:
            raise SystemExit(f"the page shows {seen[0]} dead letters, not {count}")
        grouped = [get(page)[0] for _ in range(GETS)]
        filtered = [get(f"{page}?task={TASK_GLOB}") for _ in range(GETS)]
        peak, rss = memory(console.pid)
    finally:
        console.terminate()
        console.wait(timeout=30)
    return {"build": build, "groups": seen[1], "grouped": grouped,
            "filtered": [seconds for seconds, _ in filtered],
            "filtered_total": totals(filtered[-1][1]), "peak": peak, "rss": rss}


def verdict(what: str, median: float, goal: float, unit: str) -> str:
    shown = f"{median:.3f}" if unit == "s" else f"{median:.0f}"
    return (f"  {'PASS' if median < goal else 'FAIL'}: {what}, median {shown} {unit}, "
            f"goal < {goal:.0f} {unit}; median/goal {median / goal:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", choices=sorted(BROKERS), default="redis")
    options = parser.parse_args()
    url = BROKERS[options.broker]
    if options.broker == "redis":
        queue, client = QUEUE, redis.Redis.from_url(url)
        before = set(client.keys("*"))
        if QUEUE.encode() in before:
            raise SystemExit(f"{url} already holds {QUEUE}: empty it first")
        version = f"Redis {client.info('server')['redis_version']}"
    else:
        queue, version = f"bench.console.{uuid.uuid4().hex[:8]}", "RabbitMQ"
    try:
        size = fill(url, queue, options.count)
        print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} "
              f"CPUs; {version}, {url}")
        print(f"{options.count:,} dead letters in {queue} ({DISTINCT:,} distinct, "
              f"{size:,} bytes each as JSON), {options.rounds} rounds")
        rounds = []
        for number in range(1, options.rounds + 1):
            r = one_round(url, queue, options.count)
            rounds.append(r)
            print(f"  round {number}: index build {r['build']:.2f}s "
                  f"({options.count / r['build']:,.0f} letters/s, {r['groups']} groups)  "
                  f"page median {statistics.median(r['grouped']):.3f}s "
                  f"(max {max(r['grouped']):.3f})  ?task={TASK_GLOB} median "
                  f"{statistics.median(r['filtered']):.3f}s (max {max(r['filtered']):.3f}, "
                  f"{r['filtered_total'][0]:,} letters)  peak RSS {r['peak']:.0f} MiB "
                  f"(now {r['rss']:.0f})", flush=True)
    finally:
        if options.broker == "redis":  # the keys made here: the queue, kombu's binding
            client.delete(*(set(client.keys("*")) - before), QUEUE)
        else:
            with Connection(url) as connection:
                connection.default_channel.queue_delete(queue)

    def median(key: str) -> float:
        return float(statistics.median(statistics.median(r[key]) if isinstance(r[key], list)
                                       else r[key] for r in rounds))

    build = median("build")
    print(f"  index build       median {build:.2f}s ({options.count / build:,.0f} letters/s); "
          "no goal")
    print(f"  grouped page      median {median('grouped'):.3f}s (median of the rounds' "
          f"medians; slowest GET {max(max(r['grouped']) for r in rounds):.3f}s)")
    print(f"  ?task={TASK_GLOB:11} median {median('filtered'):.3f}s (slowest GET "
          f"{max(max(r['filtered']) for r in rounds):.3f}s)")
    print(f"  peak RSS          median {median('peak'):.0f} MiB (max "
          f"{max(r['peak'] for r in rounds):.0f}); VmRSS after {median('rss'):.0f} MiB")
    print(verdict("grouped page", median("grouped"), PAGE_GOAL, "s"))
    print(verdict("peak RSS", median("peak"), RSS_GOAL, "MiB"))


if __name__ == "__main__":
    main()
