"""Value types of the policy file: each one parses and checks a value, with a readable error.

Each type is ``Annotated[...]`` with a ``BeforeValidator`` that does the whole job and raises
``ValueError`` with the message a user sees, plus a JSON Schema for editors.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import BeforeValidator, WithJsonSchema

from .durations import (
    DURATION_PATTERN,
    MAX_DURATION_SECONDS,
    DurationTooLong,
    format_duration,
    parse_duration,
)
from .lintcodes import CODES_BY_NAME, RULES

#: The spelling of "no limit" for ``max_retries`` and ``max_redeliveries``.
UNLIMITED: Final = "unlimited"

JitterMode = Literal["full", "equal", "none"]

_IDENTIFIER_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_RATE = re.compile(r"\d+(?:\.\d+)?(?:/[smh])?")

_EXCEPTION_SCHEMA: dict[str, Any] = {"type": "string",
                                     "pattern": f"^{_IDENTIFIER_PATH.pattern}$"}
_DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DURATION_SECONDS},
        {"type": "string", "pattern": DURATION_PATTERN},
    ],
    "description": "seconds, or a duration like 500ms, 30s, 5m, 2h, 1d; at most "
                   f"{format_duration(MAX_DURATION_SECONDS)}",
}


def got(value: object) -> str:
    """A found value as the file spells it: null, true, 'text', 42."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _duration(value: object) -> float:
    return parse_duration(value)


def _duration_or_none(value: object) -> float | None:
    return None if value is None else parse_duration(value)


def _seconds_or_zero(value: object) -> float:
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return parse_duration(value)


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    # Strings come from ${ENV} interpolation.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"expected true or false, got {got(value)}")


def _integer(value: object, minimum: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number >= {minimum}, got {got(value)}")
    if value < minimum:
        raise ValueError(f"expected a whole number >= {minimum}, got {value}")
    return value


def _count(value: object) -> int:
    return _integer(value, 0)


def _positive_count(value: object) -> int:
    return _integer(value, 1)


def _count_or_unlimited(value: object) -> int | str:
    if value is None:
        raise ValueError(f"expected a whole number >= 0 or '{UNLIMITED}', got null "
                         f"(write '{UNLIMITED}' to retry without limit)")
    if isinstance(value, str) and value.strip() == UNLIMITED:
        return UNLIMITED
    try:
        return _integer(value, 0)
    except ValueError:
        raise ValueError(f"expected a whole number >= 0 or '{UNLIMITED}', "
                         f"got {got(value)}") from None


def _backoff(value: object) -> float | bool:
    if isinstance(value, bool):
        # Celery's retry_backoff=True means a base of one second (celery/app/autoretry.py).
        return 1.0 if value else False
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return _backoff(value.strip().lower() == "true")
    try:
        return parse_duration(value)
    except DurationTooLong:
        raise
    except ValueError:
        raise ValueError("expected false, true or a base delay like 2s, "
                         f"got {got(value)}") from None


def _jitter(value: object) -> str:
    if value is True:
        return "full"
    if value is False:
        return "none"
    if isinstance(value, str) and value.strip() in ("full", "equal", "none"):
        return value.strip()
    raise ValueError(f"expected one of full, equal, none, got {got(value)}")


def _rate_limit(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and _RATE.fullmatch(value.strip()):
        return value.strip()
    raise ValueError(f"expected a rate like 10/s, 100/m or 1000/h, got {got(value)}")


def _exception_path(value: object) -> str:
    if isinstance(value, str) and _IDENTIFIER_PATH.fullmatch(value.strip()):
        return value.strip()
    raise ValueError("expected an exception class as a dotted import path "
                     f"(requests.exceptions.ConnectionError) or a builtin name, got {got(value)}")


def _one_or_many(value: object) -> object:
    """Accept a single item where a list is expected: ``autoretry_for: ConnectionError``."""
    if value is None:
        raise ValueError("expected a list, got null (write [] for none)")
    return [value] if isinstance(value, str) else value


def _lint_code(value: object) -> str:
    code = value.strip().upper() if isinstance(value, str) else None
    if code in RULES:
        return code
    hint = ""
    if isinstance(value, str) and value.strip() in CODES_BY_NAME:
        hint = f" (rule {value.strip()} is {CODES_BY_NAME[value.strip()]})"
    raise ValueError(f"unknown lint rule code {got(value)}{hint}; the codes are {min(RULES)} to "
                     f"{max(RULES)} (docs/lint.md)")


def _lint_codes(value: object) -> object:
    """Accept one code where a list is expected: ``lint_ignore: CP108``."""
    if value is None:
        raise ValueError("expected a list of lint rule codes, got null (leave the key out)")
    return [value] if isinstance(value, str) else value


def not_null(value: object) -> object:
    """Refuse ``null`` for a key whose absence already means "not set"."""
    if value is None:
        raise ValueError("expected a value, got null (leave the key out to not set it)")
    return value


def _non_empty_text(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"expected a non-empty string, got {got(value)}")


Duration = Annotated[float | None, BeforeValidator(_duration), WithJsonSchema(_DURATION_SCHEMA)]
OptionalDuration = Annotated[
    float | None,
    BeforeValidator(_duration_or_none),
    WithJsonSchema({"anyOf": [_DURATION_SCHEMA, {"type": "null"}],
                    "description": "a duration, or null for no limit"}),
]
IntervalSeconds = Annotated[
    float | None,
    BeforeValidator(_seconds_or_zero),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_DURATION_SECONDS},
                              {"type": "string", "pattern": DURATION_PATTERN}]}),
]
Boolean = Annotated[bool | None, BeforeValidator(_boolean), WithJsonSchema({"type": "boolean"})]
Count = Annotated[
    int | None, BeforeValidator(_count),
    WithJsonSchema({"type": "integer", "minimum": 0}),
]
PositiveCount = Annotated[
    int | None, BeforeValidator(_positive_count),
    WithJsonSchema({"type": "integer", "minimum": 1}),
]
CountOrUnlimited = Annotated[
    int | str | None,
    BeforeValidator(_count_or_unlimited),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"const": UNLIMITED}]}),
]
Backoff = Annotated[
    float | bool | None,
    BeforeValidator(_backoff),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, _DURATION_SCHEMA]}),
]
Jitter = Annotated[
    str | None,
    BeforeValidator(_jitter),
    WithJsonSchema({"anyOf": [{"enum": ["full", "equal", "none"]}, {"type": "boolean"}]}),
]
RateLimit = Annotated[
    str | None,
    BeforeValidator(_rate_limit),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?(/[smh])?$"},
                              {"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]}),
]
ExceptionPath = Annotated[
    str,
    BeforeValidator(_exception_path),
    WithJsonSchema(_EXCEPTION_SCHEMA),
]
ExceptionList = Annotated[
    tuple[ExceptionPath, ...] | None,
    BeforeValidator(_one_or_many),
    WithJsonSchema({"anyOf": [_EXCEPTION_SCHEMA,
                              {"type": "array", "items": _EXCEPTION_SCHEMA}]}),
]
_LINT_CODE_SCHEMA: dict[str, Any] = {"enum": sorted(RULES)}
LintCodes = Annotated[
    tuple[Annotated[str, BeforeValidator(_lint_code)], ...] | None,
    BeforeValidator(_lint_codes),
    WithJsonSchema({"anyOf": [_LINT_CODE_SCHEMA, {"type": "array", "items": _LINT_CODE_SCHEMA}]}),
]
NonEmptyText = Annotated[str | None, BeforeValidator(_non_empty_text),
                         WithJsonSchema({"type": "string", "minLength": 1})]

#: What each value type accepts, in words, for the generated reference (docs/reference.md).
ACCEPTS: dict[Any, str] = {
    _duration: "duration: `30s`, `5m`, `500ms`, `1h30m` or seconds",
    _duration_or_none: "duration, or `null` for no limit",
    _seconds_or_zero: "duration or `0`",
    _boolean: "`true` / `false`",
    _count: "whole number >= 0",
    _positive_count: "whole number >= 1",
    _count_or_unlimited: f"whole number >= 0, or `{UNLIMITED}`",
    _backoff: "`false`, `true` (1 s base) or a base duration",
    _jitter: "`full`, `equal`, `none` (`true` = full, `false` = none)",
    _rate_limit: "Celery rate: `10/s`, `100/m`, `1000/h`",
    _one_or_many: "list of exception classes (dotted path or builtin name)",
    _non_empty_text: "text",
    _exception_path: "exception class",
    _lint_codes: "list of lint rule codes (`CP101`, ...)",
}
