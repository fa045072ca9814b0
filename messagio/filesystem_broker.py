"""kombu's filesystem broker, with each message written whole before a worker can see it.

kombu's transport creates a message's file under its final name and then writes it, while
a worker takes any file of its queue by moving it away and reading it, without a lock: a
worker that lists the folder in between reads an empty file, its consumer stops on the
JSONDecodeError, and the message is gone. Seen here as a worker that stopped taking tasks
midway through the test suite. This one writes the file under a name no queue matches and
renames it into place, which is atomic within one folder.
"""

import os
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's own override already differs from its base class's signature.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        filename = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f"writing-{uuid.uuid4().hex}")  # no "."
        try:
            with open(partial, "wb", buffering=0) as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, filename)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {filename!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
