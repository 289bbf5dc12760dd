"""Benchmark: what reporting to Sentry costs a worker whose tasks fail, when Sentry is away.

Goal (see docs/benchmarks.md): Sentry never slows the worker. With the DSN pointing at a port
that accepts connections and never answers (``hanging``), and at a closed port (``closed``),
the throughput of failing tasks stays within 5% of Sentry switched off (``off``): a ratio of
at least 0.95, measured side by side in one run, medians over rounds.

``benchmarks/_sentry_app.py`` registers ``bench.fail``, which raises ``ValueError`` at once,
and installs the plugin; every worker is started with ``--policies FILE``, ``max_retries: 0``
for ``bench.*``. The variants differ only in the file's ``sentry:`` section:

* ``off``: no ``sentry:`` section; sentry_sdk is never initialised.
* ``hanging``: ``dsn: http://public@127.0.0.1:PORT/1``, where PORT is a socket this script
  listens on (in a thread): it accepts every connection, reads what arrives and never answers.
* ``closed``: the DSN names a port that was bound and closed again: connection refused.
* ``hanging, every failure`` and ``closed, every failure``: the same two DSNs with
  ``max_events_per_minute: 1000000``, so that each failure builds and queues a Sentry event
  (the worst case). With the default (60) the plugin sends at most 60 events a minute per task
  and exception type and only counts the rest; these two are reported, with no goal of their own.

All five variants run at once, each with its own queue and prefork worker (``-c 2``), and are
measured over one window of time (``measure_together``, as in ``benchmarks/runtime.py``): on a
shared machine, load of the moment slows them alike. Before timing, the script checks what
each worker really set up (the plugin's reporter, sentry_sdk's client and DSN,
``max_events_per_minute``) and stops if a worker does not run its variant. The variant started
first rotates between rounds. The summary gives each variant's median throughput (failed tasks
per second), the ratio of its median to ``off``'s and the spread of the per-round ratios, the
time each worker took to exit after SIGTERM once its queue was emptied (what a DSN that never
answers adds to a shutdown), and what reached the hanging port.

Run it as ``.venv/bin/python benchmarks/sentry.py [--tasks N] [--rounds N]`` with Redis on
127.0.0.1 (databases 7 and 8 by default; they must be empty, and the script flushes them
after each round). The machine may be shared and noisy: compare the variants within one run,
never across runs. The PASS/FAIL lines inform; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import os
import platform
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The worker imports the app as ``benchmarks._sentry_app``; so does this script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import celery
import redis
import sentry_sdk
from benchmarks._sentry_app import FAILURE_MESSAGE, TASK_NAME
from benchmarks._workers import WorkerFailed, publisher, queue_lengths, tail, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TASKS = 2_500
#: Each variant goes first once.
DEFAULT_ROUNDS = 5
#: The goal: each Sentry variant's throughput at least this share of ``off``'s.
THROUGHPUT_GOAL = 0.95
CONCURRENCY = 2
BROKER_URL = "redis://127.0.0.1:6379/7"
RESULT_BACKEND = "redis://127.0.0.1:6379/8"
#: The window closes when a queue has this share of its messages left.
WINDOW_END = 0.05
#: The Redis transport's hash of delivered, unacknowledged messages (kombu's default name).
UNACKED_KEY = "unacked"
#: A worker still running this long after SIGTERM is killed (and its time shown as such).
SHUTDOWN_LIMIT = 60.0
#: ``max_events_per_minute`` of the "every failure" variants: more than a worker can fail.
EVERY_FAILURE = 1_000_000
#: ``max_events_per_minute`` when the file leaves it out.
DEFAULT_PER_MINUTE = 60
#: Celery's log line for each failure (celery/app/trace.py), as the check counts it.
FAILURE_LINE = f"raised unexpected: ValueError('{FAILURE_MESSAGE}')"
#: The plugin's warning when one of its Sentry hooks fails (sentry/reporter.py ``_guard``).
HOOK_FAILED = "celery-policies: could not"


@dataclass(frozen=True)
class Variant:
    """One worker's policy file: where its DSN points, and its event budget."""

    key: str
    label: str
    target: str | None  # where the DSN points: "hanging", "closed"; None: no sentry: section
    per_minute: int | None = None  # None: the default, the line left out

    @property
    def goal(self) -> bool:
        """Whether the goal applies (the default budget), or the ratio only informs."""
        return self.target is not None and self.per_minute is None


VARIANTS = (
    Variant("off", "Sentry off", None),
    Variant("hanging", "hanging DSN", "hanging"),
    Variant("closed", "closed port", "closed"),
    Variant("hanging-all", "hanging DSN, every failure reported", "hanging", EVERY_FAILURE),
    Variant("closed-all", "closed port, every failure reported", "closed", EVERY_FAILURE),
)
BY_KEY = {variant.key: variant for variant in VARIANTS}


def policy_yaml(dsn: str | None, per_minute: int | None) -> str:
    """A policy file: ``bench.*`` never retries; a ``sentry:`` section if ``dsn``."""
    text = "version: 1\n"
    if dsn is not None:
        text += f"sentry:\n  dsn: {dsn}\n"
        if per_minute is not None:
            text += f"  max_events_per_minute: {per_minute}\n"
    return text + 'policies:\n  - match: "bench.*"\n    max_retries: 0\n'


# --- where the DSNs point -------------------------------------------------------------------

class HangingServer:
    """A TCP port on 127.0.0.1 that accepts every connection, reads what arrives and never
    answers; it closes a connection only once its client has given up and closed it."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self.received = 0
        self._open: set[socket.socket] = set()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-hanging-server",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                connection: socket.socket | None = key.data
                if connection is None:
                    self._accept()
                    continue
                try:
                    data = connection.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._selector.unregister(connection)
                    self._open.discard(connection)
                    connection.close()
                    continue
                self.received += len(data)
                self.requests += data.count(b"POST ")

    def _accept(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except BlockingIOError:
            return
        connection.setblocking(False)
        self._selector.register(connection, selectors.EVENT_READ, connection)
        self._open.add(connection)
        self.connections += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self._open:
            connection.close()
        self._selector.close()
        self._listener.close()


def closed_port() -> int:
    """A port on 127.0.0.1 that was bound and closed again: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def check_refused(port: int) -> None:
    """Stop if something has started listening on the closed port since."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return
        except OSError as exc:
            sys.exit(f"127.0.0.1:{port} should refuse connections, but: {exc!r}")
    sys.exit(f"127.0.0.1:{port} should refuse connections, but something listens there")


def dsn_for(port: int) -> str:
    return f"http://public@127.0.0.1:{port}/1"


# --- throughput in real workers -------------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """One variant's run in one round."""

    variant: str
    tasks: int
    seconds: float
    shutdown: float  # seconds from SIGTERM to exit
    killed: bool  # still running SHUTDOWN_LIMIT seconds after SIGTERM
    failures_logged: int
    hook_warnings: int
    setup: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


#: Publishes ``bench.fail`` messages to a queue; no results are stored.
publish = publisher(TASK_NAME)


def worker_command(queue: str, hostname: str, loglevel: str, logfile: Path,
                   policy_file: Path) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "benchmarks._sentry_app", "worker",
            "-P", "prefork", "-c", str(CONCURRENCY),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-Q", queue, "-n", hostname, "-l", loglevel, "--logfile", str(logfile),
            "--policies", str(policy_file)]


def worker_env(broker_url: str, result_backend: str) -> dict[str, str]:
    env = dict(os.environ)
    # Only --policies names the file; only the file sets Sentry up.
    for name in ("CELERY_POLICIES_FILE", "SENTRY_DSN", "SENTRY_ENVIRONMENT", "SENTRY_RELEASE"):
        env.pop(name, None)
    env["BENCH_BROKER_URL"] = broker_url
    env["BENCH_RESULT_BACKEND"] = result_backend
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def check_setup(key: str, setup: dict[str, Any], dsn: str | None) -> None:
    """Stop unless the worker set up what its variant says (see ``_sentry_app.describe``)."""
    variant = BY_KEY[key]
    if dsn is None:
        expected: dict[str, Any] = {"reporter": False, "client_active": False, "dsn": None,
                                    "max_events_per_minute": None}
    else:
        expected = {"reporter": True, "client_active": True, "dsn": dsn,
                    "max_events_per_minute": variant.per_minute or DEFAULT_PER_MINUTE}
    expected["max_retries"] = 0
    if setup != expected:
        sys.exit(f"the {key} worker set up {setup}, expected {expected}")


def drain(broker: redis.Redis, queues: dict[str, str], timeout: float = 30.0) -> None:
    """Delete what is left in the queues and wait until the workers have taken up what they
    had prefetched, so that they are idle (or finishing their last task) when they stop."""
    broker.delete(*queues.values())
    deadline = time.monotonic() + timeout
    while broker.hlen(UNACKED_KEY) and time.monotonic() < deadline:
        time.sleep(0.01)


def stop_workers(workers: dict[str, subprocess.Popen[bytes]]
                 ) -> dict[str, tuple[float, bool]]:
    """SIGTERM (a warm shutdown) to every worker at once; the seconds each took to exit, and
    whether it had to be killed: still running after ``SHUTDOWN_LIMIT`` seconds, it gets
    SIGKILL, sent to its own process group."""
    signalled = time.monotonic()
    for worker in workers.values():
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    exited: dict[str, tuple[float, bool]] = {}
    while len(exited) < len(workers):
        for key, worker in workers.items():
            if key not in exited and worker.poll() is not None:
                exited[key] = (time.monotonic() - signalled, False)
        if time.monotonic() - signalled > SHUTDOWN_LIMIT:
            for key, worker in workers.items():
                if key not in exited:
                    os.killpg(worker.pid, signal.SIGKILL)  # start_new_session: its own group
                    worker.wait()
                    exited[key] = (time.monotonic() - signalled, True)
        time.sleep(0.01)
    return exited


def count_in_log(logfile: Path) -> tuple[int, int]:
    """Celery's failure lines for ``bench.fail``, and the plugin's warnings of failed hooks."""
    failures = warnings = 0
    with logfile.open(errors="replace") as lines:
        for line in lines:
            failures += FAILURE_LINE in line
            warnings += HOOK_FAILED in line
    return failures, warnings


def measure_together(round_: int, order: tuple[str, ...], args: argparse.Namespace,
                     workdir: Path, files: dict[str, Path], dsns: dict[str, str | None]
                     ) -> dict[str, Measured]:
    """Every variant at once, each on its own queue, over one window of time.

    Each queue gets ``args.tasks`` messages; the workers start in ``order``; the window opens
    when all of them are consuming and closes when any queue has ``WINDOW_END`` of its messages
    left, so no worker ever runs alone. Each rate is the messages its worker took off its queue
    in the window divided by the window (a prefetch of at most 8 messages is the error).
    Then the queues are emptied and, once the workers have taken up what they had prefetched,
    all get SIGTERM at once: each one's shutdown is timed on a worker with nothing left to do
    but what Sentry left behind (events still queued for a DSN that does not answer).
    """
    broker = redis.Redis.from_url(args.broker)
    queues = {key: f"bench.sentry.{os.getpid()}.{round_}.{key}" for key in order}
    logs = {key: workdir / f"{queues[key]}.log" for key in order}
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for key in order:
            publish(args.broker, queues[key], args.tasks)
        for key in order:
            command = worker_command(queues[key], f"{queues[key]}@%h", args.loglevel,
                                     logs[key], files[key])
            with (workdir / f"{queues[key]}.out").open("wb") as out:
                workers[key] = subprocess.Popen(
                    command, cwd=ROOT, env=worker_env(args.broker, args.backend),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
        ready = wait_ready(workers, logs, timeout=120)
        for key, (_, setup) in ready.items():
            check_setup(key, setup, dsns[key])
        opened, left_at_open = time.time(), queue_lengths(broker, queues)
        end = args.tasks * WINDOW_END
        while True:
            ended, left = time.time(), queue_lengths(broker, queues)
            if min(left.values()) <= end:
                break
            if ended - opened > 120 + args.tasks / 10:
                raise WorkerFailed(f"the tasks were not done in time: {left}")
            if any(worker.poll() is not None for worker in workers.values()):
                raise WorkerFailed("a worker exited")
            time.sleep(0.005)
        drain(broker, queues)
    except WorkerFailed as exc:
        sys.exit(f"round {round_ + 1}: {exc}\n" + "\n".join(tail(log) for log in logs.values()))
    finally:
        shutdown = stop_workers(workers)
        broker.flushdb()
        redis.Redis.from_url(args.backend).flushdb()
        broker.close()
    measured = {}
    for key in order:
        failures, warnings = count_in_log(logs[key])
        measured[key] = Measured(key, left_at_open[key] - left[key], ended - opened,
                                 *shutdown[key], failures, warnings, ready[key][1])
        logs[key].unlink()  # a traceback per failure: tens of MB a round in all
    return measured


# --- the summary ----------------------------------------------------------------------------

def spread(samples: list[float], digits: int) -> str:
    return (f"{statistics.median(samples):.{digits}f}  "
            f"(min {min(samples):.{digits}f}, max {max(samples):.{digits}f})")


def bench(args: argparse.Namespace) -> None:
    """Every round, every variant at once; then the summary."""
    servers = {v.key: HangingServer() for v in VARIANTS if v.target == "hanging"}
    closed = closed_port()
    dsns: dict[str, str | None] = {}
    for variant in VARIANTS:
        port = servers[variant.key].port if variant.target == "hanging" else closed
        dsns[variant.key] = dsn_for(port) if variant.target else None
    for key, server in servers.items():
        print(f"{BY_KEY[key].label}: {dsn_for(server.port)} (accepts, reads, never answers)")
    print(f"closed port: {dsn_for(closed)} (connection refused)")
    print(f"\nThroughput of failing tasks ({TASK_NAME}: ValueError, max_retries 0), "
          f"{len(VARIANTS)} prefork workers (-c {CONCURRENCY}, log level {args.loglevel}) at "
          f"once, {args.tasks:,} tasks each, {args.rounds} rounds, failed tasks/s")
    print(f"  {'':<26}" + "".join(f"{v.key:>12}" for v in VARIANTS))
    runs: list[dict[str, Measured]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sentry-") as directory:
            workdir = Path(directory)
            files = {v.key: workdir / f"{v.key}.yaml" for v in VARIANTS}
            for variant in VARIANTS:
                files[variant.key].write_text(policy_yaml(dsns[variant.key], variant.per_minute),
                                              encoding="utf-8")
            for round_ in range(args.rounds):
                check_refused(closed)
                shift = round_ % len(VARIANTS)
                order = tuple(v.key for v in VARIANTS[shift:] + VARIANTS[:shift])
                runs.append(measure_together(round_, order, args, workdir, files, dsns))
                print(f"  {f'round {round_ + 1}, {order[0]} first':<26}"
                      + "".join(f"{runs[-1][v.key].rate:12,.0f}" for v in VARIANTS),
                      flush=True)
    finally:
        for server in servers.values():
            server.close()
    summarise(runs, servers)


def summarise(runs: list[dict[str, Measured]], servers: dict[str, HangingServer]) -> None:
    """Medians, ratios to ``off``, shutdown times, the checks, and a PASS/FAIL per goal."""
    width = max(len(v.label) for v in VARIANTS) + 4
    rates = {v.key: [run[v.key].rate for run in runs] for v in VARIANTS}
    medians = {key: statistics.median(samples) for key, samples in rates.items()}
    print("  failed tasks/s, median of the rounds:")
    for variant in VARIANTS:
        print(f"    {variant.label:<{width}}{spread(rates[variant.key], 0)}")
    print("  ratio to Sentry off: of the medians; per round: median (min, max)")
    for variant in VARIANTS[1:]:
        per_round = [run[variant.key].rate / run["off"].rate for run in runs]
        print(f"    {variant.label:<{width}}{medians[variant.key] / medians['off']:.3f}    "
              f"per round {spread(per_round, 3)}")
    print("  shutdown, idle, from SIGTERM (all workers at once) to exit, seconds, "
          "median (min, max):")
    for variant in VARIANTS:
        shutdowns = [run[variant.key].shutdown for run in runs]
        killed = sum(run[variant.key].killed for run in runs)
        print(f"    {variant.label:<{width}}{spread(shutdowns, 2)}"
              + (f"  killed after {SHUTDOWN_LIMIT:.0f} s in {killed} round(s)" if killed else ""))
    print("  check: Celery's failure lines in each worker's log, and the plugin's warnings of "
          "a Sentry hook that failed (over all rounds):")
    for variant in VARIANTS:
        logged = sum(run[variant.key].failures_logged for run in runs)
        warned = sum(run[variant.key].hook_warnings for run in runs)
        print(f"    {variant.label:<{width}}{logged:,} failures, {warned} warnings")
    for key, server in servers.items():
        print(f"  {BY_KEY[key].label}: {server.connections:,} connections accepted, "
              f"{server.requests:,} requests ({server.received:,} bytes) received, none "
              "answered")
    for variant in VARIANTS[1:]:
        ratio = medians[variant.key] / medians["off"]
        slower = f"{(1 - ratio) * 100:.1f}% slower" if ratio < 1 else \
            f"{(ratio - 1) * 100:.1f}% faster"
        if variant.goal:
            result = "PASS" if ratio >= THROUGHPUT_GOAL else "FAIL"
            print(f"  {result}: {variant.label} / Sentry off {ratio:.3f} (ratio of medians, "
                  f"{slower}), goal >= {THROUGHPUT_GOAL}")
        else:
            within = "within" if ratio >= THROUGHPUT_GOAL else "beyond"
            print(f"  info: {variant.label} / Sentry off {ratio:.3f} (ratio of medians, "
                  f"{slower}), {within} 5%; no goal of its own")


def check_free(url: str) -> None:
    """Stop unless the Redis database is empty: the script flushes it after each round."""
    client = redis.Redis.from_url(url)
    try:
        keys = int(client.dbsize())
    except redis.ConnectionError as exc:
        sys.exit(f"{url}: {exc}")
    finally:
        client.close()
    if keys:
        sys.exit(f"{url} holds {keys} keys: is something else using it? The script flushes "
                 "its databases; choose empty ones with --broker and --backend.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                        help="tasks per worker per round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="rounds (default %(default)s)")
    parser.add_argument("--loglevel", default="WARNING", choices=("DEBUG", "INFO", "WARNING"),
                        help="the workers' log level (default %(default)s)")
    parser.add_argument("--broker", default=BROKER_URL,
                        help="an empty Redis database, flushed after each round "
                             "(default %(default)s)")
    parser.add_argument("--backend", default=RESULT_BACKEND,
                        help="another empty Redis database for the result backend, flushed "
                             "after each round (default %(default)s)")
    args = parser.parse_args()
    if args.tasks < 1 or args.rounds < 1:
        parser.error("--tasks and --rounds must be positive")
    if args.broker == args.backend:
        parser.error("--broker and --backend must be different databases")
    check_free(args.broker)
    check_free(args.backend)
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Celery {celery.__version__}, sentry-sdk {sentry_sdk.VERSION}, {args.rounds} rounds")
    print(f"broker {args.broker}, results {args.backend}")
    bench(args)


if __name__ == "__main__":
    main()
