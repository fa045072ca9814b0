"""The Messagio base class: an event that listeners subscribe to and anyone can fire."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

        return get_message_center().send(self, sync=sync, **options)

    async def afire(self, sync: bool = False, **options: Any) -> DispatchReport:
        """:meth:`fire` for async code (an async view, a consumer), Django's ``a`` prefix.

        The fire runs in the thread Django keeps for synchronous work, where database
        access is allowed: outside a transaction it records and publishes at once.
        """
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.fire, thread_sensitive=True)(sync=sync, **options)
