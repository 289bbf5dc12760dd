"""Safe YAML with positions: plain data plus the line and column of every value and key.

Only YAML's plain types are built (mappings, lists, strings, numbers, booleans, null,
timestamps); any other tag is refused, so nothing in a file is ever constructed or executed.
Aliases are allowed (``<<: *base`` merges are common) but their expansion is capped, which
stops "billion laughs" documents.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import DocPath

try:  # the C loader is several times faster; fall back to pure Python where libyaml is absent
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

#: How many nodes aliases may add to a document by repeating anchored ones.
MAX_ALIAS_NODES = 10_000
#: How deeply mappings and lists may nest.
MAX_DEPTH = 64

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "str", "timestamp"))
_ENV = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Position = tuple[int, int]


@dataclass
class Document:
    """What the YAML layer read: data, positions (1-based line, column) and problems."""

    data: Any = None
    values: dict[DocPath, Position] = field(default_factory=dict)
    keys: dict[DocPath, Position] = field(default_factory=dict)
    problems: list[tuple[DocPath, Position, str]] = field(default_factory=list)


def _position(node: Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.doc = Document()
        self.environ = environ
        self.constructor = SafeConstructor()
        self.seen: set[int] = set()
        self.open: set[int] = set()  # nodes being built: meeting one again is a recursive alias
        self.alias_nodes = 0

    def problem(self, path: DocPath, node: Node, message: str) -> None:
        self.doc.problems.append((path, _position(node), message))

    def build(self, node: Node, path: DocPath, depth: int = 0) -> Any:
        if id(node) in self.seen:
            self.alias_nodes += 1
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise _TooLarge(node, f"aliases expand the document beyond {MAX_ALIAS_NODES} "
                                      "nodes; refusing it (a 'billion laughs' document?)")
        else:
            self.seen.add(id(node))
        if depth > MAX_DEPTH:
            raise _TooLarge(node, f"the document nests deeper than {MAX_DEPTH} levels")
        if id(node) in self.open:
            raise _TooLarge(node, "an alias refers to a node that contains it (recursive alias)")
        self.doc.values[path] = _position(node)
        if isinstance(node, MappingNode | SequenceNode):
            self.open.add(id(node))
            try:
                return self.collection(node, path, depth)
            finally:
                self.open.discard(id(node))
        if node.tag not in _PLAIN_TAGS:
            self.refuse(node, path)
            return None
        try:
            value = self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            kind = node.tag.removeprefix(_TAG)
            self.problem(path, node, f"cannot read {node.value!r} as a YAML {kind}: {exc}")
            return None
        return self.interpolate(value, node, path) if isinstance(value, str) else value

    def collection(self, node: Node, path: DocPath, depth: int) -> Any:
        if isinstance(node, MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            if node.tag != _TAG + "seq":
                self.refuse(node, path)
                return None
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return None

    def refuse(self, node: Node, path: DocPath) -> None:
        self.problem(path, node, f"YAML tag {node.tag!r} is not allowed: a policy file holds "
                                 "plain values only and nothing in it is ever constructed")

    def mapping(self, node: MappingNode, path: DocPath, depth: int) -> dict[str, Any] | None:
        if node.tag != _TAG + "map":
            self.refuse(node, path)
            return None
        result: dict[str, Any] = {}
        merged: list[MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                if not all(isinstance(s, MappingNode) for s in sources):
                    self.problem(path, key_node, "'<<' merges a mapping or a list of mappings")
                merged.extend(s for s in sources if isinstance(s, MappingNode))
                continue
            if not isinstance(key_node, ScalarNode):
                self.problem(path, key_node, "a mapping key must be plain text")
                continue
            key = str(key_node.value)
            child = (*path, key)
            if key in result:
                first = self.doc.keys[child]
                self.problem(child, key_node,
                             f"duplicate key {key!r} (first at line {first[0]})")
                continue
            self.doc.keys[child] = _position(key_node)
            result[key] = self.build(value_node, child, depth + 1)
        for source in merged:  # keys written in this mapping win over merged ones
            for key_node, value_node in source.value:
                key = str(key_node.value)
                if isinstance(key_node, ScalarNode) and key not in result:
                    child = (*path, key)
                    self.doc.keys[child] = _position(key_node)
                    result[key] = self.build(value_node, child, depth + 1)
        return result

    def interpolate(self, text: str, node: Node, path: DocPath) -> str:
        """Replace ``${NAME}`` and ``${NAME:-default}``; ``$$`` is a literal ``$``."""
        if "$" not in text:
            return text

        def replace(match: re.Match[str]) -> str:
            whole, body = match.group(0), match.group(1)
            if whole == "$$":
                return "$"
            if body is None:
                self.problem(path, node, f"unclosed '${{' in {text!r}")
                return whole
            name, has_default, default = body.partition(":-")
            if not _ENV_NAME.fullmatch(name):
                self.problem(path, node, f"bad environment variable reference '${{{body}}}'")
                return whole
            if name in self.environ:
                return self.environ[name]
            if has_default:
                return default
            self.problem(path, node, f"environment variable {name} is not set "
                                     f"(write ${{{name}:-default}} to give a default)")
            return whole

        return _ENV.sub(replace, text)


class _TooLarge(Exception):
    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node


def parse(text: str, environ: Mapping[str, str] | None = None) -> Document:
    """Parse ``text`` (one YAML document); syntax errors come back as problems, never raised."""
    builder = _Builder(os.environ if environ is None else environ)
    doc = builder.doc
    try:
        # Composing builds nodes only; no constructor runs on them, so no tag can act.
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        detail = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        doc.problems.append(((), where, f"YAML syntax error: {detail}"))
        return doc
    except yaml.YAMLError as exc:
        doc.problems.append(((), (1, 1), f"YAML error: {exc}"))
        return doc
    except RecursionError:
        doc.problems.append(((), (1, 1), "the document nests too deeply to read"))
        return doc
    if root is None:
        doc.problems.append(((), (1, 1), "the file is empty (it needs at least 'version: 1')"))
        return doc
    try:
        doc.data = builder.build(root, ())
    except _TooLarge as exc:
        doc.data = None
        doc.problems.append(((), _position(exc.node), str(exc)))
    return doc
