"""Every message header the plugin reads or writes, in one place.

Dead letters written by one release are read by the next, and replayed messages carry these
names to workers of other versions: a name here is a contract, never renamed.
"""

from __future__ import annotations

#: kombu's message header naming the compression of the body (kombu/messaging.py,
#: ``Producer._prepare``); kombu's ``Message`` decompresses the body when it is set.
COMPRESSION_HEADER = "compression"
#: RabbitMQ's header counting a message's deliveries, set by quorum queues only; such a queue
#: drops a message after its ``x-delivery-limit`` of them, and reading a queue without taking
#: anything out (consume, then requeue) is a delivery.
DELIVERY_COUNT_HEADER = "x-delivery-count"
#: The header of a dead letter holding its failure record (a dict; see ``failure_record``).
FAILURE_HEADER = "celery_policies_failure"
#: The header counting how often a message was replayed from a dead-letter queue.
REPLAYS_HEADER = "celery_policies_replays"
#: The time (epoch seconds) the first attempt started, carried across retries.
FIRST_ATTEMPT_HEADER = "celery_policies_first_attempt"
#: How often a task was redelivered after losing its worker process.
REDELIVERIES_HEADER = "celery_policies_redeliveries"
#: A task's earlier retries, for breadcrumbs on its final failure in Sentry.
RETRY_HISTORY_HEADER = "celery_policies_retry_history"
#: Headers that describe one run of a task, dropped when it is replayed (fresh retry budget).
RUN_HEADERS = (FAILURE_HEADER, FIRST_ATTEMPT_HEADER, REDELIVERIES_HEADER)

#: Not a header, but it crosses processes the same way: set on an exception the retry wrapper
#: stopped retrying, saying why (a ``GiveUpReason``), it travels with the pickled exception
#: from the pool child to the worker's main process.
GAVE_UP_ATTR = "celery_policies_gave_up"
