"""What every page of the console reads, built once: the app, the policy file, the queues,
the index and the jobs; and how a page is rendered (Jinja2, autoescaped)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any

from celery import Celery
from jinja2 import Environment, PackageLoader, select_autoescape
from kombu.connection import Connection
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..connections import connected, describe
from ..deadletters.access import opened
from ..deadletters.stores import Store
from ..errors import PolicyFileError
from ..location import locate_file
from ..metrics.queues import dead_letter_queues
from ..spec.loader import Policies, load_policies
from ..tools.wording import delay_range, human
from .index import LetterIndex
from .jobs import Jobs
from .security import Auth, Csrf

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
        with connected(self._connection, self.timeout, self.where) as connection:
            yield connection

    # -- rendering -----------------------------------------------------------------------

    def page(self, request: Request, template: str, status: int = 200,
             **values: Any) -> HTMLResponse:
        who = request.state.who
        html = self.templates.get_template(template).render(
            request=request, base=base_path(request), console=self, who=who,
            csrf=self.csrf.token(who),
            running=self.jobs.running(), reading_now=self.index.reading_now, **values)
        return HTMLResponse(html, status_code=status)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status, message=message)


def base_path(request: Request) -> str:
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


