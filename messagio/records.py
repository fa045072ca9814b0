"""How a fire becomes records and tasks, and how a worker records what a listener did.

The database is the truth. Each Celery task carries the event id, the signed payload and,
per listener, its delivery id and options, so a worker needs no read to start. A fire
published outside a transaction writes only its Event; the worker writes each group's
Delivery rows with its first claim (and the Event too if the firing process died between
publishing and writing it). A fire in a transaction, or one the broker refused, writes the
Event and its pending Deliveries, which on_commit or the relay publish.
"""

from __future__ import annotations

import base64
import datetime
import functools
import logging
import time
import traceback as tb
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from messagio.brokers import broker_unreachable
from messagio.conf import get_setting
from messagio.dispatch import effective_priority, effective_queue, listener_spec
from messagio.exceptions import (
    ListenerTimeoutError,
    PublishRefusedError,
    WorkerLostTooOftenError,
)
from messagio.ids import time_ordered_uuid
from messagio.message import Messagio
from messagio.models import Attempt, Delivery, Event
from messagio.registry import Subscription
from messagio.summary import storable, summarize

logger = logging.getLogger("messagio")

#: Statuses a delivery is no longer run from, unless a replay puts it back to pending.
TERMINAL = (Delivery.Status.SUCCEEDED, Delivery.Status.FAILED)
#: A delivery in these states, at the attempt a worker ran, was taken from that worker.
TAKEN_UP = (Delivery.Status.PENDING, Delivery.Status.RUNNING)
#: A delivery in these states is claimed only by the task that holds it (its task id): a
#: retrying one by its retry's task, a running one by its own message delivered again after
#: its worker died. Any other message (the group's message delivered again while a retry of
#: one of its listeners runs elsewhere) would run it a second time, alongside the live one.
HELD = (Delivery.Status.RETRYING, Delivery.Status.RUNNING)


def db_alias() -> str:
    return router.db_for_write(Event)


# --- Firing ---------------------------------------------------------------------------------


@dataclass
class NewEvent:
    """An Event about to be written: plain attributes, cheaper than a model instance."""

    id: uuid.UUID
    messagio_type: str
    fired_at: datetime.datetime
    payload: bytes
    summary: dict[str, Any]
    origin: str
    state: str
    listener_count: int
    published_at: datetime.datetime | None = None
    publish_error: str = ""
    claimed_at: datetime.datetime | None = None

    @property
    def pk(self) -> uuid.UUID:
        return self.id

    def as_model(self) -> Event:
        return Event(**{f: getattr(self, f) for f in self.__dataclass_fields__})


@dataclass
class NewDelivery:
    """A Delivery about to be written, pending."""

    id: uuid.UUID
    event_id: uuid.UUID
    position: int
    messagio_type: str
    listener: str
    import_path: str
    priority: int
    queue: str
    autoretry_for: list[str]
    max_retries: int
    retry_delay: float
    time_limit: float | None

    def as_model(self) -> Delivery:
        return Delivery(**{f: getattr(self, f) for f in self.__dataclass_fields__})


def build_records(
    messagio: Messagio,
    payload: bytes,
    subscriptions: Sequence[Subscription],
    origin: str = "fire",
    state: str = "recorded",
) -> tuple[NewEvent, list[NewDelivery]]:
    """The Event and Deliveries of one fire, with ids made here (no RETURNING needed)."""
    event = NewEvent(
        id=time_ordered_uuid(),
        messagio_type=type(messagio).get_name(),
        fired_at=timezone.now(),
        payload=payload,
        summary=summarize(messagio),
        origin=origin,
        state=state,
        listener_count=len(subscriptions),
    )
    return event, new_deliveries(event.id, event.messagio_type, subscriptions)


def new_deliveries(
    event_id: uuid.UUID,
    messagio_type: str,
    subscriptions: Sequence[Subscription],
    positions: Iterable[int] | None = None,
) -> list[NewDelivery]:
    """Pending Deliveries of an event for its subscriptions (those at ``positions``)."""
    wanted = None if positions is None else set(positions)
    deliveries = []
    for position, subscription in enumerate(subscriptions):
        if wanted is not None and position not in wanted:
            continue
        spec = listener_spec(subscription)
        deliveries.append(
            NewDelivery(
                id=time_ordered_uuid(),
                event_id=event_id,
                position=position,
                messagio_type=messagio_type,
                listener=subscription.listener_id,
                import_path=subscription.import_path or "",
                priority=effective_priority(subscription),
                queue=effective_queue(subscription) or "",
                autoretry_for=spec["autoretry_for"],
                max_retries=spec["max_retries"],
                retry_delay=spec["retry_delay"],
                time_limit=spec["time_limit"],
            )
        )
    return deliveries


#: A CTE that turns off PostgreSQL's synchronous commit for the statement's own transaction.
#: Used where a lost write is covered: a published fire's message recreates its records, and
#: a lost claim or outcome makes the delivery run again (at least once).
ASYNC_COMMIT_CTE = "messagio_async AS (SELECT set_config('synchronous_commit', 'off', true))"

EVENT_COLUMNS = (
    "id", "messagio_type", "fired_at", "payload", "summary", "origin", "replay_of_id", "state",
    "published_at", "claimed_at", "publish_error", "listener_count",
)  # fmt: skip
EVENT_TYPES = (
    "uuid", "varchar", "timestamptz", "bytea", "jsonb", "varchar", "uuid", "varchar",
    "timestamptz", "timestamptz", "text", "integer",
)  # fmt: skip

#: What varies between the Deliveries of one fire: one JSON document for all of them,
#: unpacked by jsonb_to_recordset, so the statement has the same few parameters whatever
#: the number of listeners (adapting a parameter costs more than the row it fills).
DELIVERY_RECORD = (
    ("id", "uuid"), ("position", "integer"), ("listener", "varchar"),
    ("import_path", "varchar"), ("priority", "integer"), ("queue", "varchar"),
    ("autoretry_for", "jsonb"), ("max_retries", "integer"), ("retry_delay", "double precision"),
    ("time_limit", "double precision"),
)  # fmt: skip
#: A pending Delivery's other columns: the same for every fire, written as literals.
PENDING_DELIVERY = (
    ("status", "'pending'"), ("attempts", "0"), ("result", "''"), ("error_type", "''"),
    ("error", "''"), ("traceback", "''"), ("task_id", "''"), ("worker", "''"),
)  # fmt: skip


def _delivery_document(deliveries: list[NewDelivery]) -> list[dict[str, Any]]:
    return [
        {name: str(d.id) if name == "id" else getattr(d, name) for name, _ in DELIVERY_RECORD}
        for d in deliveries
    ]


def _event_row(e: NewEvent) -> tuple[Any, ...]:
    from psycopg.types.json import Jsonb  # only on PostgreSQL, whose driver this is

    return (
        e.id, e.messagio_type, e.fired_at, bytes(e.payload), Jsonb(e.summary), e.origin, None,
        e.state, e.published_at, e.claimed_at, e.publish_error, e.listener_count,
    )  # fmt: skip


def use_async_commit(connection: Any) -> bool:
    return connection.vendor == "postgresql" and bool(get_setting("ASYNC_COMMIT"))


def statement_cursor(connection: Any) -> Any:
    """A cursor for messagio's own statements: on PostgreSQL with psycopg 3 and
    PREPARED_STATEMENTS, one whose statements the server prepares once per connection.

    Each is the same text every time and its plan (CTEs, a row lock, JSON unpacking) costs
    more than running it: preparing takes a worker's group of four listeners from about
    4.9 ms to 3.0 ms here. Django prepares nothing by default (poolers); this applies to
    messagio's statements only, and queries are still logged as Django logs them.
    """
    if (
        connection.vendor != "postgresql"
        or not get_setting("PREPARED_STATEMENTS")
        or _prepared_statements_lost
    ):
        return connection.cursor()
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        return connection.cursor()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        # psycopg ignores prepare=True while the threshold is None (Django's default); a
        # threshold no other statement reaches keeps everyone else's statements unprepared.
        raw.prepare_threshold = NEVER_BY_COUNT
    with connection.wrap_database_errors:
        # Django's wrapping (query logging, error translation), around a prepared cursor.
        return connection._prepare_cursor(_prepared_cursor_class()(raw))


class _LoggedQuery:
    """What Django's query log reads of a cursor (``cursor._query.query``, as a client-side
    binding cursor has it): the statement with its parameters inlined, made only if read."""

    def __init__(self, connection: Any, sql: str, params: Any) -> None:
        self.connection, self.sql, self.params = connection, sql, params

    @property
    def query(self) -> bytes:
        from psycopg import ClientCursor

        with ClientCursor(self.connection) as cursor:
            return cursor.mogrify(self.sql, self.params).encode()


#: psycopg's prepare_threshold that prepares only what asks to be prepared.
NEVER_BY_COUNT = 2**31 - 1

#: Set when the server lost a statement this process prepared (a pooler in transaction mode
#: between them hands each transaction another server connection): from then on this
#: process prepares nothing.
_prepared_statements_lost = False


def _stop_preparing(error: Exception) -> None:
    global _prepared_statements_lost
    if not _prepared_statements_lost:
        _prepared_statements_lost = True
        logger.warning(
            "messagio: the database lost a statement messagio prepared (%s): a connection "
            "pooler in transaction mode (PgBouncer before 1.21, or max_prepared_statements = "
            "0) keeps no prepared statements. This process runs messagio's statements "
            "unprepared from now on; set MESSAGIO['PREPARED_STATEMENTS'] = False.",
            error,
        )


@functools.cache
def _prepared_cursor_class() -> type:
    """Made on first use: the class it extends exists only with PostgreSQL's backend."""
    from django.db.backends.postgresql.base import ServerBindingCursor
    from psycopg import errors
    from psycopg.pq import TransactionStatus

    class PreparedCursor(ServerBindingCursor):
        """Server-side binding, every statement prepared."""

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            try:
                result = super().execute(query, params, prepare=not _prepared_statements_lost)
            except (errors.InvalidSqlStatementName, errors.DuplicatePreparedStatement) as exc:
                _stop_preparing(exc)
                if self.connection.info.transaction_status != TransactionStatus.IDLE:
                    raise  # its transaction failed with it: not to be sent again alone
                result = super().execute(query, params, prepare=False)
            self._query = _LoggedQuery(self.connection, query, params)
            return result

    return PreparedCursor


def _fire_statement(connection: Any, asynchronous: bool, with_deliveries: bool = True) -> str:
    """The one INSERT of a fire on PostgreSQL: the Event and, ``with_deliveries``, its
    pending Deliveries."""
    return _build_fire_statement(connection.alias, asynchronous, with_deliveries)


@functools.cache
def _build_fire_statement(alias: str, asynchronous: bool, with_deliveries: bool) -> str:
    """Built once per database and commit mode."""
    connection = connections[alias]
    quote = connection.ops.quote_name
    event_table, delivery_table = quote(Event._meta.db_table), quote(Delivery._meta.db_table)
    event_values = ", ".join(f"%s::{kind}" for kind in EVENT_TYPES)
    insert_event = (
        f"INSERT INTO {event_table} "  # noqa: S608
        f"({', '.join(quote(c) for c in EVENT_COLUMNS)}) "
        f"SELECT {event_values}{' FROM messagio_async' if asynchronous else ''} "
        "ON CONFLICT DO NOTHING"
    )
    ctes = [ASYNC_COMMIT_CTE] if asynchronous else []
    if not with_deliveries:
        return f"WITH {ctes[0]} {insert_event}" if ctes else insert_event
    ctes.append(f"messagio_new_event AS ({insert_event})")
    return (
        f"WITH {', '.join(ctes)} INSERT INTO {delivery_table} "  # noqa: S608
        f"{_delivery_rows_sql(connection, PENDING_DELIVERY)} ON CONFLICT DO NOTHING"
    )


def _delivery_rows_sql(
    connection: Any,
    constants: Sequence[tuple[str, str]],
    record: Sequence[tuple[str, str]] = DELIVERY_RECORD,
    also_from: str = "",
) -> str:
    """``(columns) SELECT ...``: one Delivery row per element of a JSON document parameter
    (the columns of ``record``), after the event id and type parameters; ``constants`` fill
    the other columns with literals."""
    quote = connection.ops.quote_name
    columns = [
        "event_id",
        "messagio_type",
        *(name for name, _ in record),
        *(name for name, _ in constants),
    ]
    values = [
        "%s::uuid",
        "%s::varchar",
        *(f"r.{quote(name)}" for name, _ in record),
        *(literal for _, literal in constants),
    ]
    unpacked = ", ".join(f"{quote(name)} {kind}" for name, kind in record)
    # Identifiers come from model meta and literals from this module; values are parameters.
    return (
        f"({', '.join(quote(c) for c in columns)}) SELECT {', '.join(values)} "  # noqa: S608
        f"FROM jsonb_to_recordset(%s::jsonb) AS r({unpacked}){also_from}"
    )


def _save_in_one_statement(connection: Any, event: NewEvent, deliveries: list[NewDelivery]) -> None:
    """Event and Deliveries in one PostgreSQL statement, atomic on its own: one round trip.

    With ASYNC_COMMIT, a published event's commit does not wait for the WAL flush.
    """
    from psycopg.types.json import Jsonb

    asynchronous = event.state == Event.State.PUBLISHED and use_async_commit(connection)
    params = list(_event_row(event))
    if deliveries:
        params += [event.id, event.messagio_type, Jsonb(_delivery_document(deliveries))]
    with statement_cursor(connection) as cursor:
        cursor.execute(_fire_statement(connection, asynchronous, bool(deliveries)), params)


def save_records(event: Any, deliveries: list[Any]) -> None:
    """Insert the Event and these of its Deliveries (maybe none) in one transaction.

    On PostgreSQL outside a transaction this is one statement (a data-modifying CTE, atomic
    on its own: one round trip, one commit); elsewhere two. Conflicts are ignored: a worker
    may have recreated the records from its message first.
    """
    connection = connections[db_alias()]
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        _save_in_one_statement(connection, event, deliveries)
        return
    with transaction.atomic(using=connection.alias, savepoint=False):
        Event.objects.bulk_create([_model(event)], ignore_conflicts=True)
        if deliveries:
            Delivery.objects.bulk_create([_model(d) for d in deliveries], ignore_conflicts=True)


def _model(record: Any) -> Any:
    return record.as_model() if hasattr(record, "as_model") else record


def spec_of(delivery: Any) -> dict[str, Any]:
    """What a task carries about one delivery's listener."""
    return {
        "delivery": str(delivery.id),
        "position": delivery.position,
        "id": delivery.listener,
        "import_path": delivery.import_path or None,
        "autoretry_for": list(delivery.autoretry_for or []),
        "max_retries": delivery.max_retries,
        "retry_delay": delivery.retry_delay,
        "time_limit": delivery.time_limit,
        "attempt": 1,
    }


def envelopes(
    event: Any,
    deliveries: Iterable[Any],
    replay_id: int | None = None,
    record: bool = True,
    deliveries_recorded: bool = True,
) -> list[dict[str, Any]]:
    """One task envelope per (priority, queue) group of deliveries, most important first.

    Listeners of one messagio that share priority and queue travel in one Celery task that
    runs them in subscription order ("a single published messagio is executed by a single
    worker"); a listener with its own priority or queue gets its own task.
    ``deliveries_recorded=False`` tells the worker to write the group's Delivery rows itself,
    with its first claim.
    """
    groups: dict[tuple[int, str], list[Delivery]] = {}
    for delivery in sorted(deliveries, key=lambda d: d.position):
        groups.setdefault((delivery.priority, delivery.queue), []).append(delivery)
    result = []
    for (priority, queue), members in sorted(groups.items(), key=lambda item: -item[0][0]):
        result.append(
            {
                "v": 1,  # spelled out; compacted to ENVELOPE_VERSION as it is sent
                "event": str(event.id),
                "type": event.messagio_type,
                # Base64 text: the same in a JSON message as in a pickled one.
                "payload": base64.b64encode(event.payload).decode("ascii"),
                "origin": event.origin,
                "fired_at": event.fired_at.isoformat(),
                "listener_count": event.listener_count,
                "priority": priority,
                "queue": queue or None,
                "replay": replay_id,
                "record": record,
                "deliveries_recorded": deliveries_recorded,
                "listeners": [spec_of(d) for d in members],
            }
        )
    return result


#: The task id kept by a retrying delivery whose retry the broker refused: no task's id, so
#: none claims it; the relay requeues it once its delay has passed.
RETRY_NOT_SENT = "not sent"


def mark_retry_not_sent(delivery_id: str, task_id: str | None) -> None:
    """Record that the retry published under ``task_id`` never reached the broker."""
    if task_id:
        Delivery.objects.using(db_alias()).filter(
            pk=delivery_id, status=Delivery.Status.RETRYING, task_id=task_id
        ).update(task_id=RETRY_NOT_SENT)


def envelope_payload(envelope: dict[str, Any]) -> bytes:
    """The signed payload an envelope carries (bytes in messages sent before it was base64)."""
    payload = envelope["payload"]
    if isinstance(payload, str):
        return base64.b64decode(payload)
    return bytes(payload)


def publish_all(envelope_list: list[dict[str, Any]]) -> list[str]:
    from messagio.tasks import publish

    return [publish(envelope) for envelope in envelope_list]


def publish_each(
    envelope_list: list[dict[str, Any]], sent: list[tuple[dict[str, Any], str]] | None = None
) -> list[str]:
    """publish_all, one envelope at a time: a refusal raises PublishRefusedError saying
    which went out before it. ``sent``, when given, gets each (envelope, task id) as it goes
    out, for a caller interrupted by something other than a refusal."""
    sent = [] if sent is None else sent
    for envelope in envelope_list:
        try:
            (task_id,) = publish_all([envelope])
        except Exception as exc:
            raise PublishRefusedError(sent, exc) from exc
        sent.append((envelope, task_id))
    return [task_id for _, task_id in sent]


def _sent_ids(error: Exception) -> dict[str, str]:
    """Delivery id -> task id of what went out before a refusal."""
    return _task_ids(error.sent) if isinstance(error, PublishRefusedError) else {}


def _task_ids(sent: list[tuple[dict[str, Any], str]]) -> dict[str, str]:
    """Delivery id -> task id of the (envelope, task id) that went out."""
    return {
        spec["delivery"]: task_id for envelope, task_id in sent for spec in envelope["listeners"]
    }


def unsent(deliveries: Iterable[Delivery]) -> list[Delivery]:
    """The deliveries of a recorded event that no published message carries: pending, with
    no task. A fire the broker took only partly marks what went out with its task id."""
    return [d for d in deliveries if d.status == Delivery.Status.PENDING and not d.task_id]


def publish_recorded(
    event: Any, deliveries: list[Any] | None = None, raise_errors: bool | None = None
) -> bool:
    """Publish a recorded Event once: claim it, publish, mark it published.

    The claim is a conditional UPDATE on the state, claim time and publish error read
    before, so ``on_commit`` and the relay, or two relays, never both publish it, and
    ``on_commit`` publishes only an event no relay tried before it (one that sent some
    groups before the broker refused the rest leaves its error). ``deliveries``: those of
    a fire in a transaction, none published yet; None (the relay): the event's
    :func:`unsent` rows once it is claimed. When the broker takes some groups and refuses
    the next, the ones that went out are marked with their task id, and the relay later
    publishes the rest. The outcome is written only while the claim is still this call's
    (the relay takes over a claim older than PUBLISH_CLAIM_TIMEOUT). Returns whether it was
    published by this call.
    """
    now = timezone.now()
    claimed = Event.objects.filter(
        pk=event.pk,
        state=event.state,
        claimed_at=event.claimed_at,
        publish_error=event.publish_error,
    ).update(state=Event.State.PUBLISHING, claimed_at=now)
    if not claimed:
        return False
    ours = Event.objects.filter(pk=event.pk, state=Event.State.PUBLISHING, claimed_at=now)
    if deliveries is None:
        # Read once it is ours (the relay): another publisher may have sent some meanwhile.
        deliveries = unsent(Delivery.objects.using(db_alias()).filter(event_id=event.pk))
    try:
        publish_each(envelopes(event, deliveries))
    except Exception as exc:  # noqa: BLE001 - any publish failure leaves it to the relay
        _mark_sent(_sent_ids(exc))
        cause = _cause(exc)
        # An event the broker refused alone (not an outage) stays claimed: the relay tries it
        # again after PUBLISH_CLAIM_TIMEOUT, and meanwhile goes on with the events after it.
        held = None if broker_unreachable(cause) else now
        ours.update(state=Event.State.RECORDED, claimed_at=held, publish_error=_describe_exc(cause))
        logger.warning(
            "messagio: could not publish event %s (%s); the relay will retry: %r",
            event.pk,
            event.messagio_type,
            cause,
        )
        if raise_errors is None:
            raise_errors = bool(get_setting("RAISE_ON_PUBLISH_ERROR"))
        if raise_errors:
            raise cause from None
        return False
    ours.update(
        state=Event.State.PUBLISHED, published_at=timezone.now(), claimed_at=None, publish_error=""
    )
    return True


def release_in_process_claim(event_id: Any) -> None:
    """End an in-process run's claim on its event, unless some of it is still pending (a
    requeue took the run over and carries the rest: should its message be lost, the relay
    finds them by the claim)."""
    pending = Delivery.objects.filter(event_id=OuterRef("pk"), status=Delivery.Status.PENDING)
    Event.objects.using(db_alias()).filter(
        pk=event_id, state=Event.State.INLINE, claimed_at__isnull=False
    ).exclude(Exists(pending)).update(claimed_at=None)


def record_and_publish(event: NewEvent, deliveries: list[NewDelivery]) -> list[str]:
    """Record a fire and publish it.

    In the caller's transaction: the Event and its pending Deliveries, published on commit.
    Outside one: publish first, then record the Event with the outcome. Once published, the
    Deliveries are not written here: each group's message carries them and the worker writes
    them with its first claim, so a fire costs one short INSERT whatever its listeners. When
    the publish fails they are written pending, for the relay.
    """
    alias = db_alias()
    connection = transaction.get_connection(alias)
    if connection.in_atomic_block:
        event.state = "recorded"
        save_records(event, deliveries)
        transaction.on_commit(lambda: publish_recorded(event, deliveries), using=alias)
        return []
    sent: list[tuple[dict[str, Any], str]] = []
    try:
        task_ids = publish_each(envelopes(event, deliveries, deliveries_recorded=False), sent)
    except Exception as exc:  # noqa: BLE001 - any publish failure leaves it to the relay
        return _record_for_the_relay(event, deliveries, _cause(exc), sent)
    except BaseException as exc:
        # Interrupted between or in its publishes (a request timeout's SystemExit,
        # gevent.Timeout, Ctrl-C): what went out runs, and its worker writes the Event from
        # its message; the rest would have no record and no message. Recorded for the
        # relay, then the interruption goes on.
        try:
            _record_for_the_relay(event, deliveries, exc, sent, raise_errors=False)
        except Exception:  # noqa: BLE001 - the interruption is what the caller must see
            logger.exception("messagio: could not record interrupted event %s", event.pk)
        raise
    event.state = "published"
    event.published_at = timezone.now()
    save_records(event, [])
    return task_ids


def _record_for_the_relay(
    event: NewEvent,
    deliveries: list[NewDelivery],
    cause: BaseException,
    sent_envelopes: list[tuple[dict[str, Any], str]],
    raise_errors: bool | None = None,
) -> list[str]:
    """Record a fire the broker refused (``cause``), whole or after some of its groups
    (``sent_envelopes``), for the relay."""
    event.state = "recorded"
    event.publish_error = _describe_exc(cause)
    logger.warning(
        "messagio: could not publish event %s (%s); recorded for the relay: %r",
        event.pk,
        event.messagio_type,
        cause,
    )
    # What went out writes its own rows (its message says so): only the rest, for the relay.
    sent = _task_ids(sent_envelopes)
    # One transaction: the relay sees the rest only once all of it is written.
    with transaction.atomic(using=db_alias()):
        save_records(event, [d for d in deliveries if str(d.id) not in sent])
        if sent:
            # A worker may have written the Event from a message that went out, as
            # published (nothing else publishes an event before this commits): the relay
            # must still see the rest.
            Event.objects.filter(pk=event.id).update(
                state=Event.State.RECORDED, publish_error=event.publish_error
            )
            _mark_sent(sent)
    if raise_errors is None:
        raise_errors = bool(get_setting("RAISE_ON_PUBLISH_ERROR"))
    if raise_errors:
        raise cause
    return list(dict.fromkeys(sent.values()))


def _mark_sent(sent: dict[str, str]) -> None:
    """Give the rows of deliveries a published message carries its task id (see unsent)."""
    by_task: dict[str, list[str]] = {}
    for delivery_id, task_id in sent.items():
        by_task.setdefault(task_id, []).append(delivery_id)
    for task_id, ids in by_task.items():
        Delivery.objects.filter(pk__in=ids, task_id="").update(task_id=task_id)


def _cause(error: Exception) -> Exception:
    return error.cause if isinstance(error, PublishRefusedError) else error


def recreate_from_envelope(envelope: dict[str, Any]) -> None:
    """Write the Event and this group's Deliveries from a task, when the fire never did."""
    event = _event_from_envelope(envelope)
    save_records(event, _deliveries_from_envelope(envelope))


def _event_from_envelope(envelope: dict[str, Any]) -> NewEvent:
    payload = envelope_payload(envelope)
    return NewEvent(
        id=uuid.UUID(envelope["event"]),
        messagio_type=envelope["type"],
        fired_at=datetime.datetime.fromisoformat(envelope["fired_at"]),
        payload=payload,
        summary=_summary_from_payload(payload),
        origin=envelope.get("origin") or "fire",
        state="published",
        published_at=timezone.now(),
        listener_count=envelope.get("listener_count") or len(envelope["listeners"]),
    )


def _deliveries_from_envelope(envelope: dict[str, Any]) -> list[NewDelivery]:
    return [
        NewDelivery(
            id=uuid.UUID(spec["delivery"]),
            event_id=uuid.UUID(envelope["event"]),
            position=spec["position"],
            messagio_type=envelope["type"],
            listener=spec["id"],
            import_path=spec["import_path"] or "",
            priority=envelope["priority"],
            queue=envelope["queue"] or "",
            autoretry_for=spec["autoretry_for"],
            max_retries=spec["max_retries"],
            retry_delay=spec["retry_delay"],
            time_limit=spec.get("time_limit"),
        )
        for spec in envelope["listeners"]
    ]


def _summary_from_payload(payload: bytes) -> dict[str, Any]:
    from messagio.payload import decode

    try:
        return summarize(decode(payload))
    except Exception as exc:  # noqa: BLE001 - the summary is for display only
        return {"error": f"payload could not be loaded: {exc}"}


# --- Running --------------------------------------------------------------------------------


class AttemptTakenOverError(Exception):
    """The attempt being recorded is no longer its delivery's: the delivery was requeued, or
    its message handed to another worker, while this one ran it. Nothing is written; the
    copy that took it over runs the rest of its group (a copy of the message carries it, a
    requeue takes it along: ``recovery.pending_followers``)."""

    def __init__(self, delivery_id: str, number: int) -> None:
        super().__init__(
            f"attempt {number} of delivery {delivery_id} was taken over while it ran (the "
            "delivery requeued, or its message handed to another worker); its outcome here "
            "is not recorded"
        )


def _unless_written_before(delivery_id: str, number: int) -> None:
    """An outcome matched no running attempt: raise AttemptTakenOverError, unless an earlier
    try wrote it (its reply lost), which leaves the delivery finished at that attempt."""
    row = (
        Delivery.objects.using(db_alias())
        .filter(pk=delivery_id)
        .values_list("status", "attempts")
        .first()
    )
    if row is None or row[1] != number or row[0] in TAKEN_UP:
        raise AttemptTakenOverError(delivery_id, number)


@dataclass
class Claim:
    """A worker's right to run one attempt of a delivery."""

    run: bool
    number: int = 0
    status_before: str = ""
    #: Not run: its worker was lost under it MAX_LOST_ATTEMPTS times, and it is failed now.
    lost_too_often: WorkerLostTooOftenError | None = None


def claim(
    delivery_id: str,
    task_id: str,
    worker: str,
    replay_id: int | None = None,
    at: datetime.datetime | None = None,
) -> Claim | None:
    """Mark a delivery running and count the attempt; None when it is not recorded.

    A delivery already succeeded or failed is not run again (a redelivered message). One left
    ``running`` by a worker that died is claimed again by its own message (the same
    ``task_id``): its attempt is recorded as lost, then rerun; any other message leaves it to
    the attempt that may still run it (requeues make it pending first). One ``retrying`` is
    run only by its retry's own task: a redelivered message of its group would run it before
    its delay and start a second chain of retries. One ``pending`` for a replay other than
    ``replay_id`` (taken by a replay since this message was sent) is left to that replay's
    own message. ``at``: the time it starts at (now).
    """
    connection = connections[db_alias()]
    now = at or timezone.now()
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        with statement_cursor(connection) as cursor:
            cursor.execute(
                _worker_statement(connection, "claim"),
                _claim_params(delivery_id, now, task_id, worker, replay_id),
            )
            found = cursor.fetchone()
        row = None if found is None else dict(zip(CLAIM_COLUMNS, found, strict=True))
        return _claimed(delivery_id, row, now, task_id, replay_id)
    with transaction.atomic(using=connection.alias):
        row = (
            Delivery.objects.select_for_update()
            .filter(pk=delivery_id)
            .values(*CLAIM_COLUMNS)
            .first()
        )
        if row is not None and _claimable(row, task_id, replay_id):
            Delivery.objects.filter(pk=delivery_id).update(
                status=Delivery.Status.RUNNING,
                attempts=F("attempts") + 1,
                started_at=now,
                finished_at=None,
                task_id=task_id or "",
                worker=worker or "",
            )
    return _claimed(delivery_id, row, now, task_id, replay_id)


def own_claim(delivery_id: str, task_id: str, worker: str, at: datetime.datetime) -> Claim | None:
    """This run's claim of a delivery, made ``at`` by a statement whose reply was lost: the
    delivery running under this task and worker since that very time (another copy of the
    same message claims it at its own). None when it is not (claim it then)."""
    attempts = (
        Delivery.objects.using(db_alias())
        .filter(
            pk=delivery_id,
            status=Delivery.Status.RUNNING,
            task_id=task_id or "",
            worker=worker or "",
            started_at=at,
        )
        .values_list("attempts", flat=True)
        .first()
    )
    return None if attempts is None else Claim(run=True, number=attempts, status_before="pending")


def _claimable(row: dict[str, Any], task_id: str, replay_id: int | None) -> bool:
    """See _build_worker_statement's "claimed"."""
    if row["status"] in TERMINAL:
        return False
    if row["status"] == Delivery.Status.PENDING and row["replay_id"] not in (None, replay_id):
        # Taken by a replay since this message was sent (a copy of an earlier replay's, or
        # of its fire's): that replay's own message runs it, and its attempt counts there.
        # One of no replay (written again from a replay's message, its replay deleted) any
        # message may run: none other might come.
        return False
    return row["status"] not in HELD or row["task_id"] == (task_id or "")


def claim_group(envelope: dict[str, Any], task_id: str, worker: str) -> Claim | None:
    """Write a group's Delivery rows with its first one claimed, for a fire that left them
    to the worker (``deliveries_recorded`` false in its envelope): one statement.

    When the rows exist already (a redelivered message) this is a plain :func:`claim`. When
    the Event is not there (the firing process died after publishing, or its INSERT has not
    committed yet), the Event is written from the message first.
    """
    first = envelope["listeners"][0]["delivery"]
    try:
        created = _create_group(envelope, task_id, worker)
    except IntegrityError:
        event = envelope["event"]
        logger.info("messagio: event %s not recorded (yet); written from its message", event)
        # The Event only: the group's rows are written as usual, its followers with this
        # task's id (a fire the broker took partly must not see them as unsent).
        save_records(_event_from_envelope(envelope), [])
        created = _create_group(envelope, task_id, worker)
    if created:
        return Claim(run=True, number=1, status_before="pending")
    return claim(first, task_id, worker, envelope.get("replay"))


#: The columns a worker writes on the Delivery it claims while creating its group's rows.
CLAIMED_RECORD = (
    ("status", "varchar"), ("attempts", "integer"), ("started_at", "timestamptz"),
    ("task_id", "varchar"), ("worker", "varchar"),
)  # fmt: skip
#: The other columns of a Delivery that has not finished yet.
UNFINISHED_DELIVERY = (
    ("result", "''"), ("error_type", "''"), ("error", "''"), ("traceback", "''"),
)  # fmt: skip


def _create_group(envelope: dict[str, Any], task_id: str, worker: str) -> bool:
    """Insert the group's Deliveries, the first one running; whether the first was new."""
    deliveries = _deliveries_from_envelope(envelope)
    now = timezone.now()
    claimed = {"status": "running", "attempts": 1, "started_at": now, "task_id": task_id or "",
               "worker": worker or ""}  # fmt: skip
    # Followers carry their message's task id: published, not for the relay (see unsent).
    waiting = {"status": "pending", "attempts": 0, "started_at": None, "task_id": task_id or "",
               "worker": ""}  # fmt: skip
    connection = connections[db_alias()]
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        from psycopg.types.json import Jsonb

        first, *others = _delivery_document(deliveries)
        document = [{**first, **claimed, "started_at": now.isoformat()}]
        document += [{**row, **waiting} for row in others]
        params = [envelope["event"], envelope["type"], Jsonb(document), deliveries[0].id]
        with statement_cursor(connection) as cursor:
            cursor.execute(_worker_statement(connection, "create_group"), params)
            (created,) = cursor.fetchone()
        return bool(created)
    with transaction.atomic(using=connection.alias):
        if Delivery.objects.filter(pk=deliveries[0].id).exists():
            return False
        rows = [d.as_model() for d in deliveries]
        for position, row in enumerate(rows):
            for name, value in (claimed if position == 0 else waiting).items():
                setattr(row, name, value)
        Delivery.objects.bulk_create(rows, ignore_conflicts=True)
        # Not when other rows hold these positions (written again after a lost message).
        return Delivery.objects.filter(pk=deliveries[0].id).exists()


#: What a claim reads of the delivery as it was.
CLAIM_COLUMNS = ("status", "attempts", "started_at", "worker", "task_id", "replay_id")


def _claimed(
    delivery_id: str,
    row: dict[str, Any] | None,
    now: datetime.datetime,
    task_id: str,
    replay_id: int | None,
) -> Claim | None:
    """The claim's verdict from the row as it was; records the lost attempt of a dead worker."""
    if row is None:
        return None
    if not _claimable(row, task_id, replay_id):
        return Claim(run=False, status_before=row["status"])
    if row["status"] == Delivery.Status.RUNNING:
        with transaction.atomic(using=db_alias()):
            record_lost_attempt(
                delivery_id,
                row,
                now,
                "the worker running this attempt died, lost its connection, or held the "
                "message past the broker's visibility_timeout / consumer_timeout (see "
                "messagio.W007); the message was delivered again",
            )
            lost = lost_too_often(delivery_id, row["replay_id"])
            if lost is not None:
                number = row["attempts"] + 1
                claimed = {"status": Delivery.Status.RUNNING, "attempts": number}
                failed = fail_lost_too_often(
                    delivery_id, claimed, number, lost, now, row["replay_id"]
                )
                # Unless another worker claimed it meanwhile: that one's claim decides.
                return Claim(
                    run=False, status_before=row["status"], lost_too_often=lost if failed else None
                )
    return Claim(run=True, number=row["attempts"] + 1, status_before=row["status"])


def record_lost_attempt(
    delivery_id: Any, was: dict[str, Any], now: datetime.datetime, why: str
) -> None:
    """Append the attempt a dead worker left running (``was``: the delivery as it was)."""
    Attempt.objects.create(
        delivery_id=delivery_id,
        number=was["attempts"],
        outcome=Attempt.Outcome.LOST,
        started_at=was["started_at"],
        finished_at=now,
        error_type="WorkerLost",
        error=why,
        task_id=was["task_id"],
        worker=was["worker"],
        replay_id=was["replay_id"],
    )


def lost_too_often(delivery_id: Any, replay_id: int | None) -> WorkerLostTooOftenError | None:
    """The error to fail a delivery with when its attempts lost with their worker (in its
    current replay, or before any) reached MAX_LOST_ATTEMPTS; None while it may run again."""
    limit = get_setting("MAX_LOST_ATTEMPTS")
    if limit is None:
        return None
    lost = (
        Attempt.objects.using(db_alias())
        .filter(delivery_id=delivery_id, outcome=Attempt.Outcome.LOST, replay_id=replay_id)
        .count()
    )
    return WorkerLostTooOftenError(lost) if lost >= limit else None


def fail_lost_too_often(
    delivery_id: Any,
    where: dict[str, Any],
    number: int,
    error: WorkerLostTooOftenError,
    now: datetime.datetime,
    replay_id: int | None,
) -> bool:
    """Record attempt ``number`` of a delivery as failed, not run, because its worker was
    lost too often. Whether the delivery was still as ``where`` says, and is failed now.

    A new attempt, not the lost one's: a worker presumed dead that finishes late finds its
    attempt taken over and leaves the rest of its group, as after any requeue.
    """
    fields = {
        "finished_at": now,
        "duration_ms": None,
        "result": "",
        "error_type": exception_name(error),
        "error": str(error),
        "traceback": "",
    }
    failed = Delivery.objects.filter(pk=delivery_id, **where).update(
        status=Delivery.Status.FAILED, attempts=number, started_at=now, task_id="", worker="",
        **fields,
    )  # fmt: skip
    if failed:
        Attempt.objects.create(
            delivery_id=delivery_id,
            number=number,
            outcome=Attempt.Outcome.FAILED,
            started_at=now,
            replay_id=replay_id,
            **fields,
        )
    return bool(failed)


#: Where a record keeps an error's class: a longer dotted path is cut to its length.
_ERROR_TYPE_FIELD = Delivery._meta.get_field("error_type")


def exception_name(exc: BaseException) -> str:
    """An exception's class by its dotted path, as error_type records it (storable, cut to
    the field's length)."""
    name = storable(f"{type(exc).__module__}.{type(exc).__qualname__}")
    return name[: _ERROR_TYPE_FIELD.max_length]


def _claim_params(
    delivery_id: str, now: datetime.datetime, task_id: str, worker: str, replay_id: int | None
) -> list[Any]:
    """The parameters of the claim's CTEs, in their order."""
    terminal = [str(status) for status in TERMINAL]
    return [
        uuid.UUID(str(delivery_id)), "running", now, task_id or "", worker or "", *terminal,
        *(str(status) for status in HELD), task_id or "", "pending", replay_id,
    ]  # fmt: skip


#: What a finish writes on the delivery and in its attempt, in the statement's order.
OUTCOME_COLUMNS = ("finished_at", "duration_ms", "result", "error_type", "error", "traceback")
ATTEMPT_COLUMNS = (
    "delivery_id", "number", "outcome", "started_at", "task_id", "worker", "replay_id",
    *OUTCOME_COLUMNS,
)  # fmt: skip


def _worker_statement(connection: Any, kind: str) -> str:
    """A worker's statement on PostgreSQL, built once per database and commit mode.

    ``claim``: lock the delivery, read it as it was, mark it running unless it is finished,
    and return it as it was. ``finish``: update the delivery with its outcome and append
    the attempt. ``finish_and_claim``: both, the claim on the group's next delivery.
    ``create_group``: insert a group's deliveries, the first one claimed; returns whether
    that one was inserted.
    """
    return _build_worker_statement(connection.alias, use_async_commit(connection), kind)


@functools.cache
def _build_worker_statement(alias: str, asynchronous: bool, kind: str) -> str:
    connection = connections[alias]
    quote = connection.ops.quote_name
    deliveries = quote(Delivery._meta.db_table)
    attempts = quote(Attempt._meta.db_table)
    ctes = [ASYNC_COMMIT_CTE] if asynchronous else []
    if kind == "create_group":
        rows = _delivery_rows_sql(
            connection,
            UNFINISHED_DELIVERY,
            (*DELIVERY_RECORD, *CLAIMED_RECORD),
            also_from=", messagio_async" if asynchronous else "",
        )
        ctes.append(
            f"created AS (INSERT INTO {deliveries} {rows} "  # noqa: S608
            'ON CONFLICT DO NOTHING RETURNING "id")'
        )
        return f'WITH {", ".join(ctes)} SELECT count(*) FROM created WHERE "id" = %s::uuid'  # noqa: S608
    # Identifiers come from model meta; values are parameters.
    if kind in ("finish", "finish_and_claim"):
        outcome = ", ".join(f"{quote(c)} = %s" for c in ("status", *OUTCOME_COLUMNS, "task_id"))
        # Only the attempt this worker claimed: not again after a lost reply, nor over the
        # outcome of a later attempt (its delivery requeued meanwhile).
        ctes.append(
            f"finished AS (UPDATE {deliveries} SET {outcome} "  # noqa: S608
            'WHERE "id" = %s AND "status" = %s AND "attempts" = %s RETURNING "id")'
        )
        append = (
            f"INSERT INTO {attempts} ({', '.join(quote(c) for c in ATTEMPT_COLUMNS)}) "  # noqa: S608
            f"SELECT {', '.join(['%s'] * len(ATTEMPT_COLUMNS))} FROM finished"
            f"{', messagio_async' if asynchronous else ''}"
        )
        if kind == "finish":
            return f"WITH {', '.join(ctes)} {append}"
        ctes.append(f"appended AS ({append})")
    read = ", ".join(quote(c) for c in CLAIM_COLUMNS)
    ctes.append(
        f'old AS (SELECT "id", {read} FROM {deliveries} WHERE "id" = %s FOR UPDATE)'  # noqa: S608
    )
    # After an outcome, the next listener is claimed only when that outcome was written.
    written = " AND EXISTS (SELECT 1 FROM finished)" if kind == "finish_and_claim" else ""
    ctes.append(f"""claimed AS (
            UPDATE {deliveries} AS d
            SET "status" = %s, "attempts" = d."attempts" + 1, "started_at" = %s,
                "finished_at" = NULL, "task_id" = %s, "worker" = %s
            FROM old WHERE d."id" = old."id" AND old."status" NOT IN (%s, %s)
                AND (old."status" NOT IN (%s, %s) OR old."task_id" = %s)
                AND (old."status" <> %s OR old."replay_id" IS NULL OR old."replay_id" = %s){written}
        )""")  # noqa: S608
    returned = ", ".join("old." + quote(c) for c in CLAIM_COLUMNS)
    if written:
        returned += ", EXISTS (SELECT 1 FROM finished)"
    return (
        f"WITH {', '.join(ctes)} SELECT {returned} "  # noqa: S608
        f"FROM old{', messagio_async' if asynchronous else ''}"
    )


def _cap(text: str, setting: str) -> str:
    limit = int(get_setting(setting))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_of(render: Callable[[], str], what: Any) -> str:
    """``render()``, or what says it failed: a listener's result or exception whose
    ``repr``/``str`` raises must not keep its outcome from being recorded."""
    try:
        return storable(render())
    except BaseException as exc:  # noqa: BLE001 - a repr raising SystemExit too
        from messagio.execution import EXITS, exit_is_the_listeners_own, stops_the_task

        if stops_the_task(exc) or (isinstance(exc, EXITS) and not exit_is_the_listeners_own(exc)):
            raise  # the worker shutting down as it happened
        return f"<{type(what).__name__}: its text could not be made ({type(exc).__name__})>"


def _describe_exc(exc: BaseException) -> str:
    return f"{exception_name(exc)}: {text_of(lambda: str(exc), exc)}"


def finish(
    delivery_id: str,
    number: int,
    started_at: datetime.datetime,
    duration_ms: float,
    *,
    task_id: str = "",
    worker: str = "",
    replay_id: int | None = None,
    result: Any = None,
    exception: BaseException | None = None,
    will_retry: bool = False,
    retry_task_id: str | None = None,
    claim_next: str | None = None,
    claim_at: datetime.datetime | None = None,
) -> Claim | None:
    """Record the outcome of one attempt on the delivery and in its history.

    With ``will_retry``, the delivery keeps ``retry_task_id`` (default: ``task_id``), the
    task that will run its retry: only that one may claim it. With ``claim_next`` (the next
    delivery of the group), claim it in the same statement on PostgreSQL and return that
    claim: one round trip between two listeners; ``claim_at``, the time it starts at (now).
    """
    holder = (retry_task_id if will_retry and retry_task_id else task_id) or ""
    now = timezone.now()
    if exception is None:
        status, outcome = Delivery.Status.SUCCEEDED, Attempt.Outcome.SUCCEEDED
        shown = text_of(lambda: repr(result), result) if result is not None else ""
        fields = {"result": _cap(shown, "RESULT_MAX_CHARS")}
        fields.update(error_type="", error="", traceback="")
    else:
        if will_retry:
            status, outcome = Delivery.Status.RETRYING, Attempt.Outcome.RETRIED
        elif isinstance(exception, ListenerTimeoutError):
            status, outcome = Delivery.Status.FAILED, Attempt.Outcome.TIMEOUT
        else:
            status, outcome = Delivery.Status.FAILED, Attempt.Outcome.FAILED
        fields = {
            "result": "",
            "error_type": exception_name(exception),
            "error": _cap(text_of(lambda: str(exception), exception), "RESULT_MAX_CHARS"),
            "traceback": _cap(
                text_of(lambda: "".join(tb.format_exception(exception)), exception),
                "TRACEBACK_MAX_CHARS",
            ),
        }
    connection = connections[db_alias()]
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return _finish_in_one_statement(
            connection,
            delivery_id,
            status,
            now,
            duration_ms,
            fields,
            attempt={
                "number": number,
                "outcome": outcome,
                "started_at": started_at,
                "task_id": task_id or "",
                "worker": worker or "",
                "replay_id": replay_id,
            },
            claim_next=claim_next,
            claim_as=(task_id, worker, replay_id),
            holder=holder,
            claim_at=claim_at,
        )
    with transaction.atomic(using=connection.alias):
        recorded = Delivery.objects.filter(
            pk=delivery_id, status=Delivery.Status.RUNNING, attempts=number
        ).update(status=status, finished_at=now, duration_ms=duration_ms, task_id=holder, **fields)
        if recorded:  # see _build_worker_statement's "finished"
            Attempt.objects.create(
                delivery_id=delivery_id,
                number=number,
                outcome=outcome,
                started_at=started_at,
                finished_at=now,
                duration_ms=duration_ms,
                task_id=task_id or "",
                worker=worker or "",
                replay_id=replay_id,
                **fields,
            )
    if not recorded:
        _unless_written_before(delivery_id, number)
    if claim_next is None:
        return None
    return claim(claim_next, task_id, worker, replay_id, at=claim_at)


def _finish_in_one_statement(
    connection: Any,
    delivery_id: str,
    status: Any,
    now: datetime.datetime,
    duration_ms: float,
    fields: dict[str, str],
    attempt: dict[str, Any],
    claim_next: str | None = None,
    claim_as: tuple[str, str, int | None] = ("", "", None),
    holder: str = "",
    claim_at: datetime.datetime | None = None,
) -> Claim | None:
    """Update the delivery and append its attempt in one PostgreSQL statement, and claim
    the next delivery of the group in it too when there is one."""
    outcome = {"finished_at": now, "duration_ms": duration_ms, **fields}
    row = {"delivery_id": uuid.UUID(str(delivery_id)), **attempt, **outcome}
    params: list[Any] = [
        str(status),
        *(outcome[c] for c in OUTCOME_COLUMNS),
        holder,
        uuid.UUID(str(delivery_id)),
        str(Delivery.Status.RUNNING),
        attempt["number"],
        *(row[c] for c in ATTEMPT_COLUMNS),
    ]
    if claim_next is None:
        with statement_cursor(connection) as cursor:
            cursor.execute(_worker_statement(connection, "finish"), params)
            written = cursor.rowcount > 0  # the Attempt row appended
        if not written:
            _unless_written_before(delivery_id, attempt["number"])
        return None
    params.extend(_claim_params(claim_next, claim_at or timezone.now(), *claim_as))
    with statement_cursor(connection) as cursor:
        cursor.execute(_worker_statement(connection, "finish_and_claim"), params)
        found = cursor.fetchone()  # the next delivery as it was, and whether this one's written
    if found is None or not found[-1]:
        # Not written here (or the next delivery is not recorded: its own claim says so).
        _unless_written_before(delivery_id, attempt["number"])
        return None
    row = dict(zip(CLAIM_COLUMNS, found[:-1], strict=True))
    return _claimed(claim_next, row, now, claim_as[0], claim_as[2])


#: How long a worker keeps trying to record an outcome while the database is unreachable.
DB_RETRY_SECONDS = 60.0


def with_db_retry(write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a write, reconnecting and retrying while the database is unreachable.

    A worker that loses its database mid-listener must not leave the delivery ``running``
    for ever: it keeps trying for DB_RETRY_SECONDS, then gives up (and the relay requeues
    the delivery once it is stuck past STUCK_TIMEOUT).
    """
    deadline = time.monotonic() + DB_RETRY_SECONDS
    pause = 0.2
    while True:
        try:
            return write(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:  # not an IntegrityError: a real bug
            connection = connections[db_alias()]
            if connection.in_atomic_block or time.monotonic() > deadline:
                raise
            logger.warning("messagio: database unavailable (%s); retrying in %.1fs", exc, pause)
            connection.close()
            time.sleep(pause)  # back-off while the database is down, not a synchronisation
            pause = min(pause * 2, 5.0)
