"""Message centers: how a fired messagio reaches its listeners.

:class:`MessageCenter` publishes to Celery workers; :class:`InProcessMessageCenter` runs the
listeners in the firing process. Both share the one registry of subscriptions. Choose the
center ``Messagio.fire()`` uses with ``MESSAGIO = {"MESSAGE_CENTER": "dotted.path"}``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import threading
import uuid
from typing import Any, ClassVar

from messagio.dispatch import effective_priority, listener_spec
from messagio.exceptions import MessageProcessingError
from messagio.message import Messagio
from messagio.registry import Listener, Subscription, registry
from messagio.report import DispatchReport

logger = logging.getLogger("messagio")


class AbstractMessageCenter(abc.ABC):
    """A way to deliver messagios; subclass it and implement :meth:`send` for another transport."""

    _instances: ClassVar[dict[type, AbstractMessageCenter]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def singleton(cls) -> AbstractMessageCenter:
        """The one instance of this center class in this process."""
        with cls._instances_lock:
            if cls not in cls._instances:
                cls._instances[cls] = cls()
            return cls._instances[cls]

    def subscribe(
        self,
        messagio_type: type[Messagio],
        listener: Listener,
        priority: int | None = None,
        autoretry_for: Any = (),
        max_retries: int | None = None,
        default_retry_delay: float | None = None,
        **options: Any,
    ) -> Subscription:
        """Subscribe ``listener`` to ``messagio_type``; options as for ``@listen_to_message``.

        The retry policy may come by position, in messagio 0.x's order; ``name``, ``queue``
        and ``time_limit`` by keyword only.
        """
        return registry.subscribe(
            messagio_type,
            listener,
            priority=priority,
            autoretry_for=autoretry_for,
            max_retries=max_retries,
            default_retry_delay=default_retry_delay,
            **options,
        )

    def unsubscribe(self, messagio_type: type[Messagio], listener: Listener) -> bool:
        """Remove a subscription; return whether there was one."""
        return registry.unsubscribe(messagio_type, listener)

    def subscriptions_for(self, messagio_type: type[Messagio]) -> list[Subscription]:
        """The listeners of ``messagio_type`` in subscription order."""
        return registry.subscriptions_for(messagio_type)

    @abc.abstractmethod
    def send(self, messagio: Messagio, sync: bool = False, **options: Any) -> DispatchReport:
        """Deliver ``messagio`` to its listeners."""

    # Helpers for subclasses -------------------------------------------------------------

    @staticmethod
    def _check_messagio(messagio: Any) -> None:
        if not isinstance(messagio, Messagio):
            raise TypeError(
                f"Only Messagio instances can be sent, not {type(messagio).__name__}: "
                "make the class extend messagio.Messagio."
            )

    def run_here(
        self,
        messagio: Messagio,
        origin: str,
        raise_errors: bool | None = None,
        *,
        runs_on: Messagio | None = None,
        by_priority: bool = False,
        defer_to_commit: bool = False,
    ) -> DispatchReport:
        """Record (when recording is on) and run every listener in this process, in order.

        Each listener is retried at once per its retry policy; a failing listener never
        stops the others. Failures are logged and reported, and raised as one
        :class:`MessageProcessingError` when ``raise_errors`` (or ``SYNC_RAISE_ERRORS``) asks.
        """
        from messagio.conf import get_setting
        from messagio.execution import RunContext, run_all_here
        from messagio.payload import encode

        self._check_messagio(messagio)
        subscriptions = self.subscriptions_for(type(messagio))
        if by_priority:  # stable: equal priorities keep subscription order
            subscriptions.sort(key=lambda s: -effective_priority(s))
        record = bool(get_setting("RECORD"))
        report = DispatchReport(uuid.uuid4(), type(messagio).get_name(), sync=origin == "sync")
        specs = [listener_spec(s) for s in subscriptions]
        if record:
            records = _records()
            payload = encode(messagio, get_setting("MAX_PAYLOAD_BYTES"))
            event, deliveries = records.build_records(
                messagio, payload, subscriptions, origin=origin, state="inline"
            )
            # Claimed by this run until it ends: should it never end, the relay publishes
            # what it left (recovery.requeue_left_in_process).
            event.claimed_at = event.fired_at
            records.save_records(event, deliveries)
            report.event_id = event.id
            specs = [records.spec_of(d) for d in deliveries]
        ctx = RunContext(str(report.event_id), report.messagio_type, record=record)

        def run() -> None:
            report.outcomes = run_all_here(
                messagio if runs_on is None else runs_on,
                specs,
                ctx,
                [s.listener for s in subscriptions],
                [s.autoretry_for for s in subscriptions],
            )
            if record:
                records.release_in_process_claim(report.event_id)

        if defer_to_commit:
            # Recorded in the caller's transaction; listeners run only if it commits.
            from django.db import transaction

            transaction.on_commit(run, using=commit_alias())
            _fired(messagio, report)  # also on commit, after the listeners
            return report
        run()
        _fired(messagio, report)
        if raise_errors is None:
            raise_errors = bool(get_setting("SYNC_RAISE_ERRORS"))
        if raise_errors and report.failed:
            names = ", ".join(o.listener_id for o in report.failed)
            raise MessageProcessingError(
                f"{len(report.failed)} listener(s) of {report.messagio_type} failed: {names}",
                failures=[(o.listener_id, o.exception) for o in report.failed],
            ) from report.failed[0].exception
        return report

    def send_sync(
        self, messagio: Messagio, raise_errors: bool | None = None, **options: Any
    ) -> DispatchReport:
        """Run every listener here and now, handing each the very object that was fired."""
        if _overrides and _overrides[-1] is not self:  # captured (messagio.testing)
            return _overrides[-1].send(messagio, True, raise_errors=raise_errors, **options)
        if options:
            raise TypeError(f"Unknown fire() options: {', '.join(sorted(options))}")
        return self.run_here(messagio, "sync", raise_errors)


def refuse_in_async_code(messagio: Messagio) -> None:
    """Refuse a fire that records, from async code, before it publishes: Django refuses the
    database there (unless ``DJANGO_ALLOW_ASYNC_UNSAFE`` is set, and so does this), and the
    fire would publish, then fail to record what it published."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    from django.core.exceptions import SynchronousOnlyOperation

    from messagio.conf import get_setting

    if os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE") or not get_setting("RECORD"):
        return
    raise SynchronousOnlyOperation(
        f"A {type(messagio).__qualname__} was fired from async code, where Django refuses "
        "database access and so messagio cannot record it; nothing was recorded or "
        f"published. Use `await {type(messagio).__qualname__}(...).afire()` there (the "
        "fired object's afire()), or fire from a function wrapped in asgiref's "
        "sync_to_async."
    )


def commit_alias() -> str:
    """The database whose transaction a fire joins, and whose commit what it defers waits
    for: the one messagio records on (its router's); without records, the default one."""
    from django.db import DEFAULT_DB_ALIAS

    from messagio.conf import get_setting

    return str(_records().db_alias()) if get_setting("RECORD") else DEFAULT_DB_ALIAS


def _records() -> Any:
    """``messagio.records``, or an error that says what to do when messagio is not an
    installed app (its models, which the records import, cannot load then)."""
    try:
        from messagio import records
    except RuntimeError as exc:
        from django.apps import apps
        from django.core.exceptions import ImproperlyConfigured

        if apps.is_installed("messagio"):
            raise
        raise ImproperlyConfigured(
            'messagio is not in INSTALLED_APPS: add "messagio" (with "django_celery_results" '
            'and "django_celery_beat") to INSTALLED_APPS and run manage.py migrate. It records '
            "every fire in its models, and workers find its tasks through the installed apps."
        ) from exc
    return records


def _fired(messagio: Messagio, report: DispatchReport) -> None:
    """Send ``messagio_fired``; inside a transaction, only once it commits."""
    from django.db import transaction

    from messagio import signals

    def send() -> None:
        signals.messagio_fired.send_robust(
            sender=type(messagio),
            messagio=messagio,
            event_id=report.event_id,
            report=report,
        )

    alias = commit_alias()
    if transaction.get_connection(alias).in_atomic_block:
        transaction.on_commit(send, using=alias)
    else:
        send()


class MessageCenter(AbstractMessageCenter):
    """Publishes to Celery: one task per group of listeners of equal priority and queue."""

    def send(
        self, messagio: Messagio, sync: bool = False, *, origin: str = "fire", **options: Any
    ) -> DispatchReport:
        """Publish ``messagio``; ``origin`` records where the fire came from."""
        if _overrides:  # messagio.testing captures it, however it was fired
            return _overrides[-1].send(messagio, sync, **options)
        refuse_in_async_code(messagio)
        if sync:
            return self.send_sync(messagio, **options)
        if options:
            raise TypeError(f"Unknown fire() options: {', '.join(sorted(options))}")
        self._check_messagio(messagio)
        from django.db import transaction

        from messagio.conf import get_setting
        from messagio.payload import encode

        records = _records()
        subscriptions = self.subscriptions_for(type(messagio))
        payload = encode(messagio, get_setting("MAX_PAYLOAD_BYTES"))
        event, deliveries = records.build_records(messagio, payload, subscriptions, origin=origin)
        report = DispatchReport(event.id, event.messagio_type, sync=False)
        if get_setting("RECORD"):
            report.task_ids = records.record_and_publish(event, deliveries)
        else:
            unrecorded = records.envelopes(event, deliveries, record=False)
            alias = commit_alias()
            if transaction.get_connection(alias).in_atomic_block:
                # As with records: a rollback publishes nothing.
                transaction.on_commit(lambda: records.publish_all(unrecorded), using=alias)
            else:
                report.task_ids = records.publish_all(unrecorded)
        _fired(messagio, report)
        return report


class InProcessMessageCenter(AbstractMessageCenter):
    """Runs listeners in the firing process, no broker: for scripts, tests and small apps.

    ``fire()`` hands listeners a copy made through the same signed pickle a worker would
    receive, so a payload that would not travel fails here too; inside a transaction it
    runs them when the transaction commits. ``fire(sync=True)`` hands them the fired object.
    """

    def send(self, messagio: Messagio, sync: bool = False, **options: Any) -> DispatchReport:
        if _overrides:  # messagio.testing captures it, however it was fired
            return _overrides[-1].send(messagio, sync, **options)
        refuse_in_async_code(messagio)
        if sync:
            return self.send_sync(messagio, **options)
        self._check_messagio(messagio)
        from django.db import transaction

        from messagio.conf import get_setting
        from messagio.payload import decode, encode

        raise_errors = options.pop("raise_errors", None)
        if options:
            raise TypeError(f"Unknown fire() options: {', '.join(sorted(options))}")
        copy = decode(encode(messagio, get_setting("MAX_PAYLOAD_BYTES")))
        return self.run_here(
            messagio,
            "fire",
            raise_errors,
            runs_on=copy,
            by_priority=True,
            defer_to_commit=transaction.get_connection(commit_alias()).in_atomic_block,
        )


def get_message_center() -> AbstractMessageCenter:
    """The center selected by ``MESSAGIO["MESSAGE_CENTER"]`` (the Celery one by default)."""
    if _overrides:
        return _overrides[-1]
    return configured_center()


def configured_center() -> AbstractMessageCenter:
    """The center ``MESSAGIO["MESSAGE_CENTER"]`` selects, whatever a capture installed."""
    from django.utils.module_loading import import_string

    from messagio.conf import get_setting

    path = get_setting("MESSAGE_CENTER")
    center_class = _center_classes.get(path)
    if center_class is None:
        center_class = import_string(path)
        if not (isinstance(center_class, type) and issubclass(center_class, AbstractMessageCenter)):
            raise TypeError(
                f"MESSAGIO['MESSAGE_CENTER'] = {path!r} is not a subclass of "
                "messagio.AbstractMessageCenter"
            )
        _center_classes[path] = center_class
    return center_class.singleton()


_center_classes: dict[str, type[AbstractMessageCenter]] = {}
#: Centers installed over the configured one by messagio.testing.capture_messagios().
_overrides: list[AbstractMessageCenter] = []
