"""``celery-policies dlq`` end to end on kombu's filesystem transport: no broker server.

Each test gets its own broker folder and an app module (``--app dlq_test_app``) that reads
the folder from ``$DLQ_TEST_BROKER_DIR``; a message is one ``<time>_<uuid>.<queue>.msg`` file.
"""

from __future__ import annotations

import base64
import bz2
import functools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from benchmarks._deadletters import fabricate
from celery import Celery
from click.testing import CliRunner, Result
from kombu.compression import compress, get_encoder

from celery_policies.cli import policies
from celery_policies.deadletters.envelope import Envelope, Publisher, dead_letter, now_iso
from celery_policies.headers import FAILURE_HEADER

DLQ = "celery.dead_letter"
APP_MODULE = "dlq_test_app"
FOLDER_VAR = "DLQ_TEST_BROKER_DIR"
APP_SOURCE = f"""
    import os

    from celery import Celery

    folder = os.environ[{FOLDER_VAR!r}]
    app = Celery("dlq_test_app", broker="filesystem://", set_as_current=False)
    app.conf.broker_transport_options = {{
        "data_folder_in": os.path.join(folder, "queues"),
        "data_folder_out": os.path.join(folder, "queues"),
        "control_folder": os.path.join(folder, "control"),
    }}
"""


@dataclass
class Broker:
    """A filesystem broker in a folder, and the app the commands load (``--app``)."""

    app: Celery
    queues: Path

    def fabricate(self, count: int, *, queue: str = DLQ, origin: str = "work",
                  task: str = "proj.add",
                  args_of: Callable[[int], list[Any]] = lambda i: [i, i]) -> list[str]:
        with self.app.connection_for_write() as connection:
            return fabricate(connection, queue, count, origin=origin, task=task,
                             args_of=args_of)

    def fabricate_in_order(self, count: int) -> list[str]:
        """Dead letters that failed one after the other: a file name orders messages only
        to the millisecond."""
        ids = []
        for number in range(count):
            ids += self.fabricate(1, args_of=lambda i, n=number: [n])
            time.sleep(0.005)
        return ids

    def publish(self, *, task: str = "proj.add", task_id: str | None = None,
                args: list[Any] | None = None, **failure: Any) -> str:
        """One dead letter whose failure record has ``failure`` changed; its task id."""
        task_id = task_id or str(uuid4())
        body = json.dumps([args or [], {}, {"callbacks": None, "errbacks": None,
                                            "chain": None, "chord": None}]).encode()
        headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                   "retries": 2, "eta": None, "expires": None}
        record = {"reason": "exception", "exception": "ConnectionError",
                  "exception_message": "refused", "traceback": None, "retries": 2,
                  "failed_at": now_iso(), "hostname": "test", "queue": "work", **failure}
        envelope = Envelope(body, "application/json", "utf-8", headers,
                            {"correlation_id": task_id})
        with self.app.connection_for_write() as connection:
            Publisher(connection).publish(dead_letter(envelope, record), DLQ)
        return task_id

    def files(self, queue: str) -> list[str]:
        """The names of the files holding the messages of ``queue``."""
        return sorted(path.name for path in self.queues.iterdir()
                      if path.name.partition(".")[2] == f"{queue}.msg")

    def messages(self, queue: str) -> list[dict[str, Any]]:
        """The stored messages of ``queue``, as kombu wrote them."""
        return [json.loads((self.queues / name).read_text()) for name in self.files(queue)]


def body_of(message: dict[str, Any]) -> bytes:
    assert message["properties"]["body_encoding"] == "base64"
    return base64.b64decode(message["body"])


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    (tmp_path / "queues").mkdir()
    (tmp_path / "control").mkdir()
    (tmp_path / f"{APP_MODULE}.py").write_text(textwrap.dedent(APP_SOURCE), encoding="utf-8")
    monkeypatch.setenv(FOLDER_VAR, str(tmp_path))
    monkeypatch.delenv("CELERY_POLICIES_FILE", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)  # tables as wide as in a pipe: no cropping
    # Restores sys.path afterwards, including the working directory the command adds.
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no ./policies.yaml: the default dead-letter queue
    app = Celery("t", broker="filesystem://", set_as_current=False,
                 broker_transport_options={"data_folder_in": str(tmp_path / "queues"),
                                           "data_folder_out": str(tmp_path / "queues"),
                                           "control_folder": str(tmp_path / "control")})
    yield Broker(app, tmp_path / "queues")
    sys.modules.pop(APP_MODULE, None)  # the next test's module lives in its own folder


def dlq(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(policies, ["dlq", *args], input=input, catch_exceptions=False)


def on_app(command: str, *args: str, input: str | None = None) -> Result:
    return dlq(command, "--app", APP_MODULE, *args, input=input)


# list


def test_list_shows_every_dead_letter_and_how_many(broker: Broker) -> None:
    ids = broker.fabricate(3)
    result = on_app("list")
    assert result.exit_code == 0
    for task_id in ids:
        assert task_id in result.stdout
    assert result.stdout.count("proj.add") == 3
    assert result.stdout.rstrip().endswith(f"3 dead letters in {DLQ}")


def test_list_of_an_empty_queue_says_there_are_none(broker: Broker) -> None:
    result = on_app("list")
    assert result.exit_code == 0
    assert result.stdout.rstrip().endswith(f"0 dead letters in {DLQ}")


def test_list_as_json_gives_the_documented_fields(broker: Broker) -> None:
    ids = broker.fabricate(3, task="proj.mul", args_of=lambda i: [i, 10 * i])
    result = on_app("list", "--format", "json")
    assert result.exit_code == 0
    entries = json.loads(result.stdout)
    assert sorted(entry["id"] for entry in entries) == sorted(ids)
    for entry in entries:
        assert set(entry) == {"id", "task", "reason", "exception", "exception_message",
                              "retries", "failed_at", "queue", "policy", "hostname", "args",
                              "kwargs", "problem"}
        assert entry["problem"] is None
        number = int(entry["exception_message"].removeprefix("fabricated "))
        assert entry["args"] == [number, 10 * number]
        assert entry["kwargs"] == {}
        assert (entry["task"], entry["reason"], entry["exception"], entry["retries"],
                entry["queue"]) == ("proj.mul", "exception", "ConnectionError", 3, "work")
        failed_at = datetime.fromisoformat(entry["failed_at"])
        assert abs(datetime.now(timezone.utc) - failed_at) < timedelta(minutes=1)


def test_list_twice_gives_the_same_output_and_leaves_every_file_in_place(
        broker: Broker) -> None:
    broker.fabricate(3)
    before = broker.files(DLQ)
    first, second = on_app("list", "--format", "json"), on_app("list", "--format", "json")
    assert first.stdout == second.stdout
    assert len(json.loads(first.stdout)) == 3
    assert broker.files(DLQ) == before


def test_list_filters_by_task_glob(broker: Broker) -> None:
    broker.fabricate(2, task="proj.add")
    mul = broker.fabricate(1, task="proj.mul")
    result = on_app("list", "--task", "proj.m*", "--format", "json")
    assert [entry["id"] for entry in json.loads(result.stdout)] == mul


def test_list_filters_by_exception_dotted_or_bare(broker: Broker) -> None:
    broker.fabricate(2)
    declined = broker.publish(exception="shop.errors.CardDeclined")
    for name in ("CardDeclined", "shop.errors.CardDeclined"):
        result = on_app("list", "--exception", name, "--format", "json")
        assert [entry["id"] for entry in json.loads(result.stdout)] == [declined]


def test_list_takes_several_exceptions(broker: Broker) -> None:
    connection_errors = broker.fabricate(2)
    declined = broker.publish(exception="shop.errors.CardDeclined")
    result = on_app("list", "--exception", "CardDeclined", "--exception", "ConnectionError",
                    "--format", "json")
    assert sorted(entry["id"] for entry in json.loads(result.stdout)) == sorted(
        [*connection_errors, declined])


def test_list_since_keeps_only_letters_that_failed_within_the_duration(
        broker: Broker) -> None:
    two_days_ago = (datetime.now(timezone.utc) - timedelta(days=2)).isoformat()
    broker.publish(failed_at=two_days_ago)
    recent = broker.fabricate(1)
    result = on_app("list", "--since", "1h", "--format", "json")
    assert [entry["id"] for entry in json.loads(result.stdout)] == recent
    assert len(json.loads(on_app("list", "--since", "3d", "--format", "json").stdout)) == 2


def test_list_since_with_a_bad_duration_is_a_usage_error(broker: Broker) -> None:
    result = on_app("list", "--since", "soon")
    assert result.exit_code == 2
    assert "Invalid value for '--since'" in result.stderr
    assert "expected a duration like 30s or 5m, got 'soon'" in result.stderr


def test_list_reads_the_queue_given_with_queue(broker: Broker) -> None:
    broker.fabricate(2)
    other = broker.fabricate(1, queue="billing.dead_letter")
    result = on_app("list", "--queue", "billing.dead_letter", "--format", "json")
    assert [entry["id"] for entry in json.loads(result.stdout)] == other


def test_list_reads_the_queue_the_policy_file_names(broker: Broker, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("version: 1\ndead_letter:\n  queue: shop.dead_letter\n", encoding="utf-8")
    monkeypatch.setenv("CELERY_POLICIES_FILE", str(path))
    broker.fabricate(2)
    shop = broker.fabricate(1, queue="shop.dead_letter")
    result = on_app("list")
    assert shop[0] in result.stdout
    assert result.stdout.rstrip().endswith("1 dead letter in shop.dead_letter")


def test_list_without_an_app_or_a_broker_is_a_usage_error(broker: Broker) -> None:
    result = dlq("list")
    assert result.exit_code == 2
    assert "say where the dead letters are: --app MODULE or --broker URL" in result.stderr


def test_list_with_an_app_that_cannot_be_loaded_is_a_usage_error(broker: Broker) -> None:
    result = dlq("list", "--app", "no_such_module_here")
    assert result.exit_code == 2
    assert "cannot load app 'no_such_module_here'" in result.stderr


# show


def test_show_prints_the_failure_the_arguments_and_the_traceback(broker: Broker) -> None:
    traceback = ("Traceback (most recent call last):\n  File \"proj.py\", line 7, in add\n"
                 "shop.errors.CardDeclined: card 4242 declined")
    task_id = broker.publish(task_id="3f2b8c1e-5d4a-4e6f-9a7b-0c1d2e3f4a5b", args=[4242, "EUR"],
                             exception="shop.errors.CardDeclined",
                             exception_message="card 4242 declined", traceback=traceback)
    broker.fabricate(2)
    result = on_app("show", task_id)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"proj.add[{task_id}]"
    assert "  exception: shop.errors.CardDeclined" in lines
    assert "  exception_message: card 4242 declined" in lines
    assert "  args: [4242, 'EUR']" in lines
    assert "  kwargs: {}" in lines
    assert result.stdout.rstrip().endswith(traceback)
    assert "fabricated" not in result.stdout


def test_show_names_the_task_and_its_id_whatever_the_id(broker: Broker) -> None:
    task_id = broker.publish(task_id="c0ffee00-5d4a-4e6f-9a7b-0c1d2e3f4a5b")
    result = on_app("show", task_id)
    assert result.stdout.splitlines()[0] == f"proj.add[{task_id}]"


def test_show_says_when_no_traceback_was_recorded(broker: Broker) -> None:
    [task_id] = broker.fabricate(1)
    result = on_app("show", task_id)
    assert result.stdout.splitlines()[-2:] == ["  traceback:", "  (none recorded)"]


def test_show_of_an_unknown_id_exits_1_and_says_so(broker: Broker) -> None:
    broker.fabricate(2)
    result = on_app("show", "no-such-id")
    assert result.exit_code == 1
    assert result.stderr == f"Error: no dead letter of task no-such-id in {DLQ}\n"


# replay


def test_replay_dry_run_shows_the_plan_and_changes_nothing(broker: Broker) -> None:
    ids = broker.fabricate(3)
    before = broker.files(DLQ)
    result = on_app("replay", "--dry-run")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"3 dead letters to replay from {DLQ}: 3 to work\n")
    assert all(task_id in result.stdout for task_id in ids)
    assert result.stdout.endswith("Dry run: nothing was published or removed.\n")
    assert broker.files(DLQ) == before
    assert broker.files("work") == []


def test_replay_moves_every_letter_to_its_original_queue(broker: Broker) -> None:
    ids = broker.fabricate(3)
    result = on_app("replay", "--yes")
    assert result.exit_code == 0
    assert result.stdout.endswith(
        f"Replayed 3 of 3 dead letters (3 to work); removed them from {DLQ}.\n")
    assert broker.files(DLQ) == []
    assert sorted(message["headers"]["id"] for message in broker.messages("work")) == sorted(ids)


def test_replay_sends_each_letter_to_the_queue_it_came_from(broker: Broker) -> None:
    work = broker.fabricate(2, origin="work")
    reports = broker.fabricate(1, origin="reports")
    result = on_app("replay", "--yes")
    assert "Replayed 3 of 3 dead letters (1 to reports, 2 to work)" in result.stdout
    assert sorted(m["headers"]["id"] for m in broker.messages("work")) == sorted(work)
    assert [m["headers"]["id"] for m in broker.messages("reports")] == reports


def test_replayed_messages_keep_their_body_and_get_a_fresh_retry_budget(
        broker: Broker) -> None:
    [task_id] = broker.fabricate(1, args_of=lambda i: ["a", 1])
    dead_body = body_of(broker.messages(DLQ)[0])
    on_app("replay", "--yes")
    [message] = broker.messages("work")
    assert body_of(message) == dead_body
    assert json.loads(body_of(message))[0] == ["a", 1]
    headers = message["headers"]
    assert (headers["id"], headers["retries"], headers["celery_policies_replays"]) == (
        task_id, 0, 1)
    assert FAILURE_HEADER not in headers
    assert message["properties"]["correlation_id"] == task_id


def test_replay_stopped_by_a_broker_error_has_removed_every_letter_it_replayed(
        broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each letter leaves the queue right after its publish: a rerun replays none twice."""
    ids = broker.fabricate_in_order(5)
    publish = Publisher.publish
    calls = []

    def flaky(self: Publisher, *args: Any, **kwargs: Any) -> None:
        calls.append(args)
        if len(calls) == 3:
            raise ConnectionError("connection reset by peer")
        publish(self, *args, **kwargs)

    monkeypatch.setattr(Publisher, "publish", flaky)
    result = on_app("replay", "--yes")
    assert result.exit_code == 1
    assert "Replayed 2 of 5 dead letters (2 to work)" in result.stdout
    assert (f"Error: could not publish proj.add[{ids[2]}] to work: connection reset by peer; "
            f"the rest are still in {DLQ}") in result.stderr
    assert sorted(m["headers"]["id"] for m in broker.messages("work")) == sorted(ids[:2])
    assert sorted(m["headers"]["id"] for m in broker.messages(DLQ)) == sorted(ids[2:])


def test_replay_reports_its_progress_on_stderr(broker: Broker) -> None:
    broker.fabricate(2)
    assert on_app("replay", "--yes").stderr.splitlines()[-1] == "replayed 2/2"


def test_replay_to_queue_sends_every_letter_there(broker: Broker) -> None:
    ids = broker.fabricate(2, origin="work") + broker.fabricate(1, origin="reports")
    result = on_app("replay", "--yes", "--to-queue", "retry.later")
    assert result.exit_code == 0
    assert "(3 to retry.later)" in result.stdout
    assert sorted(m["headers"]["id"] for m in broker.messages("retry.later")) == sorted(ids)
    assert broker.files("work") == broker.files("reports") == broker.files(DLQ) == []


def test_replay_limit_replays_only_the_oldest(broker: Broker) -> None:
    ids = broker.fabricate_in_order(4)
    result = on_app("replay", "--yes", "--limit", "2")
    assert result.exit_code == 0
    assert "Replayed 2 of 2 dead letters (2 to work)" in result.stdout
    assert sorted(m["headers"]["id"] for m in broker.messages("work")) == sorted(ids[:2])
    assert sorted(m["headers"]["id"] for m in broker.messages(DLQ)) == sorted(ids[2:])


def test_replay_limit_must_be_positive(broker: Broker) -> None:
    broker.fabricate(1)
    result = on_app("replay", "--yes", "--limit", "0")
    assert result.exit_code == 2
    assert broker.files("work") == []


def test_replay_with_new_id_gives_each_task_a_new_id(broker: Broker) -> None:
    ids = broker.fabricate(2)
    on_app("replay", "--yes", "--new-id")
    replayed = broker.messages("work")
    assert len(replayed) == 2
    for message in replayed:
        new = message["headers"]["id"]
        assert new not in ids
        assert message["headers"]["root_id"] == new
        assert message["properties"]["correlation_id"] == new
    assert len({message["headers"]["id"] for message in replayed}) == 2


def test_replay_only_takes_the_letters_the_filters_match(broker: Broker) -> None:
    broker.fabricate(2, task="proj.add")
    mul = broker.fabricate(1, task="proj.mul")
    on_app("replay", "--yes", "--task", "proj.mul")
    assert [m["headers"]["id"] for m in broker.messages("work")] == mul
    assert len(broker.files(DLQ)) == 2


def test_replay_without_yes_asks_and_aborts_on_no(broker: Broker) -> None:
    broker.fabricate(2)
    before = broker.files(DLQ)
    result = on_app("replay", input="n\n")
    assert result.exit_code == 1
    assert "Replay them? [y/N]: n" in result.stdout
    assert "Aborted!" in result.stderr
    assert broker.files(DLQ) == before
    assert broker.files("work") == []


def test_replay_without_yes_goes_ahead_on_yes(broker: Broker) -> None:
    broker.fabricate(2)
    result = on_app("replay", input="y\n")
    assert result.exit_code == 0
    assert (len(broker.files("work")), broker.files(DLQ)) == (2, [])


def test_replay_of_an_empty_queue_says_there_is_nothing(broker: Broker) -> None:
    result = on_app("replay", "--yes")
    assert result.exit_code == 0
    assert result.stdout == f"No dead letters to replay in {DLQ}.\n"


def test_replay_keeps_a_letter_with_no_original_queue_and_exits_1(broker: Broker) -> None:
    broker.fabricate(1)
    stray = broker.publish(queue=None)
    result = on_app("replay", "--yes")
    assert result.exit_code == 1
    assert "Replayed 1 of 2 dead letters (1 to work)" in result.stdout
    assert (f"Not replayed: proj.add[{stray}]: no original queue recorded (use --to-queue)"
            in result.stderr)
    assert [m["headers"]["id"] for m in broker.messages(DLQ)] == [stray]


# purge


def test_purge_counts_then_asks_and_keeps_everything_on_no(broker: Broker) -> None:
    broker.fabricate(3)
    before = broker.files(DLQ)
    result = on_app("purge", input="n\n")
    assert result.exit_code == 1
    assert result.stdout == (f"3 dead letters match in {DLQ}.\n"
                             "Delete them for good? [y/N]: n\n")
    assert broker.files(DLQ) == before


def test_purge_with_yes_deletes_every_letter(broker: Broker) -> None:
    broker.fabricate(3)
    result = on_app("purge", "--yes")
    assert result.exit_code == 0
    assert result.stdout == (f"3 dead letters match in {DLQ}.\n"
                             f"Deleted 3 dead letters from {DLQ}.\n")
    assert broker.files(DLQ) == []


def test_purge_deletes_only_the_letters_the_filters_match(broker: Broker) -> None:
    add = broker.fabricate(2, task="proj.add")
    broker.fabricate(1, task="proj.mul")
    result = on_app("purge", "--yes", "--task", "proj.mul")
    assert result.stdout.endswith(f"Deleted 1 dead letter from {DLQ}.\n")
    assert sorted(m["headers"]["id"] for m in broker.messages(DLQ)) == sorted(add)


def test_purge_of_nothing_matching_asks_nothing(broker: Broker) -> None:
    broker.fabricate(2)
    result = on_app("purge", "--task", "nothing.*")
    assert result.exit_code == 0
    assert result.stdout == f"0 dead letters match in {DLQ}.\n"
    assert len(broker.files(DLQ)) == 2


def test_purge_leaves_other_queues_alone(broker: Broker) -> None:
    broker.fabricate(2)
    other = broker.fabricate(1, queue="billing.dead_letter")
    on_app("purge", "--yes")
    assert [m["headers"]["id"] for m in broker.messages("billing.dead_letter")] == other


# unreadable entries, compression, the size cap


#: 300 MiB of zeros, bzip2-compressed: 242 bytes.
BOMB_BYTES = 300 * 2**20


@functools.cache
def bomb() -> bytes:
    compressor = bz2.BZ2Compressor(9)
    chunk = b"\0" * 2**20
    return b"".join(compressor.compress(chunk) for _ in range(BOMB_BYTES // len(chunk))
                    ) + compressor.flush()


def junk(broker: Broker, data: bytes, *, order: int = 0) -> str:
    """A file in the dead-letter queue that is not a message; written a while ago (not one
    kombu is still writing). ``order`` is the millisecond kombu would have named it after."""
    path = broker.queues / f"{order}_{uuid4()}.{DLQ}.msg"
    path.write_bytes(data)
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path.name


def compressed(broker: Broker, body: bytes, alias: str, *, compress_body: bool = True,
               task_id: str | None = None) -> str:
    """A dead letter whose message says it is compressed with ``alias``: its body
    compressed (as a kombu producer stores it), or not (as the previous release wrote
    the dead letters of compressed tasks); its task id."""
    task_id = task_id or str(uuid4())
    content_type = get_encoder(alias)[1]
    stored = compress(body, content_type)[0] if compress_body else body
    headers = {"lang": "py", "task": "proj.add", "id": task_id, "root_id": task_id,
               "retries": 0, "eta": None, "expires": None, "compression": content_type}
    record = {"reason": "exception", "exception": "ValueError", "failed_at": now_iso(),
              "queue": "work"}
    envelope = Envelope(stored, "application/json", "utf-8", headers,
                        {"correlation_id": task_id})
    with broker.app.connection_for_write() as connection:
        Publisher(connection).publish(dead_letter(envelope, record), DLQ)
    return task_id


def test_list_shows_a_file_that_is_not_json_as_unreadable_with_its_position_and_size(
        broker: Broker) -> None:
    junk(broker, b"\x00garbage" * 10)
    ids = broker.fabricate(2)
    result = on_app("list")
    assert result.exit_code == 0, result.output
    assert "entry 1: not JSON (80 bytes)" in result.stdout
    assert all(task_id in result.stdout for task_id in ids)
    assert result.stdout.rstrip().endswith(f"3 dead letters in {DLQ} (1 unreadable)")


def test_list_as_json_gives_an_unreadable_entry_with_its_problem(broker: Broker) -> None:
    broker.fabricate(1)
    junk(broker, b'{"body": 7}', order=10**12)
    entries = json.loads(on_app("list", "--format", "json").stdout)
    assert [entry["problem"] for entry in entries] == [
        None, "entry 2: not a kombu message: no properties (11 bytes)"]


def test_a_filtered_list_says_how_many_unreadable_entries_it_could_not_match(
        broker: Broker) -> None:
    junk(broker, b"[1, 2]")
    [task_id] = broker.fabricate(1)
    result = on_app("list", "--task", "proj.*")
    assert result.exit_code == 0
    assert task_id in result.stdout
    assert "1 unreadable entry not matched (entry 1: not a kombu message" in result.stderr
    assert "dlq purge --unreadable" in result.stderr


def test_show_of_an_unknown_id_names_the_unreadable_entries_it_could_not_search(
        broker: Broker) -> None:
    junk(broker, b"{")
    result = on_app("show", "some-id")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: no dead letter of task some-id in {DLQ} (1 unreadable "
                             "entry could not be searched: entry 1: not JSON (1 bytes))\n")


def test_purge_unreadable_deletes_exactly_the_unreadable_entries(broker: Broker) -> None:
    junk(broker, b"\xff\xfe")
    ids = broker.fabricate(2)
    junk(broker, b"null", order=10**12)
    result = on_app("purge", "--unreadable", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"2 dead letters match in {DLQ}.\n"
                             f"Deleted 2 dead letters from {DLQ}.\n")
    # sorted: kombu names a file after its millisecond, which both letters may share
    assert sorted(m["headers"]["id"] for m in broker.messages(DLQ)) == sorted(ids)


def test_a_filtered_purge_never_deletes_an_unreadable_entry(broker: Broker) -> None:
    name = junk(broker, b"\xff\xfe")
    broker.fabricate(2)
    result = on_app("purge", "--task", "proj.*", "--yes")
    assert result.exit_code == 0, result.output
    assert broker.files(DLQ) == [name]


@pytest.mark.parametrize("option", [("--task", "x"), ("--exception", "E"), ("--since", "1h")])
def test_purge_unreadable_with_a_filter_is_a_usage_error(broker: Broker,
                                                         option: tuple[str, str]) -> None:
    junk(broker, b"\xff")
    result = on_app("purge", "--unreadable", *option)
    assert result.exit_code == 2
    assert "--unreadable takes no filter" in result.stderr
    assert len(broker.files(DLQ)) == 1


def test_a_file_kombu_may_still_be_writing_is_left_out(broker: Broker) -> None:
    path = broker.queues / f"0_{uuid4()}.{DLQ}.msg"
    path.write_bytes(b'{"body": "half')
    result = on_app("list")
    assert result.stdout.rstrip().endswith(f"0 dead letters in {DLQ}")


def test_a_compression_bomb_is_listed_as_too_large(broker: Broker) -> None:
    [task_id] = broker.fabricate(1)
    compressed(broker, bomb(), "bzip2", compress_body=False)  # stored as kombu would
    result = on_app("list", "--format", "json")
    entries = json.loads(result.stdout)
    assert entries[0]["id"] == task_id
    size = (broker.queues / broker.files(DLQ)[1]).stat().st_size  # the stored entry
    assert entries[1]["problem"] == f"entry 2: decompressed size over 10 MB ({size} bytes)"


def test_the_size_cap_is_changed_with_its_environment_variable(
        broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps([["x" * 2**20, "y" * 2**20], {}, {}]).encode()
    task_id = compressed(broker, body, "gzip")
    monkeypatch.setenv("CELERY_POLICIES_DLQ_MAX_BODY_MB", "1")
    [entry] = json.loads(on_app("list", "--format", "json").stdout)
    size = (broker.queues / broker.files(DLQ)[0]).stat().st_size
    assert entry["problem"] == f"entry 1: decompressed size over 1 MB ({size} bytes)"
    monkeypatch.setenv("CELERY_POLICIES_DLQ_MAX_BODY_MB", "3")
    [entry] = json.loads(on_app("list", "--format", "json").stdout)
    assert (entry["id"], entry["problem"], len(entry["args"][0])) == (task_id, None, 2**20)


@pytest.mark.parametrize("value", ["lots", "0", "-1", "1.5"])
def test_a_bad_size_cap_is_a_clear_error(broker: Broker, monkeypatch: pytest.MonkeyPatch,
                                        value: str) -> None:
    monkeypatch.setenv("CELERY_POLICIES_DLQ_MAX_BODY_MB", value)
    result = on_app("list")
    assert result.exit_code == 1
    assert result.stderr == ("Error: $CELERY_POLICIES_DLQ_MAX_BODY_MB must be a whole number "
                             f"of megabytes, 1 or more, not {value!r}\n")


def test_listing_a_compression_bomb_stays_small_in_memory(broker: Broker) -> None:
    compressed(broker, bomb(), "bzip2", compress_body=False)
    script = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from celery_policies.cli import policies
        from tests.support.memory import peak_mb
        result = CliRunner().invoke(policies, ["dlq", "list", "--app", sys.argv[1]])
        assert result.exit_code == 0, result.output
        print(peak_mb())
    """)
    done = subprocess.run([sys.executable, "-c", script, APP_MODULE], capture_output=True,
                          text=True, check=True, cwd=broker.queues.parent,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    peak_mb = int(done.stdout.split()[-1])
    assert peak_mb < 150, f"peak RSS {peak_mb} MB"


@pytest.mark.parametrize("alias", ["gzip", "bzip2", "lzma", "zstd", "brotli"])
@pytest.mark.parametrize("compress_body", [True, False], ids=["compressed", "previous-release"])
def test_a_compressed_dead_letter_is_read_and_replayed_as_a_plain_message(
        broker: Broker, alias: str, compress_body: bool) -> None:
    try:
        get_encoder(alias)
    except KeyError:
        pytest.skip(f"{alias}: not installed, so kombu has not registered it")
    body = json.dumps([[6, 7], {}, {}]).encode()
    task_id = compressed(broker, body, alias, compress_body=compress_body)
    [entry] = json.loads(on_app("list", "--format", "json").stdout)
    assert (entry["id"], entry["args"], entry["problem"]) == (task_id, [6, 7], None)
    result = on_app("replay", "--yes")
    assert result.exit_code == 0, result.output
    [message] = broker.messages("work")
    assert "compression" not in message["headers"]
    assert body_of(message) == body
