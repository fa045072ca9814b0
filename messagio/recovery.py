"""Recovering deliveries whose worker died mid-listener.

RabbitMQ hands an unacknowledged message back as soon as the dead worker's connection
closes. kombu's Redis transport only restores it after its visibility timeout (an hour by
default), and the filesystem broker not at all. So when a worker starts, it republishes
the deliveries that its predecessor of the same name (``-n``) left ``running``; the claim
records the lost attempt and runs the listener again.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("messagio")


def requeue_orphans(worker_name: str) -> int:
    """Republish deliveries left ``running`` by a worker named ``worker_name``."""
    from messagio.models import Delivery
    from messagio.records import envelopes, publish_all

    orphans = list(
        Delivery.objects.filter(status=Delivery.Status.RUNNING, worker=worker_name)
        .select_related("event")
        .order_by("event_id", "position")
    )
    by_event: dict[Any, list[Delivery]] = {}
    for delivery in orphans:
        by_event.setdefault(delivery.event_id, []).append(delivery)
    for members in by_event.values():
        publish_all(envelopes(members[0].event, members))
    if orphans:
        logger.warning(
            "messagio: %s requeued %d delivery(ies) its predecessor left running",
            worker_name,
            len(orphans),
        )
    return len(orphans)


def on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    """``worker_ready`` receiver: requeue orphans unless the broker redelivers by itself."""
    from messagio.brokers import is_amqp
    from messagio.conf import get_setting

    if not get_setting("RECORD") or is_amqp(sender.app):
        return
    try:
        requeue_orphans(sender.hostname)
    except Exception:  # a worker must start even if this recovery cannot run now
        logger.exception("messagio: could not requeue deliveries left running by %s", sender)
