"""What messagio needs to know about the broker: its kind and how it orders priorities."""

from __future__ import annotations

from typing import Any

from messagio.conf import get_setting

#: URL schemes of brokers whose transport treats priority 0 as the highest (kombu's Redis).
INVERTED_PRIORITY_SCHEMES = ("redis", "rediss", "sentinel", "redis+socket")
#: URL schemes of AMQP brokers (RabbitMQ): higher is more important, up to x-max-priority.
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


def broker_scheme(app: Any) -> str:
    """The scheme of the Celery app's broker URL, e.g. ``"redis"``; ``"amqp"`` by default."""
    url = app.conf.broker_url or "amqp://"
    if isinstance(url, (list, tuple)):
        url = url[0]
    return str(url).split("://", 1)[0].split(";", 1)[0].lower()


def is_redis(app: Any) -> bool:
    return broker_scheme(app) in INVERTED_PRIORITY_SCHEMES


def is_amqp(app: Any) -> bool:
    return broker_scheme(app) in AMQP_SCHEMES


def broker_priority(app: Any, priority: int) -> int:
    """Map a messagio priority (higher is more important) to the number the broker expects."""
    mode = get_setting("BROKER_PRIORITY")
    if mode == "auto":
        mode = "inverted" if is_redis(app) else "direct"
    if mode == "inverted":
        # kombu's Redis transport serves 0 first and knows 0..9: 10 and 9 both become 0.
        return max(0, min(9, 9 - priority))
    if mode == "direct":
        return max(0, min(255, priority))
    raise ValueError(
        f"MESSAGIO['BROKER_PRIORITY'] must be 'auto', 'inverted' or 'direct', not {mode!r}"
    )
