"""The ``dlq`` commands on real brokers: reading takes nothing out, replay loses nothing."""

from __future__ import annotations

import bz2
import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from benchmarks._deadletters import fabricate
from celery import Celery
from kombu.compression import get_encoder
from kombu.connection import Connection
from kombu.entity import Queue

from celery_policies.deadletters.envelope import Envelope, Publisher, dead_letter, now_iso
from tests.support.deadletters import dlq, read
from tests.support.workers import (
    ROOT,
    Worker,
    Workers,
    attempts,
    delete_queue,
    queue_size,
    wait_for,
)

from .test_dead_letters import POLICIES


@pytest.fixture
def dead_letter_queue(client: Celery) -> Iterator[str]:
    name = f"dlq.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(client, name)


def listing(broker: str, queue: str) -> list[dict[str, Any]]:
    done = dlq("list", "--broker", broker, "--queue", queue, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_listing_twice_gives_the_same_result_and_takes_nothing_out(
        broker: str, client: Celery, dead_letter_queue: str) -> None:
    with Connection(broker) as connection:
        ids = fabricate(connection, dead_letter_queue, 50, origin="work",
                        args_of=lambda i: [i])
    first = listing(broker, dead_letter_queue)
    second = listing(broker, dead_letter_queue)
    assert first == second
    assert [letter["id"] for letter in first] == ids
    assert [letter["args"] for letter in first] == [[i] for i in range(50)]
    assert queue_size(client, dead_letter_queue) == 50


def reading(counters: Any, broker: str, queue: str, total: int) -> bool:
    """Whether a ``dlq`` process is in the middle of reading ``queue``."""
    if broker.startswith("redis"):
        return any(client.get("cmd") == "lrange" for client in counters.client_list())
    with Connection(broker) as connection:
        ready = Queue(queue)(connection.default_channel).queue_declare(passive=True)
    return int(ready.message_count) < total  # the rest is held, unacknowledged


def test_killing_list_half_way_leaves_every_dead_letter_in_the_queue(
        broker: str, client: Celery, counters: Any, dead_letter_queue: str) -> None:
    total = 5000
    with Connection(broker) as connection:
        ids = fabricate(connection, dead_letter_queue, total, origin="work")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery_policies", "dlq", "list", "--broker", broker,
         "--queue", dead_letter_queue, "--format", "json"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: reading(counters, broker, dead_letter_queue, total),
                        timeout=30, interval=0.01), "the listing never started reading"
        assert process.poll() is None, "the listing finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(10)
    assert wait_for(lambda: queue_size(client, dead_letter_queue) == total, timeout=30)
    assert [letter.id for letter in read(broker, dead_letter_queue)] == ids


@pytest.fixture
def worker(workers: Workers, dead_letter_queue: str) -> Worker:
    return workers(POLICIES, env={"TEST_DLQ": dead_letter_queue,
                                  "TEST_DEFAULT_QUEUE": workers.queue})


def test_replay_after_fixing_the_cause_runs_every_task_once_more_and_empties_the_queue(
        broker: str, client: Celery, counters: Any, key: str, worker: Worker,
        dead_letter_queue: str) -> None:
    results = [client.send_task("proj.dlq.fixable", [key], queue=worker.queue)
               for _ in range(20)]
    assert wait_for(lambda: len(read(broker, dead_letter_queue)) == 20, timeout=60)

    dry = dlq("replay", "--broker", broker, "--queue", dead_letter_queue, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"20 dead letters to replay from {dead_letter_queue}: 20 to {worker.queue}" in (
        dry.stdout)
    assert "Dry run: nothing was published or removed." in dry.stdout
    time.sleep(1)
    assert len(read(broker, dead_letter_queue)) == 20
    assert len(attempts(counters, key)) == 20

    counters.set(f"{key}:fixed", 1)
    done = dlq("replay", "--broker", broker, "--queue", dead_letter_queue, "--yes")
    assert done.returncode == 0, done.stderr
    assert [result.get(timeout=30) for result in results] == ["ok"] * 20  # same task ids
    events = [event for *_, event in attempts(counters, key)]
    assert (events.count("failed"), events.count("ok")) == (20, 20)
    assert read(broker, dead_letter_queue) == []


def test_replaying_ten_thousand_shows_progress_and_keeps_the_count_exact(
        broker: str, client: Celery, dead_letter_queue: str) -> None:
    total, target = 10_000, f"replayed.{uuid.uuid4().hex[:12]}"
    try:
        with Connection(broker) as connection:
            Queue(target, durable=True)(connection.default_channel).declare()
            ids = fabricate(connection, dead_letter_queue, total, origin=target)
        done = dlq("replay", "--broker", broker, "--queue", dead_letter_queue, "--yes",
                   timeout=300)
        assert done.returncode == 0, done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("replayed ")] == [
            f"replayed {n}/{total}" for n in range(1000, total + 1, 1000)]
        assert f"Replayed {total} of {total} dead letters ({total} to {target})" in done.stdout
        assert read(broker, dead_letter_queue) == []
        assert queue_size(client, target) == total
        assert sorted(letter.id for letter in read(broker, target)) == sorted(ids)
    finally:
        delete_queue(client, target)


def test_replay_with_a_rate_spaces_the_letters_out_and_replays_them_all(
        broker: str, client: Celery, dead_letter_queue: str) -> None:
    total, target = 6, f"replayed.{uuid.uuid4().hex[:12]}"
    try:
        with Connection(broker) as connection:
            Queue(target, durable=True)(connection.default_channel).declare()
            fabricate(connection, dead_letter_queue, total, origin=target)
        started = time.monotonic()
        done = dlq("replay", "--broker", broker, "--queue", dead_letter_queue, "--yes",
                   "--rate", "5")
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert took >= (total - 1) / 5  # the sixth goes no earlier than 1 s in
        assert queue_size(client, target) == total
        assert read(broker, dead_letter_queue) == []
    finally:
        delete_queue(client, target)


#: Every compression kombu registers, by alias, with the module it needs (kombu/compression.py
#: registers each only when that module imports).
KOMBU_CODECS = {"gzip": "zlib", "bzip2": "bz2", "lzma": "lzma",
                "zstd": "backports.zstd (compression.zstd on Python 3.14)",
                "brotli": "brotli (or brotlicffi)"}


def letter_of(connection: Connection, queue: str, *, task: str, args: list[Any],
              origin: str, headers: dict[str, Any] | None = None,
              body: bytes | None = None) -> str:
    """Publish to ``queue`` the dead letter of a task message with these ``headers`` added
    (and this ``body``, else its JSON body); its task id."""
    task_id = str(uuid.uuid4())
    body = body if body is not None else json.dumps(
        [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    ).encode()
    envelope = Envelope(body, "application/json", "utf-8",
                        {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                         "parent_id": None, "group": None, "retries": 0, "eta": None,
                         "expires": None, "timelimit": [None, None], **(headers or {})},
                        {"correlation_id": task_id})
    failure = {"reason": "exception", "exception": "tests.support.proj.Fatal",
               "failed_at": now_iso(), "queue": origin}
    publisher = Publisher(connection)
    try:
        publisher.publish(dead_letter(envelope, failure), queue)
    finally:
        if publisher.connection is not connection:
            publisher.close()
    return task_id


@pytest.mark.parametrize("alias", sorted(KOMBU_CODECS))
def test_compressed_tasks_and_the_previous_releases_letters_of_them_replay_and_run(
        broker: str, client: Celery, counters: Any, key: str, worker: Worker,
        dead_letter_queue: str, alias: str) -> None:
    """A task sent compressed fails into the dead-letter queue; a dead letter the previous
    release wrote of one (decompressed body, ``compression`` header kept) is there too.
    Replayed, both run."""
    try:
        content_type = get_encoder(alias)[1]
    except KeyError:
        pytest.skip(f"{alias}: kombu registers it only when {KOMBU_CODECS[alias]} is "
                    "installed, and it is not")
    sent = client.send_task("proj.dlq.fixable", [key], queue=worker.queue, compression=alias)
    assert wait_for(lambda: len(read(broker, dead_letter_queue)) == 1, timeout=60)
    with Connection(broker) as connection:
        previous = letter_of(connection, dead_letter_queue, task="proj.dlq.fixable",
                             args=[key], origin=worker.queue,
                             headers={"compression": content_type})
    listed = listing(broker, dead_letter_queue)
    assert [(entry["args"], entry.get("problem")) for entry in listed] == [([key], None)] * 2
    counters.set(f"{key}:fixed", 1)
    done = dlq("replay", "--broker", broker, "--queue", dead_letter_queue, "--yes")
    assert done.returncode == 0, done.stderr
    # each ran again, and succeeded (the stored result of the first run is a failure)
    assert wait_for(lambda: all(client.AsyncResult(task_id).result == "ok"
                                for task_id in (sent.id, previous)), timeout=30)
    events = [event for *_, event in attempts(counters, key)]
    assert (events.count("failed"), events.count("ok")) == (1, 2)
    assert read(broker, dead_letter_queue) == []


@functools.cache
def bomb() -> bytes:
    """300 MiB of zeros, bzip2-compressed (242 bytes)."""
    compressor, chunk = bz2.BZ2Compressor(9), b"\0" * 2**20
    return b"".join(compressor.compress(chunk) for _ in range(300)) + compressor.flush()


def test_unreadable_entries_are_listed_and_only_purge_unreadable_removes_them(
        broker: str, client: Celery, dead_letter_queue: str) -> None:
    with Connection(broker) as connection:
        ids = fabricate(connection, dead_letter_queue, 2, origin="work")
        letter_of(connection, dead_letter_queue, task="proj.noop", args=[], origin="work",
                  headers={"compression": "application/x-bz2"}, body=bomb())
        letter_of(connection, dead_letter_queue, task="proj.noop", args=[], origin="work",
                  headers={"compression": "application/x-snappy"}, body=b"?")
    problems = ["entry 3: decompressed size over 10 MB", "entry 4: compressed with "
                "'application/x-snappy', which is not installed here"]
    if broker.startswith("redis"):
        redis.Redis.from_url(broker).lpush(dead_letter_queue, b"\xff not JSON")
        problems.append("entry 5: not JSON (10 bytes)")

    everything = dlq("list", "--broker", broker, "--queue", dead_letter_queue)
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.rstrip().endswith(
        f"{len(problems) + 2} dead letters in {dead_letter_queue} ({len(problems)} unreadable)")
    entries = listing(broker, dead_letter_queue)
    assert [entry["id"] for entry in entries[:2]] == ids
    assert [entry["problem"] for entry in entries[2:]] == [
        problem if problem.endswith(")") else f"{problem} ({size} bytes)"
        for problem, size in zip(problems, stored_sizes(broker, dead_letter_queue)[2:],
                                 strict=False)]
    filtered = dlq("list", "--broker", broker, "--queue", dead_letter_queue,
                   "--task", "proj.noop", "--format", "json")
    assert filtered.returncode == 0, filtered.stderr
    assert [entry["id"] for entry in json.loads(filtered.stdout)] == ids
    assert f"{len(problems)} unreadable entries not matched" in filtered.stderr

    purged = dlq("purge", "--broker", broker, "--queue", dead_letter_queue, "--task",
                 "proj.*", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert f"Deleted 2 dead letters from {dead_letter_queue}" in purged.stdout
    assert [entry["problem"] is not None for entry in listing(broker, dead_letter_queue)
            ] == [True] * len(problems)
    purged = dlq("purge", "--broker", broker, "--queue", dead_letter_queue, "--unreadable",
                 "--yes")
    assert purged.returncode == 0, purged.stderr
    assert f"Deleted {len(problems)} dead letters" in purged.stdout
    assert read(broker, dead_letter_queue) == []


def stored_sizes(broker: str, queue: str) -> list[int]:
    """The size of each entry of ``queue`` as stored, oldest first: the JSON kombu keeps in
    Redis, the message body on RabbitMQ."""
    if broker.startswith("redis"):
        return [len(raw) for raw in reversed(redis.Redis.from_url(broker).lrange(queue, 0, -1))]
    return [len(letter.envelope.body) if letter.problem else 0
            for letter in read(broker, queue)]


@pytest.mark.parametrize("arguments", [
    {"x-queue-type": "quorum", "x-max-length": 1000},
    {"x-max-length": 1000, "x-overflow": "reject-publish"},
    {"x-message-ttl": 3_600_000},
], ids=["quorum", "max-length", "ttl"])
def test_a_rabbitmq_queue_declared_with_arguments_is_listed_replayed_and_purged(
        broker: str, client: Celery, dead_letter_queue: str, arguments: dict[str, Any]
        ) -> None:
    if not broker.startswith("amqp"):
        pytest.skip("queue arguments are RabbitMQ's")
    target = f"replayed.{uuid.uuid4().hex[:12]}"
    try:
        with Connection(broker) as connection:
            Queue(dead_letter_queue, durable=True, queue_arguments=arguments)(
                connection.default_channel).declare()
            Queue(target, durable=True)(connection.default_channel).declare()
            ids = fabricate(connection, dead_letter_queue, 3, origin=target)
        assert [entry["id"] for entry in listing(broker, dead_letter_queue)] == ids
        done = dlq("replay", "--broker", broker, "--queue", dead_letter_queue, "--yes",
                   "--limit", "2")
        assert done.returncode == 0, done.stderr
        assert sorted(letter.id for letter in read(broker, target)) == sorted(ids[:2])
        purged = dlq("purge", "--broker", broker, "--queue", dead_letter_queue, "--yes")
        assert purged.returncode == 0, purged.stderr
        assert queue_size(client, dead_letter_queue) == 0
    finally:
        delete_queue(client, target)
