"""Every Celery, kombu and billiard internal the plugin reads or overrides, in one place.

Supported: Celery 5.3 to 5.7 (kombu 5.3 to 5.7). Internals differ between those releases, so
each is looked up here by feature (an attribute, an import), with the release it appeared
in; no other module names a private Celery or kombu attribute (tests/unit/test_compat.py
checks). Where a behaviour changed with nothing to detect it by, the Celery version is
compared, once, here, citing the code that changed. docs/compatibility.md says what differs
for users.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import celery
from celery import Celery
from celery._state import get_current_task
from celery.app.defaults import DEFAULTS
from celery.app.task import Task
from celery.app.trace import build_tracer
from celery.worker import state
from celery.worker.request import Request

try:  # Celery 5.5+: quorum queues hand countdowns to RabbitMQ's native delayed delivery
    from celery.utils.quorum_queues import detect_quorum_queues
except ImportError:  # Celery 5.3, 5.4
    detect_quorum_queues = None

#: Celery 5.7 splits ``acks_on_failure_or_timeout`` into ``acks_on_failure`` and
#: ``acks_on_timeout``, derived from it in ``Task.bind``, and the worker reads only the two
#: new ones (celery#10150, celery/worker/request.py). 5.3-5.6 read the old name.
SPLIT_ACKS = hasattr(Task, "acks_on_timeout")
#: Celery 5.7: a task whose process died after it stored SUCCESS is not failed
#: (``Request._success_was_stored``). Before, Celery records the failure regardless.
CHECKS_STORED_SUCCESS = hasattr(Request, "_success_was_stored")
#: Celery 5.7 treats a ``SystemExit`` or ``KeyboardInterrupt`` that billiard (4.3+) reports
#: from a pool process as a lost worker (``Request._worker_lost_info``); 5.3-5.6 fail the
#: task with that exception, like any other.
EXIT_IS_LOST_WORKER = hasattr(Request, "_worker_lost_info")
#: Celery 5.7 can retry a task whose pool process was lost (``Task.retry_on_worker_lost``);
#: before, the attribute means nothing to Celery, whatever a task sets.
RETRIES_LOST_WORKERS = hasattr(Task, "retry_on_worker_lost")
#: Celery 5.5+ requeues an ``acks_late`` task's hard time limit when its acks-on-timeout
#: flag is off (``Request.on_failure``: ``isinstance(exc, TimeLimitExceeded) and not ...``);
#: 5.3 and 5.4 reject it without requeue, ending it (celery#10128). Nothing marks the
#: change but the version.
TIMEOUT_REQUEUED = celery.VERSION >= (5, 5)
#: Celery 5.7 stores FAILURE and sends ``task_failure`` for ``Reject(requeue=False)``
#: (celery#4222); before, such a task stays PENDING/STARTED with no signal. Version only.
REJECT_SENDS_FAILURE = celery.VERSION >= (5, 7)
#: Celery 5.7 hands the main process the result of a task that ends just after a warm
#: shutdown began. On 5.3-5.6 a task that ends about 0.2 s into the shutdown can have its
#: result never read there (reproduced on 5.5.3; 5.7 changed how AsynPool keeps and reads
#: jobs in flight at shutdown, celery#10151): its failure routes do not run, its message
#: is not acknowledged by the main process, and the pool process waits 30 s for the result
#: to be read (billiard's ``Worker._ensure_messages_consumed``) before the worker exits,
#: while the main process logs an ``UnpicklingError`` reading what is left of the result.
#: docs/compatibility.md says what users should do. Version only.
READS_RESULTS_AT_WARM_SHUTDOWN = celery.VERSION >= (5, 7)
#: Celery's own autoretry wrapper keeps the task's run here (celery/app/autoretry.py).
CELERY_ORIGINAL_RUN = "_orig_run"
#: ``Task.retry`` reads a ``max_retries`` argument through this attribute (app/task.py).
OVERRIDE_MAX_RETRIES = "override_max_retries"
#: The Celery setting choosing how prefork children start (Celery 5.7).
POOL_START_METHOD_SETTING = "worker_pool_start_method"
#: kombu's Redis transport sweeps unacknowledged messages back to their queue every
#: ``interval x throttle`` seconds: options from kombu 5.7, fixed at 10 x 10 before
#: (kombu/transport/redis.py ``maybe_restore_messages``, ``restore_visible``).
REDIS_SWEEP_OPTIONS = ("unacked_restore_interval", "unacked_restore_throttle")
#: The sweep of kombu before 5.7: ``call_repeatedly(10, ...)``, scanning every 10th call.
REDIS_SWEEP_FIXED = (10.0, 10)


# -- tasks ------------------------------------------------------------------------------------
def acks_on_failure(task: Task) -> bool:
    """Whether Celery acknowledges an ``acks_late`` task's message when it fails."""
    value = task.acks_on_failure if SPLIT_ACKS else task.acks_on_failure_or_timeout
    return bool(value)


def acks_on_timeout(task: Task) -> bool:
    """Whether Celery acknowledges an ``acks_late`` task's message at a hard time limit."""
    value = task.acks_on_timeout if SPLIT_ACKS else task.acks_on_failure_or_timeout
    return bool(value)


def set_acks_on_failure_or_timeout(task: Task, value: bool) -> None:
    """Set ``acks_on_failure_or_timeout`` where this Celery reads it."""
    task.acks_on_failure_or_timeout = value
    if SPLIT_ACKS:
        # Task.bind derives the two once; after that the worker reads only them.
        task.acks_on_failure = task.acks_on_timeout = value


def timeout_is_final(task: Task) -> bool:
    """Whether a hard time limit ends ``task`` (FAILURE, failure routes) rather than Celery
    requeueing its message to run again."""
    if not task.acks_late or not TIMEOUT_REQUEUED:
        return True
    return acks_on_timeout(task)


def forget_exec_options(task: Task) -> None:
    """Drop the task's cached publish options (time limits among them), read again at the
    next publish (``Task._get_exec_options``)."""
    task._exec_options = None


def celery_original_run(task: Task) -> Callable[..., Any] | None:
    """The run under Celery's own autoretry wrapper, if the task code asked for one."""
    run: Callable[..., Any] | None = task.__dict__.get(CELERY_ORIGINAL_RUN)
    return run


def clear_max_retries_override(task: Task) -> None:
    """Forget the ``max_retries`` a ``retry()`` call passed, as Celery's own wrapper does."""
    task.__dict__.pop(OVERRIDE_MAX_RETRIES, None)


def rebuild_tracer(app: Celery, task: Task, sender: Any) -> None:
    """Make a pool child run ``task.run`` as it is now: the child built its tracer, which
    holds the run it found, before ``worker_process_init`` (celery/concurrency/prefork.py
    ``process_initializer``)."""
    task.__trace__ = build_tracer(task.name, task, app.loader, sender, app=app)


def real_app(app: Any) -> Celery:
    """The app behind Celery's ``current_app`` proxy."""
    obj: Celery = app._get_current_object()
    return obj


def running_task() -> Task | None:
    """The task running in this process, if any (what ``celery.current_task`` proxies)."""
    task: Task | None = get_current_task()
    return task


def has_pool_start_method() -> bool:
    """Whether this Celery has the ``worker_pool_start_method`` setting (5.7)."""
    return POOL_START_METHOD_SETTING in DEFAULTS


# -- worker requests (the worker's main process) -----------------------------------------------
def request_context(request: Request) -> Any:
    """The task's ``Context`` built from a worker request (``retries``, ``headers``...)."""
    return request._context


def success_was_stored(request: Request) -> bool:
    """Whether the task stored SUCCESS before its process died, where this Celery checks
    (5.7); earlier releases record the failure anyway, so the failure is final there too."""
    check = getattr(request, "_success_was_stored", None)
    return bool(check()) if check is not None else False


def lost_worker_is_final(request: Request) -> bool:
    """Whether Celery fails for good a task whose pool process was lost."""
    return lost_worker_outcome(request) == "failed"


def lost_worker_outcome(request: Request) -> str:
    """What Celery does with a task whose pool process was lost: ``kept`` (5.7: its success
    was stored before the loss), ``retried`` (5.7: ``retry_on_worker_lost``), ``requeued``
    (``acks_late`` with ``reject_on_worker_lost``) or ``failed``. Mirrors
    ``Request.on_failure``."""
    task = request.task
    if success_was_stored(request):
        return "kept"
    retried = RETRIES_LOST_WORKERS and bool(getattr(task, "retry_on_worker_lost", False))
    exceeded = retried and task.max_retries is not None and (
        request_context(request).retries >= task.max_retries)
    if retried and not exceeded:
        return "retried"
    if task.acks_late and task.reject_on_worker_lost and not exceeded:
        return "requeued"
    return "failed"


def cancelled(request: Request) -> bool:
    """Whether the worker itself terminated the request's process (revoke, cancel)."""
    return bool(getattr(request, "_already_cancelled", False)
                or getattr(request, "_already_revoked", False))


def shutting_down() -> bool:
    """Whether the worker is in a cold shutdown (Celery then ends tasks without failing
    them)."""
    return bool(state.should_terminate)


# -- brokers --------------------------------------------------------------------------------
def uses_quorum_queues(app: Celery) -> bool:
    """Whether the app's queues are quorum queues, so that Celery 5.5+ hands countdowns to
    RabbitMQ's native delayed delivery. Always False before 5.5, which has no such mode."""
    if detect_quorum_queues is None:
        return False
    return bool(detect_quorum_queues(app, "amqp")[0])


def redis_queue_keys(channel: Any, queue: str) -> list[str]:
    """The Redis lists kombu keeps ``queue`` in, one per priority step, highest first."""
    return list(dict.fromkeys(channel._q_for_pri(queue, step)
                              for step in channel.priority_steps))


def redis_server_keys(channel: Any, queue: str) -> list[str]:
    """The keys of ``redis_queue_keys`` as the Redis server names them, for a Lua script.

    With the ``global_keyprefix`` transport option (kombu 5.3+), kombu's client adds the
    prefix to the keys of the commands it lists (``GlobalKeyPrefixMixin``), not to ``EVAL``'s
    (and to ``EVALSHA``'s first key only): a script is given the prefixed names."""
    prefix = getattr(channel, "global_keyprefix", "") or ""
    return [prefix + key for key in redis_queue_keys(channel, queue)]


def redis_sweep_configurable() -> bool:
    """Whether kombu's sweep of unacknowledged Redis messages takes its period from the
    transport options ``REDIS_SWEEP_OPTIONS`` (kombu 5.7); before, it is fixed."""
    from kombu.transport.redis import Channel  # noqa: PLC0415 - needs redis-py installed

    return hasattr(Channel, REDIS_SWEEP_OPTIONS[0])


def redis_sweep_period(transport_options: dict[str, Any]) -> float:
    """Seconds between kombu's sweeps of unacknowledged Redis messages back to their queue,
    with these transport options."""
    from kombu.transport.redis import Channel  # noqa: PLC0415 - needs redis-py installed

    if not redis_sweep_configurable():
        interval, throttle = REDIS_SWEEP_FIXED
        return interval * throttle
    default = float(getattr(Channel, REDIS_SWEEP_OPTIONS[0]))
    interval = float(transport_options.get(REDIS_SWEEP_OPTIONS[0], default))
    if interval <= 0:
        interval = default  # as kombu 5.7 does (Transport.register_with_event_loop)
    throttle = int(transport_options.get(REDIS_SWEEP_OPTIONS[1],
                                         getattr(Channel, REDIS_SWEEP_OPTIONS[1])) or 1)
    return interval * throttle
