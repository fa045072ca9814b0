"""The Messagio base class: an event that listeners subscribe to and anyone can fire."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from django.core.exceptions import SynchronousOnlyOperation

if TYPE_CHECKING:
    from messagio.report import DispatchReport


class Messagio:
    """Base class of every messagio (event). Subclass it, preferably as a ``@dataclass``.

    Instances must pickle: they travel to Celery workers as a signed pickle.
    """

    @classmethod
    def get_name(cls) -> str:
        """Dotted path of the class: how records and messages name the type."""
        return f"{cls.__module__}.{cls.__qualname__}"

    def fire(self, sync: bool = False, **options: Any) -> DispatchReport:
        """Publish this messagio to its listeners through the configured message center.

        ``sync=True`` runs every listener here and now, in subscription order.
        """
        from messagio.center import get_message_center

        _refuse_an_event_loop(self)
        return get_message_center().send(self, sync=sync, **options)

    async def afire(self, sync: bool = False, **options: Any) -> DispatchReport:
        """:meth:`fire` for async code (an async view, a consumer), Django's ``a`` prefix.

        The fire runs in the thread Django keeps for synchronous work, where database
        access is allowed: outside a transaction it records and publishes at once.
        """
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.fire, thread_sensitive=True)(sync=sync, **options)


def _refuse_an_event_loop(messagio: Messagio) -> None:
    """Refuse a fire from async code before it publishes, as Django refuses the database
    there: it would publish, then fail to record what it published."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    if os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):  # Django's own way out of the check
        return
    raise SynchronousOnlyOperation(
        f"{type(messagio).__qualname__}(...).fire() was called from async code, where Django "
        "refuses database access; nothing was recorded or published. Use "
        "`await messagio.afire()` there, or fire from a function wrapped in asgiref's "
        "sync_to_async."
    )
