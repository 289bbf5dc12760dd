"""Reading dead-letter queues in tests, through the same stores the ``dlq`` commands use."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from kombu.connection import Connection

from celery_policies.deadletters.envelope import DeadLetter
from celery_policies.deadletters.stores import open_store
from celery_policies.deadletters.tools import select

from .workers import ROOT


def read(broker_url: str, queue: str) -> list[DeadLetter]:
    """Every dead letter in ``queue``, oldest first; the queue is left as it was."""
    with Connection(broker_url) as connection:
        store = open_store(connection, queue)
        try:
            return select(store)
        finally:
            store.close()


def of(letters: Sequence[DeadLetter], task_id: str) -> list[DeadLetter]:
    return [letter for letter in letters if letter.id == task_id]


def dlq(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``celery-policies dlq ARGS`` as a user would, in its own process."""
    return subprocess.run([sys.executable, "-m", "celery_policies", "dlq", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
