"""The Celery side: the tasks messagio runs, and how a group of listeners is published.

Task names are stable strings under ``messagio.tasks.`` so that routes such as
``('messagio.tasks.*', {'queue': 'messagio'})`` apply, and queued messages survive refactors.
messagio tasks store no Celery result (``ignore_result``): the Delivery rows are the record,
and a result row per task would double the write load.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from messagio.brokers import broker_priority

logger = logging.getLogger("messagio")

#: Runs one group of listeners of one fired messagio, in subscription order.
DELIVER_TASK = "messagio.tasks.deliver"
#: Publishes events left recorded-not-published (broker outage, crash before on_commit).
RELAY_TASK = "messagio.tasks.relay"
#: Deletes records past their retention.
PRUNE_TASK = "messagio.tasks.prune"
#: Fires a messagio named by a django-celery-beat PeriodicTask.
FIRE_SCHEDULED_TASK = "messagio.tasks.fire_scheduled"
#: Runs a bulk replay asked for from the admin.
REPLAY_TASK = "messagio.tasks.replay"


@shared_task(name=DELIVER_TASK, bind=True, ignore_result=True, serializer="pickle")
def deliver(self: Any, envelope: dict[str, Any]) -> None:
    """Run the listeners of one group in order; a failure never stops the others.

    A listener that fails with one of its ``autoretry_for`` exceptions is retried alone,
    in a task of its own, after its ``default_retry_delay``.
    """
    from messagio.execution import RunContext, load_messagio, run_once

    ctx = RunContext(
        event_id=envelope["event"],
        messagio_type=envelope["type"],
        record=bool(envelope.get("record")),
        task_id=self.request.id or "",
        worker=self.request.hostname or "",
        replay_id=envelope.get("replay"),
        envelope=envelope,
    )
    messagio = None
    load_error: BaseException | None = None
    try:
        messagio = load_messagio(envelope["payload"], envelope["type"])
    except Exception as exc:  # noqa: BLE001 - recorded on every delivery of the group
        load_error = exc
    for spec in envelope["listeners"]:
        _, will_retry = run_once(messagio, spec, ctx, load_error=load_error)
        if will_retry:
            retry = dict(envelope, listeners=[dict(spec, attempt=spec["attempt"] + 1)])
            publish(retry, countdown=spec["retry_delay"])


def publish(envelope: dict[str, Any], countdown: float | None = None) -> str:
    """Publish one group's envelope with its priority (mapped for the broker) and queue."""
    options: dict[str, Any] = {
        "serializer": "pickle",
        "priority": broker_priority(deliver.app, envelope["priority"]),
    }
    if envelope["queue"]:
        options["queue"] = envelope["queue"]
    if countdown:
        options["countdown"] = countdown
    return deliver.apply_async(args=(envelope,), **options).id
