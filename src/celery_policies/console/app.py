"""The console's ASGI application: server-rendered pages (``pages.py``) over the dead-letter
tools, ``explain``, ``simulate``, ``lint`` and ``fleet``. No page needs JavaScript; none
carries any.

Every text a page shows from a dead letter (task names, exception messages, tracebacks,
arguments) is escaped by Jinja2's autoescaping; the Content-Security-Policy forbids script
anyway (``security.py``). Every request passes ``_Guard``: who it is, and whether a POST may
go on at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from celery import Celery
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..appinfo import load_app
from ..connections import DEFAULT_BROKER_TIMEOUT
from ..errors import PolicyError
from .index import DEFAULT_REFRESH
from .pages import (
    act,
    dead_letters,
    fleet_page,
    job_page,
    letter,
    letters,
    policies_page,
    preview,
    stop_job,
    task_page,
)
from .security import HEADERS, Auth, same_origin
from .state import Console, base_path

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
        Route("/", lambda request: RedirectResponse(f"{base_path(request)}/dead-letters", 302)),
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
