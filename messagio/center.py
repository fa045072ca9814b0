"""Message centers: how a fired messagio reaches its listeners.

:class:`MessageCenter` publishes to Celery workers; :class:`InProcessMessageCenter` runs the
listeners in the firing process. Both share the one registry of subscriptions. Choose the
center ``Messagio.fire()`` uses with ``MESSAGIO = {"MESSAGE_CENTER": "dotted.path"}``.
"""

from __future__ import annotations

import abc
import logging
import threading
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

from messagio.dispatch import effective_priority, listener_spec, plan
from messagio.exceptions import MessageProcessingError
from messagio.message import Messagio
from messagio.registry import Listener, Subscription, registry
from messagio.report import DispatchReport, ListenerOutcome

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
        self, messagio_type: type[Messagio], listener: Listener, **options: Any
    ) -> Subscription:
        """Subscribe ``listener`` to ``messagio_type``; options as for ``@listen_to_message``."""
        return registry.subscribe(messagio_type, listener, **options)

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

    def run_in_process(
        self,
        messagio: Messagio,
        subscriptions: Iterable[Subscription],
        report: DispatchReport,
        raise_errors: bool | None = None,
    ) -> DispatchReport:
        """Run ``subscriptions`` here, in order, each retried at once per its retry policy.

        A failing listener never stops the others; failures are logged and reported, and
        raised as one :class:`MessageProcessingError` when ``raise_errors`` (or the
        ``SYNC_RAISE_ERRORS`` setting) asks for it.
        """
        for subscription in subscriptions:
            report.outcomes.append(self._run_one(messagio, subscription))
        if raise_errors is None:
            from messagio.conf import get_setting

            raise_errors = bool(get_setting("SYNC_RAISE_ERRORS"))
        if raise_errors and report.failed:
            names = ", ".join(o.listener_id for o in report.failed)
            raise MessageProcessingError(
                f"{len(report.failed)} listener(s) of {report.messagio_type} failed: {names}",
                failures=[(o.listener_id, o.exception) for o in report.failed],
            ) from report.failed[0].exception
        return report

    @staticmethod
    def _run_one(messagio: Messagio, subscription: Subscription) -> ListenerOutcome:
        max_retries = listener_spec(subscription)["max_retries"]
        attempt = 0
        while True:
            attempt += 1
            try:
                result = subscription.listener(messagio)
            except Exception as exc:
                retry = attempt <= max_retries and isinstance(exc, subscription.autoretry_for)
                if retry:
                    continue
                logger.error(
                    "messagio: listener %s failed for %s (attempt %d)",
                    subscription.listener_id,
                    type(messagio).get_name(),
                    attempt,
                    exc_info=True,
                )
                return ListenerOutcome(
                    subscription.listener_id, False, exception=exc, attempts=attempt
                )
            return ListenerOutcome(subscription.listener_id, True, result=result, attempts=attempt)

    def send_sync(
        self, messagio: Messagio, raise_errors: bool | None = None, **options: Any
    ) -> DispatchReport:
        """Run every listener here and now, handing each the very object that was fired."""
        self._check_messagio(messagio)
        report = DispatchReport(uuid.uuid4(), type(messagio).get_name(), sync=True)
        return self.run_in_process(
            messagio, self.subscriptions_for(type(messagio)), report, raise_errors
        )


class MessageCenter(AbstractMessageCenter):
    """Publishes to Celery: one task per group of listeners of equal priority and queue."""

    def send(self, messagio: Messagio, sync: bool = False, **options: Any) -> DispatchReport:
        if sync:
            return self.send_sync(messagio, **options)
        if options:
            raise TypeError(f"Unknown fire() options: {', '.join(sorted(options))}")
        self._check_messagio(messagio)
        from messagio.conf import get_setting
        from messagio.payload import encode
        from messagio.tasks import publish

        subscriptions = self.subscriptions_for(type(messagio))
        payload = encode(messagio, get_setting("MAX_PAYLOAD_BYTES"))
        report = DispatchReport(uuid.uuid4(), type(messagio).get_name(), sync=False)
        for group in plan(subscriptions):
            envelope = {
                "v": 1,
                "event": str(report.event_id),
                "type": report.messagio_type,
                "payload": payload,
                "priority": group.priority,
                "queue": group.queue,
                "listeners": [listener_spec(s) for s in group.subscriptions],
            }
            report.task_ids.append(publish(envelope))
        return report


class InProcessMessageCenter(AbstractMessageCenter):
    """Runs listeners in the firing process, no broker: for scripts, tests and small apps.

    ``fire()`` hands listeners a copy made through the same signed pickle a worker would
    receive, so a payload that would not travel fails here too; ``fire(sync=True)`` hands
    them the fired object itself.
    """

    def send(self, messagio: Messagio, sync: bool = False, **options: Any) -> DispatchReport:
        if sync:
            return self.send_sync(messagio, **options)
        self._check_messagio(messagio)
        from messagio.conf import get_setting
        from messagio.payload import decode, encode

        copy = decode(encode(messagio, get_setting("MAX_PAYLOAD_BYTES")))
        report = DispatchReport(uuid.uuid4(), type(messagio).get_name(), sync=False)
        ordered = sorted(
            self.subscriptions_for(type(messagio)), key=lambda s: -effective_priority(s)
        )
        return self.run_in_process(copy, ordered, report, options.get("raise_errors"))


def get_message_center() -> AbstractMessageCenter:
    """The center selected by ``MESSAGIO["MESSAGE_CENTER"]`` (the Celery one by default)."""
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
