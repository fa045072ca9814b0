"""Signals for integrations (metrics, alerting). Receivers run in the process that records.

They are sent with :func:`send`: a receiver that raises is logged and skipped, as Celery does
with its own signals, so a broken metrics hook never stops a group's other listeners nor
turns a fire that happened into an exception in its caller.
"""

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("messagio")

#: Sent after a messagio is fired and recorded. Arguments: ``messagio``, ``event_id``, ``report``.
messagio_fired = Signal()

#: Sent after a listener succeeded. Arguments: ``delivery_id``, ``event_id``, ``listener``,
#: ``messagio``, ``result``.
delivery_succeeded = Signal()

#: Sent after a listener failed (also when a retry follows). Arguments: ``delivery_id``,
#: ``event_id``, ``listener``, ``messagio`` (None when it could not be loaded), ``exception``,
#: ``will_retry``.
delivery_failed = Signal()


def send(signal: Signal, sender: Any, **arguments: Any) -> None:
    """Send ``signal`` to every receiver; log, and go on past, those that raise."""
    for receiver, outcome in signal.send_robust(sender=sender, **arguments):
        if isinstance(outcome, Exception):
            logger.error("messagio: signal receiver %r raised; ignored", receiver, exc_info=outcome)
