"""What messagio needs to know about the broker: its kind, how it orders priorities, and
what its messages may be serialized as."""

from __future__ import annotations

import functools
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


def broker_unreachable(exc: BaseException) -> bool:
    """Whether a publish failed for want of the broker (down, cut off: what follows would
    fail too), rather than because the broker refused this one message (a queue it will not
    take it on, say), after which the next message may still go.

    Celery's retried publish turns the transport's recoverable errors into kombu's
    OperationalError (some refusals too: those stop a relay run as an outage would)."""
    from amqp.exceptions import AccessRefused
    from celery import current_app
    from kombu.exceptions import OperationalError

    if isinstance(exc, (OperationalError, OSError)):
        return True  # kombu's word for it, once its retries are spent; or the socket's
    if isinstance(exc, AccessRefused):
        return True  # RabbitMQ refusing the login (or the user's rights on every queue)
    if isinstance(exc, KeyError):
        return False  # Celery's QueueNotFound (Redis counts KeyError among its connection errors)
    # A transport's own connection errors, when publishing is not retried (redis-py's).
    with current_app.connection_for_write() as connection:
        return isinstance(exc, connection.connection_errors)


#: kombu's content types of the two serializers messagio's tasks can travel as.
JSON_CONTENT_TYPE = "application/json"
PICKLE_CONTENT_TYPE = "application/x-python-serialize"


def accepted_content_types(app: Any) -> set[str] | None:
    """The content types Celery's ``accept_content`` lets a worker deserialize; None when it
    is None, which kombu takes for every one. Names no serializer is registered under in
    this process are left out (Celery reports them where they matter)."""
    accept_content = app.conf.accept_content
    if accept_content is None:
        return None
    return _content_types(tuple(accept_content))


@functools.lru_cache(maxsize=8)
def _content_types(accept_content: tuple[str, ...]) -> set[str]:
    from kombu.serialization import registry as serializers

    types = set()
    for name in accept_content:
        content_type = name if "/" in name else serializers.name_to_type.get(name)
        if content_type:
            types.add(content_type)
    return types


def task_serializer(app: Any) -> str:
    """What messagio's task messages travel as: JSON wherever Celery accepts it (its default),
    so that a worker unpickles nothing but messagio's own signed payloads; pickle only for a
    project that accepts pickle alone (as the original library's README set it)."""
    accepted = accepted_content_types(app)
    if accepted is None or JSON_CONTENT_TYPE in accepted or PICKLE_CONTENT_TYPE not in accepted:
        return "json"
    return "pickle"


def runs_eagerly() -> bool:
    """Whether messagio's tasks run where they are published (``task_always_eager``): a
    publish then runs the listeners, so it must not happen inside a transaction of
    messagio's own (a listener's database error would abort it, and its records with it)."""
    from messagio.tasks import deliver

    return bool(deliver.app.conf.task_always_eager)
