"""The Celery settings every side shares, copied from project/settings.py.

Only the library differs between A, B and C: broker, queue layout, priorities, acks and
prefetch are the same. Every side accepts pickle, which B and C send; A's tasks go as JSON
there (messagio picks JSON wherever it is accepted), as they would in the demo project.
Standalone, so B's Django settings (in the 0.7 virtualenv) import it too.
"""

from __future__ import annotations

from typing import Any


def celery_settings(broker_url: str, queue: str) -> dict[str, Any]:
    """Lower-case Celery settings for an app whose tasks all go to ``queue``."""
    from kombu import Exchange, Queue

    options: dict[str, Any] = {
        "broker_url": broker_url,
        "accept_content": ["json", "pickle"],
        "task_serializer": "json",
        "task_default_queue": queue,
        "task_queues": (Queue(queue, Exchange(queue), routing_key=queue),),
        "task_queue_max_priority": 10,
        "task_default_priority": 5,
        "worker_prefetch_multiplier": 1,  # the bench passes --prefetch-multiplier
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "broker_connection_retry_on_startup": True,
    }
    if broker_url.startswith(("redis://", "rediss://")):
        options["broker_transport_options"] = {
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
        }
    return options
