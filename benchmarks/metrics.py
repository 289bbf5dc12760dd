"""Benchmark: what counting a worker's decisions for Prometheus costs, and how long a scrape
of a busy worker takes.

Goals (see docs/benchmarks.md): with metrics on, a worker's throughput of no-op tasks is at
least 0.98 of the same worker with metrics off, and of tasks that fail for good at least
0.97; a scrape of a worker holding the series of 1,000 tasks x 20 exception types answers in
under 50 ms.

Three parts:

* **Success path, both workers at once.** Both run ``benchmarks/_metrics_app.py`` with the
  plugin and the same policy file (``_runtime_app.POLICY_YAML``); the *on* worker is also
  started with ``--policies-metrics-port 0`` and is scraped every ``--scrape-interval``
  seconds while it works, as Prometheus would (harder: Prometheus's default is 60 s). They are
  measured side by side over one window (``_together.measure_window``, as ``runtime.py``
  does), the one started first alternating by round; medians over the rounds.
* **Failure path, the same way,** with ``bench.fail``, which raises an exception the file
  does not retry: every message is a final failure, counted (``final_failures_total``,
  ``attempts``) by the *on* worker.
* **Scrape.** A real worker (metrics on) fills its metrics object, once ready, with the
  series of 1,000 task names x 20 exception types (``_metrics_app.fill``: the worker's own
  ``WorkerMetrics`` methods, called in its main process, instead of running 20,000 failing
  tasks); then this script times ``GET /metrics`` over loopback: the first scrape, then
  ``--scrapes`` times each plain and gzipped (as Prometheus asks), and checks the answer
  holds the series. Last, in process, a render after every series changed.

Run it as ``.venv/bin/python benchmarks/metrics.py [--tasks N] [--rounds N]`` with Redis on
127.0.0.1 (databases 5 and 6 by default; nothing else may use them). Compare within one run.
The PASS/FAIL lines inform; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The workers import the app as ``benchmarks._metrics_app``; so does this script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import celery
from benchmarks._metrics_app import FAIL_NAME, FILL_ENV, FILLED_MARK, fill
from benchmarks._runtime_app import POLICY_YAML, TASK_NAME, VARIANT_ENV
from benchmarks._together import Launch, measure_window, stop_worker
from benchmarks._workers import WorkerFailed, publisher, tail, wait_ready

from celery_policies.metrics.worker import WorkerMetrics
from celery_policies.worker.serving import SERVING_FORMAT

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = "redis://127.0.0.1:6379/5"
RESULT_BACKEND = "redis://127.0.0.1:6379/6"
CONCURRENCY = 2
#: The issue's goals: throughput ratios (on / off) and the scrape's time in seconds.
SUCCESS_GOAL, FAILURE_GOAL, SCRAPE_GOAL = 0.98, 0.97, 0.050
DEFAULT_TASKS, DEFAULT_FAILING, DEFAULT_ROUNDS = 20_000, 5_000, 6
SCRAPE_TASKS, SCRAPE_EXCEPTIONS = 1_000, 20
#: What the worker logs when it serves metrics.
SERVING = re.compile(re.escape(SERVING_FORMAT.partition("%s")[0]) + r"(http://\S+)")
VARIANTS = ("on", "off")


@dataclass(frozen=True)
class Part:
    """One throughput part: the task its messages run and the goal of on / off."""

    title: str
    task: str
    goal: float


def worker_command(variant: str, queue: str, loglevel: str, logfile: Path,
                   policy_file: Path) -> list[str]:
    command = [sys.executable, "-m", "celery", "-A", "benchmarks._metrics_app", "worker",
               "-P", "prefork", "-c", str(CONCURRENCY),
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-Q", queue, "-n", f"{queue}@%h", "-l", loglevel, "--logfile", str(logfile),
               "--policies", str(policy_file)]
    if variant == "on":
        command += ["--policies-metrics-port", "0"]
    return command


def worker_env(broker_url: str, result_backend: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("CELERY_POLICIES_FILE", "CELERY_POLICIES_METRICS_PORT", VARIANT_ENV, FILL_ENV):
        env.pop(name, None)  # only the command line says what each worker does
    env.update(BENCH_BROKER_URL=broker_url, BENCH_RESULT_BACKEND=result_backend, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def serving_url(logfile: Path) -> str | None:
    found = SERVING.search(logfile.read_text(errors="replace")) if logfile.exists() else None
    return found[1] if found else None


def get(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


#: What Prometheus asks with: a gzipped answer (every scrape it makes accepts one).
GZIP = {"Accept-Encoding": "gzip"}


@contextlib.contextmanager
def scraping(logfile: Path, interval: float) -> Iterator[list[float]]:
    """Scrape the worker that logs to ``logfile`` every ``interval`` seconds until the block
    ends; yields the list the scrapes' durations (seconds) go into."""
    durations: list[float] = []
    url = serving_url(logfile)
    if url is None:
        raise WorkerFailed(f"the metrics-on worker serves no metrics\n{tail(logfile)}")
    if interval <= 0:
        yield durations
        return
    done = threading.Event()

    def scrape() -> None:
        while not done.wait(interval):
            started = time.perf_counter()
            get(url)
            durations.append(time.perf_counter() - started)

    thread = threading.Thread(target=scrape, name="scraper", daemon=True)
    thread.start()
    try:
        yield durations
    finally:
        done.set()
        thread.join(15)


def check_workers(logs: dict[str, Path]) -> None:
    """Stop unless exactly the *on* worker serves metrics."""
    for variant, logfile in logs.items():
        serving = serving_url(logfile) is not None
        if serving != (variant == "on"):
            sys.exit(f"the metrics-{variant} worker {'serves' if serving else 'serves no'} "
                     f"metrics\n{tail(logfile)}")


def bench_throughput(part: Part, args: argparse.Namespace, workdir: Path,
                     policy_file: Path, tasks: int) -> None:
    print(f"\n{part.title}: {tasks:,} tasks per worker through a prefork worker "
          f"(-c {CONCURRENCY}, log level {args.loglevel}), tasks/s, {args.rounds} rounds")
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    ratios: list[float] = []
    scrapes: list[float] = []
    for round_ in range(args.rounds):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
        queues = {v: f"bench.metrics.{os.getpid()}.{part.task}.{round_}.{v}" for v in order}
        logs = {v: workdir / f"{queue}.log" for v, queue in queues.items()}
        launches = {v: Launch(worker_command(v, queues[v], args.loglevel, logs[v],
                                             policy_file),
                              worker_env(args.broker, args.backend)) for v in order}
        durations: list[float] = []

        def during(logs: dict[str, Path] = logs, durations: list[float] = durations
                   ) -> contextlib.AbstractContextManager[object]:
            check_workers(logs)
            return _collecting(scraping(logs["on"], args.scrape_interval), durations)

        try:
            window = measure_window(broker_url=args.broker, backend_url=args.backend,
                                    root=ROOT, workdir=workdir, queues=queues,
                                    launches=launches, publish=publisher(part.task),
                                    tasks=tasks, during=during)
        except WorkerFailed as exc:
            sys.exit(f"round {round_ + 1}: {exc}")
        scrapes += durations
        for variant in VARIANTS:
            rates[variant].append(window.rate(variant))
        ratios.append(window.rate("on") / window.rate("off"))
        print(f"  {f'round {round_ + 1}, metrics {order[0]} first':<32}"
              f"on {rates['on'][-1]:8,.0f}   off {rates['off'][-1]:8,.0f}   "
              f"ratio {ratios[-1]:.3f}   ({len(durations)} scrapes)", flush=True)
    for variant in VARIANTS:
        print(f"  {'metrics ' + variant:<32}{statistics.median(rates[variant]):8,.0f}  "
              f"(min {min(rates[variant]):,.0f}, max {max(rates[variant]):,.0f})")
    ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
    print(f"  on / off, medians               {ratio:8.3f}")
    print(f"  on / off, per round             {statistics.median(ratios):8.3f}  "
          f"(median; min {min(ratios):.3f}, max {max(ratios):.3f})")
    if scrapes:
        print(f"  scrapes of the on worker while it worked: {len(scrapes)}, median "
              f"{statistics.median(scrapes) * 1000:.1f} ms, max {max(scrapes) * 1000:.1f} ms")
    result = "PASS" if ratio >= part.goal else "FAIL"
    print(f"  {result}: on / off {ratio:.3f} (ratio of medians), goal >= {part.goal}")


@contextlib.contextmanager
def _collecting(inner: contextlib.AbstractContextManager[list[float]],
                into: list[float]) -> Iterator[object]:
    with inner as durations:
        yield durations
    into.extend(durations)


def bench_scrape(args: argparse.Namespace, workdir: Path, policy_file: Path) -> None:
    tasks, exceptions = SCRAPE_TASKS, SCRAPE_EXCEPTIONS
    print(f"\nScrape of a worker holding the series of {tasks:,} tasks x {exceptions} "
          f"exception types: GET /metrics over loopback, {args.scrapes} scrapes")
    queue = f"bench.metrics.{os.getpid()}.scrape"
    logfile = workdir / f"{queue}.log"
    command = worker_command("on", queue, args.loglevel, logfile, policy_file)
    env = worker_env(args.broker, args.backend, **{FILL_ENV: f"{tasks},{exceptions}"})
    with (workdir / f"{queue}.out").open("wb") as out:
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready({"on": worker}, {"on": logfile}, timeout=60)
        url = serving_url(logfile)
        if url is None:
            sys.exit(f"the worker serves no metrics\n{tail(logfile)}")
        deadline = time.monotonic() + 120
        while FILLED_MARK not in logfile.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the worker never filled its metrics\n{tail(logfile)}")
            time.sleep(0.2)
        started = time.perf_counter()
        body = get(url)  # the first works out every series' label text: timed on its own
        first = time.perf_counter() - started
        timings: dict[str, list[float]] = {"GET /metrics": [], "GET /metrics, gzip": []}
        for _ in range(args.scrapes):
            for label, headers in (("GET /metrics", None), ("GET /metrics, gzip", GZIP)):
                started = time.perf_counter()
                answer = get(url, headers)
                timings[label].append(time.perf_counter() - started)
                if headers is None:
                    body = answer
                else:
                    zipped = len(answer)
    finally:
        stop_worker(worker)
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    retried = sum(1 for line in body.splitlines()
                  if line.startswith(b"celery_policies_retries_total{")
                  and b'exception="bench.errors.Error' in line)
    if retried != tasks * exceptions:
        sys.exit(f"the scrape holds {retried} retry series, not {tasks * exceptions}")
    print(f"  one scrape: {len(body) / 1e6:.1f} MB, {samples:,} samples "
          f"({zipped / 1e6:.2f} MB gzipped)")
    print(f"  first GET /metrics            {first * 1000:8.1f} ms")
    for label, durations in timings.items():
        print(f"  {label:28}{statistics.median(durations) * 1000:8.1f} ms  "
              f"(min {min(durations) * 1000:.1f}, max {max(durations) * 1000:.1f})")
    median = statistics.median(timings["GET /metrics"])
    render_everything_changed(tasks, exceptions)
    result = "PASS" if median < SCRAPE_GOAL else "FAIL"
    print(f"  {result}: median {median * 1000:.1f} ms, goal < {SCRAPE_GOAL * 1000:.0f} ms")


def render_everything_changed(tasks: int, exceptions: int, times: int = 9) -> None:
    """The scrapes above find nothing changed since the one before, and answer with the text
    kept from it; this times, in process, the other end: a scrape after every series changed
    (each re-rendered from its counts; its label text is kept)."""
    metrics = WorkerMetrics()
    fill(metrics, tasks, exceptions)
    metrics.registry.render()
    durations = []
    for _ in range(times):
        fill(metrics, tasks, exceptions)
        started = time.perf_counter()
        metrics.registry.render()
        durations.append(time.perf_counter() - started)
    print(f"  in process, every series changed since the last scrape: render "
          f"{statistics.median(durations) * 1000:.1f} ms (median of {times}, "
          f"min {min(durations) * 1000:.1f}, max {max(durations) * 1000:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                        help="no-op tasks per worker run (default %(default)s)")
    parser.add_argument("--failing", type=int, default=DEFAULT_FAILING,
                        help="failing tasks per worker run (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="rounds per throughput figure (default %(default)s)")
    parser.add_argument("--scrapes", type=int, default=50,
                        help="timed scrapes of the filled worker (default %(default)s)")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="seconds between scrapes of the on worker while it works; "
                             "0: none (default %(default)s)")
    parser.add_argument("--loglevel", default="WARNING", choices=("DEBUG", "INFO", "WARNING"),
                        help="the workers' log level (default %(default)s)")
    parser.add_argument("--broker", default=BROKER_URL,
                        help="a Redis database nothing else uses (default %(default)s)")
    parser.add_argument("--backend", default=RESULT_BACKEND,
                        help="a Redis database for results (default %(default)s)")
    parser.add_argument("--only", choices=("success", "failure", "scrape"),
                        help="run one part only")
    args = parser.parse_args()
    if min(args.tasks, args.failing, args.rounds, args.scrapes) < 1:
        parser.error("--tasks, --failing, --rounds and --scrapes must be positive")

    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Celery {celery.__version__}, load average "
          f"{', '.join(f'{load:.2f}' for load in os.getloadavg())}")
    print(f"broker {args.broker}, results {args.backend}")
    parts = {"success": (Part("Success path", TASK_NAME, SUCCESS_GOAL), args.tasks),
             "failure": (Part("Failure path (every task fails for good)", FAIL_NAME,
                               FAILURE_GOAL), args.failing)}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as directory:
        workdir = Path(directory)
        policy_file = workdir / "policies.yaml"
        policy_file.write_text(POLICY_YAML, encoding="utf-8")
        for name, (part, tasks) in parts.items():
            if args.only in (None, name):
                bench_throughput(part, args, workdir, policy_file, tasks)
        if args.only in (None, "scrape"):
            bench_scrape(args, workdir, policy_file)
    print(f"load average at the end {', '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
