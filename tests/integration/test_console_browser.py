"""The web console in a real browser (Playwright driving Debian's chromium), against a real
worker on Redis and on RabbitMQ: tasks fail for good, the console shows their group, a
letter, and replays the group once the cause is fixed; purge asks first; a read-only console
shows no action and refuses a forged POST; a letter whose exception message is a script is
shown as text; a POST without its CSRF token, and a request without credentials when
authentication is configured, are refused.

The screenshots docs/console.md shows are taken here (on Redis), into docs/console/ when
$CELERY_POLICIES_SCREENSHOTS is set.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from benchmarks._deadletters import fabricate
from celery import Celery
from kombu.connection import Connection
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.console import CHROMIUM_ARGS, chromium, console
from tests.support.console import screenshot_path as shot
from tests.support.deadletters import read
from tests.support.workers import ROOT, Worker, Workers, attempts, delete_queue, wait_for

from .test_dead_letters import POLICIES

#: What a dead letter's exception message says in these tests: a script, which must be shown.
SCRIPT = "<script>document.title='pwned'</script>"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def dead_letter_queue(client: Celery) -> Iterator[str]:
    name = f"dlq.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(client, name)
    delete_queue(client, f"{name}.fatal")


@pytest.fixture
def control() -> str:
    """A control exchange of the test's own: its workers answer only its console."""
    return f"control.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker(workers: Workers, dead_letter_queue: str, control: str) -> Worker:
    return workers(POLICIES, env={"TEST_DLQ": dead_letter_queue,
                                  "TEST_DEFAULT_QUEUE": workers.queue,
                                  "TEST_CONTROL_EXCHANGE": control})


def serve(broker: str, dead_letter_queue: str, tmp_path: Path, *options: str,
          control: str = "celery", env: dict[str, str] | None = None) -> Any:
    """The console of the test app (tests.support.proj) with the dead-letter tests' policy
    file, reading again whenever a page is asked for."""
    # the file named as a user in the project's folder names it (the pages show it)
    policy_file = str(POLICIES.relative_to(ROOT))
    return console(["--app", "tests.support.proj", "--file", policy_file, "--refresh",
                    "0.1s", *options], tmp_path / f"console-{uuid.uuid4().hex[:6]}.log",
                   {"TEST_BROKER_URL": broker, "TEST_DLQ": dead_letter_queue,
                    "TEST_CONTROL_EXCHANGE": control, **(env or {})})


def group_row(page: Page, task: str) -> Any:
    return page.locator("#groups tr.group").filter(
        has=page.locator("td.task", has_text=re.compile(f"^{re.escape(task)}$")))


def reload_until(page: Page, check: Any, timeout: float = 30) -> None:
    """Reload until ``check()`` holds: a page shows the last complete reading, and a new
    reading starts when it is asked for."""
    assert wait_for(lambda: (page.reload(), check())[1], timeout=timeout, interval=0.3), (
        page.content())


def test_a_failed_group_is_found_opened_and_replayed_once_fixed(
        broker: str, client: Celery, counters: Any, key: str, worker: Worker,
        dead_letter_queue: str, control: str, page: Page, tmp_path: Path) -> None:
    task_key = f"{key}:{SCRIPT}"
    results = [client.send_task("proj.dlq.fixable", [task_key], queue=worker.queue)
               for _ in range(6)]
    assert wait_for(lambda: len(read(broker, dead_letter_queue)) == 6, timeout=60)
    screenshots = broker.startswith("redis")
    with serve(broker, dead_letter_queue, tmp_path, control=control) as served:
        page.goto(served.url)
        reload_until(page, lambda: group_row(page, "proj.dlq.fixable").count() == 1)
        row = group_row(page, "proj.dlq.fixable")
        expect(row.locator("td.count")).to_have_text("6")
        expect(row.locator("td.exception")).to_have_text("tests.support.proj.Fatal")
        if screenshots:
            page.screenshot(path=shot(tmp_path, "dead-letters"), full_page=True)

        row.get_by_role("link", name="letters").click()
        expect(page.locator("#letters tr.letter")).to_have_count(6)
        if screenshots:
            page.screenshot(path=shot(tmp_path, "letters"), full_page=True)
        page.locator("#letters tr.letter a").first.click()

        # the message is the script's text on the page, and no script ran or exists
        expect(page.locator("#exception-message")).to_contain_text(SCRIPT)
        assert page.title() != "pwned"
        assert page.locator("script").count() == 0
        expect(page.locator("#args")).to_contain_text(repr(task_key))
        expect(page.locator("#traceback")).to_contain_text("Fatal")
        expect(page.locator("#replays")).to_have_text("0 times")
        if screenshots:
            page.screenshot(path=shot(tmp_path, "letter"), full_page=True)

        page.get_by_role("link", name="Replay…").click()
        expect(page.locator("#preview")).to_have_text(
            f"1 dead letter will go back to queue {worker.queue}.")
        page.goto(served.url)
        group_row(page, "proj.dlq.fixable").get_by_role("link", name="replay…").click()
        expect(page.locator("#preview")).to_have_text(
            f"6 dead letters will go back to queue {worker.queue}.")
        if screenshots:
            page.screenshot(path=shot(tmp_path, "replay-preview"), full_page=True)

        counters.set(f"{task_key}:fixed", 1)  # the cause is fixed
        page.get_by_role("button", name="Replay 6 dead letters").click()
        expect(page.locator("#state")).to_have_text("done", timeout=WAIT_MS)
        expect(page.locator("#outcome")).to_have_text(
            f"replayed 6 of 6 (6 to {worker.queue})")
        if screenshots:
            page.screenshot(path=shot(tmp_path, "replay-done"), full_page=True)
        assert [result.get(timeout=30) for result in results] == ["ok"] * 6
        events = [event for *_, event in attempts(counters, task_key)]
        assert (events.count("failed"), events.count("ok")) == (6, 6)

        page.goto(served.url)
        reload_until(page, lambda: group_row(page, "proj.dlq.fixable").count() == 0)
        expect(page.locator("#total")).to_have_text("0 dead letters in 0 groups.")
        assert read(broker, dead_letter_queue) == []
        assert re.search(r"replay started by anonymous: queue=\S+ task=proj\.dlq\.fixable",
                         served.log), served.log
        assert "replay by anonymous done" in served.log


def test_purge_asks_first_and_then_deletes_exactly_the_group(
        broker: str, dead_letter_queue: str, page: Page, tmp_path: Path) -> None:
    with Connection(broker) as connection:
        fabricate(connection, dead_letter_queue, 3, origin="work", task="proj.noop")
        kept = fabricate(connection, dead_letter_queue, 2, origin="work", task="proj.other")
    with serve(broker, dead_letter_queue, tmp_path) as served:
        page.goto(served.url)
        reload_until(page, lambda: group_row(page, "proj.noop").count() == 1)
        group_row(page, "proj.noop").get_by_role("link", name="purge…").click()
        expect(page.locator("#preview")).to_have_text(
            f"3 dead letters will be deleted for good from {dead_letter_queue}.")
        assert len(read(broker, dead_letter_queue)) == 5  # nothing yet
        if broker.startswith("redis"):
            page.screenshot(path=shot(tmp_path, "purge-preview"), full_page=True)
        page.get_by_role("button", name="Delete 3 dead letters").click()
        expect(page.locator("#state")).to_have_text("done", timeout=WAIT_MS)
        expect(page.locator("#outcome")).to_have_text("deleted 3")
    assert [letter.id for letter in read(broker, dead_letter_queue)] == kept


def test_a_read_only_console_shows_no_action_and_refuses_a_forged_post(
        broker: str, dead_letter_queue: str, page: Page, tmp_path: Path) -> None:
    with Connection(broker) as connection:
        ids = fabricate(connection, dead_letter_queue, 2, origin="work")
    with serve(broker, dead_letter_queue, tmp_path, "--read-only") as served:
        page.goto(served.url)
        reload_until(page, lambda: group_row(page, "proj.noop").count() == 1)
        expect(page.locator("#read-only")).to_be_visible()
        expect(page.locator("a.replay, a.purge, button")).to_have_count(1)  # "Filter" only
        page.locator("#groups a", has_text="letters").click()
        expect(page.locator("#letters input[type=checkbox]")).to_have_count(0)
        forged = urlencode({"queue": dead_letter_queue, "csrf": "x"}).encode()
        for path in ("/dead-letters/purge", "/dead-letters/replay"):
            status, body, _ = served.request(path, data=forged)
            assert (status, body) == (403, "this console is read-only")
        status, _, _ = served.request(f"/dead-letters/preview?queue={dead_letter_queue}"
                                      "&action=purge")
        assert status == 403
    assert [letter.id for letter in read(broker, dead_letter_queue)] == ids


def test_a_post_without_its_csrf_token_or_from_another_site_is_refused(
        broker: str, dead_letter_queue: str, page: Page, tmp_path: Path) -> None:
    with Connection(broker) as connection:
        ids = fabricate(connection, dead_letter_queue, 2, origin="work")
    with serve(broker, dead_letter_queue, tmp_path) as served:
        page.goto(f"{served.url}dead-letters/preview?queue={dead_letter_queue}&action=purge")
        token = page.locator("#confirm input[name=csrf]").get_attribute("value")
        assert token
        purge = {"queue": dead_letter_queue}
        for form, headers in (
                (purge, {}),  # no token
                ({**purge, "csrf": "0" * 64}, {}),  # a wrong one
                ({**purge, "csrf": token}, {"Origin": "http://evil.example"})):  # elsewhere
            status, _, _ = served.request("/dead-letters/purge",
                                          data=urlencode(form).encode(), headers=headers)
            assert status == 403, (form, headers)
        assert [letter.id for letter in read(broker, dead_letter_queue)] == ids
        # the page's own form, with its token, is accepted
        page.get_by_role("button", name="Delete 2 dead letters").click()
        expect(page.locator("#state")).to_have_text("done", timeout=WAIT_MS)
    assert read(broker, dead_letter_queue) == []


def test_with_credentials_configured_only_an_authenticated_user_gets_in_and_is_audited(
        broker: str, dead_letter_queue: str, browser: Browser, tmp_path: Path) -> None:
    with Connection(broker) as connection:
        fabricate(connection, dead_letter_queue, 1, origin="work")
    env = {"CELERY_POLICIES_CONSOLE_CREDENTIALS": "alice:s3cret-pass\nbob:other"}
    with serve(broker, dead_letter_queue, tmp_path, env=env) as served:
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(
                b"alice:wrong").decode()}):
            status, _, answered = served.request("/dead-letters", headers=headers)
            assert status == 401
            assert answered["www-authenticate"] == 'Basic realm="celery-policies"'
        context = browser.new_context(http_credentials={"username": "alice",
                                                        "password": "s3cret-pass"})
        try:
            signed_in = context.new_page()
            signed_in.goto(f"{served.url}dead-letters/preview?queue={dead_letter_queue}"
                           "&action=purge")
            expect(signed_in.locator(".who")).to_have_text("alice")
            signed_in.get_by_role("button", name=re.compile("^Delete")).click()
            expect(signed_in.locator("#state")).to_have_text("done", timeout=WAIT_MS)
        finally:
            context.close()
        assert f"purge started by alice: queue={dead_letter_queue} all" in served.log


def test_the_policy_pages_explain_each_task_and_simulate_a_failure(
        broker: str, dead_letter_queue: str, page: Page, tmp_path: Path) -> None:
    with serve(broker, dead_letter_queue, tmp_path) as served:
        page.goto(f"{served.url}policies")
        row = page.locator("#tasks tr.task", has_text="proj.retry.limited")
        expect(row).to_contain_text("exhausted")
        if broker.startswith("redis"):
            page.screenshot(path=shot(tmp_path, "policies"), full_page=True)
        row.get_by_role("link").click()
        expect(page.locator("#settings tr.from-file", has_text="max_retries")).to_contain_text(
            "2")
        page.locator("#simulate input[name=raise]").fill("tests.support.proj.Flaky")
        page.get_by_role("button", name="Simulate").click()
        expect(page.locator("#timeline tbody tr")).to_have_count(3)
        expect(page.locator("#verdict")).to_contain_text("Gives up after attempt 3.")
        expect(page.locator("#verdict")).to_contain_text(
            f"dead letter to queue {dead_letter_queue}")
        if broker.startswith("redis"):
            page.screenshot(path=shot(tmp_path, "simulate"), full_page=True)


def test_the_fleet_page_shows_each_worker_and_highlights_the_one_that_drifts(
        broker: str, dead_letter_queue: str, workers: Workers, worker: Worker, control: str,
        page: Page, tmp_path: Path) -> None:
    text = POLICIES.read_text()
    assert text.count("max_retries: 2\n") == 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace("max_retries: 2\n", "max_retries: 4\n"))
    odd = workers(changed, env={"TEST_DLQ": dead_letter_queue,
                                "TEST_DEFAULT_QUEUE": workers.queue,
                                "TEST_CONTROL_EXCHANGE": control})
    with serve(broker, dead_letter_queue, tmp_path, control=control) as served:
        page.goto(f"{served.url}fleet")
        rows = page.locator("#workers tr.worker")
        # "ready." comes before a worker listens to broadcasts: ask until both answer
        reload_until(page, lambda: rows.count() == 2)
        expect(rows.filter(has_text=worker.hostname)).to_have_class(re.compile("status-ok"))
        expect(rows.filter(has_text=odd.hostname)).to_have_class(re.compile("status-drift"))
        expect(page.locator("#verdict")).to_have_class("problem")
        expect(page.locator("#verdict")).to_contain_text(odd.hostname)
        if broker.startswith("redis"):
            page.screenshot(path=shot(tmp_path, "fleet"), full_page=True)


def test_the_grouped_page_fits_a_phone(broker: str, dead_letter_queue: str, browser: Browser,
                                       tmp_path: Path) -> None:
    with Connection(broker) as connection:
        fabricate(connection, dead_letter_queue, 4, origin="work", task="proj.noop")
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        phone = context.new_page()
        with serve(broker, dead_letter_queue, tmp_path) as served:
            phone.goto(served.url)
            reload_until(phone, lambda: group_row(phone, "proj.noop").count() == 1)
            # nothing wider than the screen but the table, which scrolls in its own box
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, width
            if broker.startswith("redis"):
                phone.screenshot(path=shot(tmp_path, "phone"), full_page=True)
    finally:
        context.close()
