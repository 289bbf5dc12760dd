"""The policy file, as pydantic models. Keys copy Celery's task attribute names.

A key left out of a policy is *not set*: it neither overrides the defaults nor the task's own
code. ``model_fields_set`` tells set keys from unset ones. All durations are float seconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ..errors import DocPath
from .durations import format_duration
from .patterns import parse_pattern
from .values import (
    ACCEPTS,
    Backoff,
    Boolean,
    Count,
    CountOrUnlimited,
    Duration,
    ExceptionList,
    ExceptionPath,
    IntervalSeconds,
    Jitter,
    LintCodes,
    NonEmptyText,
    OptionalDuration,
    PositiveCount,
    RateLimit,
    got,
    not_null,
)

#: The queue a ``dead_letter: true`` route publishes to unless ``dead_letter.queue`` says otherwise.
DEFAULT_DEAD_LETTER_QUEUE = "celery.dead_letter"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def set_values(self) -> dict[str, Any]:
        """The keys written in the file, with their parsed values, in declaration order."""
        return {k: getattr(self, k) for k in type(self).model_fields if k in self.model_fields_set}


def _check_backoff_cap(cap: float | None, info: ValidationInfo) -> float | None:
    base = info.data.get("retry_backoff")
    if cap is not None and isinstance(base, float) and not isinstance(base, bool) and cap < base:
        raise ValueError(f"must not be below the retry_backoff base delay "
                         f"({format_duration(base)}), got {format_duration(cap)}")
    return cap


class RetryOverride(_Model):
    """Retry settings of one exception class, under ``retry_per_exception``."""

    max_retries: CountOrUnlimited = Field(
        None, description="How many retries this exception gets, or 'unlimited'.")
    retry_backoff: Backoff = Field(
        None, description="false, true (a 1 s base) or the base delay of exponential backoff.")
    retry_backoff_max: Duration = Field(
        None, description="The cap on one backoff delay.")
    retry_jitter: Jitter = Field(
        None, description="full (uniform in 0..delay), equal (delay/2..delay) or none.")

    _cap = field_validator("retry_backoff_max")(_check_backoff_cap)


class FailureRoute(_Model):
    """One entry of ``on_failure``: a dead-letter queue or a callback task."""

    dead_letter: Annotated[
        str | Literal[True] | None,
        WithJsonSchema({"anyOf": [{"const": True}, {"type": "string", "minLength": 1}]}),
    ] = Field(None, description="A queue name, or true for the file's dead_letter.queue.")
    task: NonEmptyText = Field(
        None, description="The name of a task sent with the failed task's details.")
    when: ExceptionList = Field(
        None, description="Only take this route for these exception classes (and subclasses).")

    @field_validator("dead_letter", mode="before")
    @classmethod
    def _dead_letter_value(cls, value: object) -> object:
        if value is True or (isinstance(value, str) and value.strip()):
            return value.strip() if isinstance(value, str) else value
        raise ValueError(f"expected a queue name or true, got {got(value)}")

    @model_validator(mode="after")
    def _exactly_one_target(self) -> FailureRoute:
        if (self.dead_letter is None) == (self.task is None):
            raise ValueError("a failure route has exactly one of 'dead_letter' or 'task'")
        return self


class PublishRetryPolicy(_Model):
    """Celery's publish-side ``retry_policy``, used when the broker connection fails on send."""

    max_retries: Count = Field(None, description="Give up publishing after this many tries.")
    interval_start: IntervalSeconds = Field(None, description="Wait before the 2nd try.")
    interval_step: IntervalSeconds = Field(None, description="Added to the wait each try.")
    interval_max: IntervalSeconds = Field(None, description="The longest wait between tries.")


class PolicySettings(_Model):
    """The settings a policy (or ``defaults``) can give a task."""

    acks_late: Boolean = Field(
        None, description="Acknowledge the message after the task ran, not before.")
    acks_on_failure_or_timeout: Boolean = Field(
        None, description="With acks_late: acknowledge failed and timed-out tasks too.")
    reject_on_worker_lost: Boolean = Field(
        None, description="With acks_late: redeliver a task whose worker process died.")
    max_redeliveries: CountOrUnlimited = Field(
        None, description="The cap on redeliveries of a task whose worker died "
                          "(3 when reject_on_worker_lost is on).")
    time_limit: OptionalDuration = Field(
        None, description="Hard time limit: the worker process running the task is killed.")
    soft_time_limit: OptionalDuration = Field(
        None, description="Soft time limit: SoftTimeLimitExceeded is raised inside the task.")
    rate_limit: RateLimit = Field(
        None, description="Celery's rate limit per worker: 10/s, 100/m, 1000/h.")
    autoretry_for: ExceptionList = Field(
        None, description="Exception classes that make the task retry.")
    dont_autoretry_for: ExceptionList = Field(
        None, description="Exception classes that never retry, even when autoretry_for lists "
                          "a base class.")
    max_retries: CountOrUnlimited = Field(
        None, description="How many retries before the task fails for good, or 'unlimited'.")
    default_retry_delay: Duration = Field(
        None, description="The delay between retries when retry_backoff is false.")
    retry_backoff: Backoff = Field(
        None, description="false, true (a 1 s base) or the base delay of exponential backoff: "
                          "delay = min(retry_backoff_max, base * 2**retries).")
    retry_backoff_max: Duration = Field(
        None, description="The cap on one backoff delay.")
    retry_jitter: Jitter = Field(
        None, description="full (uniform in 0..delay), equal (delay/2..delay) or none; "
                          "true means full.")
    retry_deadline: OptionalDuration = Field(
        None, description="Stop retrying once the next attempt would start this long after "
                          "the first attempt.")
    retry_per_exception: Annotated[dict[ExceptionPath, RetryOverride] | None,
                                   BeforeValidator(not_null)] = Field(
        None, description="Retry settings for particular exception classes; the most specific "
                          "class (by MRO) wins.")
    on_failure: Annotated[tuple[FailureRoute, ...] | None, BeforeValidator(not_null)] = Field(
        None, description="Failure routes taken, in order, when the task fails for good.")
    publish_retry_policy: Annotated[PublishRetryPolicy | None, BeforeValidator(not_null)] = Field(
        None, description="Celery's retry_policy for publishing when the broker is unreachable.")

    @field_validator("soft_time_limit")
    @classmethod
    def _soft_below_hard(cls, soft: float | None, info: ValidationInfo) -> float | None:
        hard = info.data.get("time_limit")
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError(f"must be shorter than time_limit ({format_duration(hard)}), "
                             f"got {format_duration(soft)}")
        return soft

    _cap = field_validator("retry_backoff_max")(_check_backoff_cap)

    def task_settings(self) -> dict[str, Any]:
        """The task settings written here, without the keys that only say which tasks
        (``match``) or how they are reported (``name``, ``lint_ignore``)."""
        return {k: v for k, v in self.set_values().items() if k in PolicySettings.model_fields}


class LintIgnore(_Model):
    """``lint_ignore``: allowed under ``defaults:`` and in every policy (docs/lint.md)."""

    lint_ignore: LintCodes = Field(
        None, description="Lint rule codes (CP101, ...) not reported for this policy (under "
                          "defaults: for defaults and for findings that belong to no policy).")


class Defaults(PolicySettings, LintIgnore):
    """The ``defaults:`` section: settings every task gets, below any policy."""


def _patterns(value: object) -> object:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f"expected a task-name pattern or a list of them, got {got(value)}")
    if not items:
        raise ValueError("expected at least one task-name pattern")
    return items


def _pattern(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a task-name pattern (a string), got {got(value)}")
    parse_pattern(value)
    return value


_PATTERN_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1}


class Policy(PolicySettings, LintIgnore):
    """A policy: which tasks it applies to (``match``), an optional label, and settings."""

    match: Annotated[
        tuple[Annotated[str, BeforeValidator(_pattern)], ...],
        BeforeValidator(_patterns),
        WithJsonSchema({"anyOf": [_PATTERN_SCHEMA, {"type": "array", "items": _PATTERN_SCHEMA,
                                                    "minItems": 1}]}),
    ] = Field(description="A glob (`*`, `?`, `[...]`), an exact task name, `re:<regex>`, "
                          "or a list of them.")
    name: NonEmptyText = Field(
        None, description="A label shown by explain and in Sentry tags.")


class SentryConfig(_Model):
    """The ``sentry:`` section."""

    dsn: str | None = Field(None, description="The project's DSN, usually ${SENTRY_DSN}.")
    environment: str | None = Field(None, description="Sentry's environment option.")
    release: str | None = Field(None, description="Sentry's release option.")
    report_retries: Literal["breadcrumb", "event", "off"] = Field(
        "breadcrumb", description="Each retry as a breadcrumb, a warning event, or not at all.")
    include_args: Boolean = Field(False, description="Send task arguments to Sentry.")
    max_events_per_minute: PositiveCount = Field(
        60, description="Per fingerprint; beyond it events are counted, not sent.")
    flush_timeout: Duration = Field(
        2.0, description="How long worker shutdown waits for buffered events.")


class DeadLetterConfig(_Model):
    """The ``dead_letter:`` section."""

    queue: NonEmptyText = Field(
        DEFAULT_DEAD_LETTER_QUEUE, description="The queue a 'dead_letter: true' route uses.")
    max_length: PositiveCount = Field(
        None, description="Keep at most this many dead letters, dropping the oldest.")


class BrokerConfig(_Model):
    """The ``broker:`` section: what the broker server is configured with, which the app's
    settings cannot tell (read by ``check``; docs/lint.md)."""

    consumer_timeout: OptionalDuration = Field(
        None, description="RabbitMQ's consumer_timeout as the server sets it (30 min by default "
                          "since RabbitMQ 3.8.17); null when the server has none.")


#: Distinct ``exception`` label values a worker keeps (as ``metrics/names.py``'s
#: ``MAX_EXCEPTION_NAMES``, which a test checks: the file language imports no metrics code).
DEFAULT_MAX_EXCEPTION_NAMES = 50
#: The address a worker's ``/metrics`` listens on unless told otherwise: this machine only.
DEFAULT_METRICS_ADDRESS = "127.0.0.1"


def _port(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # ${ENV} interpolation gives text
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"expected a TCP port, a whole number from 0 to 65535 (0: any free "
                         f"port), got {got(value)}")
    return value


Port = Annotated[int | None, BeforeValidator(_port),
                 WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 65535})]


class MetricsConfig(_Model):
    """The ``metrics:`` section: the worker's Prometheus metrics (docs/metrics.md)."""

    port: Port = Field(
        None, description="Serve /metrics on this port (0: any free port; the worker logs "
                          "which). --policies-metrics-port and $CELERY_POLICIES_METRICS_PORT "
                          "come first and last. Left out: no metrics.")
    address: NonEmptyText = Field(
        None, description=f"The address /metrics listens on ({DEFAULT_METRICS_ADDRESS} "
                          "unless --policies-metrics-address or "
                          "$CELERY_POLICIES_METRICS_ADDRESS says otherwise).")
    max_exception_names: PositiveCount = Field(
        DEFAULT_MAX_EXCEPTION_NAMES,
        description="Distinct exception label values kept; later ones are counted as other.")


def _version(value: object) -> int:
    if value == 1 and type(value) is int:
        return 1
    raise ValueError(f"this celery-policies reads version 1 files, got {got(value)}")


ACCEPTS[_patterns] = "pattern (glob, exact name, `re:<regex>`) or a list of them"
ACCEPTS[_version] = "`1`"
ACCEPTS[_port] = "whole number from 0 to 65535"


class PolicyFile(_Model):
    """A whole policy file."""

    version: Annotated[int, BeforeValidator(_version), WithJsonSchema({"const": 1})] = Field(
        description="The file format's version: `1`.")
    defaults: Defaults | None = Field(
        None, description="Settings applied to every task, below any policy.")
    sentry: SentryConfig | None = Field(None, description="Forwarding failures to Sentry.")
    dead_letter: DeadLetterConfig | None = Field(None, description="The dead-letter queue.")
    broker: BrokerConfig | None = Field(
        None, description="The broker server's own settings, for check's lint rules.")
    metrics: MetricsConfig | None = Field(
        None, description="The worker's Prometheus metrics.")
    policies: tuple[Policy, ...] = Field((), description="Policies, matched by task name.")

    def consistency_problems(self) -> list[tuple[DocPath, str]]:
        """Problems no single value shows: duplicate policy names."""
        seen: dict[str, int] = {}
        problems: list[tuple[DocPath, str]] = []
        for index, policy in enumerate(self.policies):
            if policy.name is None:
                continue
            if policy.name in seen:
                problems.append((("policies", index, "name"),
                                 f"duplicate policy name {policy.name!r} "
                                 f"(also policies[{seen[policy.name]}])"))
            else:
                seen[policy.name] = index
        return problems

    @property
    def dead_letter_queue(self) -> str:
        """The queue a ``dead_letter: true`` route publishes to."""
        section = self.dead_letter
        return (section.queue if section is not None else None) or DEFAULT_DEAD_LETTER_QUEUE

    def label(self, index: int) -> str:
        """How explain and Sentry tags name ``policies[index]``: its name, else its index."""
        return self.policies[index].name or f"policies[{index}]"
