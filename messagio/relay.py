"""The relay: publishes events that were recorded but never reached the broker.

It runs as a django-celery-beat periodic task and as ``manage.py messagio_relay``. Events
get here when the broker was down at fire time, or the process died between commit and
publish. The same claim as ``on_commit`` guards each event, so none is published twice.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

from messagio.conf import get_setting

logger = logging.getLogger("messagio")


@dataclass
class RelayReport:
    published: int = 0
    #: Whether the run stopped because the broker could not be reached.
    unreachable: bool = False
    #: Events the broker refused alone (the rest of the batch went on).
    refused_ids: set[str] = field(default_factory=set)
    #: Events still waiting after this run (the broker is still down, or the batch was full).
    remaining: int = 0
    #: Deliveries found stuck running or retrying and queued again.
    requeued: int = 0
    #: Replays whose process was lost: sent to a worker again, or recorded stopped.
    replays_resumed: int = 0
    replays_stopped: int = 0

    @property
    def failed(self) -> int:
        """Events not published: refused alone, or the one that found the broker unreachable."""
        return len(self.refused_ids) + self.unreachable


def relay(
    batch_size: int = 500,
    grace: float | None = None,
    requeue: bool = True,
    *,
    retry_refused: bool = False,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> RelayReport:
    """Publish up to ``batch_size`` unpublished events, oldest first; then, with
    ``requeue``, requeue deliveries stuck past STUCK_TIMEOUT.

    Stops publishing at the first failure that says the broker is unreachable. An event the
    broker refuses alone (its queue's declaration conflicts, say) keeps its publish error
    and the batch goes on, so it does not hold back the events after it; the periodic relay
    leaves it for PUBLISH_CLAIM_TIMEOUT, so that refused events do not fill its batches,
    unless ``retry_refused`` (a run by hand, once the cause is fixed). ``exclude``: event
    ids to leave out (those this run already saw refused); the ids refused are added to
    ``report.refused_ids``. The requeue runs all the same (what the broker refuses there is
    left as it was).
    """
    from django.db import Error as DatabaseError

    from messagio.brokers import broker_unreachable
    from messagio.models import Event
    from messagio.records import publish_recorded

    if grace is None:
        grace = float(get_setting("RELAY_GRACE"))
    claim_timeout = datetime.timedelta(seconds=float(get_setting("PUBLISH_CLAIM_TIMEOUT")))
    waiting = Event.objects.unpublished(
        datetime.timedelta(seconds=grace), claim_timeout, hold_refused=not retry_refused
    ).exclude(pk__in=list(exclude))
    report = RelayReport()
    events = list(waiting.order_by("fired_at")[:batch_size])
    for event in events:
        try:
            if publish_recorded(event, raise_errors=True):
                report.published += 1
        except DatabaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the event by publish_recorded
            if broker_unreachable(exc):
                report.unreachable = True
                break
            report.refused_ids.add(str(event.pk))
    report.remaining = waiting.count() if report.failed or len(events) == batch_size else 0
    if requeue:
        from messagio.recovery import requeue_stuck
        from messagio.replays import take_over_lost

        report.requeued = requeue_stuck()
        lost = take_over_lost()
        report.replays_resumed, report.replays_stopped = len(lost.resumed), len(lost.stopped)
    if report.published or report.failed or report.requeued:
        logger.info(
            "messagio relay: published %d event(s), %d failed, %d waiting, %d requeued",
            report.published,
            report.failed,
            report.remaining,
            report.requeued,
        )  # replays taken over log their own
    return report
