"""Signals for integrations (metrics, alerting). Receivers run in the process that records.

Each is sent by the messagio's class (``connect(receiver, sender=OrderPlaced)`` hears one
type); a delivery signal whose messagio could not be loaded, by the subscribed class of its
type's name, or None.

They are sent with ``send_robust``: a receiver that raises is logged (by Django, logger
``django.dispatch``) and skipped, as Celery does with its own signals, so a broken metrics
hook never stops a group's other listeners nor turns a fire that happened into an exception
in its caller.
"""

from django.dispatch import Signal

#: Sent after a messagio is fired and recorded. Arguments: ``messagio``, ``event_id``, ``report``.
messagio_fired = Signal()

#: Sent after a listener succeeded. Arguments: ``delivery_id``, ``event_id``, ``listener``,
#: ``messagio``, ``result``.
delivery_succeeded = Signal()

#: Sent after a listener failed (also when a retry follows). Arguments: ``delivery_id``,
#: ``event_id`` (a UUID, as in the other two), ``listener``, ``messagio`` (None when it could
#: not be loaded, or when the relay failed the delivery, which loads no payload),
#: ``exception``, ``will_retry``.
delivery_failed = Signal()
