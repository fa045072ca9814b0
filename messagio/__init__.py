"""messagio: typed publish/subscribe events for Django on Celery.

This package imports no models, so it can be imported before Django's app registry is ready.
"""

from typing import Any

from messagio.center import AbstractMessageCenter, InProcessMessageCenter, MessageCenter
from messagio.const import TASK_PRIORITY
from messagio.discovery import autodiscover_listeners
from messagio.exceptions import MessageProcessingError, PayloadError, PayloadSignatureError
from messagio.message import Messagio
from messagio.registry import Subscription, listen_to_message
from messagio.report import DispatchReport, ListenerOutcome

__version__ = "1.0.0.dev0"


def replay(target: Any, **options: Any) -> Any:
    """Replay deliveries with their original payload; see :func:`messagio.replays.replay`.

    Imported lazily: this package must load before Django's app registry is ready.
    """
    from messagio.replays import replay as _replay

    return _replay(target, **options)


__all__ = [
    # Events
    "Messagio",
    "TASK_PRIORITY",
    # Subscribing
    "listen_to_message",
    "autodiscover_listeners",
    "Subscription",
    # Delivering
    "AbstractMessageCenter",
    "MessageCenter",
    "InProcessMessageCenter",
    "DispatchReport",
    "ListenerOutcome",
    # Records
    "replay",
    # Errors
    "MessageProcessingError",
    "PayloadError",
    "PayloadSignatureError",
]
