"""Errors raised by celery-policies.

Every problem found in a policy file carries the file, the 1-based line and column of the
offending value, and its path in the document, so a message reads
``policies.yaml:14:20: policies[2].time_limit: expected a duration like 30s or 5m, got 'tenish'``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DocPath = tuple[str | int, ...]


class PolicyError(Exception):
    """Base class of every error this library raises."""


def format_doc_path(path: DocPath) -> str:
    """Render a document path the way a reader writes it: ``policies[2].time_limit``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.isidentifier():
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True)
class Problem:
    """One located problem in a policy file."""

    line: int
    column: int
    file: str
    doc_path: DocPath
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        path = format_doc_path(self.doc_path)
        return f"{where}: {path}: {self.message}" if path else f"{where}: {self.message}"


def _file_order(problem: Problem) -> tuple[int, int, str, str]:
    # Paths mix ints and strings, so compare their text, never the tuples themselves.
    return (problem.line, problem.column, format_doc_path(problem.doc_path), problem.message)


class PolicyFileError(PolicyError):
    """A policy file that cannot be used. ``problems`` lists every problem found, in file order.

    The first problem is also exposed as ``path``, ``line``, ``column``, ``doc_path`` and
    ``message`` for callers that show a single line.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(sorted(set(problems), key=_file_order))
        if not self.problems:
            raise ValueError("PolicyFileError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def summary(self) -> str:
        """``3 problems in policies.yaml``: the line printed after the problems."""
        count = len(self.problems)
        return f"{count} problem{'s' if count != 1 else ''} in {self.path}"

    @property
    def path(self) -> str:
        return self.problems[0].file

    @property
    def line(self) -> int:
        return self.problems[0].line

    @property
    def column(self) -> int:
        return self.problems[0].column

    @property
    def doc_path(self) -> DocPath:
        return self.problems[0].doc_path

    @property
    def message(self) -> str:
        return self.problems[0].message
