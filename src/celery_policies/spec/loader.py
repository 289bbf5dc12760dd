"""Reading a policy file: bytes → YAML with positions → validated ``PolicyFile``.

Every problem, from a bad byte to a duplicate policy name, becomes a located ``Problem``; all
of them are gathered and raised together as one ``PolicyFileError``.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import DocPath, PolicyFileError, Problem
from . import _yaml
from .exception_refs import exception_references, import_exception
from .model import PolicyFile

#: The largest policy file read, in bytes.
MAX_FILE_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class Policies:
    """A validated policy file and where each of its values was written."""

    file: str
    model: PolicyFile
    document: _yaml.Document

    def position(self, path: DocPath, *, key: bool = False) -> tuple[int, int]:
        """Line and column of the value (or, with ``key``, the key) at ``path``.

        A path that was not written (a default, a normalised list) falls back to its nearest
        written ancestor.
        """
        return _locate(self.document, path, key=key)

    def problem(self, path: DocPath, message: str, *, key: bool = False) -> Problem:
        line, column = self.position(path, key=key)
        return Problem(line, column, self.file, path, message)


def _locate(doc: _yaml.Document, path: DocPath, *, key: bool = False) -> tuple[int, int]:
    if key and path in doc.keys:
        return doc.keys[path]
    for end in range(len(path), -1, -1):
        if path[:end] in doc.values:
            return doc.values[path[:end]]
    return (1, 1)


def load_policies(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None,
                  import_exceptions: bool = False) -> Policies:
    """Read and validate a policy file; raise ``PolicyFileError`` listing every problem.

    With ``import_exceptions``, every exception class the file names is imported too, so a
    typo in a dotted path is reported here rather than when a task first fails.
    """
    name = os.fspath(path)
    try:
        size = os.path.getsize(name)
        _check_size(size, name)
        raw = Path(name).read_bytes()
    except OSError as exc:
        raise PolicyFileError([Problem(1, 1, name, (), f"cannot read the file: "
                                       f"{exc.strerror or exc}")]) from exc
    return parse_policies(raw, file=name, environ=environ, import_exceptions=import_exceptions)


def parse_policies(source: bytes | str, *, file: str = "<string>",
                   environ: Mapping[str, str] | None = None,
                   import_exceptions: bool = False) -> Policies:
    """Validate policy-file content held in memory; ``file`` names it in messages."""
    if isinstance(source, bytes):
        _check_size(len(source), file)
        text = _decode(source, file)
    else:
        text = source
    doc = _yaml.parse(text, environ)
    problems = [Problem(line, col, file, path, msg) for path, (line, col), msg in doc.problems]
    if doc.data is None and problems:
        raise PolicyFileError(problems)
    if not isinstance(doc.data, dict):
        line, col = _locate(doc, ())
        kind = _kind(doc.data)
        raise PolicyFileError([*problems, Problem(line, col, file, (),
                                                  f"expected a mapping with 'version: 1' and "
                                                  f"'policies:' at the top, got {kind}")])
    flagged = {p.doc_path for p in problems}
    model: PolicyFile | None = None
    try:
        model = PolicyFile.model_validate(doc.data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            problem = _from_pydantic(error, doc, file)
            if not any(problem.doc_path[: len(f)] == f for f in flagged):
                problems.append(problem)
    if model is not None:
        policies = Policies(file, model, doc)
        problems.extend(policies.problem(p, m) for p, m in model.consistency_problems())
        if import_exceptions:
            problems.extend(check_exceptions(policies))
    if problems or model is None:
        raise PolicyFileError(problems)
    return Policies(file, model, doc)


def check_exceptions(policies: Policies) -> list[Problem]:
    """Import every exception class the file names; one problem per one that fails."""
    problems = []
    for path, dotted, is_key in exception_references(policies.model):
        try:
            import_exception(dotted)
        except ValueError as exc:
            problems.append(policies.problem(path, str(exc), key=is_key))
    return problems


def _check_size(size: int, file: str) -> None:
    if size > MAX_FILE_BYTES:
        raise PolicyFileError([Problem(1, 1, file, (), f"the file is {size} bytes; "
                                       f"a policy file may be at most {MAX_FILE_BYTES}")])


def _decode(raw: bytes, file: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise PolicyFileError([Problem(line, column, file, (),
                                       f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                                       f"at offset {exc.start})")]) from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), f"a {type(value).__name__}")


def _from_pydantic(error: Any, doc: _yaml.Document, file: str) -> Problem:
    loc: DocPath = tuple(error["loc"])
    kind = error["type"]
    on_key = loc[-1:] == ("[key]",)  # pydantic's marker for a bad mapping key
    if on_key:
        loc = loc[:-1]
    if kind == "missing":
        line, col = _locate(doc, loc[:-1])
        return Problem(line, col, file, loc[:-1], f"missing required key {loc[-1]!r}")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        line, col = _locate(doc, loc, key=True)
        message = f"unknown key {key!r}"
        close = difflib.get_close_matches(key, _fields_at(loc[:-1]), n=1, cutoff=0.6)
        return Problem(line, col, file, loc, message + (f" (did you mean {close[0]!r}?)"
                                                         if close else ""))
    if kind == "value_error":
        message = str(error["ctx"]["error"])
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping, got {_kind(error['input'])}"
    elif kind in ("tuple_type", "list_type"):
        message = f"expected a list, got {_kind(error['input'])}"
    elif kind == "string_type":
        message = f"expected a string, got {_kind(error['input'])}"
    else:
        message = f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {error['input']!r}"
    line, col = _locate(doc, loc, key=on_key)
    return Problem(line, col, file, loc, message)


def _fields_at(loc: DocPath) -> list[str]:
    """The keys allowed by the model found at ``loc`` (for "did you mean" hints)."""
    current: Any = PolicyFile
    for part in loc:
        model = _find_model(current)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            current = model.model_fields[part].annotation
            continue
        # a list index or a mapping key: step into the item or value type
        args = [a for a in typing.get_args(current) if a is not Ellipsis]
        current = args[-1] if args else None
    model = _find_model(current)
    return list(model.model_fields) if model else []


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _find_model(arg)
            if found:
                return found
    return None

