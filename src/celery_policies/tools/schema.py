"""The key reference (docs/reference.md), generated from the models so the two cannot drift.

``celery-policies schema --format markdown`` prints it; a test compares it with the docs.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from ..spec import _regex, _yaml, durations, loader, patterns
from ..spec.model import (
    BrokerConfig,
    DeadLetterConfig,
    FailureRoute,
    LintIgnore,
    MetricsConfig,
    Policy,
    PolicyFile,
    PolicySettings,
    PublishRetryPolicy,
    RetryOverride,
    SentryConfig,
)
from ..spec.settings import SETTINGS
from ..spec.values import ACCEPTS

_SECTIONS: list[tuple[str, type[BaseModel], tuple[str, ...] | None, str]] = [
    ("Top level", PolicyFile, None, "The keys of the file itself."),
    ("Policies: choosing tasks", Policy, ("match", "name"),
     "Each entry of `policies:` names the tasks it applies to, then any settings below."),
    ("Settings", PolicySettings, None,
     "Allowed under `defaults:` and in every policy. A key left out is not set: the task keeps "
     "its own code's value (or Celery's default). A key set in the file overrides task code."),
    ("`retry_per_exception` entries", RetryOverride, None,
     "`retry_per_exception` maps an exception class to these keys; a key left out keeps the "
     "task's value. The most specific class (nearest in the raised exception's MRO) wins."),
    ("`on_failure` routes", FailureRoute, None,
     "Taken in order when a task fails for good; give exactly one of `dead_letter` or `task`."),
    ("`publish_retry_policy`", PublishRetryPolicy, None,
     "Celery's `retry_policy` for sending messages while the broker is unreachable."),
    ("Silencing lint rules", LintIgnore, None,
     "Allowed under `defaults:` and in every policy: `check` and the worker do not report "
     "these rules where they would point at this policy ([lint.md](lint.md))."),
    ("`sentry:`", SentryConfig, None, "Forwarding failures to Sentry."),
    ("`dead_letter:`", DeadLetterConfig, None, "The dead-letter queue."),
    ("`broker:`", BrokerConfig, None,
     "What the broker server is configured with, which the app's settings cannot tell; read "
     "by `check`'s lint rules ([lint.md](lint.md))."),
    ("`metrics:`", MetricsConfig, None,
     "The worker's Prometheus metrics ([metrics.md](metrics.md)); they change no task's "
     "behaviour and are not part of the fleet fingerprint."),
]


def _accepts(field: FieldInfo) -> str:
    for item in field.metadata:
        if isinstance(item, BeforeValidator) and item.func in ACCEPTS:
            return ACCEPTS[item.func]
    return _describe(field.annotation)


def _describe(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping (below)"
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
    if origin is typing.Literal:
        return ", ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        for item in annotation.__metadata__:
            if isinstance(item, BeforeValidator) and item.func in ACCEPTS:
                return ACCEPTS[item.func]
        return _describe(args[0])
    if origin in (tuple, list):
        return f"list of {_describe(args[0])}"
    if origin is dict:
        return f"mapping of exception class to {_describe(args[-1])}"
    if args:
        return " or ".join(_describe(a) for a in args)
    return {str: "text", int: "whole number", bool: "`true` / `false`"}.get(annotation, "value")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    return "not set" if field.default in (None, ()) else f"`{field.default}`"


#: Keys whose ``null`` means something (no limit, no value); every other key refuses null.
NULLABLE_KEYS = frozenset({key for key, info in SETTINGS.items() if info.no_limit == "null"}
                          | {"dsn", "environment", "release", "consumer_timeout"})


def _strip_nulls(node: Any, key: str | None = None) -> Any:
    """Make the schema say what the loader does: no ``null`` where a key refuses it."""
    if isinstance(node, list):
        return [_strip_nulls(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for name, value in node.items():
        if name == "default" and value is None:
            continue
        if name == "properties":
            out[name] = {k: _strip_nulls(v, k) for k, v in value.items()}
        else:
            out[name] = _strip_nulls(value)
    branches = out.get("anyOf")
    if key is not None and key not in NULLABLE_KEYS and isinstance(branches, list):
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            del out["anyOf"]
            out.update(kept[0])
        else:
            out["anyOf"] = kept
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, for editors (``celery-policies schema``)."""
    document: dict[str, Any] = _strip_nulls(PolicyFile.model_json_schema(mode="validation"))
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "celery-policies file"
    return document


def _language() -> list[str]:
    """What the tables cannot say: patterns, ``${ENV}`` references and the file's limits."""
    days = durations.MAX_DURATION_SECONDS / 86400
    return [
        "## Regular expressions", "",
        "A `re:` pattern must match the whole task name. Python's `re` module backtracks, and "
        "a match cannot be interrupted, so a pattern that could keep a worker busy for hours "
        "on one task name is refused when the file is read (by `check`, `explain`, `simulate` "
        "and the worker alike), with its file:line:col. A regex is refused when it has:", "",
        "- a quantifier that can repeat (`*`, `+`, `{m,n}` with n > 1) around a group that "
        "holds another quantifier of varying length: `(a+)+`, `(\\w+\\.?)+_task`, "
        "`(x?){30}`;",
        "- such a quantifier around alternatives that can start with the same character, or "
        "match nothing: `(\\d\\d|[0-9])+`, `(ab|a)*`, `(shop\\.|\\w+)+`;",
        "- quantifiers in a row that can match the same characters, and so trade them back "
        f"and forth, in more than {_regex.MAX_REGEX_SPLITS:,} ways on a "
        f"{_regex.NAME_LENGTH}-character name, counting {_regex.NAME_LENGTH} for each `*` or "
        "`+`, 2 for a `?` and n-m+1 for `{m,n}`, multiplied: `.*a.*a.*b` (a million) passes, "
        "`.*a.*a.*a.*b` and `\\w+\\w+\\w+\\w+_task` do not. A character that none of the "
        "quantifiers before it can match ends the row, so `[a-z]+\\.[a-z]+\\.[a-z]+\\.[a-z]+` "
        "is four rows of a hundred. What backtracking remains takes at most a fraction of a "
        "second on one name.", "",
        "The check is deliberately cautious and fixed. Where it refuses a pattern you know is "
        "safe, write it differently (`[\\w.]+\\.send` for `(\\w+\\.)+send`) or use "
        "globs: a glob (`shop.*.send_*`, or a list of them) never backtracks this way, whatever "
        "its number of `*`.", "",
        "## Environment variables", "",
        "In any string value, `${NAME}` is the variable's value and `${NAME:-default}` its "
        "value or, when it is not set, the default; `$$` is a literal `$`. A default may hold "
        "references itself: `${A:-${B:-5}}` is A, else B, else 5 (a variable in a default is "
        f"only needed when the default is used), nested at most {_yaml.MAX_ENV_NESTING} deep. "
        "A variable that is not set and has no default, an unclosed `${` and a bad name are "
        "errors.", "",
        "## Limits", "",
        "Fixed limits, each a located error when passed. They are not settings: each guards "
        "`check`, `explain` and worker start against a file that would hang or exhaust them, "
        "and a real policy file stays far inside every one. The limits of the `dlq` commands "
        "(the decompressed size of a dead letter, the broker timeout) can be changed: see "
        "deadletters.md and commands.md.", "",
        "| what | limit |", "|---|---|",
        f"| a duration | at most {days:.0f} days (`{days:.0f}d`, "
        f"{durations.MAX_DURATION_SECONDS:.0f} seconds), and more than zero (a "
        "`publish_retry_policy` interval may be `0`) |",
        f"| the file | at most {loader.MAX_FILE_BYTES} bytes, UTF-8 |",
        f"| nesting | {_yaml.MAX_DEPTH} levels of mappings and lists, and of merges of merges |",
        f"| aliases and merge keys (`<<`) | together add at most {_yaml.MAX_ALIAS_NODES} nodes: "
        "each node an alias repeats and each key a merge copies counts one |",
        f"| `${{...}}` in a default | nested at most {_yaml.MAX_ENV_NESTING} deep |",
        f"| a pattern in `match` | at most {patterns.MAX_PATTERN_LENGTH} characters |",
        f"| a `re:` pattern | no nested quantifiers; at most {_regex.MAX_REGEX_SPLITS:,} ways "
        "to split a name (above) |", "",
        "No retry delay, time limit or deadline needs more than a year, and Celery cannot use "
        "much more: it turns a countdown into an ETA with `now + timedelta(seconds=...)`, "
        "which fails past the year 9999, and Python's thread waits refuse more than about "
        "292 years. Write `null` (where a key allows it) for no limit at all.", "",
    ]


def render_markdown() -> str:
    """The reference of every key of the policy file, as Markdown."""
    lines = ["# Policy file reference", "",
             "Generated from the models by `celery-policies schema --format markdown`; "
             "durations are seconds inside, and every key mirrors Celery's task attribute of "
             "the same name where Celery has one.", ""]
    for title, model, only, intro in _SECTIONS:
        lines += [f"## {title}", "", intro, "", "| key | accepts | default | meaning |",
                  "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if only is not None and name not in only:
                continue
            lines.append(f"| `{name}` | {_accepts(field)} | {_default(field)} | "
                         f"{field.description or ''} |")
        lines.append("")
    lines += _language()
    return "\n".join(lines)
