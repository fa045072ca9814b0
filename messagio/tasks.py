"""The Celery side: the tasks messagio runs, and how a group of listeners is published.

Task names are stable strings under ``messagio.tasks.`` so that routes such as
``('messagio.tasks.*', {'queue': 'messagio'})`` apply, and queued messages survive refactors.
messagio tasks store no Celery result (``ignore_result``): the Delivery rows are the record,
and a result row per task would double the write load. They travel as JSON wherever Celery
accepts it (a messagio's signed pickle rides inside as base64), so workers need not accept
pickle at all; as pickle in a project that accepts pickle alone (the original library's
README), whose workers would refuse JSON. Each message carries messagio's seal
(:mod:`messagio.seals`): a worker drops one it did not seal, before it writes or imports.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.exceptions import Reject

from messagio.brokers import broker_priority, task_serializer
from messagio.dispatch import ENVELOPE_VERSION, compacted, expanded
from messagio.publisher import publish_task

logger = logging.getLogger("messagio")

#: Seconds before a group sent back to its queue (a database outage, a message of a newer
#: layout) is tried again.
DB_OUTAGE_REQUEUE_DELAY = 10.0


class _SerializerOfItsApp:
    """The ``serializer`` of messagio's tasks: :func:`~messagio.brokers.task_serializer` of
    the app each is bound to, however it is sent (``publish``, ``delay``, celery beat).

    A class attribute of the task class Celery builds, not a base class of messagio's: the
    project's own Task class (``Celery(task_cls=...)``, Django's) stays the base."""

    def __get__(self, task: Any, owner: Any) -> str:
        from celery import current_app

        return task_serializer(owner._app or current_app)


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


def _retry_refused(task: Any, *args: Any, **kwargs: Any) -> Any:
    """``retry`` of the deliver task: refused while a listener runs. Called by a listener
    (``current_task.retry()``, a Celery habit), Celery's would send the whole group again
    under the same task id while it still runs: its other listeners would run twice, at
    once. Otherwise (a project's Task class with ``autoretry_for``) it is Celery's."""
    from messagio.exceptions import CeleryRetryRefusedError
    from messagio.execution import listener_running

    if not listener_running.get():
        return super(type(task), task).retry(*args, **kwargs)
    raise CeleryRetryRefusedError(
        "a listener cannot retry the Celery task that runs it (current_task.retry()): that "
        "task runs every listener of its group, and all of them would run again. List the "
        "exception in the subscription's autoretry_for (with max_retries and "
        "default_retry_delay), and raise it: that listener alone is retried"
    )


@shared_task(
    name=DELIVER_TASK,
    bind=True,
    ignore_result=True,
    serializer=_SerializerOfItsApp(),
    retry=_retry_refused,
    # At least once, whatever the project's task_acks_late and task_reject_on_worker_lost:
    # a message is acknowledged after its group ran, and handed back when the pool process
    # running it dies (its claims tell the next worker what finished).
    acks_late=True,
    reject_on_worker_lost=True,
)
def deliver(self: Any, envelope: dict[str, Any]) -> None:
    """Run the listeners of one group in order; a failure never stops the others.

    A listener that fails with one of its ``autoretry_for`` exceptions is retried alone,
    in a task of its own, after its ``default_retry_delay``.
    """
    from django.db import InterfaceError, OperationalError, ProgrammingError

    from messagio.exceptions import PayloadSignatureError
    from messagio.execution import EXITS, RECORDED_EXIT, RunContext, load_messagio, run_once
    from messagio.records import envelope_payload
    from messagio.seals import check

    seal = check(envelope) if _needs_a_seal(self.request) else "sealed"
    if seal == "forged":
        logger.error(
            "messagio: dropped a task message for event %r that messagio did not seal "
            "(forged, or sealed with another key: check that SECRET_KEY / MESSAGIO"
            "['SIGNING_KEY'] match between the processes that fire and the workers); "
            "nothing of it was run or recorded",
            envelope.get("event") if isinstance(envelope, dict) else None,
        )
        return
    if _of_a_newer_layout(envelope):
        # Sent by processes of a newer messagio than this worker's (a deploy under way):
        # sent back for an upgraded worker rather than misread, or failed and acknowledged.
        logger.error(
            "messagio: a task message of layout %r for event %r is newer than this worker's "
            "(%s): upgrade this worker; sent back to its queue for %gs",
            envelope.get("v"),
            envelope.get("event"),
            ENVELOPE_VERSION,
            DB_OUTAGE_REQUEUE_DELAY,
        )
        _send_back(envelope, self.request.id)
        return
    envelope = expanded(envelope)

    ctx = RunContext(
        event_id=envelope["event"],
        messagio_type=envelope["type"],
        record=bool(envelope.get("record")),
        task_id=self.request.id or "",
        worker=self.request.hostname or "",
        replay_id=envelope.get("replay"),
        envelope=envelope,
        enforce_time_limit=True,
        retries_as_tasks=True,
    )
    messagio = None
    load_error: BaseException | None = None
    try:
        if seal == "payload":
            raise PayloadSignatureError(
                "payload signature mismatch: the payload is not the one messagio published "
                "with this task; it was not unpickled"
            )
        messagio = load_messagio(envelope_payload(envelope), envelope["type"])
    except Exception as exc:  # noqa: BLE001 - recorded on every delivery of the group
        load_error = exc
    specs = envelope["listeners"]
    for position, spec in enumerate(specs):
        next_spec = specs[position + 1] if position + 1 < len(specs) else None
        try:
            _, will_retry = run_once(
                messagio, spec, ctx, load_error=load_error, next_spec=next_spec
            )
        except (OperationalError, InterfaceError, ProgrammingError) as exc:
            # The database stayed unreachable, or refuses messagio's statements (code and
            # schema out of step while a deploy migrates): send the group again later, from
            # the interrupted listener on (it is recorded as lost and rerun; the ones before
            # it finished or wait for their own retry message). Acknowledged as a failed
            # task, its listeners would be left with no message, or no rows at all.
            logger.error(
                "messagio: the database did not take the group of %s (unavailable, or its "
                "schema out of step with this code); requeued: %r",
                ctx.event_id,
                exc,
            )
            _send_back(_from_position(envelope, position), ctx.task_id)
            return
        except EXITS as exc:
            if not getattr(exc, RECORDED_EXIT, False):
                raise  # the worker shutting down: the delivery stays running for its message
            # The listener's own sys.exit() or KeyboardInterrupt, recorded as its failure.
            # The pool process goes on with the group instead of ending: Celery would take
            # it for a lost worker, and the message would come back or be dropped as
            # task_reject_on_worker_lost says, with the listeners after it.
            will_retry = False
        if ctx.taken_over:
            return  # the copy that took its attempt over runs the rest of the group
        if ctx.held_elsewhere and _left_to_the_holder(ctx.held_elsewhere, specs[position + 1 :]):
            logger.info(
                "messagio: delivery %s of event %s runs under another message, with the "
                "rest of its group still to run: left to that message, in order",
                ctx.held_elsewhere,
                ctx.event_id,
            )
            return
        ctx.held_elsewhere = None
        if will_retry:
            retry = dict(
                envelope,
                deliveries_recorded=True,
                listeners=[dict(spec, attempt=spec["attempt"] + 1)],
            )
            try:
                publish(
                    retry,
                    countdown=spec["retry_delay"],
                    task_id=ctx.retry_task_ids.get(spec["delivery"]),
                )
            except Exception as exc:  # noqa: BLE001 - the rest of the group still runs
                logger.error(
                    "messagio: the broker refused the retry of %s for event %s; the relay "
                    "will requeue it once its delay has passed: %r",
                    spec["id"],
                    ctx.event_id,
                    exc,
                )
                if ctx.record:
                    _retry_not_sent(spec["delivery"], ctx.retry_task_ids.get(spec["delivery"]))


def _left_to_the_holder(held: str, followers: list[dict[str, Any]]) -> bool:
    """Whether the listeners after ``held``, which another message runs, are that message's
    to run: each still pending, as a copy of the group's message or a requeue's (which
    takes the pending listeners after it along) leaves them until it reaches them. Run
    here, they would run before the one it runs has ended (a cold shutdown hands the message
    back and the restarted worker requeues it too). Not when any has moved on (the group's
    own message walked past it), nor when a retry runs it: a retry travels alone."""
    from messagio.models import Attempt, Delivery

    ids = [spec["delivery"] for spec in followers]
    if not ids:
        return False
    if Delivery.objects.filter(pk__in=ids).exclude(status=Delivery.Status.PENDING).exists():
        return False
    last = Attempt.objects.filter(delivery_id=held).order_by("-number").first()
    return last is None or last.outcome != Attempt.Outcome.RETRIED


def _retry_not_sent(delivery_id: str, task_id: str | None) -> None:
    """Leave a retry the broker refused to the relay (see recovery.requeue_stuck), which
    otherwise would take it for a retry still on its way until STUCK_TIMEOUT."""
    from messagio.records import mark_retry_not_sent

    try:
        mark_retry_not_sent(delivery_id, task_id)
    except Exception:  # noqa: BLE001 - then it waits for STUCK_TIMEOUT, as before
        logger.exception("messagio: could not mark the retry of delivery %s unsent", delivery_id)


def _needs_a_seal(request: Any) -> bool:
    """Whether the task's arguments must carry messagio's seal: always, but for a direct
    call of the function in this process. Not read from anything a message can set: a
    message's body may set any other field of the request (``is_eager`` among them), so
    ``apply()`` and eager mode check the seal as a worker does (messagio's own publishes
    seal what they send, eager or not)."""
    return not request.called_directly


def _send_back(envelope: dict[str, Any], task_id: str | None) -> None:
    """Publish ``envelope`` again, due in DB_OUTAGE_REQUEUE_DELAY seconds, under this task's
    id (a retry's delivery waits for its own task id)."""
    try:
        publish(envelope, countdown=DB_OUTAGE_REQUEUE_DELAY, task_id=task_id or None)
    except Exception as refused:  # noqa: BLE001 - whatever the transport raises
        # Nor the broker: this message goes back to its queue, not acknowledged as a failed
        # task would be (the claims a group could not write leave the rest of it to no one).
        logger.error(
            "messagio: the broker refused it too (%r); the message goes back to its queue",
            refused,
        )
        raise Reject(refused, requeue=True) from refused


def _of_a_newer_layout(envelope: dict[str, Any]) -> bool:
    version = envelope.get("v", 1)
    return not isinstance(version, int) or version > ENVELOPE_VERSION


def _from_position(envelope: dict[str, Any], position: int) -> dict[str, Any]:
    """The group's envelope from its listener at ``position`` on."""
    if position == 0:
        return envelope
    # The first claim wrote the whole group's rows.
    return dict(envelope, deliveries_recorded=True, listeners=envelope["listeners"][position:])


def publish(
    envelope: dict[str, Any], countdown: float | None = None, task_id: str | None = None
) -> str:
    """Publish one group's envelope, sealed, with its priority (mapped for the broker) and
    queue."""
    from messagio.seals import sealed

    options: dict[str, Any] = {
        "priority": broker_priority(deliver.app, envelope["priority"]),
        # What monitoring tools show for the task; Celery would otherwise build it with a
        # safe repr of the whole envelope, payload included, on every publish.
        "argsrepr": _argsrepr(envelope),
        "kwargsrepr": "{}",
    }
    envelope = sealed(compacted(envelope))
    if envelope["queue"]:
        options["queue"] = envelope["queue"]
    if countdown:
        options["countdown"] = countdown
    # On a kept producer; by apply_async where that could differ (a countdown among them).
    published = publish_task(deliver, (envelope,), options, task_id=task_id)
    return published or deliver.apply_async(args=(envelope,), task_id=task_id, **options).id


#: Listeners an ``argsrepr`` names before it counts the rest (Celery puts it in the
#: message's headers: a long one costs every publish).
ARGSREPR_LISTENERS = 4


def _argsrepr(envelope: dict[str, Any]) -> str:
    specs = envelope["listeners"]
    # A compacted spec's id is its import path (one sent back unread: see deliver).
    names = [spec.get("id") or spec.get("import_path") for spec in specs[:ARGSREPR_LISTENERS]]
    if len(specs) > ARGSREPR_LISTENERS:
        names[-1:] = [f"{len(specs) - ARGSREPR_LISTENERS + 1} more"]
    return f"(<{envelope['type']} event {envelope['event']} for {', '.join(names)}>,)"


@shared_task(name=RELAY_TASK, ignore_result=True, serializer=_SerializerOfItsApp())
def relay(batch_size: int = 500) -> int:
    """Publish events left recorded-not-published; scheduled by django-celery-beat.

    Batch after batch for up to half of RELAY_INTERVAL (so runs seldom overlap): after an
    outage, a backlog drains at the broker's pace, not one batch per interval. Stuck
    deliveries are requeued once per run.
    """
    import time

    from messagio.conf import get_setting
    from messagio.relay import relay as run_relay

    deadline = time.monotonic() + float(get_setting("RELAY_INTERVAL")) / 2
    published = 0
    first = True
    refused: set[str] = set()
    while True:
        report = run_relay(batch_size=batch_size, requeue=first, exclude=refused)
        first = False
        published += report.published
        refused |= report.refused_ids
        if report.unreachable or not report.remaining or time.monotonic() > deadline:
            return published


@shared_task(name=PRUNE_TASK, ignore_result=True, serializer=_SerializerOfItsApp())
def prune() -> int:
    """Delete records past their retention (RETAIN_SUCCEEDED_DAYS / RETAIN_FAILED_DAYS)."""
    from messagio.retention import prune_expired

    return prune_expired()


@shared_task(name=FIRE_SCHEDULED_TASK, ignore_result=True, serializer=_SerializerOfItsApp())
def fire_scheduled(messagio: str, fields: dict[str, Any] | None = None) -> str:
    """Fire ``messagio`` (a dotted class path) built from JSON ``fields``, from a PeriodicTask.

    Only a Messagio subclass this worker has loaded (its listeners' modules import it):
    the path comes from a message, and importing whatever it names would run that module.
    """
    from messagio.center import MessageCenter, get_message_center

    cls = _loaded_messagio_class(messagio)
    instance = cls(**(fields or {}))
    center = get_message_center()
    if isinstance(center, MessageCenter):
        report = center.send(instance, origin="schedule")
    else:
        report = center.send(instance)
    return str(report.event_id)


def _loaded_messagio_class(path: str) -> Any:
    """The class at ``path`` in the longest of its modules already imported, looked up and
    never imported: where the class is defined (``Type.get_name()``), or a package that
    exports it."""
    import sys

    from messagio.message import Messagio

    parts = path.replace(":", ".").split(".")
    for cut in range(len(parts) - 1, 0, -1):
        found: Any = sys.modules.get(".".join(parts[:cut]))
        if found is None:
            continue
        for name in parts[cut:]:
            # What the module or class holds, not getattr: a module's __getattr__ may
            # import what it is asked for (lazy submodules), and the path is a message's.
            found = vars(found).get(name) if hasattr(found, "__dict__") else None
        if isinstance(found, type) and issubclass(found, Messagio):
            return found
        break
    raise TypeError(
        f"{path} is not a Messagio subclass this worker has loaded: name one by its dotted "
        "path (Type.get_name()), defined or imported in a module the worker imports (its "
        "listeners' messagio.py or tasks.py)"
    )


@shared_task(
    name=REPLAY_TASK,
    bind=True,
    ignore_result=True,
    serializer=_SerializerOfItsApp(),
    # Acknowledged as it starts, whatever the project's task_acks_late: a replay at a rate
    # can outlast Redis's visibility timeout and RabbitMQ's consumer_timeout, which would
    # hand it to a second worker meanwhile. A lost worker's replay is sent again by the
    # relay (replays.take_over_lost).
    acks_late=False,
    reject_on_worker_lost=False,
)
def replay(
    self: Any, replay_id: int, delivery_filter: dict[str, Any], seal: str | None = None
) -> None:
    """Run a bulk replay recorded by the admin, over deliveries matching ``delivery_filter``
    (``seal``: see :func:`send_replay`)."""
    from django.db.models import Q

    from messagio.models import Delivery, Replay
    from messagio.replays import IN_FLIGHT, run_replay, stop_failed, take_up
    from messagio.seals import is_sealed

    if _needs_a_seal(self.request) and not is_sealed([replay_id, delivery_filter], seal):
        logger.error(
            "messagio: dropped a replay task message for replay %r that messagio did not "
            "seal (forged, or sealed with another key); nothing was replayed",
            replay_id,
        )
        return

    record = Replay.objects.get(pk=replay_id)
    if record.state != Replay.State.RUNNING:
        # Its message came back after the replay ended (a worker restarted, or the broker
        # took the first worker for gone): it is not run again.
        logger.info("messagio: replay %s already %s; not run again", replay_id, record.state)
        return
    try:
        if not take_up(record):
            logger.info("messagio: replay %s runs on another worker; this copy ends", replay_id)
            return
        frozen = (
            Delivery.objects.filter(**delivery_filter)
            .exclude(status__in=IN_FLIGHT)
            .filter(Q(finished_at__isnull=True) | Q(finished_at__lte=record.snapshot_at))
            # Resumed, it does not take again what it queued before and failed again
            # since, whatever a worker's clock wrote as its finish.
            .exclude(replay=record)
        )
    except Exception as exc:
        stop_failed(record, exc)  # not resent for ever by the relay
        raise
    run_replay(record, frozen)


def send_replay(replay_id: int, delivery_filter: dict[str, Any]) -> None:
    """Send the replay task, its arguments sealed: a message that names other deliveries
    would replay them (those that succeeded too)."""
    from messagio.seals import seal_of

    replay.delay(replay_id, delivery_filter, seal_of([replay_id, delivery_filter]))
