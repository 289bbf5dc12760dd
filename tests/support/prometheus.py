"""A real Prometheus server for integration tests: Debian's ``prometheus`` binary on
127.0.0.1, scraping the targets a test gives it every second, and its HTTP query API.

Scrapes are periodic, so a test never sleeps for one: it re-queries until PromQL says what it
expects (``wait_until``), then waits for one more scrape of every target (``next_scrape``) and
queries again, so that a counter that would move past the expected figure late is caught.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.promql import prometheus_binary

#: Seconds between two scrapes of a target (Prometheus's scrape_interval).
SCRAPE_INTERVAL = 1.0
#: How long the server may take to answer ``/-/ready``.
START_TIMEOUT = 30.0
#: How long one HTTP request to the server may take.
REQUEST_TIMEOUT = 10.0

#: Targets by job name: ``{"worker": ["127.0.0.1:9100"]}``.
Jobs = Mapping[str, Sequence[str]]


def binary() -> str:
    """The ``prometheus`` executable (``prometheus_binary``: skipped or failed when missing)."""
    return prometheus_binary("prometheus")


def free_port() -> int:
    """A TCP port nothing listens on at the moment, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector: its labels and value."""

    labels: dict[str, str]
    value: float


def config(jobs: Jobs) -> str:
    """The server's configuration: every job scraped every second. JSON is valid YAML."""
    interval = f"{SCRAPE_INTERVAL:g}s"
    return json.dumps({
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}
                           for job, targets in jobs.items()],
    }, indent=2)


class Prometheus:
    """One ``prometheus`` process, its configuration and its storage in ``folder``."""

    def __init__(self, folder: Path, jobs: Jobs) -> None:
        self.folder = folder
        self.config_path = folder / "prometheus.yml"
        self.log_path = folder / "prometheus.log"
        self.jobs: dict[str, list[str]] = {job: list(targets) for job, targets in jobs.items()}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Prometheus:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config(self.jobs), encoding="utf-8")
        self.port = free_port()
        command = [binary(), f"--config.file={self.config_path}",
                   f"--storage.tsdb.path={self.folder / 'data'}",
                   f"--web.listen-address=127.0.0.1:{self.port}",
                   # /-/reload, so that a test can add a target while the server runs
                   "--web.enable-lifecycle", "--log.level=warn"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=self.folder, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n"
                                     f"{self.log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"{self.url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready after {START_TIMEOUT}s:\n{self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def set_targets(self, job: str, targets: Sequence[str]) -> None:
        """Scrape ``targets`` under ``job`` from now on (a new job or a changed one)."""
        self.jobs[job] = list(targets)
        self.config_path.write_text(config(self.jobs), encoding="utf-8")
        # /-/reload answers once the new configuration is applied, or with why it was not.
        self._request("/-/reload", method="POST")

    def _request(self, path: str, params: Mapping[str, str] | None = None,
                 method: str = "GET") -> Any:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {url}: {exc.code} {exc.read().decode()!r}") from exc
        return json.loads(body) if body.startswith(b"{") else body.decode()

    def query(self, expr: str) -> list[Sample]:
        """The instant vector ``expr`` evaluates to now (a scalar becomes one sample with no
        labels)."""
        answer = self._request("/api/v1/query", {"query": expr})
        if answer.get("status") != "success":
            raise AssertionError(f"query {expr!r}: {answer}")
        data = answer["data"]
        if data["resultType"] == "vector":
            return [Sample(dict(item["metric"]), float(item["value"][1]))
                    for item in data["result"]]
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        raise AssertionError(f"query {expr!r}: a {data['resultType']}, not a vector")

    def values(self, expr: str, by: str) -> dict[str, float]:
        """``expr``'s samples as ``{value of label by: sample value}``."""
        return {sample.labels.get(by, ""): sample.value for sample in self.query(expr)}

    def wait_until(self, expr: str, predicate: Callable[[list[Sample]], bool],
                   timeout: float = 30.0) -> list[Sample]:
        """Re-query ``expr`` until ``predicate`` holds of its samples; return them. Fails with
        the last samples seen when ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.query(expr)
            if predicate(samples):
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout:.0f}s, {expr!r} is still {samples}")
            time.sleep(SCRAPE_INTERVAL / 4)

    def targets(self) -> list[dict[str, Any]]:
        """The active targets as ``/api/v1/targets`` describes them (``labels``, ``health``,
        ``lastScrape``, ``lastError``...)."""
        return list(self._request("/api/v1/targets", {"state": "active"})["data"]
                    ["activeTargets"])

    def wait_for_targets_up(self, timeout: float = 30.0) -> None:
        """Wait until every configured target has been scraped successfully."""
        expected = {(job, target) for job, targets in self.jobs.items() for target in targets}
        deadline = time.monotonic() + timeout
        while True:
            active = self.targets()
            up = {(t["labels"]["job"], t["labels"]["instance"]) for t in active
                  if t["health"] == "up"}
            if expected <= up:
                return
            if time.monotonic() > deadline:
                states = [(t["labels"]["job"], t["labels"]["instance"], t["health"],
                           t["lastError"]) for t in active]
                raise AssertionError(f"targets not up after {timeout:.0f}s: {states}")
            time.sleep(SCRAPE_INTERVAL / 4)

    def next_scrape(self, timeout: float = 30.0) -> None:
        """Wait until every configured target has been scraped successfully again since this
        call: what a query answers next includes everything the targets showed by now."""
        # timestamp(up) is when each target's last scrape started, by this machine's clock;
        # a scrape that started before the call may have read older figures.
        # (timestamp() reads a sample's own time only when given a selector, not an
        # expression: failed scrapes are told apart by querying up as well.)
        since = time.time()
        expected = sum(len(targets) for targets in self.jobs.values())
        deadline = time.monotonic() + timeout
        while True:
            started = self.query("timestamp(up)")
            up = self.query("up")
            if (len(started) >= expected and all(s.value > since for s in started)
                    and all(s.value == 1 for s in up)):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no fresh scrape of every target after {timeout:.0f}s: "
                                     f"started {started}, up {up}")
            time.sleep(SCRAPE_INTERVAL / 4)


@contextlib.contextmanager
def running(jobs: Jobs, folder: Path | None = None) -> Iterator[Prometheus]:
    """A started server scraping ``jobs``; stopped, and its folder removed if this made it,
    on the way out."""
    made = folder is None
    where = Path(tempfile.mkdtemp(prefix="prometheus-")) if folder is None else folder
    server = Prometheus(where, jobs)
    try:
        yield server.start()
    finally:
        server.stop()
        if made:
            shutil.rmtree(where, ignore_errors=True)
