"""The console's ASGI application: server-rendered pages over the dead-letter tools, ``explain``,
``simulate``, ``lint`` and ``fleet``. No page needs JavaScript; none carries any.

Every text a page shows from a dead letter (task names, exception messages, tracebacks,
arguments) is escaped by Jinja2's autoescaping; the Content-Security-Policy forbids script
anyway (``security.py``).
"""

from __future__ import annotations

import glob
import itertools
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlencode

from celery import Celery
from jinja2 import Environment, PackageLoader, select_autoescape
from kombu.connection import Connection
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..appinfo import load_app, registered_tasks
from ..connections import DEFAULT_BROKER_TIMEOUT, BrokerError, connect, describe, drop, talking
from ..deadletters.access import opened
from ..deadletters.envelope import DeadLetter
from ..deadletters.stores import Store
from ..deadletters.tools import Filters, select
from ..errors import PolicyError, PolicyFileError
from ..headers import FAILURE_HEADER, REPLAYS_HEADER
from ..lint import lint
from ..location import locate_file
from ..metrics.queues import dead_letter_queues
from ..spec.durations import parse_duration
from ..spec.loader import Policies, load_policies
from ..spec.matching import Matcher
from ..tools.explain import explain
from ..tools.fleet import DEFAULT_TIMEOUT, ask, file_reference, judge
from ..tools.simulate import simulate_task
from ..tools.wording import OUTCOMES, delay_range, human
from .index import DEFAULT_REFRESH, LetterIndex, chosen, groups
from .jobs import Busy, Job, Jobs
from .jobs import describe as describe_filters
from .security import HEADERS, Auth, Csrf, same_origin

log = logging.getLogger("celery_policies.console")

#: Letters a page of the letter list shows.
PAGE_SIZE = 50
#: Bytes a form may hold (a selection of letter ids included).
MAX_FORM = 256 * 1024
#: Headers a letter page leaves out when arguments are hidden: they repeat them.
ARGUMENT_HEADERS = ("argsrepr", "kwargsrepr")


class Console:
    """What the pages read, built once: the app, the policy file, the queues."""

    def __init__(self, app: Celery | None, *, broker: str | None, file: str | None,
                 queues: Sequence[str], read_only: bool, hide_arguments: bool, auth: Auth,
                 refresh: float, broker_timeout: float) -> None:
        self.app = app
        self.broker = broker
        self.file = file
        self.read_only = read_only
        self.hide_arguments = hide_arguments
        self.auth = auth
        self.csrf = Csrf()
        self.timeout = broker_timeout
        self.where = describe(app, broker)
        self.policies, self.policy_error = self._policies()
        model = self.policies.model if self.policies is not None else None
        self.queues = dead_letter_queues(model, queues)
        # RabbitMQ: a reading holds what it read until it ends (console/index.py)
        self.exclusive: AbstractContextManager[Any] = (
            threading.Lock() if self._connection().transport.driver_type == "amqp"
            else nullcontext())
        self.index = LetterIndex(self.open_store, self.queues, refresh=refresh,
                                 exclusive=self.exclusive)
        self.jobs = Jobs(self.open_queue, self._reread, exclusive=self.exclusive)
        self.templates = Environment(loader=PackageLoader("celery_policies.console"),
                                     autoescape=select_autoescape(default=True),
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["when"] = _when
        self.templates.filters["human"] = human
        self.templates.filters["delays"] = delay_range
        self.templates.filters["plural"] = _plural

    def _reread(self) -> None:
        """After a replay or purge: read the queues again, so the next page shows it."""
        self.index.refresh()

    def _policies(self) -> tuple[Policies | None, str | None]:
        path = locate_file(self.app, self.file)
        if path is None:
            return None, None
        try:
            return load_policies(path), None
        except PolicyFileError as exc:
            return None, "\n".join(str(problem) for problem in exc.problems) or str(exc)

    def _connection(self) -> Connection:
        if self.broker:
            return Connection(self.broker)
        assert self.app is not None
        connection: Connection = self.app.connection_for_write()
        return connection

    def open_queue(self, queue: str) -> AbstractContextManager[tuple[Store, Connection]]:
        return opened(self._connection, self.where, queue, self.timeout)

    @contextmanager
    def open_store(self, queue: str) -> Iterator[Store]:
        with self.open_queue(queue) as (store, _):
            yield store

    @contextmanager
    def connected(self) -> Iterator[Connection]:
        """A connection to the broker for one page (``fleet``), bounded like the commands'."""
        connection = connect(self._connection, self.timeout, self.where)
        try:
            with talking(connection, self.timeout, self.where):
                yield connection
        except BrokerError:
            drop(connection)
            raise
        except BaseException:
            connection.release()
            raise
        connection.release()

    # -- rendering -----------------------------------------------------------------------

    def page(self, request: Request, template: str, status: int = 200,
             **values: Any) -> HTMLResponse:
        who = request.state.who
        html = self.templates.get_template(template).render(
            request=request, base=_base(request), console=self, who=who,
            csrf=self.csrf.token(who),
            running=self.jobs.running(), reading_now=self.index.reading_now, **values)
        return HTMLResponse(html, status_code=status)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status, message=message)


def _base(request: Request) -> str:
    """The path the console is mounted at (``Mount("/celery", app=console)``), which every
    link and form starts with; empty when it is served on its own."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _when(value: datetime | float | str | None) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):  # ISO 8601, as workers report their load time
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    elif isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromtimestamp(value, timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _plural(count: int, word: str = "dead letter") -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


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
    ids = tuple(v for v in values.getlist("id") if v) if hasattr(values, "getlist") else ()
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
    return RedirectResponse(f"{_base(request)}/jobs/{job.id}", status_code=303)


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
    return RedirectResponse(f"{_base(request)}/jobs/{job.id}", status_code=303)


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


# -- the guard every request passes --------------------------------------------------------------

class _Guard(BaseHTTPMiddleware):
    async def dispatch(self, request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        console: Console = request.app.state.console
        who = console.auth.identify(request.headers)
        if who is None:
            response: Response = HTMLResponse("authentication required", 401)
            if console.auth.challenges:
                response.headers["www-authenticate"] = 'Basic realm="celery-policies"'
        elif request.method not in ("GET", "HEAD"):
            if console.read_only:
                response = HTMLResponse("this console is read-only", 403)
            elif not same_origin(request.headers):
                response = HTMLResponse("cross-origin request refused", 403)
            else:
                request.state.who = who
                response = await call_next(request)
        else:
            request.state.who = who
            response = await call_next(request)
        response.headers.update(HEADERS)
        return response


def _sync(handler: Callable[[Console, Request], Response]) -> Callable[[Request],
                                                                         Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await run_in_threadpool(handler, request.app.state.console, request)
    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    console: Console = request.app.state.console
    if not hasattr(request.state, "who"):
        return HTMLResponse(exc.detail, exc.status_code)
    return console.error(request, exc.status_code, exc.detail)


def create_app(app: Celery | str | None = None, *, broker: str | None = None,
               file: str | None = None, queues: Sequence[str] = (), read_only: bool = False,
               hide_arguments: bool = False, auth: Auth | None = None,
               refresh: float = DEFAULT_REFRESH,
               broker_timeout: float = DEFAULT_BROKER_TIMEOUT) -> Starlette:
    """The console as an ASGI application, to serve with any ASGI server or mount in a site.

    ``app``: the Celery app (or the module ``celery -A`` takes): its broker, tasks and
    workers. ``broker``: a broker URL instead (dead letters only). ``file``: the policy file
    (default: found as the worker finds it). ``queues``: dead-letter queues to read besides
    those the file routes to. ``read_only`` removes every action and refuses every POST;
    ``hide_arguments`` never shows a letter's arguments. ``auth``: who may use it (default:
    anyone who can reach it; mounted in a site, the site's own authentication can stand in
    front and name the user in a trusted header).
    """
    if isinstance(app, str):
        app = load_app(app)
    if app is None and not broker:
        raise PolicyError("the console needs a Celery app or a broker URL")
    console = Console(app, broker=broker, file=file, queues=queues, read_only=read_only,
                      hide_arguments=hide_arguments, auth=auth or Auth(), refresh=refresh,
                      broker_timeout=broker_timeout)
    routes = [
        Route("/", lambda request: RedirectResponse(f"{_base(request)}/dead-letters", 302)),
        Route("/dead-letters", _sync(dead_letters)),
        Route("/dead-letters/list", _sync(letters)),
        Route("/dead-letters/letter", _sync(letter)),
        Route("/dead-letters/preview", _sync(preview)),
        Route("/policies", _sync(policies_page)),
        Route("/policies/task", _sync(task_page)),
        Route("/fleet", _sync(fleet_page)),
        Route("/jobs/{job}", _sync(job_page)),
        Mount("/static", StaticFiles(packages=[("celery_policies.console", "static")]),
              name="static"),
    ]
    if not read_only:  # no route at all: a forged POST finds nothing to reach
        routes += [Route("/dead-letters/{action:str}", act, methods=["POST"]),
                   Route("/jobs/{job}/stop", stop_job, methods=["POST"])]
    site = Starlette(routes=routes, middleware=[Middleware(_Guard)],
                     exception_handlers={HTTPException: _http_error})
    site.state.console = console
    return site
