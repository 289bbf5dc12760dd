"""The README's console command: the demo, then the web console on the demo's own dead
letters and worker (the embedded broker), until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.workers import ROOT, wait_for

_SERVING = re.compile(r"serving the console on (http://\S+/)")


#: ``python -m examples.shop.demo ARGS`` with SIGINT as a terminal's Ctrl-C finds it. A command
#: started in the background by a non-interactive shell ignores SIGINT, and so does everything
#: it starts (POSIX; .ci/run starts the version matrix that way): without this the demo would
#: never see the test's Ctrl-C.
CTRL_C_AS_IN_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'examples.shop.demo'; "
    "runpy.run_module('examples.shop.demo', run_name='__main__', alter_sys=True)")


def stop_all(demo: subprocess.Popen[bytes]) -> None:
    """SIGKILL the demo, its worker (in a session of its own) and its console."""
    children = Path(f"/proc/{demo.pid}/task/{demo.pid}/children").read_text().split()
    for child in map(int, children):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(child) == child:  # the worker leads a group: its pool too
                os.killpg(child, signal.SIGKILL)
            else:
                os.kill(child, signal.SIGKILL)
    demo.kill()
    demo.wait(10)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_the_demo_serves_the_console_on_its_dead_letters_until_interrupted(
        tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_POLICIES_FILE")}
    with log.open("wb") as out:
        demo = subprocess.Popen([sys.executable, "-c", CTRL_C_AS_IN_A_TERMINAL, "--console",
                                 "--console-port", "0"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: _SERVING.search(log.read_text()) or demo.poll() is not None,
                        timeout=120), log.read_text()
        found = _SERVING.search(log.read_text())
        assert found, log.read_text()
        url = found.group(1)
        # the three dead letters the demo leaves (the newsletter was replayed), one group each
        assert wait_for(lambda: '<p id="total">3 dead letters in 3 groups.' in fetch(
            f"{url}dead-letters"), timeout=30)
        page = fetch(f"{url}dead-letters")
        for task in ("shop.billing.charge_card", "shop.reports.build_monthly_report",
                     "shop.reports.render_archive"):
            assert f'<td class="task">{task}</td>' in page
        assert "shop.emails.send_newsletter" not in page
        assert re.search(r'<p id="verdict" class="ok">1 of 1 worker applies fingerprint',
                         fetch(f"{url}fleet"))
    finally:
        time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(60)
        except subprocess.TimeoutExpired:
            stop_all(demo)
            raise AssertionError(f"the demo did not stop on Ctrl-C:\n{log.read_text()}") from None
    text = log.read_text()
    assert code == 0, text
    assert "all as expected" in text
