"""Shared fixtures. Broker-backed fixtures live in tests/support/."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_policies import Policies, PolicyFileError, parse_policies

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "policies.example.yaml"


@pytest.fixture
def policy_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write a dedented policy file called policies.yaml and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "policies.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


def load(text: str, **kwargs: object) -> Policies:
    """Validate dedented YAML held in memory, named policies.yaml in messages."""
    return parse_policies(textwrap.dedent(text).lstrip("\n"), file="policies.yaml", **kwargs)  # type: ignore[arg-type]


def problems(text: str, **kwargs: object) -> list[str]:
    """Every problem reported for dedented YAML, as the lines a user sees."""
    with pytest.raises(PolicyFileError) as caught:
        load(text, **kwargs)
    return [str(p) for p in caught.value.problems]
