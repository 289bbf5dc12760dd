"""``dead_letter.max_length`` on kombu's filesystem transport (the demo's broker): workers
dead-lettering at once into a full queue leave exactly ``max_length``, the newest, and name
every dead letter they drop."""

from __future__ import annotations

import logging
import re

import pytest
from celery import Celery

from tests.support.trimming import assert_kept_the_newest, send_together
from tests.unit import test_dlq_cli
from tests.unit.test_dlq_cli import DLQ, Broker

#: The filesystem broker fixture of tests/unit/test_dlq_cli.py, under another name.
filesystem_broker = test_dlq_cli.broker
MAX_LENGTH = 10
SENDERS = 12
EACH = 8
#: Bursts in a row: the race is a matter of timing, each burst one more chance to lose it.
ROUNDS = 3
DROPPED = re.compile(r"dropped its oldest dead letter, proj\.noop\[([0-9a-f-]+)\]")


@pytest.fixture
def broker(filesystem_broker: Broker) -> Broker:
    """A filesystem broker and its app module, as in tests/unit/test_dlq_cli.py."""
    return filesystem_broker


def test_workers_dead_lettering_at_once_into_a_full_queue_leave_exactly_max_length(
        broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    def app() -> Celery:
        return Celery(broker="filesystem://", set_as_current=False,
                      broker_transport_options=broker.app.conf.broker_transport_options)

    caplog.set_level(logging.WARNING, logger="celery_policies")
    [old] = send_together(app, DLQ, MAX_LENGTH, senders=1, each=MAX_LENGTH).sent
    everything = list(old)
    for _ in range(ROUNDS):
        burst = send_together(app, DLQ, MAX_LENGTH, senders=SENDERS, each=EACH)
        assert burst.failed == []
        everything += [task_id for ids in burst.sent for task_id in ids]
        kept = [message["headers"]["id"] for message in broker.messages(DLQ)]
        assert len(kept) == MAX_LENGTH
        assert_kept_the_newest(kept, burst.sent, old)
        old = everything[:-MAX_LENGTH]
    dropped = [match.group(1) for record in caplog.records
               if (match := DROPPED.search(record.getMessage()))]
    assert sorted(dropped + kept) == sorted(everything)
