"""The Celery side: the task that runs a group of listeners, and how groups are published.

Task names are stable strings under ``messagio.tasks.`` so that routes such as
``('messagio.tasks.*', {'queue': 'messagio'})`` apply, and queued messages survive refactors.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from messagio.brokers import broker_priority
from messagio.dispatch import resolve_listener, should_retry
from messagio.exceptions import ListenerNotFoundError, PayloadSignatureError
from messagio.payload import decode

logger = logging.getLogger("messagio")

#: Name of the task that runs one group of listeners of one fired messagio.
DELIVER_TASK = "messagio.tasks.deliver"


@shared_task(name=DELIVER_TASK, bind=True, ignore_result=True, serializer="pickle")
def deliver(self: Any, envelope: dict[str, Any]) -> dict[str, str]:
    """Run the listeners of one group in order; a failure never stops the others.

    A listener that fails with one of its ``autoretry_for`` exceptions is retried alone,
    in a task of its own, after its ``default_retry_delay``.
    """
    outcomes: dict[str, str] = {}
    try:
        messagio = decode(envelope["payload"])
    except PayloadSignatureError as exc:
        logger.error("messagio: event %s not delivered: %s", envelope.get("event"), exc)
        return {spec["id"]: "failed" for spec in envelope["listeners"]}
    for spec in envelope["listeners"]:
        try:
            listener = resolve_listener(spec["id"], spec["import_path"])
            listener(messagio)
        except ListenerNotFoundError as exc:
            logger.error("messagio: event %s: %s", envelope["event"], exc)
            outcomes[spec["id"]] = "failed"
        except Exception as exc:
            if should_retry(spec, exc):
                logger.warning(
                    "messagio: listener %s failed for %s (attempt %d), retrying in %ss: %r",
                    spec["id"],
                    envelope["type"],
                    spec["attempt"],
                    spec["retry_delay"],
                    exc,
                )
                retry_spec = dict(spec, attempt=spec["attempt"] + 1)
                publish(dict(envelope, listeners=[retry_spec]), countdown=spec["retry_delay"])
                outcomes[spec["id"]] = "retrying"
            else:
                logger.error(
                    "messagio: listener %s failed for %s (attempt %d)",
                    spec["id"],
                    envelope["type"],
                    spec["attempt"],
                    exc_info=True,
                )
                outcomes[spec["id"]] = "failed"
        else:
            outcomes[spec["id"]] = "succeeded"
    return outcomes


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
