"""Signals for integrations (metrics, alerting). Receivers run in the process that records."""

from django.dispatch import Signal

#: Sent after a messagio is fired and recorded. Arguments: ``messagio``, ``event_id``, ``report``.
messagio_fired = Signal()

#: Sent after a listener succeeded. Arguments: ``delivery_id``, ``event_id``, ``listener``,
#: ``messagio``, ``result``.
delivery_succeeded = Signal()

#: Sent after a listener failed (also when a retry follows). Arguments: ``delivery_id``,
#: ``event_id``, ``listener``, ``messagio`` (None when it could not be loaded), ``exception``,
#: ``will_retry``.
delivery_failed = Signal()
