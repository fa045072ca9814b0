"""Replay: re-run deliveries with their original payload, through the broker, as new attempts.

Bulk replay is safe by construction: it works from a snapshot of the selection frozen when
it starts (deliveries that fail again afterwards are not picked up again), can go at a
bounded rate, can run a canary first, and stops itself when what it replayed fails too often.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from messagio.brokers import runs_eagerly
from messagio.models import Attempt, Delivery, Event, Replay
from messagio.records import db_alias, envelopes, publish_all
from messagio.recovery import mark_published_again
from messagio.validation import amount, require, share, whole

logger = logging.getLogger("messagio")

IN_FLIGHT = (Delivery.Status.PENDING, Delivery.Status.RUNNING, Delivery.Status.RETRYING)


def forget_deleted_requester(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A user is being deleted: their replays no longer point to them, on whichever database
    the records are (their username stays, in ``requested_by_name``). Connected to the user
    model's ``pre_delete`` by the app."""
    Replay.objects.filter(requested_by_id=instance.pk).update(requested_by=None)


#: Finished outcomes needed before the failure rate may stop a bulk replay.
MIN_SAMPLE = 10
#: Failure rate above which a canary stops the replay when no max_failure_rate is given.
CANARY_DEFAULT_MAX_FAILURE_RATE = 0.5

Progress = Callable[[Replay], None]


def _selection(target: Any) -> tuple[models.QuerySet, str]:
    if isinstance(target, Delivery):
        return Delivery.objects.filter(pk=target.pk), f"delivery {target.pk} ({target.listener})"
    if isinstance(target, Event):
        return target.deliveries.all(), f"event {target.pk} ({target.short_type}), all listeners"
    if isinstance(target, models.QuerySet) and target.model is Delivery:
        return target.filter(status=Delivery.Status.FAILED), "failed deliveries of a selection"
    if isinstance(target, models.QuerySet) and target.model is Event:
        failed = Delivery.objects.filter(event__in=target, status=Delivery.Status.FAILED)
        return failed, "failed deliveries of selected events"
    raise TypeError(
        f"replay() takes a Delivery, an Event, or a queryset of either, not {type(target).__name__}"
    )


def check_options(
    *,
    canary: int | None = None,
    rate: float | None = None,
    max_failure_rate: float | None = None,
    batch_size: int = 500,
    canary_timeout: float = 300.0,
) -> None:
    """Raise ValueError naming the first bad option, before anything is recorded: a replay
    started with one would stop half-way or ignore the safety asked for."""
    require(whole(1, what="a number of deliveries", none="no canary"), canary, "canary")
    require(amount("deliveries per second", none="no limit"), rate, "rate")
    require(share(none="never stop"), max_failure_rate, "max_failure_rate")
    require(whole(1, what="a number of deliveries"), batch_size, "batch_size")
    require(amount("seconds"), canary_timeout, "canary_timeout")


def replay(
    target: Any,
    *,
    reason: str = "",
    requested_by: Any = None,
    source: str = "code",
    canary: int | None = None,
    rate: float | None = None,
    max_failure_rate: float | None = None,
    canary_timeout: float = 300.0,
    batch_size: int = 500,
    progress: Progress | None = None,
    description: str = "",
) -> Replay:
    """Replay ``target``: a Delivery or an Event (all its listeners), or a queryset of
    deliveries or events (their failed deliveries). Returns the recorded :class:`Replay`.
    ``description`` says what was selected, for the audit (by default, what ``target`` is).
    Inside a transaction, it runs once the transaction commits, as a fire is published.

    Deliveries still in flight are left alone. ``canary``: replay that many first and wait
    for their outcome; ``rate``: at most that many per second; ``max_failure_rate``: stop
    when more than that share of what was replayed fails again. A bad option raises
    ValueError before anything is recorded.
    """
    check_options(
        canary=canary,
        rate=rate,
        max_failure_rate=max_failure_rate,
        batch_size=batch_size,
        canary_timeout=canary_timeout,
    )
    selection, described = _selection(target)
    description = description or described
    snapshot_at = timezone.now()
    frozen = selection.exclude(status__in=IN_FLIGHT).filter(
        models.Q(finished_at__isnull=True) | models.Q(finished_at__lte=snapshot_at)
    )
    record = Replay.objects.create(
        **Replay.requester(requested_by),
        reason=reason,
        source=source,
        description=description[:500],
        snapshot_at=snapshot_at,
        progress_at=snapshot_at,
        runner=uuid.uuid4().hex,  # this process runs it
        total=frozen.count(),
        canary=canary,
        rate=rate,
        max_failure_rate=max_failure_rate,
    )

    def run() -> None:
        run_replay(
            record, frozen, canary_timeout=canary_timeout, batch_size=batch_size, progress=progress
        )

    alias = db_alias()
    if transaction.get_connection(alias).in_atomic_block:
        # As a fire: the deliveries it takes are made pending in this transaction, and a
        # worker given their message before it commits would wait on it (its claim locks
        # the row) for the rest of the request. Rolled back, nothing is replayed. Until it
        # commits, the record says it is running, 0 queued.
        transaction.on_commit(run, using=alias, robust=True)
        return record
    run()
    return record


def _outcomes(record: Replay, among: list[Any] | None = None) -> tuple[int, int]:
    """(failed, finished) among the deliveries this replay queued. Taking one makes it
    pending under this replay, so a finished one under it has run since: no timestamp is
    compared (a worker's clock behind this host's would hide its outcomes).

    ``among`` (a canary's): from the last attempt each had under this replay, whatever a
    later replay did with it since."""
    if among is not None:
        last: dict[Any, tuple[int, str]] = {}
        attempts = Attempt.objects.filter(replay=record, delivery_id__in=among)
        for delivery_id, number, outcome in attempts.values_list(
            "delivery_id", "number", "outcome"
        ):
            if delivery_id not in last or number > last[delivery_id][0]:
                last[delivery_id] = (number, outcome)
        outcomes = [outcome for _, outcome in last.values()]
        failed = sum(o in (Attempt.Outcome.FAILED, Attempt.Outcome.TIMEOUT) for o in outcomes)
        return failed, failed + sum(o == Attempt.Outcome.SUCCEEDED for o in outcomes)
    mine = Delivery.objects.filter(replay=record)
    counts = mine.aggregate(
        failed=models.Count("pk", filter=models.Q(status=Delivery.Status.FAILED)),
        finished=models.Count(
            "pk",
            filter=models.Q(status__in=[Delivery.Status.FAILED, Delivery.Status.SUCCEEDED]),
        ),
    )
    return counts["failed"], counts["finished"]


def _stop(record: Replay, reason: str) -> None:
    record.state = Replay.State.STOPPED
    record.stopped_reason = reason
    record.finished_at = timezone.now()
    if _end(record, "stopped_reason"):
        logger.warning("messagio: replay %s stopped: %s", record.pk, reason)
    else:
        logger.info("messagio: replay %s is another run's (or ended); this one ends", record.pk)


def stop_failed(record: Replay, exc: Exception) -> None:
    """Record the replay stopped by ``exc``, saying how far it got (not left running, for
    the relay to send again and again)."""
    _stop(
        record,
        f"failed ({exc!r}) after queueing {queued_so_far(record)} of {record.total}; "
        "replay the rest once its cause is fixed",
    )


def _end(record: Replay, *fields: str) -> bool:
    """Write how the replay ended, unless it ended first or another run of it took it over
    (a copy the relay sent): that run's outcome stands. Whether it was written."""
    values = {name: getattr(record, name) for name in ("state", "finished_at", *fields)}
    values["queued"] = queued_so_far(record)  # what every run of it queued
    return bool(_own(record).update(**values))


def _left(record: Replay) -> Replay:
    """This run found its replay ended by someone else (the admin's Stop, the relay, its
    other run): what it queued since their count is counted too, from the records."""
    Replay.objects.filter(pk=record.pk).exclude(state=Replay.State.RUNNING).update(
        queued=queued_so_far(record)
    )
    record.refresh_from_db()
    return record


def _own(record: Replay) -> models.QuerySet:
    """The replay while this run still runs it."""
    return Replay.objects.filter(pk=record.pk, state=Replay.State.RUNNING, runner=record.runner)


def _count_queued(record: Replay, count: int) -> bool:
    """Add what this run queued (a replay another run stopped, too); False when it was
    taken from this run (by a copy the relay sent, the relay, or the admin's Stop, which
    count from the records)."""
    record.queued += count
    # Something queued: a run that gets somewhere, which the relay's count of resends
    # without one (RESENDS_AT_MOST) starts again from.
    return bool(
        Replay.objects.filter(pk=record.pk, runner=record.runner).update(
            queued=models.F("queued") + count, progress_at=timezone.now(), times_resent=0
        )
    )


class _Counter:
    """What a batch queued, written to its replay as it goes (at most every
    COUNT_INTERVAL, and at the batch's end): a run cut short leaves a count near the truth,
    and a replay at a rate shows its progress between batches."""

    def __init__(self, record: Replay) -> None:
        self.record = record
        self.unwritten = 0
        self.next_write = time.monotonic() + COUNT_INTERVAL

    def add(self, count: int) -> None:
        """Count ``count`` more; raise _StoppedMeanwhileError once the run finds its
        replay ended or taken over by another run."""
        self.unwritten += count
        if time.monotonic() >= self.next_write and not self.write():
            raise _StoppedMeanwhileError

    def write(self) -> bool:
        """Write what is not written yet; False when this run no longer runs the replay."""
        self.next_write = time.monotonic() + COUNT_INTERVAL
        count, self.unwritten = self.unwritten, 0
        if count:
            return _count_queued(self.record, count)
        return not _ended_elsewhere(self.record)


#: Seconds between the counts a running batch writes.
COUNT_INTERVAL = 1.0


def _canary_of(record: Replay) -> list[Any]:
    """The deliveries of a canary that went out (the first the replay took, by pk), also
    those a later replay took since (their Attempts under this one say they were its)."""
    size = record.canary or 0
    pending = Delivery.objects.filter(replay=record).order_by("pk").values_list("pk", flat=True)
    ran = (
        Attempt.objects.filter(replay=record)
        .order_by("delivery_id")
        .values_list("delivery_id", flat=True)
        .distinct()
    )
    return sorted({*pending[:size], *ran[:size]})[:size]


def queued_so_far(record: Replay) -> int:
    """How many deliveries ``record`` took and published, from the records: those it made
    pending, and those its attempts ran (a later replay may have taken some since). What a
    run that was cut short had not counted yet is counted here."""
    taken = Delivery.objects.filter(replay=record).order_by().values_list("pk", flat=True)
    ran = Attempt.objects.filter(replay=record).order_by().values_list("delivery_id", flat=True)
    return taken.union(ran).count()


class _StoppedMeanwhileError(Exception):
    """The replay was stopped (or ended) by someone else while this run published."""


def _ended_elsewhere(record: Replay) -> bool:
    """Whether the replay ended, or another run of it took it over (a copy of its task the
    relay sent while this run showed no progress): this run then ends."""
    return not _own(record).exists()


#: Seconds between looks, while a replay waits, at whether it was stopped meanwhile (the
#: admin's Stop button).
STOP_CHECK_INTERVAL = 1.0
#: Seconds between the progress a waiting replay writes (a canary's wait, a rate's naps), so
#: that the relay does not take it for one whose process was lost (after STUCK_TIMEOUT).
PROGRESS_INTERVAL = 60.0


def progress_interval() -> float:
    """Seconds between a waiting replay's progress writes: often enough that the relay,
    which waits STUCK_TIMEOUT for one, never takes a live replay for lost."""
    from messagio.conf import get_setting

    return min(PROGRESS_INTERVAL, float(get_setting("STUCK_TIMEOUT")) / 4)


class _StopLookout:
    """Whether a waiting replay was stopped meanwhile, asked of the database at most every
    STOP_CHECK_INTERVAL, and naps that end by the next look. It writes the replay's progress
    every PROGRESS_INTERVAL meanwhile."""

    def __init__(self, record: Replay) -> None:
        self.record = record
        self.next_look = time.monotonic() + STOP_CHECK_INTERVAL
        self.next_progress = time.monotonic() + progress_interval()

    def stopped(self) -> bool:
        now = time.monotonic()
        if now < self.next_look:
            return False
        self.next_look = now + STOP_CHECK_INTERVAL
        if now >= self.next_progress:
            self.next_progress = now + progress_interval()
            _own(self.record).update(progress_at=timezone.now())
        return _ended_elsewhere(self.record)

    def nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or until the next look is due."""
        time.sleep(max(0.0, min(seconds, self.next_look - time.monotonic())))


def _wait_for_canary(record: Replay, ids: list[Any], timeout: float) -> tuple[int, int] | None:
    """Wait until the canary's deliveries have an outcome; return how many still have none,
    and how many of those wait for a retry; None when the replay was stopped meanwhile."""
    deadline = time.monotonic() + timeout
    lookout = _StopLookout(record)
    waiting = Delivery.objects.filter(pk__in=ids, status__in=IN_FLIGHT)
    while waiting.exists():
        if lookout.stopped():
            return None
        if time.monotonic() > deadline:
            counts = dict(waiting.order_by().values_list("status").annotate(n=models.Count("pk")))
            return sum(counts.values()), counts.get(Delivery.Status.RETRYING, 0)
        time.sleep(0.2)  # polling the outcome of work running elsewhere, bounded by timeout
    return 0, 0


def _canary_stopped(
    record: Replay, canary_ids: list[Any], timeout: float, threshold: float | None
) -> bool:
    """Wait for the canary's outcomes; stop the replay (and say so) unless they are a go.
    True when it ends here, stopped by the canary or by someone else meanwhile."""
    waited = _wait_for_canary(record, canary_ids, timeout)
    if waited is None:
        record.refresh_from_db()
        return True
    unfinished, retrying = waited
    if unfinished:
        # A canary that tells nothing is no go-ahead: no worker on the queue, a backlog,
        # listeners slower than the timeout, or failing again and retried.
        _stop(
            record,
            f"canary: {unfinished} of {len(canary_ids)} replayed deliveries had no outcome "
            f"after {timeout:g} s ({retrying} of them waiting for a retry); stopped after "
            f"{record.queued} of {record.total}; replay the rest once they have one",
        )
        return True
    # The canary's own (a resumed run may have queued more before it was lost).
    failed, finished = _outcomes(record, among=canary_ids)
    if threshold is not None and finished and failed / finished > threshold:
        _stop(
            record,
            f"canary: {failed} of {finished} replayed deliveries failed again "
            f"({failed / finished:.0%} > {threshold:.0%}); stopped after "
            f"{record.queued} of {record.total}",
        )
        return True
    return False


#: What a batch of deliveries to replay does not read: nothing of it goes in a message.
UNSENT_FIELDS = ("result", "error", "traceback", "event__summary")


def _take(event_id: Any, deliveries: list[Delivery], record: Replay) -> list[Delivery]:
    """Make pending for ``record`` those of ``deliveries`` still as the batch read them, and
    mark their event published again; return those taken.

    One statement on PostgreSQL: a bulk replay runs this once per message it publishes, and
    the two updates and the query building of each delivery cost more than the publish.
    """
    connection = transaction.get_connection(db_alias())
    if connection.vendor != "postgresql":
        mark_published_again([event_id])
        return [
            d
            for d in deliveries
            if Delivery.objects.filter(pk=d.pk, status=d.status, finished_at=d.finished_at).update(
                status=Delivery.Status.PENDING, replay=record
            )
        ]
    with connection.cursor() as cursor:
        cursor.execute(
            _take_statement(connection),
            [
                [d.pk for d in deliveries],
                [d.status for d in deliveries],
                [d.finished_at for d in deliveries],
                record.pk,
                timezone.now(),
                event_id,
            ],
        )
        taken = {row[0] for row in cursor.fetchall()}
    return [d for d in deliveries if d.pk in taken]


def _take_statement(connection: Any) -> str:
    quote = connection.ops.quote_name
    deliveries, events = quote(Delivery._meta.db_table), quote(Event._meta.db_table)
    # Table names from model meta; values are parameters.
    taken = (
        f'UPDATE {deliveries} d SET "status" = \'pending\', "replay_id" = %s'  # noqa: S608
        ' FROM wanted w WHERE d."id" = w."id" AND d."status" = w."status"'
        ' AND d."finished_at" IS NOT DISTINCT FROM w."finished_at" RETURNING d."id"'
    )
    published = f'UPDATE {events} SET "published_at" = %s WHERE "id" = %s'  # noqa: S608
    wanted = (
        "SELECT * FROM unnest(%s::uuid[], %s::varchar[], %s::timestamptz[])"
        ' AS w("id", "status", "finished_at")'
    )
    return (
        f"WITH wanted AS ({wanted}), taken AS ({taken}), published AS ({published})"  # noqa: S608
        ' SELECT "id" FROM taken'
    )


def run_replay(
    record: Replay,
    frozen: models.QuerySet,
    *,
    canary_timeout: float = 300.0,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> Replay:
    """Queue the frozen selection in batches (keyset by pk), recording progress on ``record``.

    Interrupted (Ctrl-C in ``messagio_replay``, a SystemExit) or failed, it is recorded
    stopped, with what it queued, before the exception goes on: not left running."""
    try:
        return _run_replay(record, frozen, canary_timeout, batch_size, progress)
    except Exception as exc:
        stop_failed(record, exc)
        raise
    except BaseException as exc:
        _stop(
            record,
            f"interrupted ({type(exc).__name__}) after queueing {record.queued} of "
            f"{record.total}; replay the rest again",
        )
        raise


def _run_replay(
    record: Replay,
    frozen: models.QuerySet,
    canary_timeout: float,
    batch_size: int,
    progress: Progress | None,
) -> Replay:
    threshold = record.max_failure_rate
    if record.canary and threshold is None:
        threshold = CANARY_DEFAULT_MAX_FAILURE_RATE
    interval = 1.0 / record.rate if record.rate else 0.0
    eager = runs_eagerly()
    next_at = time.monotonic()
    lookout = _StopLookout(record)
    selection = _Selection(frozen)
    canary_pending = bool(record.canary) and record.queued < (record.canary or 0)
    #: What the canary published, over as many batches as it took: what it waits for.
    canary_ids: list[Any] = []
    if record.canary and record.queued:
        # Resumed (its worker died, the task's message came back): the canary's first
        # deliveries went out already, and maybe all of it, never judged.
        canary_ids = _canary_of(record)
        if not canary_pending and _canary_stopped(record, canary_ids, canary_timeout, threshold):
            return record
    while True:
        if selection.taken and _ended_elsewhere(record):
            return _left(record)
        limit = batch_size
        if canary_pending:
            limit = max(1, min(batch_size, (record.canary or 0) - record.queued))
        finishes = selection.take(limit)
        if not finishes:
            break
        # By key alone: the selection's own lookups would bring back the plan that reads
        # all of it. Not the texts a replay never sends (a traceback: up to 20,000
        # characters a row).
        reads = (
            Delivery.objects.using(frozen.db)
            .filter(pk__in=list(finishes))
            .order_by("pk")
            .select_related("event")
            .defer(*UNSENT_FIELDS)
        )
        # As the selection read them: what ran, or another replay took, since is left alone.
        batch = [
            d
            for d in reads
            if d.status not in IN_FLIGHT and _micros(d.finished_at) == finishes[d.pk]
        ]
        if not batch:
            continue
        by_event: dict[Any, list[Delivery]] = {}
        for delivery in batch:
            by_event.setdefault(delivery.event_id, []).append(delivery)
        taken: list[Delivery] = []
        publishing = False
        counter = _Counter(record)
        try:
            for members in by_event.values():
                for envelope in envelopes(members[0].event, members, replay_id=record.pk):
                    if interval:
                        # At a rate, a batch can take minutes: a stop ends it between
                        # publishes, and the wait for the next one is cut into short naps.
                        while True:
                            if lookout.stopped():
                                raise _StoppedMeanwhileError
                            due = next_at - time.monotonic()
                            if due <= 0:
                                break
                            lookout.nap(due)  # a rate, not a synchronisation
                        next_at = max(next_at, time.monotonic()) + interval * len(
                            envelope["listeners"]
                        )
                    wanted = {spec["delivery"] for spec in envelope["listeners"]}
                    # Its turn: the event marked published, made pending only what is
                    # still as the batch read it (what something else ran meanwhile is
                    # left alone), and published, in one transaction: a publish refused,
                    # or a worker killed before it, leaves them as they were, never pending
                    # with no message. A worker given the message first waits for the
                    # commit in its claim.
                    with transaction.atomic(using=db_alias()):
                        mine = _take(
                            members[0].event_id,
                            [d for d in members if str(d.pk) in wanted],
                            record,
                        )
                        if mine and not eager:
                            publishing = True
                            publish_all(envelopes(members[0].event, mine, replay_id=record.pk))
                            publishing = False
                    if mine and eager:  # run here: after the commit, as a worker would
                        publish_all(envelopes(members[0].event, mine, replay_id=record.pk))
                    taken.extend(mine)
                    counter.add(len(mine))
        except _StoppedMeanwhileError:
            counter.write()  # what it took, it published
            return _left(record)
        except Exception as exc:
            counter.write()
            if not publishing:
                raise  # recorded stopped by run_replay, saying why
            _stop(
                record,
                f"the broker refused a publish ({exc!r}); stopped after "
                f"{record.queued} of {record.total}; replay the rest when it is back",
            )
            return record
        except BaseException:
            counter.write()
            raise  # recorded stopped by run_replay
        if not counter.write():  # every one taken was published
            return _left(record)  # ended, or taken over by another run
        if progress:
            progress(record)
        if canary_pending:
            canary_ids.extend(d.pk for d in taken)
        if canary_pending and record.queued >= (record.canary or 0):
            canary_pending = False
            if _canary_stopped(record, canary_ids, canary_timeout, threshold):
                return record
        elif threshold is not None:
            failed, finished = _outcomes(record)
            if finished >= MIN_SAMPLE and failed / finished > threshold:
                _stop(
                    record,
                    f"{failed} of {finished} replayed deliveries failed again "
                    f"({failed / finished:.0%} > {threshold:.0%}); stopped after "
                    f"{record.queued} of {record.total}",
                )
                return record
    record.state = Replay.State.FINISHED
    record.finished_at = timezone.now()
    _end(record)
    return record


#: What _micros gives a delivery that has no finish.
_NO_FINISH = -(2**63)
_EPOCH = datetime.datetime(1970, 1, 1)
_MICROSECOND = datetime.timedelta(microseconds=1)


def _micros(moment: datetime.datetime | None) -> int:
    """A finish as exact whole microseconds (as the database gives it: the same both times)."""
    if moment is None:
        return _NO_FINISH
    return (moment.replace(tzinfo=None) - _EPOCH) // _MICROSECOND


class _Selection:
    """A bulk replay's frozen selection, read once, in key order: each delivery's id and the
    finish it had then, 24 bytes a delivery (megabytes for millions, not their rows). Read
    a batch at a time instead, each batch re-read and sorted what was left of it: the time
    of a replay grew with the square of its size (50 s of queries for 115,000 deliveries at
    1,000,000 events)."""

    def __init__(self, frozen: models.QuerySet) -> None:
        self._ids = bytearray()
        self._finishes = array("q")
        # A server-side cursor on PostgreSQL: the ids do not pass through memory at once.
        for pk, finished_at in (
            frozen.order_by("pk").values_list("pk", "finished_at").iterator(chunk_size=2000)
        ):
            self._ids += pk.bytes
            self._finishes.append(_micros(finished_at))
        #: How many of its deliveries the batches have taken so far.
        self.taken = 0

    def take(self, limit: int) -> dict[uuid.UUID, int]:
        """The next ``limit`` ids, each with its finish as :func:`_micros` gives it."""
        start, end = self.taken, min(self.taken + limit, len(self._finishes))
        self.taken = end
        return {
            uuid.UUID(bytes=bytes(self._ids[16 * i : 16 * i + 16])): self._finishes[i]
            for i in range(start, end)
        }


def _lost_before(now: datetime.datetime) -> datetime.datetime:
    """A running replay with no progress since this is taken for one whose run was lost."""
    from messagio.conf import get_setting

    return now - datetime.timedelta(seconds=float(get_setting("STUCK_TIMEOUT")))


def take_up(record: Replay) -> bool:
    """Make this process the run of ``record`` (a worker's replay task), unless another
    run of it shows progress (a copy the relay sent while this message waited in its
    queue, or the reverse): one run at a time. What a lost run queued and had not counted
    yet is counted (and its canary, if it went out, is judged rather than run again)."""
    runner, now = uuid.uuid4().hex, timezone.now()
    if (
        not Replay.objects.filter(pk=record.pk, state=Replay.State.RUNNING)
        .filter(
            models.Q(runner="")
            | models.Q(progress_at__isnull=True)
            | models.Q(progress_at__lt=_lost_before(now))
        )
        .update(runner=runner, progress_at=now)
    ):
        return False
    record.runner = runner
    Replay.objects.filter(pk=record.pk).update(queued=queued_so_far(record))
    record.refresh_from_db()
    return True


@dataclass
class LostReplays:
    """What :func:`take_over_lost` did: replays sent to a worker again, and replays stopped."""

    resumed: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)


def take_over_lost(now: datetime.datetime | None = None) -> LostReplays:
    """Replays still running with no progress for STUCK_TIMEOUT: their process was lost (a
    worker killed or restarted mid-replay; the replay task is acknowledged when it starts,
    since a replay can outlast a broker's redelivery timeouts). A worker's replay task
    (the admin's) is sent again, and goes on from where it was (what it queued is not taken
    again); a replay that ran in a process of its own (a command, code) is recorded stopped,
    saying so. Run by the relay."""

    now = now or timezone.now()
    cutoff = _lost_before(now)
    quiet = Replay.objects.filter(state=Replay.State.RUNNING).filter(
        models.Q(progress_at__lt=cutoff)
        | models.Q(progress_at__isnull=True, requested_at__lt=cutoff)
    )
    report = LostReplays()
    for record in quiet.order_by("pk")[:REPLAYS_TAKEN_OVER_AT_MOST]:
        # Taken by one relay run only, and given STUCK_TIMEOUT to show progress again.
        seen = (
            models.Q(progress_at=record.progress_at)
            if record.progress_at
            else models.Q(progress_at__isnull=True)
        )
        taken = Replay.objects.filter(seen, pk=record.pk, state=Replay.State.RUNNING)
        if record.delivery_filter is None:
            quiet_since = record.progress_at or record.requested_at
            if _stop_lost(
                taken,
                record,
                now,
                f"its process ended without finishing it (nothing of it since "
                f"{quiet_since:%Y-%m-%d %H:%M:%S %Z})",
            ):
                logger.warning("messagio: replay %s lost its process; stopped", record.pk)
                report.stopped.append(record.pk)
            continue
        if record.times_resent >= RESENDS_AT_MOST:
            if _stop_lost(
                taken,
                record,
                now,
                f"its task was sent to a worker {record.times_resent + 1} times and no run "
                f"of it showed progress within STUCK_TIMEOUT (no worker takes its queue, or "
                f"its workers drop its message: see their logs, and check that SECRET_KEY / "
                f"SIGNING_KEY match)",
            ):
                logger.error("messagio: replay %s was never taken up; stopped", record.pk)
                report.stopped.append(record.pk)
            continue
        # Its run given up (runner cleared): the copy sent now, or one still queued, takes
        # it over; a run that was only slow finds it gone and ends.
        if not taken.update(progress_at=now, runner="", times_resent=models.F("times_resent") + 1):
            continue
        from messagio.tasks import send_replay

        try:
            send_replay(record.pk, record.delivery_filter)
        except Exception as exc:  # noqa: BLE001 - the next relay run tries again
            Replay.objects.filter(pk=record.pk, progress_at=now).update(
                progress_at=record.progress_at, times_resent=record.times_resent
            )
            logger.error("messagio: could not send replay %s again: %r", record.pk, exc)
            continue
        logger.warning(
            "messagio: replay %s showed no progress for STUCK_TIMEOUT (its worker lost); "
            "its task was sent again",
            record.pk,
        )
        report.resumed.append(record.pk)
    return report


def _stop_lost(taken: models.QuerySet, record: Replay, now: datetime.datetime, why: str) -> bool:
    """Record a lost replay stopped (if ``taken`` still finds it), with what it queued."""
    queued = queued_so_far(record)
    return bool(
        taken.update(
            state=Replay.State.STOPPED,
            finished_at=now,
            queued=queued,
            stopped_reason=f"{why}; queued {queued} of {record.total}; replay the rest again",
            runner="",  # a run that was only slow counts nothing more, and ends
        )
    )


#: Lost replays one relay run takes over at most.
REPLAYS_TAKEN_OVER_AT_MOST = 50
#: Times the relay sends a replay's task again, none of them showing progress, before it
#: records the replay stopped.
RESENDS_AT_MOST = 3
