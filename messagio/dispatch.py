"""What a task carries about a listener, and how a worker finds and retries it.

The grouping of a fire's listeners into tasks is ``messagio.records.envelopes``.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from messagio.conf import get_setting
from messagio.exceptions import ListenerNotFoundError
from messagio.registry import Listener, Subscription, registry

logger = logging.getLogger("messagio")

#: Version of the task envelope layout as sent; bump it when the layout changes
#: incompatibly. 2: listener specs leave out what the envelope's ``shared`` and their import
#: path give (see :func:`compacted`). Workers read 1 too.
ENVELOPE_VERSION = 2

#: Spec keys whose values the listeners of a group mostly share (the project's defaults):
#: sent once per envelope, and by a spec only where its own differs.
SHARED_KEYS = ("autoretry_for", "max_retries", "retry_delay", "time_limit", "attempt")


def effective_priority(subscription: Subscription) -> int:
    if subscription.priority is not None:
        return subscription.priority
    return int(get_setting("DEFAULT_PRIORITY"))


def effective_queue(subscription: Subscription) -> str | None:
    return subscription.queue or get_setting("DEFAULT_QUEUE")


def _dotted(exc_type: type[BaseException]) -> str:
    return f"{exc_type.__module__}:{exc_type.__qualname__}"


def listener_spec(subscription: Subscription) -> dict[str, Any]:
    """What a task carries about one listener: plain data, safe to serialize any way."""
    autoretry_for = subscription.autoretry_for
    max_retries = subscription.max_retries
    if max_retries is None:
        max_retries = int(get_setting("DEFAULT_MAX_RETRIES")) if autoretry_for else 0
    delay = subscription.default_retry_delay
    if delay is None:
        delay = float(get_setting("DEFAULT_RETRY_DELAY"))
    return {
        "id": subscription.listener_id,
        "import_path": subscription.import_path,
        "autoretry_for": [_dotted(t) for t in autoretry_for],
        "max_retries": max_retries,
        "retry_delay": float(delay),
        "time_limit": (
            subscription.time_limit
            if subscription.time_limit is not None
            else get_setting("DEFAULT_TIME_LIMIT")
        ),
        "attempt": 1,
    }


def compacted(envelope: dict[str, Any]) -> dict[str, Any]:
    """``envelope`` as it is sent: each listener's spec without what the group shares, nor
    an id its import path spells. A 16-listener message spelled out is 4.5 kB, over the
    4 kB RabbitMQ keeps in a queue's index; the worker reads it back with :func:`expanded`.
    """
    specs = envelope["listeners"]
    if not specs or envelope.get("v", 1) != 1:
        return envelope  # compacted already, or of a layout this code does not know
    shared = {key: specs[0][key] for key in SHARED_KEYS if key in specs[0]}
    listeners = []
    for spec in specs:
        short = {
            key: value
            for key, value in spec.items()
            if key not in shared or shared[key] != value or type(shared[key]) is not type(value)
        }
        path = spec.get("import_path")
        if path and short.get("id") == path.replace(":", "."):
            del short["id"]
        listeners.append(short)
    return {**envelope, "v": ENVELOPE_VERSION, "shared": shared, "listeners": listeners}


def expanded(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope a worker received, each listener's spec whole again (layout 1 as is)."""
    shared = envelope.get("shared")
    if not isinstance(shared, dict):
        return envelope
    listeners = []
    for short in envelope["listeners"]:
        spec = {**shared, **short}
        if "id" not in spec:
            spec["id"] = spec["import_path"].replace(":", ".")
        listeners.append(spec)
    whole = {key: value for key, value in envelope.items() if key != "shared"}
    return {**whole, "listeners": listeners}


def import_object(path: str) -> Any:
    """Import ``"module:qualname"`` (or ``"module.name"``)."""
    if ":" in path:
        module_name, qualname = path.split(":", 1)
    else:
        module_name, _, qualname = path.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_listener(listener_id: str, import_path: str | None) -> Listener:
    """Find a listener by id in this process's registry, else import it by its path."""
    listener = registry.get_listener(listener_id)
    if listener is not None:
        return listener
    if import_path:
        try:
            listener = import_object(import_path)
        except (ImportError, AttributeError) as exc:
            raise ListenerNotFoundError(
                f"listener {listener_id!r} is not registered in this worker and "
                f"{import_path!r} does not import ({exc}); it may have been renamed or removed"
            ) from exc
        if callable(listener):
            return listener
    raise ListenerNotFoundError(
        f"listener {listener_id!r} is not registered in this worker and cannot be imported "
        "(a lambda, a nested function, or one defined in a shell or a script); subscribe a "
        "module-level function of a module the worker imports (autodiscovered messagio.py "
        "or tasks.py)"
    )


def should_retry(spec: dict[str, Any], exc: BaseException) -> bool:
    """Whether ``exc`` from this listener's attempt earns another attempt."""
    if spec["attempt"] > spec["max_retries"]:
        return False
    for path in spec["autoretry_for"]:
        try:
            exc_type = import_object(path)
        except (ImportError, AttributeError):
            logger.warning("messagio: autoretry_for class %s does not import; ignored", path)
            continue
        if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
            # Renamed since the fire: isinstance() would raise, and the outcome go unrecorded.
            logger.warning("messagio: autoretry_for %s is no exception class now; ignored", path)
            continue
        if isinstance(exc, exc_type):
            return True
    return False
