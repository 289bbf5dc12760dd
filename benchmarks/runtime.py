"""Benchmark: what the plugin costs a task at run time, against the same settings in code.

Goal (see docs/benchmarks.md): on the success path the plugin costs nothing measurable. The
throughput of 20,000 no-op tasks through a real worker whose settings come from a policy file
is at least 0.98 of the same tasks with the equivalent ``@app.task(...)`` arguments.

Two parts:

* **Throughput in a real worker.** ``benchmarks/_runtime_app.py`` registers ``bench.noop``
  either plainly, with ``celery_policies.install(app)`` and a policy file (``plugin``), or with
  the same settings as decorator arguments (``decorator``). By default both variants run at
  once, each with its own queue and prefork worker (``-c 2``), and are measured over one
  window of time (``measure_together``): on a shared machine, load of the moment slows both
  alike. With ``--apart`` each variant runs alone in turn, timed from ``worker_ready`` to the
  last acknowledgement (``measure_once``), which a noisy machine makes far less repeatable.
  Before timing, the settings both workers really applied are compared, and the script stops
  if they differ. The variant started first alternates between rounds; the summary gives each
  variant's median, the ratio of the medians and the spread of the per-round ratios.
* **Per call, in process, no worker.** ``timeit`` over ``task.run()`` (the callable the worker's
  tracer calls) for the bare function, Celery's autoretry wrapper and the plugin's wrapper
  (installed by ``Runtime.apply`` from the same policy file), in microseconds, with the
  wrappers' overheads over the bare call. Also the failure path up to ``task.retry()``
  (outside a worker ``retry`` re-raises instead of publishing) and ``RetrySettings.decide``.

Run it as ``.venv/bin/python benchmarks/runtime.py [--tasks N] [--rounds N]`` with Redis on
127.0.0.1 (databases 5 and 6 by default; they must not be in use by anything else). The
machine may be shared and noisy: compare the variants within one run, never across runs. The
PASS/FAIL line informs; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The worker imports the app as ``benchmarks._runtime_app``; so does this script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import celery
import redis
from benchmarks._runtime_app import (
    DECORATOR_OPTIONS,
    POLICY_YAML,
    TASK_NAME,
    VARIANT_ENV,
    create_app,
    describe,
    wrapper_of,
)
from benchmarks._together import (
    UNACKED_KEY,
    Launch,
    clean_up,
    measure_window,
    stop_worker,
)
from benchmarks._workers import READY_MARK, WorkerFailed, read_ready, tail
from celery import Celery
from celery.utils.time import get_exponential_backoff_interval

import celery_policies
from celery_policies import parse_policies
from celery_policies.spec.backoff import RetrySettings

ROOT = Path(__file__).resolve().parent.parent
#: The issue's figures: 20,000 tasks, and the plugin at least 0.98 of the decorator's rate.
DEFAULT_TASKS = 20_000
THROUGHPUT_GOAL = 0.98
#: Even, so that each variant goes first as often as the other.
DEFAULT_ROUNDS = 6
DEFAULT_CALLS = 1_000_000
CONCURRENCY = 2
BROKER_URL = "redis://127.0.0.1:6379/5"
RESULT_BACKEND = "redis://127.0.0.1:6379/6"
#: The variants, by the name this script prints.
LABELS = {"plugin": "plugin (policy file)", "decorator": "decorator arguments"}
#: A failing task for the failure path, registered next to ``bench.noop``.
FAIL_NAME = "bench.fail"


# --- throughput in a real worker ------------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """One variant's run in one round."""

    variant: str
    tasks: int
    seconds: float
    settings: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


def publish(broker_url: str, queue: str, tasks: int) -> str:
    """Publish ``tasks`` no-op messages to ``queue``; the last one stores its result.

    Returns the id of the last one (the sentinel).
    """
    publisher = Celery("bench-publisher", broker=broker_url, set_as_current=False)
    with publisher.producer_or_acquire() as producer:
        for _ in range(tasks - 1):
            publisher.send_task(TASK_NAME, queue=queue, ignore_result=True, producer=producer)
        sentinel = publisher.send_task(TASK_NAME, queue=queue, ignore_result=False,
                                       producer=producer)
    publisher.close()
    return str(sentinel.id)


def worker_command(variant: str, queue: str, hostname: str, loglevel: str, logfile: Path,
                   policy_file: Path) -> list[str]:
    command = [sys.executable, "-m", "celery", "-A", "benchmarks._runtime_app", "worker",
               "-P", "prefork", "-c", str(CONCURRENCY),
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-Q", queue, "-n", hostname, "-l", loglevel, "--logfile", str(logfile)]
    if variant == "plugin":
        command += ["--policies", str(policy_file)]
    return command


def worker_env(variant: str, broker_url: str, result_backend: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CELERY_POLICIES_FILE", None)  # only --policies names the file
    env[VARIANT_ENV] = variant
    env["BENCH_BROKER_URL"] = broker_url
    env["BENCH_RESULT_BACKEND"] = result_backend
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def wait_for_sentinel(results: redis.Redis, key: str, worker: subprocess.Popen[bytes],
                      timeout: float) -> None:
    """Block (no polling: the result backend publishes on ``key``) until the sentinel's result
    is stored, the worker exits, or ``timeout`` seconds pass."""
    pubsub = results.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8
    pubsub.subscribe(key)
    try:
        deadline = time.monotonic() + timeout
        while not results.exists(key):
            if worker.poll() is not None:
                raise WorkerFailed(f"the worker exited with status {worker.returncode}")
            if time.monotonic() > deadline:
                raise WorkerFailed(f"the tasks were not done after {timeout:.0f} s")
            if pubsub.get_message(timeout=1.0) is not None:
                return
    finally:
        pubsub.close()


def wait_until_acked(broker: redis.Redis, queue: str, timeout: float = 60.0) -> float:
    """The time (``time.time()``) ``queue`` and the unacknowledged messages are both empty.

    Called once the sentinel, published last, has run: every other message has then been
    delivered, so what is left is at most a prefetch window of acknowledgements.
    """
    deadline = time.monotonic() + timeout
    while True:
        with broker.pipeline() as pipe:
            pipe.llen(queue)
            pipe.hlen(UNACKED_KEY)
            queued, unacked = pipe.execute()
        if not queued and not unacked:
            return time.time()
        if time.monotonic() > deadline:
            raise WorkerFailed(f"{queued} queued and {unacked} unacknowledged messages left")
        time.sleep(0.001)


def measure_once(variant: str, round_: int, args: argparse.Namespace, workdir: Path,
                 policy_file: Path) -> Measured:
    """Publish, start a worker, time it from ready to the last acknowledgement, stop it."""
    broker = redis.Redis.from_url(args.broker)
    results = redis.Redis.from_url(args.backend)
    if broker.hlen(UNACKED_KEY):
        sys.exit(f"{args.broker} holds unacknowledged messages: is another consumer using it? "
                 "Choose a free database with --broker.")
    queue = f"bench.runtime.{os.getpid()}.{round_}.{variant}"
    logfile = workdir / f"{queue}.log"
    output = workdir / f"{queue}.out"
    command = worker_command(variant, queue, f"{queue}@%h", args.loglevel, logfile, policy_file)
    result_key = ""
    try:
        result_key = f"celery-task-meta-{publish(args.broker, queue, args.tasks)}"
        with output.open("wb") as out:
            worker = subprocess.Popen(command, cwd=ROOT, env=worker_env(variant, args.broker,
                                                                        args.backend),
                                      stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_sentinel(results, result_key, worker, timeout=60 + args.tasks / 100)
            finished = wait_until_acked(broker, queue)
        finally:
            stop_worker(worker)
        ready = read_ready(logfile)
        if ready is None:
            raise WorkerFailed(f"no {READY_MARK} line in the worker's log")
        started, settings = ready
    except WorkerFailed as exc:
        sys.exit(f"{variant} worker, round {round_ + 1}: {exc}\n"
                 f"$ {' '.join(command)}\n{tail(logfile)}\n{tail(output)}")
    finally:
        clean_up(broker, results, queue, result_key)
        broker.close()
        results.close()
    return Measured(variant, args.tasks, finished - started, settings)


def measure_together(round_: int, args: argparse.Namespace, workdir: Path,
                     policy_file: Path) -> dict[str, Measured]:
    """Both variants at once, each on its own queue, over one window of time
    (``_together.measure_window``); the one started first alternates by round."""
    order = ("plugin", "decorator") if round_ % 2 == 0 else ("decorator", "plugin")
    queues = {v: f"bench.runtime.{os.getpid()}.{round_}.{v}" for v in order}
    launches = {v: Launch(worker_command(v, queues[v], f"{queues[v]}@%h", args.loglevel,
                                         workdir / f"{queues[v]}.log", policy_file),
                          worker_env(v, args.broker, args.backend)) for v in order}
    try:
        window = measure_window(broker_url=args.broker, backend_url=args.backend, root=ROOT,
                                workdir=workdir, queues=queues, launches=launches,
                                publish=publish, tasks=args.tasks)
    except WorkerFailed as exc:
        sys.exit(f"round {round_ + 1}: {exc}")
    return {v: Measured(v, window.taken[v], window.seconds, window.setup[v]) for v in order}


def check_equivalent(runs: Sequence[Measured]) -> None:
    """Stop if the workers applied different settings to the task: the rates would not compare.

    Only the retry wrapper may differ: Celery's in one variant, the plugin's in the other.
    """
    expected = {"plugin": "celery-policies", "decorator": "celery autoretry"}
    for run in runs:
        if run.settings.get("wrapper") != expected[run.variant]:
            sys.exit(f"the {run.variant} worker runs {TASK_NAME} with wrapper "
                     f"{run.settings.get('wrapper')!r}, not {expected[run.variant]!r}")
    without_wrapper = [{k: v for k, v in run.settings.items() if k != "wrapper"} for run in runs]
    if any(settings != without_wrapper[0] for settings in without_wrapper):
        sys.exit("the workers applied different settings to the task:\n" + "\n".join(
            f"  {run.variant}: {settings}" for run, settings in zip(runs, without_wrapper,
                                                                   strict=True)))


def bench_throughput(args: argparse.Namespace) -> None:
    print(f"\nThroughput of {args.tasks:,} no-op tasks through a prefork worker "
          f"(-c {CONCURRENCY}, log level {args.loglevel}), tasks/s, {args.rounds} rounds")
    rates: dict[str, list[float]] = {"plugin": [], "decorator": []}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as directory:
        workdir = Path(directory)
        policy_file = workdir / "policies.yaml"
        policy_file.write_text(POLICY_YAML, encoding="utf-8")
        for round_ in range(args.rounds):
            order = ("plugin", "decorator") if round_ % 2 == 0 else ("decorator", "plugin")
            if args.apart:
                runs = {variant: measure_once(variant, round_, args, workdir, policy_file)
                        for variant in order}
            else:
                runs = measure_together(round_, args, workdir, policy_file)
            check_equivalent(list(runs.values()))
            applied = runs["plugin"].settings
            for variant, run in runs.items():
                rates[variant].append(run.rate)
            ratios.append(runs["plugin"].rate / runs["decorator"].rate)
            print(f"  {f'round {round_ + 1}, {order[0]} first':<30}"
                  f"plugin {runs['plugin'].rate:8,.0f}   decorator {runs['decorator'].rate:8,.0f}"
                  f"   ratio {ratios[-1]:.3f}", flush=True)
    print(textwrap.fill(", ".join(f"{key}={value}" for key, value in applied.items()
                                  if key != "wrapper"),
                        width=100, initial_indent="  both workers applied: ",
                        subsequent_indent="    "))
    for variant, samples in rates.items():
        print(f"  {LABELS[variant]:<30}{statistics.median(samples):8,.0f}  "
              f"(min {min(samples):,.0f}, max {max(samples):,.0f})")
    ratio = statistics.median(rates["plugin"]) / statistics.median(rates["decorator"])
    print(f"  plugin / decorator, medians   {ratio:8.3f}")
    print(f"  plugin / decorator, per round {statistics.median(ratios):8.3f}  "
          f"(median; min {min(ratios):.3f}, max {max(ratios):.3f})")
    result = "PASS" if ratio >= THROUGHPUT_GOAL else "FAIL"
    print(f"  {result}: plugin / decorator {ratio:.3f} (ratio of medians), "
          f"goal >= {THROUGHPUT_GOAL}")


# --- per call, in process -------------------------------------------------------------------

def fail() -> None:
    """The failure path's task: always raises an exception both wrappers retry."""
    raise ConnectionError("bench")


@dataclass(frozen=True)
class PerCall:
    """The three ``run`` callables of each path, and the plugin's retry settings."""

    success: dict[str, Callable[[], Any]]
    failure: dict[str, Callable[[], Any]]
    settings: RetrySettings


def per_call_tasks() -> PerCall:
    """``bench.noop`` and ``bench.fail`` bare, under Celery's wrapper and the plugin's.

    The plugin's wrapper is installed the way a worker installs it (``Runtime.apply`` with the
    benchmark's policy file); the app's broker is never contacted.
    """
    bare = create_app("plugin", "memory://", None)  # installed but never applied: bare tasks
    bare.task(name=FAIL_NAME, shared=False)(fail)
    decorated = create_app("decorator", "memory://", None)
    decorated.task(name=FAIL_NAME, shared=False, **DECORATOR_OPTIONS)(fail)
    plugin = create_app("plugin", "memory://", None)
    plugin.task(name=FAIL_NAME, shared=False)(fail)
    runtime = celery_policies.install(plugin)
    runtime.apply(parse_policies(POLICY_YAML, file="policies.yaml", import_exceptions=True))
    apps = {"bare": bare, "celery": decorated, "plugin": plugin}
    wrappers = {"bare": "none", "celery": "celery autoretry", "plugin": "celery-policies"}
    for key, app in apps.items():
        for name in (TASK_NAME, FAIL_NAME):
            if wrapper_of(app.tasks[name]) != wrappers[key]:
                sys.exit(f"{key}: {name} has wrapper {wrapper_of(app.tasks[name])!r}")
    if describe(plugin.tasks[TASK_NAME]) | {"wrapper": ""} != (
            describe(decorated.tasks[TASK_NAME]) | {"wrapper": ""}):
        sys.exit("the plugin and the decorator give the task different settings")
    settings = runtime.retry_settings(TASK_NAME)
    assert settings is not None
    return PerCall(success={key: app.tasks[TASK_NAME].run for key, app in apps.items()},
                   failure={key: app.tasks[FAIL_NAME].run for key, app in apps.items()},
                   settings=settings)


def microseconds(statement: str, calls: int, **names: Any) -> float:
    """Microseconds per execution of ``statement`` (garbage collection off, as timeit does)."""
    return timeit.Timer(statement, globals=names).timeit(calls) / calls * 1e6


CALL = "run()"
CALL_AND_CATCH = """\
try:
    run()
except ConnectionError:
    pass
"""


def time_paths(runs: dict[str, Callable[[], Any]], statement: str, calls: int,
               rounds: int) -> dict[str, list[float]]:
    """Microseconds per call of each ``run``, ``rounds`` times, the order rotating per round."""
    samples: dict[str, list[float]] = {key: [] for key in runs}
    keys = list(runs)
    for round_ in range(rounds):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            samples[key].append(microseconds(statement, calls, run=runs[key]))
    return samples


def us_spread(samples: Sequence[float]) -> str:
    return (f"{statistics.median(samples):8.3f} µs  "
            f"(min {min(samples):.3f}, max {max(samples):.3f})")


def print_paths(samples: dict[str, list[float]]) -> None:
    labels = {"bare": "bare function", "celery": "Celery's autoretry wrapper",
              "plugin": "celery-policies wrapper"}
    for key, values in samples.items():
        print(f"  {labels[key]:<44}{us_spread(values)}")
    for key in ("celery", "plugin"):
        # Per round, so that a slower round (a busy machine) does not skew the difference.
        extra = [wrapped - bare for wrapped, bare in zip(samples[key], samples["bare"],
                                                         strict=True)]
        print(f"  {labels[key] + ', overhead':<44}{us_spread(extra)}")


def bench_per_call(args: argparse.Namespace) -> None:
    tasks = per_call_tasks()
    calls, rounds = args.calls, args.rounds
    print(f"\nPer call of task.run(), success path: µs per call, {calls:,} calls per round")
    print_paths(time_paths(tasks.success, CALL, calls, rounds))

    failing = max(calls // 20, 1)
    print(f"\nFailure path up to task.retry(), which re-raises outside a worker instead of "
          f"publishing:\nµs per call, {failing:,} calls per round")
    print_paths(time_paths(tasks.failure, CALL_AND_CATCH, failing, rounds))

    deciding = max(calls // 10, 1)
    decide = tasks.settings.decide
    statements = {
        "decide(): retry (ConnectionError, retry 1)": "decide(ConnectionError, 1, 2.0)",
        "decide(): give up, not retryable": "decide(ValueError, 1, 2.0)",
        "decide(): give up, max_retries": "decide(ConnectionError, 3, 2.0)",
        "Celery's get_exponential_backoff_interval":
            "backoff(factor=1, retries=1, maximum=600, full_jitter=True)",
    }
    print(f"\nThe retry decision alone: µs per call, {deciding:,} calls per round")
    for label, statement in statements.items():
        samples = [microseconds(statement, deciding, decide=decide,
                                backoff=get_exponential_backoff_interval,
                                ConnectionError=ConnectionError, ValueError=ValueError)
                   for _ in range(rounds)]
        print(f"  {label:<44}{us_spread(samples)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                        help="tasks per worker run (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="rounds per figure (default %(default)s)")
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS,
                        help="success-path calls per round of the per-call part "
                             "(default %(default)s)")
    parser.add_argument("--loglevel", default="WARNING", choices=("DEBUG", "INFO", "WARNING"),
                        help="the workers' log level; INFO logs two lines per task "
                             "(default %(default)s)")
    parser.add_argument("--broker", default=BROKER_URL,
                        help="a Redis database nothing else uses (default %(default)s)")
    parser.add_argument("--backend", default=RESULT_BACKEND,
                        help="a Redis database for the sentinel results (default %(default)s)")
    parser.add_argument("--apart", action="store_true",
                        help="run the two workers one after the other instead of at once")
    parser.add_argument("--only", choices=("throughput", "per-call"),
                        help="run one part only")
    args = parser.parse_args()
    if args.tasks < 1 or args.rounds < 1 or args.calls < 1:
        parser.error("--tasks, --rounds and --calls must be positive")

    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Celery {celery.__version__}, {args.rounds} rounds")
    if args.only != "per-call":
        print(f"broker {args.broker}, results {args.backend}")
        bench_throughput(args)
    if args.only != "throughput":
        bench_per_call(args)


if __name__ == "__main__":
    main()
