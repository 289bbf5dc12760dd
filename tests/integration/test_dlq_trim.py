"""``dead_letter.max_length`` with many workers dead-lettering at once into a full queue: the
queue ends with exactly ``max_length`` dead letters, the newest, on Redis and RabbitMQ."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from benchmarks._deadletters import fabricate
from celery import Celery
from kombu.connection import Connection

from tests.integration.test_dlq_tools import bomb, letter_of
from tests.support.deadletters import read
from tests.support.trimming import assert_kept_the_newest, send_together
from tests.support.workers import Workers, delete_queue, wait_for

MAX_LENGTH = 20
SENDERS = 8
EACH = 6
#: The warning naming a dead letter dropped to keep a queue at max_length.
DROPPED = re.compile(r"dropped its oldest dead letter, proj\.noop\[([0-9a-f-]+)\]")


@pytest.fixture
def dead_letter_queue(client: Celery) -> Iterator[str]:
    name = f"dlq.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(client, name)


def named_as_dropped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [match.group(1) for record in caplog.records
            if (match := DROPPED.search(record.getMessage()))]


def test_workers_dead_lettering_at_once_into_a_full_queue_leave_exactly_max_length(
        broker: str, dead_letter_queue: str, caplog: pytest.LogCaptureFixture) -> None:
    def app() -> Celery:
        return Celery(broker=broker, set_as_current=False)

    caplog.set_level(logging.WARNING, logger="celery_policies")
    [old] = send_together(app, dead_letter_queue, MAX_LENGTH, senders=1,
                          each=MAX_LENGTH).sent
    assert [letter.id for letter in read(broker, dead_letter_queue)] == old  # full now
    caplog.clear()

    burst = send_together(app, dead_letter_queue, MAX_LENGTH, senders=SENDERS, each=EACH)
    assert burst.failed == []
    kept = [letter.id for letter in read(broker, dead_letter_queue)]
    assert len(kept) == MAX_LENGTH
    assert_kept_the_newest(kept, burst.sent, old)
    everything = old + [task_id for ids in burst.sent for task_id in ids]
    if broker.startswith("redis"):
        # the worker drops them itself, and names each
        dropped = named_as_dropped(caplog)
        assert sorted(dropped + kept) == sorted(everything)
    else:
        # RabbitMQ drops them (x-max-length): the warning says so, without names
        assert named_as_dropped(caplog) == []
        assert any("RabbitMQ drops its oldest dead letter" in record.getMessage()
                   for record in caplog.records)


def test_a_queue_that_exists_without_the_limit_is_trimmed_of_its_surplus_only(
        broker: str, dead_letter_queue: str, caplog: pytest.LogCaptureFixture) -> None:
    """On RabbitMQ a queue declared before without x-max-length cannot be declared again
    with it (PRECONDITION_FAILED): the workers trim it themselves, naming what they drop,
    never below max_length."""
    with Connection(broker) as connection:
        old = fabricate(connection, dead_letter_queue, MAX_LENGTH, origin="work")

    def app() -> Celery:
        return Celery(broker=broker, set_as_current=False)

    caplog.set_level(logging.WARNING, logger="celery_policies")
    burst = send_together(app, dead_letter_queue, MAX_LENGTH, senders=SENDERS, each=EACH)
    assert burst.failed == []
    kept = [letter.id for letter in read(broker, dead_letter_queue)]
    assert len(kept) >= MAX_LENGTH
    assert_kept_the_newest(kept, burst.sent, old)
    [last] = send_together(app, dead_letter_queue, MAX_LENGTH, senders=1, each=1).sent
    kept = [letter.id for letter in read(broker, dead_letter_queue)]
    assert len(kept) == MAX_LENGTH
    assert kept[-1] == last[0]
    everything = old + [task_id for ids in burst.sent for task_id in ids] + last
    assert sorted(named_as_dropped(caplog) + kept) == sorted(everything)
    if not broker.startswith("redis"):
        assert any(f"dead-letter queue {dead_letter_queue} exists without the RabbitMQ limit"
                   in record.getMessage() for record in caplog.records)


def test_two_real_workers_failing_tasks_at_once_keep_the_queue_at_max_length(
        broker: str, client: Celery, workers: Workers, dead_letter_queue: str, key: str,
        tmp_path: Path) -> None:
    """The worker's own path: policies with ``max_length``, two worker processes (two pool
    children each) failing tasks at the same time into one dead-letter queue."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(textwrap.dedent(f"""\
        version: 1
        dead_letter:
          queue: {dead_letter_queue}
          max_length: 5
        defaults:
          max_retries: 0
          on_failure:
            - dead_letter: true
        """), encoding="utf-8")
    started = [workers(policies), workers(policies)]
    ids = [client.send_task("proj.retry.fatal", [key, 9, "Fatal"], queue=workers.queue).id
           for _ in range(24)]

    def dead_lettered() -> list[str]:
        return re.findall(r"dead-lettered proj\.retry\.fatal\[([0-9a-f-]+)\]",
                          "".join(worker.log for worker in started))

    assert wait_for(lambda: len(dead_lettered()) == len(ids), timeout=60), dead_lettered()
    kept = [letter.id for letter in read(broker, dead_letter_queue)]
    assert len(kept) == 5
    assert set(kept) <= set(ids)
    logs = "".join(worker.log for worker in started)
    if broker.startswith("redis"):
        dropped = re.findall(r"dropped its oldest dead letter, proj\.retry\.fatal\[([0-9a-f-]+)\]",
                             logs)
        assert sorted(dropped + kept) == sorted(ids)
    else:
        assert "RabbitMQ drops its oldest dead letter for each new one" in logs
        assert "exists without the RabbitMQ limit" not in logs


def test_redis_trims_the_lists_a_global_key_prefix_names(broker: str) -> None:
    """With kombu's ``global_keyprefix`` transport option the queue's list is stored under
    the prefixed name, which the trimming script must be given (kombu does not prefix EVAL)."""
    if not broker.startswith("redis"):
        pytest.skip("a Redis transport option")
    prefix, queue = f"test.{uuid.uuid4().hex[:8]}:", f"dlq.{uuid.uuid4().hex[:12]}"

    def app() -> Celery:
        return Celery(broker=broker, set_as_current=False,
                      broker_transport_options={"global_keyprefix": prefix})

    server = redis.Redis.from_url(broker)
    try:
        burst = send_together(app, queue, MAX_LENGTH, senders=4, each=MAX_LENGTH // 2)
        assert burst.failed == []
        assert server.llen(prefix + queue) == MAX_LENGTH
        assert server.llen(queue) == 0
    finally:
        server.delete(prefix + queue)


#: Trims into a queue holding a compression bomb, in a process of its own: its peak memory.
BOMB_TRIM = textwrap.dedent("""
    import logging, sys
    from celery import Celery
    from tests.support.memory import peak_mb
    from tests.support.trimming import send_together
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    broker, queue = sys.argv[1:3]
    sent = send_together(lambda: Celery(broker=broker, set_as_current=False), queue, 1,
                         senders=1, each=1)
    assert sent.failed == [], sent.failed
    print("peak MB", peak_mb())
""")


def test_a_worker_trims_a_compression_bomb_without_decompressing_it(
        broker: str, dead_letter_queue: str) -> None:
    """A worker keeping the queue at max_length drops a 242-byte bzip2 letter holding 300 MiB
    as an unreadable message: it reads it as the dlq commands do, never past the size cap."""
    with Connection(broker) as connection:
        letter_of(connection, dead_letter_queue, task="proj.noop", args=[], origin="work",
                  headers={"compression": "application/x-bz2"}, body=bomb())
    done = subprocess.run([sys.executable, "-c", BOMB_TRIM, broker, dead_letter_queue],
                          check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert (f"dead-letter queue {dead_letter_queue} is over max_length 1: dropped its oldest "
            "dead letter, an unreadable message") in done.stdout
    peak_mb = int(done.stdout.rsplit("peak MB", 1)[1])
    assert peak_mb < 150, f"peak RSS {peak_mb} MB"
    [kept] = read(broker, dead_letter_queue)
    assert (kept.task, kept.problem) == ("proj.noop", None)
