"""What a dead letter carries reaches a terminal as text, never as terminal commands.

Every field of a dead letter comes from whoever sent the task or raised the exception: a task
name, an exception message or a hostname can hold escape sequences (which retitle the window,
move the cursor, hide lines or, on some terminals, write files) and rich markup. ``dlq list``
and ``dlq show`` print them escaped (``\\x1b``), markup as written; JSON stays exact.
"""

from __future__ import annotations

import json

import pytest

from celery_policies.cli._render import printable
from tests.unit import test_dlq_cli
from tests.unit.test_dlq_cli import Broker, on_app

#: The filesystem broker fixture of tests/unit/test_dlq_cli.py, under another name.
filesystem_broker = test_dlq_cli.broker


@pytest.fixture
def broker(filesystem_broker: Broker) -> Broker:
    """A filesystem broker and its app module, as in tests/unit/test_dlq_cli.py."""
    return filesystem_broker

#: ESC (C0) starting a colour, BEL, DEL, CSI (C1), a right-to-left override and rich markup.
HOSTILE = "a\x1b[31mred\x07\x7f\x9b2J\u202eevil[bold red]loud[/bold red]:smile:"
#: How the text output shows ``HOSTILE``.
SHOWN = "a\\x1b[31mred\\x07\\x7f\\x9b2J\\u202eevil[bold red]loud[/bold red]:smile:"
#: The raw characters that must never reach the terminal.
RAW = ("\x1b", "\x07", "\x7f", "\x9b", "\u202e")


def hostile_letter(broker: Broker) -> str:
    return broker.publish(task=f"proj.{HOSTILE}", task_id=f"id-{HOSTILE}",
                          exception=f"errors.{HOSTILE}", exception_message=HOSTILE,
                          reason=HOSTILE, hostname=HOSTILE, queue=f"q-{HOSTILE}",
                          traceback=f"Traceback (most recent call last):\n{HOSTILE}\nEnd")


def assert_no_raw_controls(text: str) -> None:
    found = [char for char in RAW if char in text]
    assert found == [], f"raw control characters in the output: {found!r}"


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, [brackets] and ünïcödé", "plain text, [brackets] and ünïcödé"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("tab\tnewline\ncr\r", "tab\\tnewline\\ncr\\r"),
    ("\x00\x1f\x7f\x80\x9f", "\\x00\\x1f\\x7f\\x80\\x9f"),
    ("\u2066isolate\u2069\u2028", "\\u2066isolate\\u2069\\u2028"),
])
def test_printable_escapes_control_characters_and_keeps_the_rest(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_can_keep_line_breaks_of_multi_line_text() -> None:
    assert printable("one\n\ttwo\x1b[2K\r\n", lines=True) == "one\n\ttwo\\x1b[2K\\r\n"


def test_list_table_shows_hostile_fields_escaped(broker: Broker) -> None:
    broker.publish(task="proj.\x1b[31mred\x9b2J", exception="errors.E\x07\x7f",
                   reason="exception\u202e")
    result = on_app("list")
    assert result.exit_code == 0
    assert_no_raw_controls(result.stdout)
    assert "proj.\\x1b[31mred\\x9b2J" in result.stdout
    assert "E\\x07\\x7f" in result.stdout
    assert "exception\\u202e" in result.stdout


def test_list_table_prints_rich_markup_in_a_task_name_literally(broker: Broker) -> None:
    broker.publish(task="[bold red]boom[/]", exception="errors.[link=http://x]E[/link]")
    result = on_app("list")
    assert result.exit_code == 0
    assert "[bold red]boom[/]" in result.stdout
    assert "[link=http://x]E[/link]" in result.stdout


def test_show_prints_every_field_escaped(broker: Broker) -> None:
    task_id = hostile_letter(broker)
    result = on_app("show", task_id)
    assert result.exit_code == 0, result.output
    assert_no_raw_controls(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0] == f"proj.{SHOWN}[id-{SHOWN}]"
    assert f"  exception_message: {SHOWN}" in lines
    assert f"  hostname: {SHOWN}" in lines
    assert f"  queue: q-{SHOWN}" in lines
    assert lines[-3:] == ["Traceback (most recent call last):", SHOWN, "End"]


def test_replay_dry_run_and_summary_print_hostile_fields_escaped(broker: Broker) -> None:
    hostile_letter(broker)
    dry = on_app("replay", "--dry-run")
    assert_no_raw_controls(dry.stdout + dry.stderr)
    assert f"1 to q-{SHOWN}" in dry.stdout


def test_list_as_json_keeps_every_field_exact(broker: Broker) -> None:
    task_id = hostile_letter(broker)
    result = on_app("list", "--format", "json")
    [entry] = json.loads(result.stdout)
    assert (entry["id"], entry["task"], entry["exception_message"], entry["hostname"],
            entry["queue"]) == (task_id, f"proj.{HOSTILE}", HOSTILE, HOSTILE, f"q-{HOSTILE}")
    assert "\x1b" not in result.stdout  # JSON escapes it itself (\u001b)


def test_list_count_line_prints_a_queue_name_as_written(broker: Broker) -> None:
    result = on_app("list", "--queue", "dlq:smile:[bold]\x1b")
    assert result.stdout.rstrip().endswith("0 dead letters in dlq:smile:[bold]\\x1b")
