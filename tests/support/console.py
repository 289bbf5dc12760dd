"""The web console in its own process, as ``celery-policies console`` serves it, and the
browser the tests drive it with: Debian's chromium under Playwright (installed by .ci/run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .workers import ROOT

#: Where the tests write their screenshots when $CELERY_POLICIES_SCREENSHOTS is set (the ones
#: docs/console.md shows); elsewhere they go to the test's own folder.
SCREENSHOTS = ROOT / "docs" / "console"
#: How a root process on a machine without a display starts chromium: no sandbox, and no
#: background connections to Google's services (refused on a closed network, many at once).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
#: What the environment of the tests' own process must not pass on to a console.
_OWN = {"CELERY_POLICIES_FILE", "CELERY_POLICIES_CONSOLE_CREDENTIALS",
        "CELERY_POLICIES_CONSOLE_TOKEN"}
_SERVING = re.compile(r"serving the console on (http://\S+/)")


def chromium() -> str:
    """The chromium binary; skip without one (under CI=true, fail: .ci/run installs it)."""
    found = os.environ.get("CELERY_POLICIES_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    message = "no chromium to drive (Debian: apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(message)


def screenshot_path(tmp_path: Path, name: str) -> Path:
    if os.environ.get("CELERY_POLICIES_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS / f"{name}.png"
    return tmp_path / f"{name}.png"


@dataclass
class ConsoleProcess:
    """``celery-policies console ARGS`` on a free port of 127.0.0.1."""

    args: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self, timeout: float = 60.0) -> ConsoleProcess:
        command = [sys.executable, "-m", "celery_policies", "console", "--port", "0",
                   *self.args]
        inherited = {k: v for k, v in os.environ.items() if k not in _OWN}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env={**inherited, **self.env},
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _SERVING.search(self.log)
            if found:
                self.url = found.group(1)
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"the console exited with {self.process.returncode}:\n"
                                     f"{self.log}")
            time.sleep(0.1)
        raise AssertionError(f"the console did not start in {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def request(self, path: str, *, data: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, str, Any]:
        """``(status, body, headers)`` of one request, whatever the status."""
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data,
                                         headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode(), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), error.headers


@contextmanager
def console(args: Sequence[str], log_path: Path,
            env: Mapping[str, str] | None = None) -> Iterator[ConsoleProcess]:
    process = ConsoleProcess(args, log_path, env or {})
    try:
        yield process.start()
    finally:
        process.stop()
