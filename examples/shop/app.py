"""The shop's Celery app, with the policy file applied in its workers.

Broker and result backend come from the environment:

- ``CELERY_BROKER_URL``: the broker, by default ``memory://`` (one process only, enough for
  ``celery-policies check/explain``). ``filesystem://`` is kombu's broker in a folder, for
  trying things on a machine with no broker: ``$SHOP_BROKER_DIR`` names the folder (by default
  ``celery-policies-shop`` in the temporary directory); every process using it must agree.
- ``CELERY_RESULT_BACKEND``: where results are kept. When it is unset, a Redis broker keeps
  them too (the same URL), a ``filesystem://`` broker keeps them in ``$SHOP_BROKER_DIR/results``
  (``file://``), and any other broker keeps none.

The policy file is the worker's ``--policies FILE``, else ``$CELERY_POLICIES_FILE``, else
``./policies.yaml`` (see ``celery_policies.install``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery

import celery_policies

from . import atomicfs  # noqa: F401  (filesystem:// writes each message atomically)

#: The folder of the ``filesystem://`` broker (and its results, unless told otherwise).
BROKER_DIR_VAR = "SHOP_BROKER_DIR"


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The broker and result backend settings that ``environ`` (default: ``os.environ``)
    asks for; a ``filesystem://`` broker's folders are created here."""
    env = os.environ if environ is None else environ
    broker = env.get("CELERY_BROKER_URL") or "memory://"
    backend = env.get("CELERY_RESULT_BACKEND") or None
    settings: dict[str, Any] = {"broker_url": broker}
    scheme = broker.partition("://")[0]
    if scheme in {"redis", "rediss"}:
        backend = backend or broker
    elif scheme == "filesystem":
        folder = Path(env.get(BROKER_DIR_VAR)
                      or Path(tempfile.gettempdir(), "celery-policies-shop")).absolute()
        queues, results = folder / "queues", folder / "results"
        for path in (queues, folder / "control", results):
            path.mkdir(parents=True, exist_ok=True)
        settings["broker_transport_options"] = {
            # One folder both ways: every process reads and writes the same queues.
            "data_folder_in": str(queues), "data_folder_out": str(queues),
            "control_folder": str(folder / "control"),  # exchange bindings, for fanout
            "processed_folder": str(folder / "processed"), "store_processed": False,
            "polling_interval": 0.1,
        }
        backend = backend or results.as_uri()
    settings["result_backend"] = backend
    return settings


app = Celery(
    "shop",
    include=["examples.shop.billing", "examples.shop.reports", "examples.shop.emails"],
)
app.conf.update(settings_from_env())
celery_policies.install(app)
