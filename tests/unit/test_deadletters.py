"""Dead letters without a broker: replaying, decoding, clipping, filtering, and which
failures are final (``final_reason``)."""

from __future__ import annotations

import base64
import json
import pickle
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import (
    Ignore,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    Terminated,
    TimeLimitExceeded,
    WorkerLostError,
)
from celery.worker import state
from kombu.compression import compress, encoders, get_encoder
from kombu.message import Message as KombuMessage
from kombu.serialization import loads, registry

from celery_policies import compat
from celery_policies.deadletters.envelope import (
    TRACEBACK_LIMIT,
    DeadLetter,
    Envelope,
    clip_traceback,
    dead_letter,
    matches_exception,
)
from celery_policies.deadletters.reading import Unreadable, decompressed, from_payload
from celery_policies.deadletters.tools import Filters
from celery_policies.headers import FAILURE_HEADER, GAVE_UP_ATTR, REPLAYS_HEADER
from celery_policies.redelivery import RedeliveriesExhausted
from celery_policies.worker.routes import final_reason

TASK_ID = "6a3e1c9e-0d4f-4c8e-9d1b-1f6f0f3c2a11"
PARENT_ID = "0b7f3d55-8e8a-4d0c-8a48-5d0f6f2b9b0e"
BODY = json.dumps([[2, 3], {"twice": True},
                   {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
                  ).encode()


def failure(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "reason": "exception", "exception": "requests.exceptions.ConnectionError",
        "exception_message": "refused", "traceback": "Traceback ...", "retries": 3,
        "failed_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "queue": "work", "priority": None,
    }
    return {**record, **changes}


def letter(*, body: bytes = BODY, content_type: str | None = "application/json",
           headers: dict[str, Any] | None = None, properties: dict[str, Any] | None = None,
           **failure_changes: Any) -> DeadLetter:
    """A dead letter of ``proj.add`` as the worker publishes it, with ``headers`` added."""
    base = {"lang": "py", "task": "proj.add", "id": TASK_ID, "root_id": TASK_ID,
            "parent_id": None, "retries": 3, "eta": "2030-01-01T00:00:00+00:00",
            "expires": "2030-01-02T00:00:00+00:00", "celery_policies_first_attempt": 1.5e9,
            "celery_policies_redeliveries": 2, FAILURE_HEADER: failure(**failure_changes)}
    return DeadLetter(Envelope(body, content_type, "utf-8", {**base, **(headers or {})},
                               {"correlation_id": TASK_ID, **(properties or {})}))


@pytest.fixture(autouse=True)
def _no_worker_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """``final_reason`` reads the worker's global ``state.should_terminate`` (set by a cold
    shutdown, None otherwise): pin it, whatever another test left there."""
    monkeypatch.setattr(state, "should_terminate", None)


# DeadLetter.replay


def test_replay_resets_the_retry_count() -> None:
    assert letter().replay().headers["retries"] == 0


def test_replay_drops_eta_and_expires() -> None:
    headers = letter().replay().headers
    assert (headers["eta"], headers["expires"]) == (None, None)


def test_replay_drops_the_headers_of_the_failed_run() -> None:
    headers = letter().replay().headers
    assert FAILURE_HEADER not in headers
    assert "celery_policies_first_attempt" not in headers
    assert "celery_policies_redeliveries" not in headers


def test_replay_counts_the_first_replay_as_one() -> None:
    assert letter().replay().headers[REPLAYS_HEADER] == 1


def test_replay_increments_an_existing_replay_count() -> None:
    assert letter(headers={REPLAYS_HEADER: 4}).replay().headers[REPLAYS_HEADER] == 5


def test_replay_keeps_the_other_task_headers() -> None:
    headers = letter(headers={"parent_id": PARENT_ID}).replay().headers
    assert (headers["task"], headers["id"], headers["parent_id"]) == (
        "proj.add", TASK_ID, PARENT_ID)


def test_replay_restores_the_priority_from_the_failure_record() -> None:
    assert letter(priority=7).replay().properties["priority"] == 7


def test_replay_sets_no_priority_when_none_was_recorded() -> None:
    assert "priority" not in letter(priority=None).replay().properties


def test_replay_keeps_the_id_by_default() -> None:
    replayed = letter().replay()
    assert replayed.headers["id"] == TASK_ID
    assert replayed.properties["correlation_id"] == TASK_ID


def test_replay_with_a_new_id_changes_id_correlation_id_and_own_root_id() -> None:
    replayed = letter().replay(new_id=True)
    new = replayed.headers["id"]
    assert new != TASK_ID
    assert replayed.properties["correlation_id"] == new
    assert replayed.headers["root_id"] == new


def test_replay_with_a_new_id_keeps_a_root_id_of_another_task() -> None:
    replayed = letter(headers={"root_id": PARENT_ID}).replay(new_id=True)
    assert replayed.headers["id"] != TASK_ID
    assert replayed.headers["root_id"] == PARENT_ID


def test_replay_with_a_new_id_gives_each_replay_its_own_id() -> None:
    dead = letter()
    assert dead.replay(new_id=True).headers["id"] != dead.replay(new_id=True).headers["id"]


def test_replay_leaves_the_body_bytes_and_content_type_unchanged() -> None:
    body = b"\x80\x04\x95 not even json \xff"
    replayed = letter(body=body, content_type="application/x-python-serialize").replay()
    assert replayed.body == body
    assert (replayed.content_type, replayed.content_encoding) == (
        "application/x-python-serialize", "utf-8")


def test_replay_leaves_the_dead_letter_itself_unchanged() -> None:
    dead = letter()
    dead.replay(new_id=True)
    assert dead.envelope.headers["retries"] == 3
    assert dead.envelope.headers[FAILURE_HEADER]["reason"] == "exception"
    assert dead.id == TASK_ID


# DeadLetter.arguments


def test_arguments_of_a_protocol_2_json_body() -> None:
    assert letter().arguments() == ([2, 3], {"twice": True})


def test_arguments_of_a_protocol_1_body() -> None:
    body = json.dumps({"task": "proj.add", "id": TASK_ID, "args": [1],
                       "kwargs": {"x": 2}}).encode()
    assert letter(body=body).arguments() == ([1], {"x": 2})


def test_arguments_of_a_body_that_is_not_json_are_unknown() -> None:
    assert letter(body=b"{not json").arguments() == (None, None)


def test_arguments_of_a_body_of_another_shape_are_unknown() -> None:
    assert letter(body=b'"just a string"').arguments() == (None, None)


UNPICKLED: list[str] = []


def _unpickled() -> str:
    UNPICKLED.append("loaded")
    return "loaded"


class _Trap:
    def __reduce__(self) -> tuple[Any, ...]:
        return _unpickled, ()


def test_arguments_of_a_pickle_body_are_unknown_and_it_is_never_unpickled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # kombu refuses pickle unless the app accepts it (accept_content); an app that does
    # must still not have dead letters unpickled by the dlq commands.
    monkeypatch.setattr(registry, "_disabled_content_types", set())
    UNPICKLED.clear()
    body = pickle.dumps(([_Trap()], {}, {}))
    dead = letter(body=body, content_type="application/x-python-serialize")
    assert dead.arguments() == (None, None)
    assert UNPICKLED == []


def test_arguments_of_a_message_with_no_content_type_are_unknown() -> None:
    assert letter(content_type=None).arguments() == (None, None)


# clip_traceback


def test_clip_traceback_keeps_the_end_and_says_how_much_was_cut() -> None:
    text = "A" * 100 + "B" * TRACEBACK_LIMIT
    assert clip_traceback(text) == "[100 characters cut]\n" + "B" * TRACEBACK_LIMIT


def test_clip_traceback_leaves_a_traceback_at_the_limit_alone() -> None:
    text = "x" * TRACEBACK_LIMIT
    assert clip_traceback(text) == text


def test_clip_traceback_leaves_a_short_traceback_and_none_alone() -> None:
    assert clip_traceback("Traceback: boom") == "Traceback: boom"
    assert clip_traceback(None) is None


# Envelope.jsonable


def test_jsonable_gives_a_utf8_body_as_text() -> None:
    envelope = Envelope("[[\"é\"], {}, {}]".encode(), "application/json", "utf-8",
                        {"id": TASK_ID}, {"correlation_id": TASK_ID})
    data = envelope.jsonable()
    assert (data["body"], data["body_encoding"]) == ('[["é"], {}, {}]', "utf-8")
    assert data["headers"] == {"id": TASK_ID}
    assert data["properties"] == {"correlation_id": TASK_ID}
    assert json.loads(json.dumps(data)) == data


def test_jsonable_gives_a_body_that_is_not_utf8_as_base64() -> None:
    body = b"\x80\x04\x95\xff\x00"
    envelope = Envelope(body, "application/x-python-serialize", "binary", {}, {})
    data = envelope.jsonable()
    assert data["body_encoding"] == "base64"
    assert base64.b64decode(data["body"]) == body
    assert (data["content_type"], data["content_encoding"]) == (
        "application/x-python-serialize", "binary")


# matches_exception


def test_matches_exception_by_dotted_name() -> None:
    assert matches_exception(letter(), ["requests.exceptions.ConnectionError"])


def test_matches_exception_by_bare_class_name() -> None:
    assert matches_exception(letter(), ["ConnectionError"])


def test_matches_exception_if_any_name_matches() -> None:
    assert matches_exception(letter(), ["KeyError", "ConnectionError"])


def test_matches_exception_refuses_another_class_or_a_partial_path() -> None:
    assert not matches_exception(letter(), ["Timeout"])
    assert not matches_exception(letter(), ["exceptions.ConnectionError"])
    assert not matches_exception(letter(), ["Connection"])


def test_matches_exception_refuses_a_letter_without_a_failure_record() -> None:
    dead = DeadLetter(Envelope(BODY, "application/json", "utf-8", {"id": TASK_ID}, {}))
    assert not matches_exception(dead, ["ConnectionError"])


# Filters


def test_no_filter_matches_every_letter() -> None:
    assert Filters()(letter())


@pytest.mark.parametrize(("glob", "matched"), [
    ("proj.add", True), ("proj.*", True), ("*.add", True), ("proj.ad?", True),
    ("proj.mul", False), ("PROJ.*", False), ("proj", False),
])
def test_task_filter_is_a_case_sensitive_glob(glob: str, matched: bool) -> None:
    assert Filters(task=glob)(letter()) is matched


@pytest.mark.parametrize(("names", "matched"), [
    (("ConnectionError",), True), (("requests.exceptions.ConnectionError",), True),
    (("KeyError", "ConnectionError"), True), (("KeyError",), False),
])
def test_exception_filter_takes_dotted_or_bare_names(names: tuple[str, ...],
                                                     matched: bool) -> None:
    assert Filters(exceptions=names)(letter()) is matched


def test_since_filter_keeps_a_letter_failed_within_the_window() -> None:
    recent = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    assert Filters(since=600)(letter(failed_at=recent))


def test_since_filter_drops_a_letter_failed_before_the_window() -> None:
    old = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    assert not Filters(since=3600)(letter(failed_at=old))


@pytest.mark.parametrize("failed_at", [None, "yesterday", 1700000000])
def test_since_filter_drops_a_letter_without_a_readable_failure_time(failed_at: Any) -> None:
    assert not Filters(since=3600)(letter(failed_at=failed_at))


def test_ids_filter_keeps_only_the_listed_ids() -> None:
    assert Filters(ids=("other", TASK_ID))(letter())
    assert not Filters(ids=("other",))(letter())


def test_every_filter_given_must_match() -> None:
    assert Filters(task="proj.*", exceptions=("ConnectionError",), since=60,
                   ids=(TASK_ID,))(letter())
    assert not Filters(task="proj.*", exceptions=("KeyError",))(letter())
    assert not Filters(task="other.*", exceptions=("ConnectionError",))(letter())
    assert not Filters(task="proj.*", ids=("other",))(letter())


# final_reason


def request(*, acks_late: bool = False, reject_on_worker_lost: bool = False,
            acks_on_timeout: bool = True, max_retries: int | None = 3,
            retry_on_worker_lost: bool = False, retries: int = 0,
            success_stored: bool = False) -> SimpleNamespace:
    """What ``final_reason`` reads of a worker's ``Request``."""
    task = SimpleNamespace(acks_late=acks_late, reject_on_worker_lost=reject_on_worker_lost,
                           acks_on_timeout=acks_on_timeout, acks_on_failure=True,
                           acks_on_failure_or_timeout=acks_on_timeout,
                           max_retries=max_retries, retry_on_worker_lost=retry_on_worker_lost)
    stub = SimpleNamespace(task=task, _context=SimpleNamespace(retries=retries),
                           _already_cancelled=False, _already_revoked=False)
    if compat.CHECKS_STORED_SUCCESS:  # Request._success_was_stored, Celery 5.7
        stub._success_was_stored = lambda: success_stored
    return stub


@pytest.mark.parametrize("exc", [Retry(), Ignore(), Terminated(9)],
                         ids=["Retry", "Ignore", "Terminated"])
def test_final_reason_of_a_retry_ignore_or_revoke_is_none(exc: BaseException) -> None:
    assert final_reason(request(), exc) is None


def test_final_reason_of_a_reject_with_requeue_is_none() -> None:
    assert final_reason(request(), Reject("again", requeue=True)) is None


def test_final_reason_of_a_reject_without_requeue_is_rejected() -> None:
    assert final_reason(request(), Reject("never", requeue=False)) == "rejected"


def test_final_reason_of_a_lost_worker_with_reject_on_worker_lost_is_none() -> None:
    lost = request(acks_late=True, reject_on_worker_lost=True)
    assert final_reason(lost, WorkerLostError("SIGKILL")) is None


@pytest.mark.parametrize(("acks_late", "reject_on_worker_lost"),
                         [(False, False), (True, False), (False, True)])
def test_final_reason_of_a_lost_worker_otherwise_is_worker_lost(
        acks_late: bool, reject_on_worker_lost: bool) -> None:
    lost = request(acks_late=acks_late, reject_on_worker_lost=reject_on_worker_lost)
    assert final_reason(lost, WorkerLostError("SIGKILL")) == "worker_lost"


def test_final_reason_of_a_system_exit_nobody_sent_is_worker_lost_from_celery_5_7() -> None:
    """5.3-5.6 fail the task with the SystemExit, like any exception."""
    expected = "worker_lost" if compat.EXIT_IS_LOST_WORKER else "exception"
    assert final_reason(request(), SystemExit(1)) == expected


def test_final_reason_of_a_system_exit_the_worker_sent_to_revoke_is_none_from_5_7() -> None:
    revoked = request()
    revoked._already_revoked = True
    expected = None if compat.EXIT_IS_LOST_WORKER else "exception"
    assert final_reason(revoked, SystemExit(1)) == expected


def test_final_reason_of_a_lost_worker_that_celery_retries_is_none() -> None:
    """Only Celery 5.7 retries lost workers: before, the attribute means nothing."""
    lost = request(retry_on_worker_lost=True, max_retries=3, retries=2)
    expected = None if compat.RETRIES_LOST_WORKERS else "worker_lost"
    assert final_reason(lost, WorkerLostError("SIGKILL")) == expected


def test_final_reason_of_a_lost_worker_out_of_retries_is_worker_lost() -> None:
    lost = request(retry_on_worker_lost=True, max_retries=3, retries=3)
    assert final_reason(lost, WorkerLostError("SIGKILL")) == "worker_lost"


def test_final_reason_of_a_lost_worker_out_of_retries_is_worker_lost_despite_reject() -> None:
    """Before 5.7 Celery knows no retry_on_worker_lost: it requeues (reject_on_worker_lost)."""
    lost = request(acks_late=True, reject_on_worker_lost=True, retry_on_worker_lost=True,
                   max_retries=3, retries=3)
    expected = "worker_lost" if compat.RETRIES_LOST_WORKERS else None
    assert final_reason(lost, WorkerLostError("SIGKILL")) == expected


def test_final_reason_of_a_lost_worker_after_its_success_was_stored_is_none() -> None:
    """Only Celery 5.7 looks: before, it records the failure over the success."""
    expected = None if compat.CHECKS_STORED_SUCCESS else "worker_lost"
    assert final_reason(request(success_stored=True), WorkerLostError("SIGKILL")) == expected


def test_final_reason_of_exhausted_redeliveries_is_worker_lost() -> None:
    capped = request(acks_late=True, reject_on_worker_lost=True)
    assert final_reason(capped, RedeliveriesExhausted("lost 3 times")) == "worker_lost"


def test_final_reason_of_a_hard_time_limit_requeued_by_acks_late_is_none() -> None:
    """Celery 5.3 and 5.4 reject it without requeue instead: final there."""
    requeued = request(acks_late=True, acks_on_timeout=False)
    expected = None if compat.TIMEOUT_REQUEUED else "time_limit"
    assert final_reason(requeued, TimeLimitExceeded(5)) == expected


@pytest.mark.parametrize(("acks_late", "acks_on_timeout"),
                         [(True, True), (False, False), (False, True)])
def test_final_reason_of_a_hard_time_limit_otherwise_is_time_limit(
        acks_late: bool, acks_on_timeout: bool) -> None:
    timed_out = request(acks_late=acks_late, acks_on_timeout=acks_on_timeout)
    assert final_reason(timed_out, TimeLimitExceeded(5)) == "time_limit"


def test_final_reason_of_a_soft_time_limit_is_time_limit() -> None:
    assert final_reason(request(), SoftTimeLimitExceeded()) == "time_limit"


def test_final_reason_of_an_exception_past_its_retry_deadline_is_deadline() -> None:
    exc = ConnectionError("refused")
    setattr(exc, GAVE_UP_ATTR, "deadline")
    assert final_reason(request(), exc) == "deadline"


def test_final_reason_of_an_exception_given_up_for_another_reason_is_exception() -> None:
    exc = ConnectionError("refused")
    setattr(exc, GAVE_UP_ATTR, "max_retries")
    assert final_reason(request(), exc) == "exception"


def test_final_reason_of_a_plain_exception_is_exception() -> None:
    assert final_reason(request(), ValueError("bad")) == "exception"


def test_final_reason_during_a_cold_shutdown_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "should_terminate", 1)
    assert final_reason(request(), ValueError("bad")) is None


def test_a_failure_time_without_a_timezone_is_taken_as_utc() -> None:
    """Letters written elsewhere may carry naive times; ``--since`` must not crash on them."""
    naive = letter(failed_at="2030-01-01T00:00:00")
    assert naive.failed_at == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert Filters(since=60)(naive)


# compression: a received message's body is already decompressed


#: Every compression kombu registers, by alias, with the module it needs
#: (kombu/compression.py registers each only when that module imports).
KOMBU_CODECS = {"gzip": "zlib", "bzip2": "bz2", "lzma": "lzma",
                "zstd": "backports.zstd (compression.zstd on Python 3.14)",
                "brotli": "brotli (or brotlicffi)"}


def codec(alias: str) -> str:
    """The content type kombu compresses with for ``alias``; skips, naming the missing
    module, when kombu has not registered it here."""
    try:
        return get_encoder(alias)[1]
    except KeyError:
        pytest.skip(f"{alias}: kombu registers it only when {KOMBU_CODECS[alias]} is "
                    "installed, and it is not")


def test_every_compression_kombu_registers_is_tested() -> None:
    assert set(encoders()) <= {get_encoder(alias)[1] for alias in KOMBU_CODECS
                               if get_encoder_or_none(alias)}


def get_encoder_or_none(alias: str) -> Any:
    try:
        return get_encoder(alias)
    except KeyError:
        return None


@pytest.mark.parametrize("alias", sorted(KOMBU_CODECS))
def test_a_received_compressed_message_is_dead_lettered_decompressed_without_the_header(
        alias: str) -> None:
    content_type = codec(alias)
    body, _ = compress(BODY, content_type)
    message = KombuMessage(body=body, content_type="application/json",
                           content_encoding="utf-8",
                           headers={"task": "proj.add", "id": TASK_ID,
                                    "compression": content_type})
    envelope = Envelope.of(message)
    assert envelope.body == BODY
    assert "compression" not in envelope.headers
    replayed = DeadLetter(dead_letter(envelope, failure())).replay()
    assert "compression" not in replayed.headers
    assert loads(replayed.body, replayed.content_type or "", replayed.content_encoding or ""
                 ) == json.loads(BODY)


# unreadable letters and the filters


UNREADABLE = DeadLetter(Envelope(b"\xff", None, None, {}, {}), None, "entry 1: not JSON (1 bytes)")


def test_no_filter_at_all_takes_an_unreadable_letter_too() -> None:
    assert Filters()(UNREADABLE)


@pytest.mark.parametrize("filters", [Filters(task="*"), Filters(exceptions=("Exception",)),
                                     Filters(since=10**9), Filters(ids=("?",))],
                         ids=["task", "exception", "since", "ids"])
def test_no_filter_matches_an_unreadable_letter(filters: Filters) -> None:
    assert not filters(UNREADABLE)


def test_the_unreadable_filter_matches_exactly_the_unreadable_letters() -> None:
    assert Filters(unreadable=True)(UNREADABLE)
    assert not Filters(unreadable=True)(letter())


# reading stored messages


def test_a_stream_cut_short_is_unreadable_not_taken_as_plain() -> None:
    body = compress(BODY * 50, "application/x-bz2")[0]
    with pytest.raises(Unreadable, match="compressed body is cut short"):
        decompressed(body[:-20], "application/x-bz2", 2**20)


def test_a_codec_kombu_has_not_registered_is_unreadable() -> None:
    with pytest.raises(Unreadable, match="compressed with 'application/x-snappy', which is "
                       "not installed here"):
        decompressed(b"x", "application/x-snappy", 2**20)


@pytest.mark.parametrize("alias", sorted(KOMBU_CODECS))
def test_decompression_stops_at_the_cap(alias: str) -> None:
    content_type = codec(alias)
    body = compress(b"\0" * (2**20 + 1), content_type)[0]
    with pytest.raises(Unreadable, match="decompressed size over 1 MB"):
        decompressed(body, content_type, 2**20)
    assert decompressed(body, content_type, 2 * 2**20) == b"\0" * (2**20 + 1)


def test_a_body_in_the_previous_releases_format_is_read_as_it_is() -> None:
    raw = json.dumps({"body": base64.b64encode(BODY).decode(), "content-type":
                      "application/json", "content-encoding": "utf-8",
                      "headers": {"id": TASK_ID, "compression": "application/x-gzip"},
                      "properties": {"body_encoding": "base64"}}).encode()
    read = from_payload(raw, None, 1, 2**20)
    assert (read.problem, read.envelope.body, read.envelope.headers) == (
        None, BODY, {"id": TASK_ID})
