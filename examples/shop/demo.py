"""See ``policies.example.yaml`` at work in a real Celery worker: ``python -m examples.shop.demo``.

It starts ``celery -A examples.shop worker --policies policies.example.yaml`` (prefork, 4
processes), sends it tasks that fail in different ways, waits for their results, and prints what the
policies did to each, read from the worker's log: the attempts and the delays the plugin chose,
the soft and hard time limits, the tasks given up on and the failure routes they took (dead
letters, a callback task). Then it lists the dead letters with ``celery-policies dlq list``,
"fixes" the mail relay and replays the newsletter's dead letter with ``dlq replay``, which
now succeeds. It takes about 20 seconds.

With no ``CELERY_BROKER_URL`` it needs no broker: the worker and the demo share kombu's
``filesystem://`` broker and a ``file://`` result backend in a temporary folder. Otherwise it
uses that broker, e.g. ``CELERY_BROKER_URL=redis://127.0.0.1:6379/7`` (results go to the same
Redis unless ``CELERY_RESULT_BACKEND`` says otherwise; see ``examples/shop/app.py``).

With ``--metrics`` the worker also serves its Prometheus metrics (``--policies-metrics-port
0``, a free port on 127.0.0.1), and the demo ends with what they counted: the non-zero
``celery_policies_*`` samples of one scrape, by metric. It needs the ``metrics`` extra
(``pip install 'celery-policies[metrics]'``).

Exit status: 0 when every task ended as expected, 1 otherwise (the worker's log is kept).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from celery.exceptions import TimeoutError as ResultTimeout
from celery.result import AsyncResult

from celery_policies import load_policies
from celery_policies.metrics.names import PREFIX
from celery_policies.spec.matching import Matcher
from celery_policies.worker.serving import SERVING_FORMAT

from .app import BROKER_DIR_VAR, app, settings_from_env
from .billing import charge_card
from .emails import RELAY_DOWN_VAR, send_newsletter, send_receipt
from .reports import build_monthly_report, render_archive

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILE = "policies.example.yaml"
#: Seconds to wait for the worker to start, and for all results once the tasks are sent.
READY_TIMEOUT, RESULTS_TIMEOUT = 30.0, 60.0
#: What the worker logs when it serves its metrics.
SERVING = re.compile(re.escape(SERVING_FORMAT.partition("%s")[0]) + r"(?P<url>http://\S+)")
#: How to get prometheus_client, which ``--metrics`` needs.
METRICS_EXTRA = "pip install 'celery-policies[metrics]'"
CONSOLE_EXTRA = "pip install 'celery-policies[console]'"
#: Where ``--console`` serves the web console unless ``--console-port`` says otherwise.
CONSOLE_PORT = 5580

LOG_LINE = re.compile(r"^\[(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[\w-]+\] "
                      r"(?P<message>.*)$")
_LIMIT = r"time limit \((?P<limit>[\d.]+)s\) exceeded for \S+\[(?P<id>[\w-]+)\]"
# What the plugin and Celery log about one task; each pattern names the task id ``id``.
EVENTS: dict[str, re.Pattern[str]] = {
    "retry": re.compile(r"^retrying \S+\[(?P<id>[\w-]+)\] in (?P<delay>[\d.]+)s after "
                        r"(?P<exc>\w+) \(retry (?P<retry>\d+)\)"),
    "give_up": re.compile(r"^giving up on \S+\[(?P<id>[\w-]+)\] after \d+ retr(?:y|ies): "
                          r"(?P<exc>\w+) (?P<reason>.+) \(policy (?P<policy>[^)]*)\); "
                          r"on_failure: (?P<routes>.*)$"),
    "soft": re.compile(rf"^Soft {_LIMIT}"),
    "hard": re.compile(rf"^Hard {_LIMIT}"),
    "success": re.compile(r"^Task \S+\[(?P<id>[\w-]+)\] succeeded in"),
    "dead_letter": re.compile(r"^dead-lettered \S+\[(?P<id>[\w-]+)\] to (?P<queue>\S+): "
                              r"(?P<reason>\w+) "),
    "callback": re.compile(r"^sent (?P<task>\S+) for failed \S+\[(?P<id>[\w-]+)\]"),
}
#: The events the worker's main process logs after the task's result is stored. At a hard
#: time limit billiard calls the request's on_failure (the routes) before its on_timeout
#: (Celery's "Hard time limit" line), a few milliseconds apart.
ROUTE_EVENTS = ("dead_letter", "callback", "hard")


@dataclass
class Scenario:
    """One task sent to the worker, and how it should end."""

    title: str
    task: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: str
    exception: str | None = None
    events: dict[str, int] = field(default_factory=dict)  # event kind: how many expected


def scenarios() -> list[Scenario]:
    return [
        Scenario("A charge the gateway times out on twice", charge_card, (1001, 4200),
                 {"fail_first": 2}, "SUCCESS", events={"retry": 2, "success": 1}),
        Scenario("A declined card", charge_card, (1002, 990), {"decline": True},
                 "FAILURE", "CardDeclined", {"give_up": 1, "callback": 1, "dead_letter": 1}),
        Scenario("A receipt while the mail relay is down once", send_receipt, (1001,),
                 {"fail_first": 1}, "SUCCESS", events={"retry": 1, "success": 1}),
        Scenario("A report that takes 9s", build_monthly_report, ("2024-05",),
                 {"seconds": 9}, "FAILURE", "SoftTimeLimitExceeded",
                 {"soft": 1, "give_up": 1, "dead_letter": 1}),
        Scenario("A report stuck in native code, deaf to the soft limit", render_archive,
                 ("2024-05",), {"seconds": 12}, "FAILURE", "TimeLimitExceeded",
                 {"soft": 1, "hard": 1, "dead_letter": 1}),
        Scenario("A newsletter batch while the mail relay is down for good", send_newsletter,
                 (7,), {}, "FAILURE", "SmtpUnavailable",
                 {"retry": 3, "give_up": 1, "dead_letter": 1}),
    ]


def use_embedded_broker(folder: Path) -> str:
    """Point this process, and the worker it starts, at a broker kept in ``folder``."""
    os.environ["CELERY_BROKER_URL"] = "filesystem://"
    os.environ[BROKER_DIR_VAR] = str(folder / "broker")
    return f"filesystem:// in {folder / 'broker'} (embedded: no broker needed)"


def start_worker(log_path: Path, metrics: bool = False) -> subprocess.Popen[bytes]:
    command = ["celery", "-A", "examples.shop", "worker",
               "--policies", POLICY_FILE, "-c", "4", "-l", "INFO"]
    if metrics:
        command += ["--policies-metrics-port", "0"]
    print(f"worker   {' '.join(command)}")
    with log_path.open("wb") as log:
        # A session of its own: a Ctrl-C reaches the demo only, which then stops the worker.
        return subprocess.Popen([sys.executable, "-m", *command], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def wait_until_ready(worker: subprocess.Popen[bytes], log_path: Path) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT:
        text = log_path.read_text(errors="replace")
        if re.search(r"^\[[^]]*\] \S+ ready\.$", text, flags=re.MULTILINE):
            applied = [line.split("] ", 1)[1] for line in text.splitlines()
                       if "] celery-policies: " in line]
            print(f"         ready in {time.monotonic() - started:.1f}s; "
                  + ("; ".join(applied) or "celery-policies said nothing"))
            return True
        if worker.poll() is not None:
            print(f"the worker exited with status {worker.returncode} before it was ready")
            return False
        time.sleep(0.1)
    print(f"the worker was not ready after {READY_TIMEOUT:.0f}s")
    return False


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: no task is running by now
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


Event = tuple[float, str, dict[str, str]]  # epoch time, kind (a key of EVENTS), fields


def read_events(log_path: Path) -> dict[str, list[Event]]:
    """The events of the worker's log, per task id."""
    events: dict[str, list[Event]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        for kind, pattern in EVENTS.items():
            found = pattern.match(match["message"])
            if found:
                when = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                events.setdefault(found["id"], []).append((when, kind, found.groupdict()))
    return events


def describe(event: Event, attempt: int) -> list[str]:
    """What one event says, in a line or two."""
    _, kind, fields = event
    if kind == "retry":
        return [f"attempt {attempt} raised {fields['exc']}: retry in {fields['delay']}s"]
    if kind == "give_up":
        return [f"attempt {attempt} raised {fields['exc']}: gave up, {fields['reason']} "
                f"(policy {fields['policy']})"]
    if kind == "dead_letter":
        return [f"failure route: dead letter to {fields['queue']} (reason {fields['reason']})"]
    if kind == "callback":
        return [f"failure route: sent task {fields['task']}"]
    if kind == "soft":
        return [f"soft time limit ({fields['limit']}s) exceeded"]
    if kind == "hard":
        return [f"hard time limit ({fields['limit']}s) exceeded: its worker process is killed"]
    return [f"attempt {attempt} succeeded"]


def report(scenario: Scenario, result: AsyncResult, value: Any, sent: float,
           events: list[Event], matcher: Matcher) -> list[str]:
    """Print what happened to one task; return what was not as expected."""
    name = scenario.task.name
    print(f"\n{scenario.title}\n  {name}[{result.id[:8]}]  "
          f"policies: {', '.join(matcher.resolve(name).matched) or 'none'}")
    attempt = 1
    for event in events:
        at = f"  {event[0] - sent:+5.1f}s  "
        for number, line in enumerate(describe(event, attempt)):
            print((at if number == 0 else " " * len(at)) + line)
        attempt += event[1] == "retry"
    state = result.state
    print(f"  => {state} {value!r}" if state in {"SUCCESS", "FAILURE"}
          else f"  => {state}: no result after {RESULTS_TIMEOUT:.0f}s")

    problems = []
    if state != scenario.state:
        problems.append(f"state {state}, expected {scenario.state}")
    if scenario.exception and type(value).__name__ != scenario.exception:
        problems.append(f"{value!r}, expected {scenario.exception}")
    for kind, count in scenario.events.items():
        seen = sum(event[1] == kind for event in events)
        if seen != count:
            problems.append(f"{seen} '{kind}' lines in the worker's log, expected {count}")
    for problem in problems:
        print(f"  UNEXPECTED: {problem}")
    return problems


def send_and_report(worker: subprocess.Popen[bytes], log_path: Path,
                    metrics: bool = False) -> list[str]:
    """Send every scenario's task, wait for the results, print them (and, with ``metrics``,
    what the worker's metrics counted); return the problems."""
    plan = scenarios()
    sent: list[tuple[AsyncResult, float]] = []
    for scenario in plan:
        result = scenario.task.apply_async(scenario.args, scenario.kwargs)
        sent.append((result, time.time()))
    print(f"sent {len(sent)} tasks; waiting for their results (the slowest takes 10s)")
    waiting = time.monotonic()
    deadline = waiting + RESULTS_TIMEOUT
    values: list[Any] = []
    for result, _ in sent:
        try:
            values.append(result.get(propagate=False,
                                      timeout=max(deadline - time.monotonic(), 0.1)))
        except ResultTimeout:
            values.append(None)
    print(f"results in after {time.monotonic() - waiting:.1f}s")
    # A failed task's result is stored before the worker's main process takes its routes.
    events = wait_for_routes(log_path, plan, [result for result, _ in sent])
    matcher = Matcher(load_policies(ROOT / POLICY_FILE))
    problems = []
    for scenario, (result, at), value in zip(plan, sent, values, strict=True):
        problems += report(scenario, result, value, at, events.get(result.id, []), matcher)
    newsletter = next(result for (result, _), scenario in zip(sent, plan, strict=True)
                      if scenario.task is send_newsletter)
    problems += dead_letters(newsletter)
    if metrics:
        problems += show_metrics(log_path, read_events(log_path))
    return problems


def wait_for_routes(log_path: Path, plan: list[Scenario],
                    results: list[AsyncResult]) -> dict[str, list[Event]]:
    """The log's events, once it shows every failure route the scenarios expect (or 10s)."""
    deadline = time.monotonic() + 10
    while True:
        events = read_events(log_path)
        if time.monotonic() > deadline or all(
                sum(e[1] == kind for e in events.get(result.id, [])) >= scenario.events[kind]
                for scenario, result in zip(plan, results, strict=True)
                for kind in ROUTE_EVENTS if kind in scenario.events):
            return events
        time.sleep(0.1)


def run_command(*args: str) -> str:
    """Run ``celery-policies ARGS`` as a person would; print and return its output."""
    print(f"\n$ celery-policies {' '.join(args)}")
    done = subprocess.run([sys.executable, "-m", "celery_policies", *args], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    print((done.stdout + done.stderr).rstrip())
    return done.stdout


def dead_letters(newsletter: AsyncResult) -> list[str]:
    """List the dead letters, fix the mail relay, replay the newsletter; return problems."""
    print("\nDead letters: the tasks above that failed for good, kept in the broker")
    before = run_command("dlq", "list", "--app", "examples.shop")
    os.remove(os.environ[RELAY_DOWN_VAR])
    print("\nThe mail relay is back up: replay the newsletter.")
    replayed = run_command("dlq", "replay", "--app", "examples.shop", "--yes",
                           "--task", send_newsletter.name)
    deadline = time.monotonic() + RESULTS_TIMEOUT
    while AsyncResult(newsletter.id).state != "SUCCESS" and time.monotonic() < deadline:
        time.sleep(0.2)
    state = AsyncResult(newsletter.id)
    print(f"  {send_newsletter.name}[{newsletter.id[:8]}] => {state.state} {state.result!r}")
    after = run_command("dlq", "list", "--app", "examples.shop")
    problems = []
    if "Replayed 1 of 1 dead letter" not in replayed:
        problems.append("the newsletter's dead letter was not replayed")
    if state.state != "SUCCESS":
        problems.append(f"the replayed newsletter ended {state.state}, expected SUCCESS")
    counts = [int(m[1]) for m in (re.search(r"^(\d+) dead letters? in ", text, re.MULTILINE)
                                   for text in (before, after)) if m]
    if len(counts) != 2 or counts[0] - counts[1] != 1:
        problems.append(f"dead letters before and after the replay: {counts}, expected one less")
    for problem in problems:
        print(f"  UNEXPECTED: {problem}")
    return problems


# --- --metrics: what the worker's Prometheus metrics counted --------------------------------

def scrape(log_path: Path) -> tuple[str, str] | None:
    """The worker's metrics URL (from its log) and one scrape of it; None if it serves none."""
    found = SERVING.search(log_path.read_text(errors="replace"))
    if found is None:
        return None
    with urllib.request.urlopen(found["url"], timeout=10) as response:
        return found["url"], response.read().decode()


#: What a row of the metrics section shows: task, policy, the other labels, the value.
Row = tuple[str, str, str, str]
#: Labels left out of the rows: the same on every one (the demo's one queue, the file).
QUIET_LABELS = ("task", "policy", "queue", "file")


def counted(text: str) -> dict[str, list[Row]]:
    """The non-zero ``celery_policies_*`` samples of a scrape, by metric (its name without
    the prefix); a histogram as its count and sum, without buckets and ``_created``."""
    from prometheus_client.parser import (  # noqa: PLC0415 - the optional metrics extra
        text_string_to_metric_families,
    )

    found: dict[str, list[Row]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        if family.type == "histogram":
            totals: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
            for sample in family.samples:
                kind = sample.name.rpartition("_")[2]
                if kind in ("count", "sum"):
                    totals.setdefault(tuple(sorted(sample.labels.items())), {})[kind] = \
                        sample.value
            rows = [_row(dict(labels), f"{got['count']:g} (sum {got['sum']:.3g})")
                    for labels, got in totals.items() if got.get("count")]
            name = family.name
        else:
            rows = [_row(sample.labels, _value(sample.name, sample.value))
                    for sample in family.samples
                    if not sample.name.endswith("_created") and sample.value]
            name = family.samples[0].name if family.samples else family.name
        if rows:
            found[name.removeprefix(PREFIX)] = sorted(rows)
    return found


def _row(labels: dict[str, str], value: str) -> Row:
    others = ", ".join(f"{key}={text}" for key, text in sorted(labels.items())
                       if key not in QUIET_LABELS)
    return labels.get("task", ""), labels.get("policy", ""), others, value


def _value(name: str, value: float) -> str:
    if name.endswith("_timestamp_seconds"):
        return datetime.fromtimestamp(value).strftime("%H:%M:%S")
    return f"{value:g}"


def render_samples(found: dict[str, list[Row]]) -> Iterable[str]:
    """The rows as aligned columns under each metric's name."""
    every = [row for rows in found.values() for row in rows]
    task, policy = (max(len(row[column]) for row in every) for column in (0, 1))
    for name, rows in found.items():
        yield f"  {name}"
        others = max(len(row[2]) for row in rows)  # lined up within one metric
        for row in rows:
            cells = [f"{row[0]:<{task}}", f"{row[1]:<{policy}}"] if row[0] else []
            if others:
                cells.append(f"{row[2]:<{others}}")
            yield "    " + "  ".join([*cells, row[3]])


def show_metrics(log_path: Path, events: dict[str, list[Event]]) -> list[str]:
    """Print what the worker's metrics counted; return what disagrees with its log."""
    print("\nMetrics: what the worker counted, read from one scrape of its /metrics")
    scraped = scrape(log_path)
    if scraped is None:
        print("  UNEXPECTED: the worker did not say it serves metrics")
        return ["the worker served no metrics"]
    url, text = scraped
    found = counted(text)
    print(f"  {url}: the non-zero samples, by task and policy; histograms as their count "
          f"(and sum)")
    print(*render_samples(found), sep="\n")
    # The same decisions, seen two ways: the worker's log and its counters.
    logged = sum(kind == "retry" for task in events.values() for _, kind, _ in task)
    retries = sum(float(row[3]) for row in found.get("retries_total", []))
    if retries != logged:
        message = f"the metrics count {retries:g} retries, the worker's log {logged}"
        print(f"  UNEXPECTED: {message}")
        return [message]
    return []


def serve_console(port: int) -> None:
    """Serve ``celery-policies console`` on this demo's broker, policy file and worker until
    Ctrl-C (or SIGINT to this process)."""
    command = [sys.executable, "-m", "celery_policies", "console", "--app", "examples.shop",
               "--port", str(port)]
    print(f"\n$ celery-policies console --app examples.shop --port {port}")
    print("The web console shows the dead letters above and the running worker; open the "
          "address below in a browser. Ctrl-C stops the console, the worker and the demo.")
    console = subprocess.Popen(command, cwd=ROOT)
    try:
        console.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if console.poll() is None:
            console.terminate()
            console.wait(15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.shop.demo",
        description="See policies.example.yaml at work in a real Celery worker.")
    parser.add_argument("--metrics", action="store_true",
                        help="serve the worker's Prometheus metrics and show what they counted")
    parser.add_argument("--console", action="store_true",
                        help="then serve the web console on the demo's dead letters and "
                             "worker, until Ctrl-C")
    parser.add_argument("--console-port", type=int, default=CONSOLE_PORT, metavar="PORT",
                        help=f"the console's port on 127.0.0.1 (default {CONSOLE_PORT}; 0: any)")
    options = parser.parse_args(argv)
    metrics = options.metrics
    if options.console:
        try:
            import starlette  # noqa: F401, PLC0415 - only --console needs it
            import uvicorn  # noqa: F401, PLC0415
        except ImportError:
            print(f"--console needs Starlette and uvicorn: {CONSOLE_EXTRA}")
            return 2
    if metrics:
        try:
            import prometheus_client  # noqa: F401, PLC0415 - only --metrics needs it
        except ImportError:
            print(f"--metrics needs prometheus_client: {METRICS_EXTRA}")
            return 2
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="celery-policies-demo-"))
    broker = os.environ.get("CELERY_BROKER_URL")
    if not broker:
        broker = use_embedded_broker(folder)
    elif broker.startswith("memory://"):
        print("CELERY_BROKER_URL=memory:// cannot reach a worker in another process: unset it "
              "for the embedded broker")
        return 2
    os.environ["CELERY_POLICIES_FILE"] = str(ROOT / POLICY_FILE)  # for this process's sends
    relay_down = folder / "mail-relay-down"
    relay_down.touch()  # the mail relay is down until dead_letters() "fixes" it
    os.environ[RELAY_DOWN_VAR] = str(relay_down)
    # The app read the environment when this package was imported: read it again.
    app.conf.update(settings_from_env())
    print(f"broker   {broker}\nresults  {app.conf.result_backend}")

    log_path = folder / "worker.log"
    worker = start_worker(log_path, metrics)
    problems = ["the worker did not start"]
    try:
        if wait_until_ready(worker, log_path):
            problems = send_and_report(worker, log_path, metrics)
            if options.console and not problems:
                serve_console(options.console_port)
    finally:
        stop_worker(worker)
    if problems == ["the worker did not start"]:
        print(*log_path.read_text(errors="replace").splitlines()[-20:], sep="\n")
    if problems:
        print(f"\n{len(problems)} unexpected outcome(s); the worker's log: {log_path}")
        return 1
    shutil.rmtree(folder, ignore_errors=True)
    print(f"\nall as expected, in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the worker was stopped on the way out
        sys.exit(130)
