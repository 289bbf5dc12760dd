"""``simulate`` imports the application's modules only when asked (``--app`` or ``--import``)."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from celery_policies.cli import policies


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module that writes a file when imported, with ``Boom`` and its subclass ``Bang``."""
    name = f"side_effect_{uuid.uuid4().hex}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")

        class Boom(Exception):
            pass

        class Bang(Boom):
            pass
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def simulate(tmp_path: Path, name: str, exception: str, *options: str) -> Result:
    path = tmp_path / "policies.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        policies:
          - match: t
            autoretry_for: [{name}.Boom, ConnectionError]
            max_retries: 2
            on_failure:
              - {{dead_letter: dlq, when: [{name}.Boom]}}
    """), encoding="utf-8")
    return CliRunner().invoke(policies, ["simulate", str(path), "--task", "t", "--raise",
                                         exception, *options], catch_exceptions=False)


def test_without_app_or_import_no_module_is_imported(tmp_path: Path,
                                                     module: tuple[str, Path]) -> None:
    """The file and --raise name a module whose import writes a file: it is not written, and
    the names are matched as text."""
    name, marker = module
    result = simulate(tmp_path, name, f"{name}.Boom")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert f"note: {name}.Boom was not imported (give --import to import it)" in result.stdout
    assert "Gives up after attempt 3." in result.stdout
    assert "Failure route: dead letter to queue dlq" in result.stdout


def test_a_builtin_exception_is_simulated_without_importing_anything(
        tmp_path: Path, module: tuple[str, Path]) -> None:
    name, marker = module
    result = simulate(tmp_path, name, "ConnectionResetError")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert "note:" not in result.stdout
    assert "Gives up after attempt 3." in result.stdout  # a ConnectionError: retried


def test_import_option_imports_the_modules_named(tmp_path: Path,
                                                 module: tuple[str, Path]) -> None:
    """With --import, Bang is found to be a Boom, so it retries; by name alone it is not."""
    name, marker = module
    by_name = simulate(tmp_path, name, f"{name}.Bang")
    assert by_name.exit_code == 0, by_name.output
    assert not marker.exists()
    assert "fails: not retryable, gives up" in by_name.stdout
    imported = simulate(tmp_path, name, f"{name}.Bang", "--import")
    assert imported.exit_code == 0, imported.output
    assert marker.read_text() == "imported"
    assert "note:" not in imported.stdout
    assert "Gives up after attempt 3." in imported.stdout
