"""How the admin starts replays: one delivery or one event through :func:`messagio.replay`,
a group or a bulk selection through the ``messagio.tasks.replay`` task on a worker.

Every replay is recorded as a :class:`messagio.models.Replay` with who asked and why.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

import messagio
from messagio import tasks
from messagio.models import Delivery, Replay
from messagio.records import db_alias

logger = logging.getLogger("messagio_admin")

IN_FLIGHT = (Delivery.Status.PENDING, Delivery.Status.RUNNING, Delivery.Status.RETRYING)
#: Most deliveries a "replay selected" action sends by id; more go through the Failures page
#: (a group replay) or the ``messagio_replay`` command.
BULK_LIMIT = 10_000


def replay_now(target: Any, user: Any, reason: str = "") -> Replay:
    """Replay a Delivery, an Event or a queryset of events here and now (queued on return)."""
    return messagio.replay(target, reason=reason, requested_by=user, source=Replay.Source.ADMIN)


def not_sent(record: Replay) -> str:
    """What to tell the user of a bulk replay whose task could not be sent."""
    return _("Replay #%(id)d could not be started: %(reason)s. The error is logged.") % {
        "id": record.pk,
        "reason": record.stopped_reason,
    }


def frozen_selection(delivery_filter: dict[str, Any], snapshot_at: Any) -> QuerySet:
    """What the replay task will replay: as ``messagio.tasks.replay`` selects it."""
    return (
        Delivery.objects.filter(**delivery_filter)
        .exclude(status__in=IN_FLIGHT)
        .filter(Q(finished_at__isnull=True) | Q(finished_at__lte=snapshot_at))
    )


def start_bulk_replay(
    delivery_filter: dict[str, Any],
    *,
    user: Any,
    description: str,
    reason: str = "",
    canary: int | None = None,
    rate: float | None = None,
    max_failure_rate: float | None = None,
) -> Replay:
    """Record a Replay of the deliveries matching ``delivery_filter`` (JSON-safe lookups) and
    send the replay task on commit. The selection is frozen now (``snapshot_at``).

    If the task cannot be sent, the error is logged and the Replay marked stopped with it:
    at once outside a transaction (the caller can tell the user), else when it commits.
    """
    snapshot_at = timezone.now()
    record = Replay.objects.create(
        **Replay.requester(user),
        reason=reason,
        source=Replay.Source.ADMIN,
        description=description[:500],
        snapshot_at=snapshot_at,
        # What the relay sends the task again with, should its worker be lost.
        delivery_filter=delivery_filter,
        progress_at=snapshot_at,
        total=frozen_selection(delivery_filter, snapshot_at).order_by().count(),
        canary=canary,
        rate=rate,
        max_failure_rate=max_failure_rate,
    )

    def send() -> None:
        try:
            tasks.send_replay(record.pk, delivery_filter)
        except Exception as exc:
            logger.exception("messagio_admin: could not send the task of replay %s", record.pk)
            Replay.objects.filter(pk=record.pk).update(
                state=Replay.State.STOPPED,
                stopped_reason=f"the replay task could not be sent: {exc!r}",
                finished_at=timezone.now(),
            )

    # The Replay's own database: it is sent once that transaction commits.
    transaction.on_commit(send, using=db_alias())
    record.refresh_from_db(fields=["state", "stopped_reason", "finished_at"])
    return record
