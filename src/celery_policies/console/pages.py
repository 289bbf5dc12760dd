"""The console's pages: each reads the ``Console`` and renders a template. Pages that change
nothing are GETs; replay, purge and stop are POSTs carrying the CSRF token (``_form``)."""

from __future__ import annotations

import glob
import itertools
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..appinfo import registered_tasks
from ..deadletters.envelope import DeadLetter
from ..deadletters.tools import Filters, select
from ..errors import PolicyError
from ..headers import FAILURE_HEADER, REPLAYS_HEADER
from ..lint import lint
from ..spec.durations import parse_duration
from ..spec.matching import Matcher
from ..tools.explain import explain
from ..tools.fleet import DEFAULT_TIMEOUT, ask, file_reference, judge
from ..tools.simulate import simulate_task
from ..tools.wording import OUTCOMES
from .index import chosen, groups
from .jobs import Busy, Job
from .jobs import describe as describe_filters
from .state import ARGUMENT_HEADERS, MAX_FORM, PAGE_SIZE, Console, base_path

# -- filters from a query string or a form ---------------------------------------------------

#: The query keys that select dead letters, as the pages and forms name them.
FILTER_KEYS = ("queue", "task", "exact", "exception", "reason", "failed_on", "since", "id",
               "unreadable")


def filters_of(values: Any) -> tuple[str | None, Filters, dict[str, Any]]:
    """The dead-letter queue (None: all), the filters and the raw values (to pass on in links
    and hidden fields) of a query or form. Raises ``ValueError`` on a bad ``since``."""
    def one(key: str) -> str | None:
        value = values.get(key)
        return value.strip() or None if isinstance(value, str) else None

    exact = one("exact") == "1"  # a group's link: every value literal, empty ones too

    def literal(key: str) -> tuple[str, ...]:
        value = values.get(key)
        return (value,) if isinstance(value, str) and (exact or value.strip()) else ()

    task = one("task")
    since_text = one("since")
    since = parse_duration(since_text) if since_text else None
    ids = tuple(v for v in values.getlist("id") if v)
    filters = Filters(task=glob.escape(task) if task and exact else task,
                      exceptions=literal("exception"), since=since, ids=ids,
                      unreadable=one("unreadable") == "1", reasons=literal("reason"),
                      origins=(origin,) if (origin := one("failed_on")) else ())
    kept = {key: values.get(key) for key in FILTER_KEYS if key != "id" and key in values}
    if ids:
        kept["id"] = list(ids)
    return one("queue"), filters, kept


def query(values: dict[str, Any], **more: Any) -> str:
    return urlencode({**values, **more}, doseq=True)


# -- pages -------------------------------------------------------------------------------------

def _filtered(handler: Callable[[Console, Request, str | None, Filters, dict[str, Any]],
                                Response]) -> Callable[[Console, Request], Response]:
    def page(console: Console, request: Request) -> Response:
        try:
            queue, filters, kept = filters_of(request.query_params)
        except ValueError as exc:
            return console.error(request, 400, f"since: {exc}")
        if queue is not None and queue not in console.queues:
            return console.error(request, 404, f"the console does not read queue {queue!r}")
        return handler(console, request, queue, filters, kept)
    return page


@_filtered
def dead_letters(console: Console, request: Request, queue: str | None, filters: Filters,
                 kept: dict[str, Any]) -> Response:
    if request.query_params.get("read") == "1":  # "read again", asked for
        console.index.refresh()
    reading = console.index.reading
    found = groups(chosen(reading, filters, queue))
    return console.page(request, "groups.html", reading=reading, groups=found,
                        total=sum(group.count for group in found), kept=kept, query=query)


@_filtered
def letters(console: Console, request: Request, queue: str | None, filters: Filters,
            kept: dict[str, Any]) -> Response:
    reading = console.index.reading
    try:
        number = max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        number = 1
    selected = list(itertools.islice(chosen(reading, filters, queue), (number - 1) * PAGE_SIZE,
                                     None))
    total = (number - 1) * PAGE_SIZE + len(selected)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    return console.page(request, "letters.html", reading=reading, letters=selected[:PAGE_SIZE],
                        total=total, number=number, pages=pages, kept=kept, query=query,
                        queue=queue)


def letter(console: Console, request: Request) -> Response:
    queue, task_id = request.query_params.get("queue"), request.query_params.get("id")
    if queue not in console.queues or not task_id:
        return console.error(request, 404, "give the queue and id of a dead letter")
    try:
        with console.exclusive, console.open_store(queue) as store:
            found = select(store, Filters(ids=(task_id,)), limit=1)
    except PolicyError as exc:
        return console.error(request, 503, str(exc))
    if not found:
        return console.error(request, 404, f"no dead letter of task {task_id} in {queue} "
                                           "(replayed or purged since?)")
    item: DeadLetter = found[0]
    args, kwargs = (None, None) if console.hide_arguments else item.arguments()
    hidden = (FAILURE_HEADER, *ARGUMENT_HEADERS) if console.hide_arguments else (FAILURE_HEADER,)
    headers = {key: value for key, value in item.envelope.headers.items() if key not in hidden}
    replays = item.envelope.headers.get(REPLAYS_HEADER) or 0
    return console.page(request, "letter.html", letter=item, queue=queue, args=args,
                        kwargs=kwargs, headers=headers, replays=replays,
                        failure=item.failure, query=query)


@_filtered
def preview(console: Console, request: Request, queue: str | None, filters: Filters,
            kept: dict[str, Any]) -> Response:
    action = request.query_params.get("action")
    if action not in ("replay", "purge"):
        return console.error(request, 400, "action must be replay or purge")
    if console.read_only:
        return console.error(request, 403, "this console is read-only")
    if queue is None:
        if len(console.queues) != 1:
            return console.error(request, 400, "say which dead-letter queue (queue=...)")
        queue = console.queues[0]
        kept = {**kept, "queue": queue}
    reading = console.index.reading
    if reading.finished_at is None:  # a figure from no reading at all would say 0
        reading = console.index.refresh(wait=console.timeout)
    selected = list(chosen(reading, filters, queue))
    targets: dict[str, int] = {}
    for item in selected:
        if item.problem is None:
            key = item.failed_on or "(no queue recorded)"
            targets[key] = targets.get(key, 0) + 1
    return console.page(request, "preview.html", action=action, queue=queue, kept=kept,
                        count=len(selected), targets=sorted(targets.items()),
                        filters=describe_filters(filters), reading=reading)


async def act(request: Request) -> Response:
    console: Console = request.app.state.console
    action = request.path_params["action"]
    if action not in ("replay", "purge"):
        return console.error(request, 404, "no such action")
    form = await _form(console, request)
    try:
        queue, filters, _ = filters_of(form)
    except ValueError as exc:
        return console.error(request, 400, f"since: {exc}")
    if queue not in console.queues:
        return console.error(request, 400, "say which dead-letter queue (queue=...)")
    to_queue = (form.get("to_queue") or "").strip() or None
    rate_text = (form.get("rate") or "").strip()
    try:
        rate = float(rate_text) if rate_text else None
        if rate is not None and not (0 < rate < math.inf):
            raise ValueError
    except ValueError:
        return console.error(request, 400, f"rate must be a number of letters a second above "
                                           f"0, not {rate_text!r}")
    job = Job(action, request.state.who, queue, filters, to_queue if action == "replay"
              else None, rate if action == "replay" else None)
    try:
        console.jobs.start(job)
    except Busy as exc:
        return console.error(request, 409, str(exc))
    return RedirectResponse(f"{base_path(request)}/jobs/{job.id}", status_code=303)


def job_page(console: Console, request: Request) -> Response:
    job = console.jobs.get(request.path_params["job"])
    if job is None:
        return console.error(request, 404, "no such operation (the console keeps the last 50)")
    return console.page(request, "job.html", job=job)


async def stop_job(request: Request) -> Response:
    console: Console = request.app.state.console
    await _form(console, request)
    job = console.jobs.get(request.path_params["job"])
    if job is None:
        return console.error(request, 404, "no such operation")
    job.stop.set()
    return RedirectResponse(f"{base_path(request)}/jobs/{job.id}", status_code=303)


def policies_page(console: Console, request: Request) -> Response:
    if console.policies is None:
        return console.page(request, "policies.html", tasks=[], findings=[])
    matcher = Matcher(console.policies)
    tasks = registered_tasks(console.app) if console.app is not None else {}
    compiled = explain(matcher, list(tasks), console.app, tasks)
    findings = lint(console.policies, console.app, compiled=compiled, matcher=matcher)
    return console.page(request, "policies.html", tasks=compiled, findings=findings)


def task_page(console: Console, request: Request) -> Response:
    name = request.query_params.get("name", "")
    tasks = registered_tasks(console.app) if console.app is not None else {}
    if console.policies is None or name not in tasks:
        return console.error(request, 404, f"no registered task {name!r}")
    matcher = Matcher(console.policies)
    item = explain(matcher, [name], console.app, tasks)[0]
    exception = (request.query_params.get("raise") or "").strip()
    timeline = None
    if exception:
        # Matched by name: a form never makes the console import a module.
        timeline = simulate_task(matcher, name, exception, app=console.app,
                                 task=tasks[name], import_modules=False)
    return console.page(request, "task.html", item=item, exception=exception,
                        timeline=timeline, outcomes=OUTCOMES,
                        queue=console.policies.model.dead_letter_queue)


def fleet_page(console: Console, request: Request) -> Response:
    if console.app is None:
        return console.page(request, "fleet.html", verdict=None, problem=None)
    try:
        with console.connected() as connection:
            answers = ask(console.app, DEFAULT_TIMEOUT, (), connection)
    except PolicyError as exc:
        return console.page(request, "fleet.html", verdict=None, problem=str(exc))
    reference = (file_reference(console.app, console.policies)
                 if console.policies is not None else None)
    return console.page(request, "fleet.html", verdict=judge(answers, reference),
                        problem=None)


async def _form(console: Console, request: Request) -> Any:
    """The form of a POST, once its CSRF token is checked."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise HTTPException(413, "form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    form = _Form(fields)
    if not console.csrf.valid(request.state.who, form.get("csrf")):
        raise HTTPException(403, "missing or stale form token: reload the page and try again")
    return form


class _Form(dict[str, list[str]]):
    """A parsed form read like Starlette's query parameters: ``get`` the last value,
    ``getlist`` them all."""

    def get(self, key: str, default: Any = None) -> Any:
        values = super().get(key)
        return values[-1] if values else default

    def getlist(self, key: str) -> list[str]:
        return list(super().get(key) or ())


