"""Safe YAML with positions: plain data plus the line and column of every value and key.

Only YAML's plain types are built (mappings, lists, strings, numbers, booleans, null,
timestamps); any other tag is refused, so nothing in a file is ever constructed or executed.
Aliases are allowed (``<<: *base`` merges are common) but their expansion is capped, which
stops "billion laughs" documents: every node an alias repeats and every key a merge (``<<``)
copies counts against one budget, so ``<<: [*big, *big, ...]`` is refused like any alias bomb.
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

from ..errors import DocPath

try:  # the C loader is several times faster; fall back to pure Python where libyaml is absent
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

#: How many nodes aliases and merge keys together may add to a document by repeating anchored
#: ones (each key a ``<<`` merge copies counts as one).
MAX_ALIAS_NODES = 10_000
#: How deeply ``${NAME:-default}`` references may nest in one another's defaults.
MAX_ENV_NESTING = 4
#: How deeply mappings and lists may nest, and merges (``<<``) of merges.
MAX_DEPTH = 64

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "str", "timestamp"))
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOO_LARGE = (f"aliases and merge keys ('<<') expand the document beyond {MAX_ALIAS_NODES} "
              "nodes; refusing it (a 'billion laughs' document?)")

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

    def spend(self, nodes: int, where: Node, path: DocPath = ()) -> None:
        """Count ``nodes`` repeated by an alias or a merge against ``MAX_ALIAS_NODES``."""
        self.alias_nodes += nodes
        if self.alias_nodes > MAX_ALIAS_NODES:
            raise _TooLarge(where, _TOO_LARGE, path)

    def problem(self, path: DocPath, node: Node, message: str) -> None:
        self.doc.problems.append((path, _position(node), message))

    def build(self, node: Node, path: DocPath, depth: int = 0, *, counted: bool = False) -> Any:
        """``counted``: ``node`` is the value of a merged key, already counted as one."""
        if id(node) in self.seen:
            if not counted:
                self.spend(1, node)
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
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                merged.extend(self.merge_entries(key_node, value_node, path))
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
        for key_node, value_node in merged:  # keys written in this mapping win over merged ones
            key = str(key_node.value)
            if isinstance(key_node, ScalarNode) and key not in result:
                child = (*path, key)
                self.doc.keys[child] = _position(key_node)
                result[key] = self.build(value_node, child, depth + 1, counted=True)
        return result

    def merge_entries(self, merge_key: Node, value: Node, path: DocPath,
                      into: tuple[int, ...] = ()) -> list[tuple[Node, Node]]:
        """The (key, value) nodes a ``<<`` merge brings, in YAML's order of precedence.

        A merged mapping's own ``<<`` merges are followed (merging is transitive). Every key
        is counted against ``MAX_ALIAS_NODES`` before any is built, so a merge key listing a
        big anchor thousands of times is refused at once, pointing at the ``<<``.
        """
        sources = value.value if isinstance(value, SequenceNode) else [value]
        if not all(isinstance(s, MappingNode) for s in sources):
            self.problem(path, merge_key, "'<<' merges a mapping or a list of mappings")
        entries: list[tuple[Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                continue
            if len(into) >= MAX_DEPTH:
                raise _TooLarge(merge_key, f"merges ('<<') nest deeper than {MAX_DEPTH} levels",
                                path)
            if id(source) in into or id(source) in self.open:
                raise _TooLarge(merge_key, "an alias refers to a node that contains it "
                                           "(recursive alias)", path)
            self.spend(len(source.value), merge_key, path)
            own = [(k, v) for k, v in source.value if k.tag != _TAG + "merge"]
            entries += own
            for k, v in source.value:
                if k.tag == _TAG + "merge":
                    entries += self.merge_entries(merge_key, v, path, (*into, id(source)))
        return entries

    def interpolate(self, text: str, node: Node, path: DocPath) -> str:
        """Replace ``${NAME}`` and ``${NAME:-default}``; ``$$`` is a literal ``$``.

        A default may itself hold references (``${A:-${B:-5}}``: A, else B, else 5), nested
        at most ``MAX_ENV_NESTING`` deep. A problem is reported once, and the text kept.
        """
        if "$" not in text:
            return text
        try:
            value, _, unset = self._expand(text, 0, 0)
        except _BadReference as exc:
            self.problem(path, node, str(exc).replace("{text}", repr(text)))
            return text
        if unset is not None:
            self.problem(path, node, f"environment variable {unset} is not set "
                                     f"(write ${{{unset}:-default}} to give a default)")
            return text
        return value

    def _expand(self, text: str, start: int, level: int) -> tuple[str, int, str | None]:
        """Expand ``text`` from ``start`` up to the end, or (inside a default, ``level`` > 0)
        up to the ``}`` closing it. Return the expansion, the index after it and the first
        variable it needed that is not set (reported only if the expansion is used, so a
        broken default is still reported before a missing variable)."""
        out: list[str] = []
        unset: str | None = None
        i = start
        while i < len(text):
            char = text[i]
            if char == "}" and level:
                return "".join(out), i + 1, unset
            if text.startswith("$$", i):
                out.append("$")
                i += 2
            elif text.startswith("${", i):
                value, i, missing = self._reference(text, i + 2, level + 1)
                out.append(value)
                unset = unset or missing
            else:
                out.append(char)
                i += 1
        if level:
            raise _BadReference("unclosed '${' in {text}")
        return "".join(out), i, unset

    def _reference(self, text: str, start: int, level: int) -> tuple[str, int, str | None]:
        """One ``${...}`` whose name starts at ``start``; ``level`` counts the open ``${``."""
        if level > MAX_ENV_NESTING:
            raise _BadReference(f"'${{' nests deeper than {MAX_ENV_NESTING} levels in {{text}}")
        name_match = _ENV_NAME.match(text, start)
        end = name_match.end() if name_match else start
        name = text[start:end]
        if text.startswith("}", end) and name:
            found = self.environ.get(name)
            return ("", end + 1, name) if found is None else (found, end + 1, None)
        if text.startswith(":-", end) and name:
            default, after, unset = self._expand(text, end + 2, level)
            found = self.environ.get(name)
            return (default, after, unset) if found is None else (found, after, None)
        close = text.find("}", start)
        if close < 0:
            raise _BadReference("unclosed '${' in {text}")
        raise _BadReference(f"bad environment variable reference '${{{text[start:close]}}}'")


class _BadReference(Exception):
    """A ``${...}`` that cannot be expanded; ``{text}`` in the message stands for the text."""


class _TooLarge(Exception):
    def __init__(self, node: Node, message: str, path: DocPath = ()) -> None:
        super().__init__(message)
        self.node = node
        self.path = path


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
        doc.problems.append((exc.path, _position(exc.node), str(exc)))
    except RecursionError:  # a last resort: every way to nest is capped above
        doc.data = None
        doc.problems.append(((), (1, 1), "the document nests too deeply to read"))
    return doc
