"""kombu's ``filesystem://`` transport, with each message written atomically.

kombu writes a message file in place: it creates the file, locks it, then writes. A worker
listing the folder at that moment can read the still-empty file, and its consumer stops with
``JSONDecodeError`` (the reader takes no lock). With several processes publishing at once (pool
processes retrying, the main process sending dead letters) that happens. Here a message is
written under a name the reader ignores, then renamed into place, which is atomic.

Importing ``examples.shop`` makes ``filesystem://`` mean this transport in that process.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's own filesystem and virtual channels disagree on this signature.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        with open(final + ".tmp", "wb") as file:  # "<...>.msg.tmp": not a message yet
            file.write(str_to_bytes(dumps(payload)))
        os.replace(final + ".tmp", final)


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
