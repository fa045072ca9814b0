"""The ordered registry of subscriptions: which listeners run for which messagio type.

It is process-wide and shared by every message center. It imports no models, so it is
filled at import time, before Django's app registry is ready.
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from messagio.const import TASK_PRIORITY
from messagio.message import Messagio

Listener = Callable[[Any], Any]
F = TypeVar("F", bound=Callable[..., Any])

_MAX_PRIORITY = max(TASK_PRIORITY)
#: Longest listener id, import path and messagio type name the records hold, and longest
#: queue name (the max_length of their columns in messagio.models): checked when a listener
#: subscribes, not when a worker first writes the group's rows and the database refuses them.
NAME_MAX_LENGTH = 255
QUEUE_MAX_LENGTH = 200


@dataclass(frozen=True)
class Subscription:
    """One listener subscribed to one messagio type, with the options of this subscription.

    ``None`` options take their value from the settings when the messagio is fired.
    """

    messagio_type: type[Messagio]
    listener: Listener
    listener_id: str
    #: ``"module:qualname"`` by which a worker imports a listener it never subscribed itself.
    import_path: str | None
    priority: int | None = None
    queue: str | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    max_retries: int | None = None
    default_retry_delay: float | None = None
    #: Seconds the listener may run in a worker before it is stopped and recorded as timed out.
    time_limit: float | None = None


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    if name and module:
        return f"{module}.{name}"
    return repr(obj)


#: Modules a worker cannot import a listener from: a script run as ``python script.py``, and
#: ``manage.py shell``, where the functions typed in belong to the shell command's module.
UNIMPORTABLE_MODULES = ("__main__", "django.core.management.commands.shell")


def _import_path(listener: Listener) -> str | None:
    module = getattr(listener, "__module__", None)
    qualname = getattr(listener, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module in UNIMPORTABLE_MODULES:
        # A lambda, a nested function, a callable instance, or one defined in a script or
        # a shell: not importable by a worker.
        return None
    return f"{module}:{qualname}"


def _found_at_its_path(cls: type) -> bool:
    """Whether ``cls`` is what its module and qualified name lead to, the path a worker
    imports it by (``dispatch.import_object``)."""
    found: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


def _takes_one_argument(listener: Any) -> str | None:
    """Why ``listener`` cannot be called with the messagio alone, or None."""
    try:
        # The function messagio calls: a decorator's wrapper may fill in arguments itself.
        signature = inspect.signature(listener, follow_wrapped=False)
    except (TypeError, ValueError):
        return None  # a builtin or an extension's callable: nothing to read
    try:
        signature.bind(object())
    except TypeError as exc:
        return str(exc)
    return None


def _parameter_refuses(listener: Any, messagio_type: type[Messagio]) -> str | None:
    """How the annotation of the listener's parameter names classes ``messagio_type`` is not.

    None when it accepts it, or when it cannot be read here (no annotation, a name not yet
    defined, a protocol or type variable): only a plain mismatch is refused. A decorator's
    wrapper is judged, not what it wraps: it may hand that something else.
    """
    try:
        signature = inspect.signature(listener, follow_wrapped=False)
    except (TypeError, ValueError):  # a builtin or an extension's callable
        return None
    parameter = next(
        (
            p
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ),
        None,
    )
    if parameter is None or parameter.annotation is parameter.empty:
        return None
    annotation = _evaluated(parameter.annotation, listener)
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    named = typing.get_args(annotation) if union else (annotation,)
    for candidate in named:
        if (
            candidate is Any
            or not isinstance(candidate, type)
            or typing.get_origin(candidate) is not None
        ):
            return None  # Any, a type variable, a string, a generic alias: not ours to judge
        try:
            if issubclass(messagio_type, candidate):
                return None
        except TypeError:  # a protocol that is not runtime-checkable, and the like
            return None
    shown = " | ".join(
        "None" if c is type(None) else getattr(c, "__qualname__", repr(c)) for c in named
    )
    return f"its parameter `{parameter.name}` is annotated `{shown}`"


def _evaluated(annotation: Any, listener: Any) -> Any:
    """A string annotation (``from __future__ import annotations``) evaluated in the module
    of the function that declares it; as it is when that fails (a name defined later, or
    imported under TYPE_CHECKING)."""
    if not isinstance(annotation, str):
        return annotation
    function = getattr(listener, "__func__", listener)
    # A callable instance's class declares its __call__.
    declared_in = function if inspect.isfunction(function) else type(listener)
    module = sys.modules.get(getattr(declared_in, "__module__", None) or "")
    try:
        return eval(annotation, vars(module) if module else {})  # noqa: S307 - the module's own
    except Exception:  # noqa: BLE001 - evaluating a string annotation can raise anything
        return annotation


def _runs_later(listener: Any) -> bool:
    """Whether calling ``listener`` returns a coroutine or a generator instead of running."""
    plain = inspect.isroutine(listener) or isinstance(listener, type)
    function = None if plain else type(listener).__call__  # an instance's __call__
    return any(
        check(candidate)
        for candidate in (listener, function)
        if candidate is not None
        for check in (
            inspect.iscoroutinefunction,
            inspect.isgeneratorfunction,
            inspect.isasyncgenfunction,
        )
    )


def _validate(
    messagio_type: Any,
    listener: Any,
    priority: Any,
    queue: Any,
    autoretry_for: Any,
    max_retries: Any,
    default_retry_delay: Any,
    time_limit: Any = None,
) -> tuple[type[BaseException], ...]:
    if not isinstance(messagio_type, type) or not issubclass(messagio_type, Messagio):
        raise TypeError(
            f"Cannot subscribe {_describe(listener)} to {_describe(messagio_type)}: "
            f"{_describe(messagio_type)} is not a class that extends messagio.Messagio. "
            "Listen to a subclass of Messagio, e.g. `class OrderPlaced(Messagio): ...`."
        )
    if not callable(listener):
        raise TypeError(
            f"Cannot subscribe {listener!r} to {messagio_type.get_name()}: it is not callable. "
            "Subscribe a function that takes the messagio as its only argument."
        )
    where = f"subscription of {_describe(listener)} to {messagio_type.get_name()}"
    if _runs_later(listener):
        # Called, it returns a coroutine or generator without running its body: the
        # delivery would be recorded succeeded while nothing ran.
        raise TypeError(
            f"{where}: {_describe(listener)} is an async function or a generator, which "
            "runs nothing when called; listeners are called in a worker and must do their "
            "work when called. Subscribe a plain function (wrap an async one with "
            "asgiref.sync.async_to_sync)."
        )
    wrong_arguments = _takes_one_argument(listener)
    if wrong_arguments:
        raise TypeError(
            f"{where}: {_describe(listener)} cannot be called with the messagio as its only "
            f"argument ({wrong_arguments}). A listener takes one argument, the messagio; "
            "subscribe a function, or a method bound to its instance."
        )
    refused_by = _parameter_refuses(listener, messagio_type)
    if refused_by:
        raise TypeError(
            f"{where}: {refused_by}, which {messagio_type.get_name()} is not, yet it would be "
            f"called with an instance of {messagio_type.__qualname__}. Annotate the parameter "
            "with every type it listens to (`EventA | EventB`, or a base class they share), or "
            "subscribe it only to the types it names."
        )
    if priority is not None and (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not 0 <= priority <= _MAX_PRIORITY
    ):
        raise TypeError(
            f"{where}: priority must be an int from 0 to {_MAX_PRIORITY} "
            f"(messagio.TASK_PRIORITY), not {priority!r}."
        )
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise TypeError(f"{where}: queue must be a non-empty queue name, not {queue!r}.")
    if queue is not None and len(queue) > QUEUE_MAX_LENGTH:
        raise ValueError(
            f"{where}: the queue name is {len(queue)} characters long; messagio records at "
            f"most {QUEUE_MAX_LENGTH}. Use a shorter queue name."
        )
    if len(messagio_type.get_name()) > NAME_MAX_LENGTH:
        raise ValueError(
            f"{where}: the messagio type's dotted path is {len(messagio_type.get_name())} "
            f"characters long; messagio records at most {NAME_MAX_LENGTH}. Move the class to a "
            "shorter module path or give it a shorter name."
        )
    if isinstance(autoretry_for, type):
        autoretry_for = (autoretry_for,)
    if isinstance(autoretry_for, (str, BaseException)) or not isinstance(
        autoretry_for or (), Iterable
    ):
        raise TypeError(
            f"{where}: autoretry_for must be exception classes, not {autoretry_for!r}: pass "
            "the classes themselves, e.g. autoretry_for=(ConnectionError,)."
        )
    autoretry_for = tuple(autoretry_for or ())
    for exc_type in autoretry_for:
        if not isinstance(exc_type, type) or not issubclass(exc_type, BaseException):
            raise TypeError(
                f"{where}: autoretry_for must hold exception classes, not {exc_type!r}, "
                "e.g. autoretry_for=(ConnectionError,)."
            )
        if not _found_at_its_path(exc_type):
            raise TypeError(
                f"{where}: autoretry_for holds {exc_type!r}, which a worker cannot find by "
                f"its path {exc_type.__module__}:{exc_type.__qualname__} (a class made at run "
                "time, or defined in a function), so it would never retry on it. List an "
                "exception class defined at the top level of a module, such as a base class "
                "of this one."
            )
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
    ):
        raise TypeError(f"{where}: max_retries must be an int >= 0, not {max_retries!r}.")
    if default_retry_delay is not None and (
        not _finite_seconds(default_retry_delay) or default_retry_delay < 0
    ):
        raise TypeError(
            f"{where}: default_retry_delay must be a finite number of seconds >= 0, "
            f"not {default_retry_delay!r}."
        )
    if time_limit is not None and (not _finite_seconds(time_limit) or time_limit <= 0):
        raise TypeError(
            f"{where}: time_limit must be a finite number of seconds > 0, not {time_limit!r} "
            "(leave it out for DEFAULT_TIME_LIMIT)."
        )
    return autoretry_for


def _finite_seconds(value: Any) -> bool:
    """A number of seconds a timer and the records can hold: not a bool, inf or nan."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Registry:
    """Subscriptions per messagio type, in the order they were made."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._by_type: dict[type[Messagio], list[Subscription]] = {}
        self._by_id: dict[str, Listener] = {}

    def subscribe(
        self,
        messagio_type: type[Messagio],
        listener: Listener,
        *,
        name: str | None = None,
        priority: int | None = None,
        queue: str | None = None,
        autoretry_for: Iterable[type[BaseException]] = (),
        max_retries: int | None = None,
        default_retry_delay: float | None = None,
        time_limit: float | None = None,
    ) -> Subscription:
        """Subscribe ``listener`` to ``messagio_type``; subscribing it again is a no-op."""
        retry_on = _validate(
            messagio_type,
            listener,
            priority,
            queue,
            autoretry_for,
            max_retries,
            default_retry_delay,
            time_limit,
        )
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty string, not {name!r}.")
        listener_id = name or _describe(listener)
        import_path = _import_path(listener)
        for what, text in (("id", listener_id), ("import path", import_path or "")):
            if len(text) > NAME_MAX_LENGTH:
                raise ValueError(
                    f"Cannot subscribe {listener_id!r} to {messagio_type.get_name()}: its "
                    f"{what} is {len(text)} characters long; messagio records at most "
                    f"{NAME_MAX_LENGTH}. Give it a shorter id with name=... and define it in "
                    "a module of a shorter path."
                )
        with self._lock:
            for existing in self._by_type.get(messagio_type, ()):
                if existing.listener is listener:
                    return existing
            known = self._by_id.get(listener_id)
            if known is not None and known is not listener:
                raise ValueError(
                    f"Two different listeners share the id {listener_id!r}: {known!r} and "
                    f"{listener!r}. Give one of them its own id with name=..., e.g. "
                    f"@listen_to_message({messagio_type.__name__}, name='{listener_id}_2')."
                )
            subscription = Subscription(
                messagio_type=messagio_type,
                listener=listener,
                listener_id=listener_id,
                import_path=import_path,
                priority=None if priority is None else int(priority),
                queue=queue,
                autoretry_for=retry_on,
                max_retries=max_retries,
                default_retry_delay=default_retry_delay,
                time_limit=time_limit,
            )
            self._by_type.setdefault(messagio_type, []).append(subscription)
            self._by_id[listener_id] = listener
            return subscription

    def unsubscribe(self, messagio_type: type[Messagio], listener: Listener) -> bool:
        """Remove ``listener`` from ``messagio_type``; return whether it was subscribed."""
        with self._lock:
            subscriptions = self._by_type.get(messagio_type, [])
            for index, subscription in enumerate(subscriptions):
                if subscription.listener is listener:
                    del subscriptions[index]
                    if not subscriptions:
                        del self._by_type[messagio_type]
                    if not any(
                        s.listener_id == subscription.listener_id for s in self.subscriptions()
                    ):
                        self._by_id.pop(subscription.listener_id, None)
                    return True
            return False

    def subscriptions_for(self, messagio_type: type[Messagio]) -> list[Subscription]:
        """The subscriptions of exactly this type, in subscription order."""
        with self._lock:
            return list(self._by_type.get(messagio_type, ()))

    def subscriptions(self) -> Iterator[Subscription]:
        """Every subscription, grouped by type, each type's in subscription order."""
        with self._lock:
            items = [s for subs in self._by_type.values() for s in subs]
        return iter(items)

    def messagio_types(self) -> list[type[Messagio]]:
        """Every messagio type that has at least one listener."""
        with self._lock:
            return list(self._by_type)

    def get_listener(self, listener_id: str) -> Listener | None:
        """The listener registered under ``listener_id`` in this process, if any."""
        return self._by_id.get(listener_id)

    def snapshot(self) -> tuple[dict[type[Messagio], list[Subscription]], dict[str, Listener]]:
        """A copy of the registry's state, for :meth:`restore` (used by tests)."""
        with self._lock:
            return {t: list(s) for t, s in self._by_type.items()}, dict(self._by_id)

    def restore(
        self, state: tuple[dict[type[Messagio], list[Subscription]], dict[str, Listener]]
    ) -> None:
        """Put back a state taken with :meth:`snapshot`."""
        by_type, by_id = state
        with self._lock:
            self._by_type = {t: list(s) for t, s in by_type.items()}
            self._by_id = dict(by_id)


#: The process-wide registry every message center subscribes into.
registry = Registry()


def listen_to_message(
    *messagio_types: type[Messagio],
    name: str | None = None,
    priority: int | None = None,
    queue: str | None = None,
    autoretry_for: Iterable[type[BaseException]] = (),
    max_retries: int | None = None,
    default_retry_delay: float | None = None,
    time_limit: float | None = None,
) -> Callable[[F], F]:
    """Subscribe the decorated function to each of ``messagio_types``; return it unchanged."""
    if not messagio_types:
        raise TypeError("listen_to_message() needs at least one Messagio subclass to listen to.")
    if len(messagio_types) == 1 and not isinstance(messagio_types[0], type):
        if callable(messagio_types[0]):  # used bare: @listen_to_message over a function
            raise TypeError(
                f"listen_to_message() got the function {_describe(messagio_types[0])}, which "
                "is not a class that extends messagio.Messagio. Name the messagio types to "
                "listen to, e.g. @listen_to_message(OrderPlaced, OrderCancelled)."
            )

    def decorator(listener: F) -> F:
        for messagio_type in messagio_types:  # all of them first: subscribed to all or none
            _validate(
                messagio_type,
                listener,
                priority,
                queue,
                autoretry_for,
                max_retries,
                default_retry_delay,
                time_limit,
            )
        for messagio_type in messagio_types:
            registry.subscribe(
                messagio_type,
                listener,
                name=name,
                priority=priority,
                queue=queue,
                autoretry_for=autoretry_for,
                max_retries=max_retries,
                default_retry_delay=default_retry_delay,
                time_limit=time_limit,
            )
        return listener

    return decorator
