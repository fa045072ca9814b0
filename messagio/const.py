"""Constants of the public API."""

from enum import IntEnum


class TASK_PRIORITY(IntEnum):  # noqa: N801 - name kept from the original library
    """Listener priorities: higher is more important, on every broker.

    messagio maps them to what the broker understands (Redis treats 0 as the highest).
    """

    LOW = 0
    LESS = 3
    REGULAR = 5
    MORE = 7
    HIGH = 9
    EPIC = 10


#: Prefix of every Celery task name messagio defines, for ``CELERY_TASK_ROUTES``.
TASK_NAME_PREFIX = "messagio.tasks."


def __getattr__(name: str) -> object:
    """``from messagio.const import Messagio``, where messagio 0.x defined it, still works."""
    if name == "Messagio":
        from messagio.message import Messagio

        return Messagio
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
