"""The admin's queries over the records, each sized for millions of rows.

Every function here runs a fixed number of statements, whatever the table size or the number
of rows shown, and reads an index rather than scanning a table where one exists (counts are
``COUNT(*)``, which an index-only scan can answer; ``COUNT(id)`` would read each row):

- distinct values of an indexed column walk the index one value at a time ("loose index
  scan", a recursive CTE that PostgreSQL and SQLite both run), instead of a DISTINCT over the
  table;
- the status of a page of events is one aggregate over that page's event ids;
- statistics cover the last 24 hours only, through the indexes on ``fired_at``,
  ``(status, started_at)`` and ``(listener, finished_at)``;
- events whose deliveries no worker has written yet (see :func:`waiting_event_ids`) are
  looked for among the newest events of the last 24 hours only: finding them probes each
  event's deliveries, which over every event would read the whole table.
"""

from __future__ import annotations

import datetime
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, transaction
from django.db.models import (
    Aggregate,
    Count,
    Exists,
    F,
    FloatField,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Window,
)
from django.db.models.functions import RowNumber, TruncHour
from django.utils import timezone

from messagio.models import Delivery, Event
from messagio_admin.hierarchy import in_current_zone
from messagio_admin.paginator import count_at_most

IN_FLIGHT = (Delivery.Status.PENDING, Delivery.Status.RUNNING, Delivery.Status.RETRYING)
FINISHED = (Delivery.Status.SUCCEEDED, Delivery.Status.FAILED)
UNPUBLISHED = (Event.State.RECORDED, Event.State.PUBLISHING)

#: Most distinct values a filter lists (a runaway column must not make a page slow).
DISTINCT_LIMIT = 500
#: Most events the "in flight" filter selects by their ids (see :func:`in_flight`).
IN_FLIGHT_LIMIT = 1000
#: How far back :func:`waiting_event_ids` looks for events no worker has picked up yet:
#: the overview's 24 hours (a worker normally picks a message up within seconds; further
#: back, every event read is one more probe of the deliveries).
WAITING_WINDOW = datetime.timedelta(hours=24)
#: ... and among at most this many of the newest events fired in it, so that a busy day
#: (a million events) costs no more than a quiet one.
WAITING_SCAN = 10_000
#: The overview's counts of all pending deliveries and of all unpublished events stop here
#: ("10000+"): a backlog of millions is not counted on every visit of the Events list.
BACKLOG_CAP = 10_000
#: Failure groups shown on the Failures page, most recently seen first.
FAILURE_GROUP_LIMIT = 100
#: On databases without percentile_cont, the most recent durations per listener read to
#: compute the median and p95 in Python.
DURATION_SAMPLE = 1000


# --- Distinct values ------------------------------------------------------------------------


def distinct_values(
    model: Any, field_name: str, *, limit: int = DISTINCT_LIMIT, using: str | None = None
) -> list[str]:
    """The distinct values of ``field_name``, sorted, by walking an index that starts with it.

    One statement, one index lookup per value: fast on a table of millions of rows as long
    as an index leads with the column, and as long as the values are few.
    """
    connection = connections[using or model.objects.db]  # the database the router reads it from
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    column = qn(model._meta.get_field(field_name).column)
    # Identifiers come from the model's meta, quoted; the only parameter is the limit.
    sql = (
        f"WITH RECURSIVE walk(value) AS ("  # noqa: S608
        f" SELECT (SELECT t.{column} FROM {table} t ORDER BY t.{column} LIMIT 1)"
        f" UNION ALL"
        f" SELECT (SELECT t.{column} FROM {table} t WHERE t.{column} > walk.value"
        f" ORDER BY t.{column} LIMIT 1) FROM walk WHERE walk.value IS NOT NULL"
        f") SELECT walk.value FROM walk WHERE walk.value IS NOT NULL LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


def error_classes(limit: int = DISTINCT_LIMIT) -> list[str]:
    """The error classes of failed and retrying deliveries, sorted: read from the index on
    ``(status, listener, error_type)``, so as many rows as there are failures, not all."""
    found = (
        Delivery.objects.filter(status__in=[Delivery.Status.FAILED, Delivery.Status.RETRYING])
        .exclude(error_type="")
        .order_by()
        .values_list("error_type", flat=True)
        .distinct()[:limit]
    )
    return sorted(found)


def last_finished(listeners: Iterable[str]) -> dict[str, datetime.datetime]:
    """``{listener: when its latest delivery finished}``, in one statement: per listener, a
    ``LIMIT 1`` subquery reading the end of the index on ``(listener, finished_at)``."""
    names = sorted(set(listeners))
    if not names:
        return {}
    picks = [
        Subquery(
            Delivery.objects.filter(listener=name, finished_at__isnull=False)
            .order_by("-finished_at")
            .values("pk")[:1]
        )
        for name in names
    ]
    return dict(
        Delivery.objects.filter(pk__in=picks).order_by().values_list("listener", "finished_at")
    )


# --- Events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventCounts:
    """How an event's deliveries stand."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def in_flight(self) -> int:
        return self.total - self.succeeded - self.failed


def waiting_for_worker(event: Event, recorded: int) -> int:
    """How many of a published event's listeners have no Delivery row among ``recorded``.

    A fire published outside a transaction writes only its Event: the worker writes each
    group's Deliveries when it starts that group's task. Until then those listeners are
    waiting for a worker, and only ``listener_count`` says they exist.
    """
    if event.state != Event.State.PUBLISHED:
        return 0
    return max(event.listener_count - recorded, 0)


def delivery_counts(event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, EventCounts]:
    """``{event id: EventCounts}`` for these events, in one aggregate query."""
    ids = list(event_ids)
    if not ids:
        return {}
    rows = (
        Delivery.objects.filter(event_id__in=ids)
        .order_by()
        .values("event_id")
        .annotate(
            total=Count("*"),
            succeeded=Count("pk", filter=Q(status=Delivery.Status.SUCCEEDED)),
            failed=Count("pk", filter=Q(status=Delivery.Status.FAILED)),
        )
    )
    return {
        row["event_id"]: EventCounts(row["total"], row["succeeded"], row["failed"]) for row in rows
    }


def with_failures(events: QuerySet) -> QuerySet:
    return events.filter(pk__in=Delivery.objects.failed().order_by().values("event_id"))


def in_flight_event_ids(limit: int | None = None) -> list[uuid.UUID]:
    """The ids of up to ``limit + 1`` events (default :data:`IN_FLIGHT_LIMIT`) with a
    delivery in flight, in one statement that reads the partial index
    ``messagio_dl_in_flight`` (migration 0004) in order and stops there, however long a
    backlog is."""
    limit = IN_FLIGHT_LIMIT if limit is None else limit
    return list(
        Delivery.objects.in_flight()
        .order_by("event_id")
        .values_list("event_id", flat=True)
        .distinct()[: limit + 1]
    )


def _waiting_sql(using: str, select: str, tail: str = "") -> str:
    """The events that :func:`waiting_event_ids` selects, as ``SELECT {select} ... {tail}``.

    The newest events of the window are read first through the ``fired_at`` index, in a
    derived table with a LIMIT: the planner then knows there are few, and probes each one's
    deliveries through the ``(event, position)`` index (a nested-loop anti-join) instead of
    hashing all of them. A plain NOT EXISTS over the window would let it guess a third of
    the table and scan every delivery.
    """
    qn = connections[using].ops.quote_name
    event, delivery = qn(Event._meta.db_table), qn(Delivery._meta.db_table)
    pk, fired_at = qn(Event._meta.pk.column), qn(Event._meta.get_field("fired_at").column)
    state = qn(Event._meta.get_field("state").column)
    listeners = qn(Event._meta.get_field("listener_count").column)
    event_id = qn(Delivery._meta.get_field("event").column)
    # Identifiers come from the models' meta, quoted; the values are parameters.
    return (
        f"SELECT {select} FROM ("  # noqa: S608
        f"SELECT e.{pk} AS id, e.{fired_at} AS fired_at, e.{state} AS state,"
        f" e.{listeners} AS listeners FROM {event} e WHERE e.{fired_at} >= %s"
        f" ORDER BY e.{fired_at} DESC LIMIT %s) recent"
        f" WHERE recent.state = %s AND recent.listeners > 0"
        f" AND NOT EXISTS (SELECT 1 FROM {delivery} d WHERE d.{event_id} = recent.id){tail}"
    )


def _waiting_params(using: str, now: datetime.datetime | None) -> list[Any]:
    since = (now or timezone.now()) - WAITING_WINDOW
    adapted = connections[using].ops.adapt_datetimefield_value(since)
    return [adapted, WAITING_SCAN, str(Event.State.PUBLISHED)]


def waiting_event_ids(
    limit: int | None = None, now: datetime.datetime | None = None, using: str | None = None
) -> list[uuid.UUID]:
    """The ids of up to ``limit`` (default :data:`IN_FLIGHT_LIMIT`) published events with
    listeners and no Delivery row yet, newest first: their messages wait in the broker for a
    worker, which writes each group's Deliveries when it starts it.

    Only events fired within :data:`WAITING_WINDOW` (24 hours) are looked at, and among
    those the newest :data:`WAITING_SCAN`: one statement that reads at most that many
    events and probes each one's deliveries by index, however large the tables. An event
    with some groups written and others not is not here (its written ones are in flight,
    or finished).
    """
    limit = IN_FLIGHT_LIMIT if limit is None else limit
    using = using or Event.objects.db
    sql = _waiting_sql(using, "recent.id", " ORDER BY recent.fired_at DESC LIMIT %s")
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [*_waiting_params(using, now), limit])
        rows = cursor.fetchall()
    to_python = Event._meta.pk.to_python
    return [to_python(row[0]) for row in rows]


def waiting_count(now: datetime.datetime | None = None, using: str | None = None) -> int:
    """How many events :func:`waiting_event_ids` would find without its limit (at most
    :data:`WAITING_SCAN`): one statement."""
    using = using or Event.objects.db
    with connections[using].cursor() as cursor:
        cursor.execute(_waiting_sql(using, "COUNT(*)"), _waiting_params(using, now))
        (count,) = cursor.fetchone()
    return int(count)


def waiting_ids(
    now: datetime.datetime | None = None, using: str | None = None
) -> tuple[list[uuid.UUID], bool]:
    """The ids of the newest :data:`IN_FLIGHT_LIMIT` events waiting for a worker
    (:func:`waiting_event_ids`), and whether there are more: the list that shows them says
    it is not all of them (the overview counts up to :data:`WAITING_SCAN`)."""
    ids = waiting_event_ids(IN_FLIGHT_LIMIT + 1, now=now, using=using)
    return ids[:IN_FLIGHT_LIMIT], len(ids) > IN_FLIGHT_LIMIT


def in_flight(
    events: QuerySet,
    now: datetime.datetime | None = None,
    waiting: list[uuid.UUID] | None = None,
) -> QuerySet:
    """Published events with a delivery pending, running or retrying, or waiting for a
    worker to write their deliveries (fired in the last 24 hours: :func:`waiting_event_ids`).

    In flight are few: their ids are read first (one statement), then the events selected by
    primary key, a plan that does not depend on the statistics. As a subquery, PostgreSQL
    guesses the matches from the statistics of ``status``; a query ordered by date with a
    LIMIT (a page, the first date of the date hierarchy) may then walk the ``fired_at``
    index and probe each event's deliveries, all 1,000,000 of them when the matches are the
    newest events (11 s). Past :data:`IN_FLIGHT_LIMIT` events (a backlog), the subquery it is.
    The events waiting for a worker are ids too, the newest :data:`IN_FLIGHT_LIMIT` of them
    (``waiting``, when :func:`waiting_ids` read them already).
    """
    published = events.exclude(state__in=UNPUBLISHED)
    if waiting is None:
        waiting, _more = waiting_ids(now, using=events.db)
    ids = in_flight_event_ids(IN_FLIGHT_LIMIT)
    if len(ids) <= IN_FLIGHT_LIMIT:
        return published.filter(pk__in=[*ids, *waiting])
    running = Delivery.objects.in_flight().order_by().values("event_id")
    return published.filter(Q(pk__in=running) | Q(pk__in=waiting))


def waiting_for_a_worker(
    events: QuerySet,
    now: datetime.datetime | None = None,
    waiting: list[uuid.UUID] | None = None,
) -> QuerySet:
    """Published events no worker has written a delivery of yet, the newest
    :data:`IN_FLIGHT_LIMIT` (:func:`waiting_ids`, or ``waiting`` when it was read already):
    what the overview counts as waiting for a worker, a part of :func:`in_flight`."""
    if waiting is None:
        waiting, _more = waiting_ids(now, using=events.db)
    return events.filter(pk__in=waiting)


def all_ok(events: QuerySet) -> QuerySet:
    """Published events whose every listener has a succeeded delivery: not those whose
    Delivery rows no worker has written yet (fewer rows than listeners)."""
    # NOT EXISTS, not NOT IN: PostgreSQL turns it into an anti-join, probing each event's
    # deliveries through the (event, position) index, instead of hashing every delivery.
    not_ok = Delivery.objects.filter(event=OuterRef("pk")).exclude(status=Delivery.Status.SUCCEEDED)
    # One more probe of the same index entries per event, counting them.
    return events.exclude(state__in=UNPUBLISHED).exclude(Exists(not_ok)).every_delivery_written()


def never_published(events: QuerySet) -> QuerySet:
    # Served by the partial index messagio_ev_unpublished.
    return events.filter(state__in=UNPUBLISHED)


# --- Overview -------------------------------------------------------------------------------


@dataclass
class HourBar:
    hour: datetime.datetime
    events: int = 0
    failed: int = 0


@dataclass
class Overview:
    """The last 24 hours at a glance."""

    since: datetime.datetime
    hours: list[HourBar]
    by_status: dict[str, int]
    unpublished: int
    #: Published events no worker has picked up yet (see :func:`waiting_count`).
    waiting: int = 0
    #: The counts that stopped at :data:`BACKLOG_CAP` ("pending", "unpublished"): there are
    #: more.
    capped: frozenset[str] = frozenset()

    @property
    def waiting_capped(self) -> bool:
        """Whether every event looked at was waiting: there may be more."""
        return self.waiting >= WAITING_SCAN

    @property
    def events(self) -> int:
        return sum(bar.events for bar in self.hours)

    @property
    def failed(self) -> int:
        return self.by_status.get("failed", 0)


def overview(now: datetime.datetime | None = None) -> Overview:
    """Events per hour and deliveries by status over the last 24 hours, and the events
    waiting for a worker: six statements."""
    now = now or timezone.now()
    current_hour = in_current_zone(now).replace(minute=0, second=0, microsecond=0)
    since = current_hour - datetime.timedelta(hours=23)
    bars = {
        since + datetime.timedelta(hours=i): HourBar(since + datetime.timedelta(hours=i))
        for i in range(24)
    }
    fired = (
        Event.objects.filter(fired_at__gte=since)
        .order_by()
        .annotate(hour=TruncHour("fired_at"))
        .values("hour")
        .annotate(n=Count("*"))
    )
    for row in fired:
        bar = bars.get(in_current_zone(row["hour"]))
        if bar:
            bar.events = row["n"]
    failed = (
        Delivery.objects.filter(status=Delivery.Status.FAILED, started_at__gte=since)
        .order_by()
        .annotate(hour=TruncHour("started_at"))
        .values("hour")
        .annotate(n=Count("*"))
    )
    for row in failed:
        bar = bars.get(in_current_zone(row["hour"]))
        if bar:
            bar.failed = row["n"]
    # Started in the window, through (status, started_at); pending ones have not started:
    # all of them are counted, a backlog is what this should show, up to BACKLOG_CAP. Two
    # statements: with an OR, PostgreSQL reads the whole index instead of two ranges of it.
    started = [s for s in Delivery.Status.values if s != Delivery.Status.PENDING]
    by_status = dict(
        Delivery.objects.filter(status__in=started, started_at__gte=since)
        .order_by()
        .values_list("status")
        .annotate(n=Count("*"))
    )
    pending = count_at_most(Delivery.objects.filter(status=Delivery.Status.PENDING), BACKLOG_CAP)
    unpublished = count_at_most(never_published(Event.objects.all()), BACKLOG_CAP)
    capped = frozenset(
        name
        for name, count in (("pending", pending), ("unpublished", unpublished))
        if count > BACKLOG_CAP
    )
    by_status[Delivery.Status.PENDING] = min(pending, BACKLOG_CAP)
    # Their deliveries are not rows yet, so none of the counts above has them.
    waiting = waiting_count(now)
    return Overview(
        since=since,
        hours=list(bars.values()),
        by_status=by_status,
        unpublished=min(unpublished, BACKLOG_CAP),
        waiting=waiting,
        capped=capped,
    )


# --- Failures -------------------------------------------------------------------------------


@dataclass
class FailureGroup:
    """Failed deliveries of one listener for one messagio type with one error class."""

    listener: str
    messagio_type: str
    error_type: str
    count: int
    first_seen: datetime.datetime | None
    last_seen: datetime.datetime | None
    sample: dict[str, Any] | None = None

    @property
    def delivery_filter(self) -> dict[str, str]:
        """What selects this group's deliveries (and what the replay task receives)."""
        return {
            "status": "failed",
            "listener": self.listener,
            "messagio_type": self.messagio_type,
            "error_type": self.error_type,
        }


def failure_groups(limit: int | None = None) -> tuple[list[FailureGroup], bool]:
    """The most recently seen groups of failed deliveries, and whether there are more.

    Two statements: the grouping (over failed deliveries only, through the index on
    ``(status, listener, error_type)``), then one sample delivery per group shown, each
    picked by a ``LIMIT 1`` subquery that stops at the first matching index entry.
    """
    limit = FAILURE_GROUP_LIMIT if limit is None else limit
    rows = list(
        Delivery.objects.failed()
        .order_by()
        .values("listener", "messagio_type", "error_type")
        .annotate(count=Count("*"), first_seen=Min("finished_at"), last_seen=Max("finished_at"))
        .order_by(F("last_seen").desc(nulls_last=True), "listener", "messagio_type", "error_type")[
            : limit + 1
        ]
    )
    more = len(rows) > limit
    groups = [FailureGroup(**row) for row in rows[:limit]]
    if groups:
        picks = [
            Subquery(Delivery.objects.filter(**group.delivery_filter).order_by().values("pk")[:1])
            for group in groups
        ]
        samples = {
            (s["listener"], s["messagio_type"], s["error_type"]): s
            for s in Delivery.objects.filter(pk__in=picks)
            .order_by()
            .values("pk", "event_id", "listener", "messagio_type", "error_type", "error")
        }
        for group in groups:
            group.sample = samples.get((group.listener, group.messagio_type, group.error_type))
    return groups, more


def failure_group(listener: str, messagio_type: str, error_type: str) -> FailureGroup | None:
    """One group of :func:`failure_groups` with its sample, if it has failed deliveries: two
    statements, through the partial index of failed deliveries."""
    selection = Delivery.objects.failed().filter(
        listener=listener, messagio_type=messagio_type, error_type=error_type
    )
    row = selection.order_by().aggregate(
        count=Count("*"), first_seen=Min("finished_at"), last_seen=Max("finished_at")
    )
    if not row["count"]:
        return None
    group = FailureGroup(
        listener=listener, messagio_type=messagio_type, error_type=error_type, **row
    )
    # Unordered: first() would order by id, and might walk the primary key to find the group.
    samples = selection.order_by().values(
        "pk", "event_id", "listener", "messagio_type", "error_type", "error"
    )[:1]
    group.sample = next(iter(samples), None)
    return group


# --- Listener statistics --------------------------------------------------------------------


class Percentile(Aggregate):
    """PostgreSQL's ``percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)``."""

    function = "PERCENTILE_CONT"
    name = "Percentile"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be between 0 and 1, not {fraction!r}")
        super().__init__(
            expression, fraction=repr(float(fraction)), output_field=FloatField(), **extra
        )


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks: what ``percentile_cont`` computes."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class ListenerStats:
    runs: int = 0
    failures: int = 0
    p50: float | None = None
    p95: float | None = None
    durations: list[float] = field(default_factory=list, repr=False)

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.runs if self.runs else None


def listener_stats(
    listeners: Iterable[str], since: datetime.datetime, using: str | None = None
) -> dict[tuple[str, str], ListenerStats]:
    """Runs, failures and median / p95 duration per listener and messagio type, keyed
    ``(listener, type)``, of deliveries finished since ``since``. One statement on
    PostgreSQL (percentile_cont, after ``SET LOCAL jit = off``), two elsewhere (the most
    recent :data:`DURATION_SAMPLE` durations per key, read with a window function)."""
    keys = ("listener", "messagio_type")
    using = using or Delivery.objects.db
    names = sorted(set(listeners))
    if not names:
        return {}
    # listener IN (...) lets PostgreSQL read (listener, finished_at) range by range.
    finished = (
        Delivery.objects.using(using)
        .filter(listener__in=names, finished_at__gte=since, status__in=FINISHED)
        .order_by()
    )
    postgres = connections[using].vendor == "postgresql"
    annotations: dict[str, Any] = {
        "runs": Count("*"),
        "failures": Count("pk", filter=Q(status=Delivery.Status.FAILED)),
    }
    if postgres:
        annotations["p50"] = Percentile("duration_ms", 0.5)
        annotations["p95"] = Percentile("duration_ms", 0.95)
    rows: Iterable[dict[str, Any]] = finished.values(*keys).annotate(**annotations)
    if postgres:
        # Sorting each listener's durations makes the plan costly enough for PostgreSQL to
        # compile it with JIT first, which costs more than it saves (at 1,000,000 events:
        # 290 ms with JIT, 54 of them compiling; 150-190 ms without). Off for this
        # statement's transaction (within a request's transaction: until that one ends).
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")
            rows = list(rows)
    stats = {}
    for row in rows:
        stats[(row["listener"], row["messagio_type"])] = ListenerStats(
            runs=row["runs"], failures=row["failures"], p50=row.get("p50"), p95=row.get("p95")
        )
    if not postgres:
        recent = (
            finished.filter(duration_ms__isnull=False)
            .annotate(
                rank=Window(
                    RowNumber(),
                    partition_by=[F(name) for name in keys],
                    order_by=F("finished_at").desc(),
                )
            )
            .filter(rank__lte=DURATION_SAMPLE)
            .values_list(*keys, "duration_ms")
        )
        for listener, messagio_type, duration in recent:
            stats.setdefault((listener, messagio_type), ListenerStats()).durations.append(duration)
        for entry in stats.values():
            entry.p50 = percentile(entry.durations, 0.5)
            entry.p95 = percentile(entry.durations, 0.95)
    return stats
