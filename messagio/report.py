"""What a fire did: the report ``Messagio.fire()`` and ``MessageCenter.send()`` return."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ListenerOutcome:
    """How one listener ran in this process (synchronous and in-process dispatch)."""

    listener_id: str
    succeeded: bool
    result: Any = None
    exception: BaseException | None = None
    attempts: int = 1


@dataclass
class DispatchReport:
    """The outcome of one fire: its event id, and what ran or was published."""

    event_id: uuid.UUID
    messagio_type: str
    sync: bool
    #: Listeners that ran in this process, in the order they ran (sync and in-process).
    outcomes: list[ListenerOutcome] = field(default_factory=list)
    #: Celery task ids published for this fire, one per group of listeners.
    task_ids: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> list[ListenerOutcome]:
        return [o for o in self.outcomes if o.succeeded]

    @property
    def failed(self) -> list[ListenerOutcome]:
        return [o for o in self.outcomes if not o.succeeded]

    @property
    def ok(self) -> bool:
        """True when no listener that ran here failed."""
        return not self.failed
