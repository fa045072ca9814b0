"""Recovering deliveries whose worker died mid-listener, or that are stuck.

RabbitMQ hands an unacknowledged message back as soon as the dead worker's connection
closes. kombu's Redis transport only restores it after its visibility timeout (an hour by
default), and the filesystem broker not at all. So when a worker starts, it requeues the
deliveries that its predecessor of the same name (``-n``) left ``running``; and the relay
requeues any delivery left ``running`` or ``retrying`` past STUCK_TIMEOUT. When it was
running its first attempt, from its group's message, the listeners after it in that
message, still ``pending``, go with it.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone

from messagio.exceptions import PublishRefusedError
from messagio.querysets import plan_without_jit

logger = logging.getLogger("messagio")


def requeue(deliveries: Any, why: str) -> int:
    """Record the interrupted attempt of each delivery as lost, mark it pending, publish it,
    along with the pending deliveries that followed it in its group (see
    :func:`pending_followers`). One whose worker was lost MAX_LOST_ATTEMPTS times is
    failed instead (its followers go as they would with it). Returns how many of
    ``deliveries`` were requeued.

    Each event's deliveries are taken and published in one transaction: when the broker is
    unreachable, that event and the ones after it are left as they were, for the next run;
    when it refuses one event alone, that one.
    """
    from django.db import transaction

    from messagio.brokers import broker_unreachable, runs_eagerly
    from messagio.records import db_alias

    selected = list(deliveries.select_related("event").order_by("event_id", "position"))
    by_event: dict[Any, list[Any]] = {}
    for delivery in selected:
        by_event.setdefault(delivery.event_id, []).append(delivery)
    requeued = followed = 0
    eager = runs_eagerly()
    for event_id, candidates in by_event.items():
        try:
            with transaction.atomic(using=db_alias()):
                # With its deliveries made pending (requeue_lost counts a wait from it),
                # and not at all when the broker refuses.
                mark_published_again([event_id])
                taken, failed = _take_interrupted(candidates, why)
                followers = pending_followers({event_id: taken} if taken else {})
                failed_ids = {delivery.pk for delivery, _ in failed}
                members = sorted(
                    [d for d in taken if d.pk not in failed_ids] + followers,
                    key=lambda d: d.position,
                )
                if members and not eager:
                    publish_by_replay(members)
            if members and eager:  # run here: after the commit, as a worker would
                publish_by_replay(members)
        except PublishRefusedError as refused:
            if not broker_unreachable(refused.cause):
                # This event alone: the ones after it may still go.
                logger.error(
                    "messagio: the broker refused the requeue of event %s (%s); left as it "
                    "was for the next run",
                    event_id,
                    refused,
                )
                continue
            logger.error(
                "messagio: the broker refused a requeue (%s); %d event(s) left as they were "
                "for the next run",
                refused,
                len(by_event) - list(by_event).index(event_id),
            )
            break
        _report_failed(failed)
        requeued += len(taken) - len(failed)
        followed += len(followers)
    if requeued or followed:
        logger.warning(
            "messagio: requeued %d delivery(ies), with %d pending after them in their groups: %s",
            requeued,
            followed,
            why,
        )
    return requeued


def _take_interrupted(
    candidates: list[Any], why: str
) -> tuple[list[Any], list[tuple[Any, Exception]]]:
    """Make each delivery pending if it is still as read, its lost attempt recorded; fail
    the ones lost MAX_LOST_ATTEMPTS times. Returns those taken, and those failed with why."""
    from messagio.models import Delivery
    from messagio.records import (
        CLAIM_COLUMNS,
        fail_lost_too_often,
        lost_too_often,
        record_lost_attempt,
    )

    now = timezone.now()
    taken: list[Any] = []
    failed: list[tuple[Any, Exception]] = []
    for delivery in candidates:
        # As read: every claim counts an attempt, so a worker that took it up meanwhile
        # (RabbitMQ hands a dead worker's message on at once) keeps it.
        if not Delivery.objects.filter(
            pk=delivery.pk, status=delivery.status, attempts=delivery.attempts
        ).update(status=Delivery.Status.PENDING):
            continue  # it moved on meanwhile
        taken.append(delivery)
        if delivery.status != Delivery.Status.RUNNING:
            continue
        was = {column: getattr(delivery, column) for column in CLAIM_COLUMNS}
        record_lost_attempt(delivery.pk, was, now, why)
        lost = lost_too_often(delivery.pk, delivery.replay_id)
        if lost is not None:
            taken_as = {"status": Delivery.Status.PENDING, "attempts": delivery.attempts}
            number = delivery.attempts + 1
            fail_lost_too_often(delivery.pk, taken_as, number, lost, now, delivery.replay_id)
            failed.append((delivery, lost))
    return taken, failed


def _report_failed(failed: list[tuple[Any, Exception]]) -> None:
    from messagio.execution import report_lost_too_often

    for delivery, error in failed:
        report_lost_too_often(
            error,
            delivery_id=str(delivery.pk),
            event_id=delivery.event_id,
            listener=delivery.listener,
            messagio_type=delivery.messagio_type,
        )


def publish_by_replay(members: list[Any]) -> None:
    """Publish deliveries of one event, in envelopes per replay (each keeps its own); a
    refusal raises PublishRefusedError.

    Each goes on with its retry policy where it was: its attempt counts the retries it was
    given in its replay (or before any), so a requeue never grants ``max_retries`` afresh.
    """
    from messagio.records import envelopes, publish_each

    by_replay: dict[Any, list[Any]] = {}
    for delivery in members:
        by_replay.setdefault(delivery.replay_id, []).append(delivery)
    retried = _retries_made(members)
    sent = [
        envelope
        for replay_id, group in by_replay.items()
        for envelope in envelopes(group[0].event, group, replay_id=replay_id)
    ]
    for envelope in sent:
        for spec in envelope["listeners"]:
            spec["attempt"] = retried.get(spec["delivery"], 0) + 1
    publish_each(sent)


def _retries_made(deliveries: list[Any]) -> dict[str, int]:
    """Delivery id -> how many of its attempts in its current replay (or before any) failed
    and were retried: one query."""
    from messagio.models import Attempt

    replay_of = {delivery.pk: delivery.replay_id for delivery in deliveries}
    counts = (
        Attempt.objects.filter(delivery_id__in=list(replay_of), outcome=Attempt.Outcome.RETRIED)
        .values_list("delivery_id", "replay_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {
        str(delivery_id): n
        for delivery_id, replay_id, n in counts
        if replay_of.get(delivery_id) == replay_id
    }


def mark_published_again(event_ids: list[Any]) -> None:
    """Set the events' ``published_at`` to now: their messages were just published again
    (:func:`requeue_lost` counts a wait from it)."""
    from messagio.models import Event

    if event_ids:
        Event.objects.filter(pk__in=event_ids).update(published_at=timezone.now())


def pending_followers(taken: dict[Any, list[Any]]) -> list[Any]:
    """The pending deliveries after a taken one in what runs it: its (priority, queue)
    group's message, or its event's in-process run.

    A group's listeners travel in one task message and run in order, so those after the one
    a worker died in were never started, and their message is gone with it where the broker
    does not hand it back (the filesystem broker; Redis only after its visibility timeout).
    A retry, a replay or an earlier requeue runs its listener in a message that carries the
    ones after it too, or none of them: either way the message it is taken from runs nothing
    more once it finds its attempt taken over (``records.AttemptTakenOverError``), so they
    go along, unless another delivery of the same run is running past it (a retry's group
    went on without it: that message runs them, in order). A run is one replay's,
    or none's: a replay's message carries only its own. Published twice (the group's own
    message still on its way), each runs once: a later copy finds it finished or held by
    the other.
    """
    from messagio.models import Delivery

    if not taken:
        return []
    first_taken: dict[tuple[Any, ...], int] = {}
    ids = set()
    for members in taken.values():
        for delivery in members:
            ids.add(delivery.pk)
            key = _run_of(delivery)
            first_taken[key] = min(first_taken.get(key, delivery.position), delivery.position)
    candidates = (
        Delivery.objects.filter(
            event_id__in=list(taken),
            status__in=[Delivery.Status.PENDING, Delivery.Status.RUNNING],
        )
        .exclude(pk__in=ids)
        .select_related("event")
        .order_by("event_id", "position")
    )
    followers = []
    walked = set()
    for delivery in candidates:
        first = first_taken.get(_run_of(delivery))
        if delivery.status == Delivery.Status.RUNNING:
            # Past the one taken, a live message of the same run walks this group (a retry's
            # group went on without it): the ones after it are that message's, and run in
            # order there. Not one before it: a retry (or its requeue) travels alone.
            if first is not None and delivery.position > first:
                walked.add(_run_of(delivery))
            continue
        if first is not None and delivery.position > first:
            followers.append(delivery)
    return [d for d in followers if _run_of(d) not in walked]


def _run_of(delivery: Any) -> tuple[Any, ...]:
    """What runs a delivery's listeners in order: its group's message, or the whole event's
    in-process run."""
    from messagio.models import Event

    # A replay's message carries its own deliveries only: one replay's is not another's.
    if delivery.event.state == Event.State.INLINE:
        return (delivery.event_id, delivery.replay_id)
    return (delivery.event_id, delivery.priority, delivery.queue, delivery.replay_id)


def requeue_orphans(worker_name: str) -> int:
    """Requeue deliveries left ``running`` by a worker named ``worker_name``."""
    from messagio.models import Delivery

    orphans = Delivery.objects.filter(status=Delivery.Status.RUNNING, worker=worker_name)
    return requeue(orphans, f"its worker {worker_name} stopped while it ran")


#: Most deliveries one relay run requeues (the oldest first); the next run takes the rest.
REQUEUE_BATCH = 1000


def requeue_stuck(timeout: float | None = None, limit: int = REQUEUE_BATCH) -> int:
    """Requeue deliveries ``running`` or ``retrying`` for longer than STUCK_TIMEOUT, the
    ``limit`` oldest: a broker that lost a backlog of retries does not make one run load
    them all. Then the retries the broker refused to take (see ``tasks.deliver``), once
    their delay has passed; then the deliveries an in-process run left pending."""
    from messagio.conf import get_setting
    from messagio.models import Delivery
    from messagio.records import RETRY_NOT_SENT

    seconds = float(timeout if timeout is not None else get_setting("STUCK_TIMEOUT"))
    now = timezone.now()
    cutoff = now - datetime.timedelta(seconds=seconds)
    stuck = Delivery.objects.filter(
        Q(status=Delivery.Status.RUNNING, started_at__lt=cutoff)
        | Q(status=Delivery.Status.RETRYING, finished_at__lt=cutoff)
    )
    oldest = list(stuck.order_by("started_at").values_list("pk", flat=True)[:limit])
    requeued = requeue(
        stuck.filter(pk__in=oldest),  # still stuck when read again
        f"it was stuck for more than {seconds:g}s; its worker is presumed dead",
    )
    # Retries the broker refused, once due: no message would ever run them. Due is
    # finished_at + retry_delay <= now, asked per delay (listeners have few) so that the
    # database picks the due ones, however many wait longer.
    unsent = Delivery.objects.filter(status=Delivery.Status.RETRYING, task_id=RETRY_NOT_SENT)
    delays = unsent.order_by().values_list("retry_delay", flat=True).distinct()
    due_now = Q(pk__in=[])
    for delay in delays:
        due_now |= Q(retry_delay=delay, finished_at__lte=now - datetime.timedelta(seconds=delay))
    due = list(unsent.filter(due_now).order_by("finished_at").values_list("pk", flat=True)[:limit])
    if due:
        requeued += requeue(
            unsent.filter(pk__in=due), "the broker refused its retry; its delay has passed"
        )
    requeued += requeue_left_in_process(cutoff, limit)
    return requeued


def requeue_left_in_process(cutoff: datetime.datetime, limit: int = REQUEUE_BATCH) -> int:
    """Publish to a worker what in-process runs (a sync fire) left pending: runs claimed
    before ``cutoff`` (their claim never ended: their process died, a database error ended
    them, the on_commit that was to start them never ran) with nothing of them running,
    started or finished since, nor published since (a requeue or a replay of some of it, on
    its way). No message carries those deliveries. The claim ends once nothing of its event
    is pending. Returns how many deliveries were requeued."""
    from messagio.models import Delivery, Event

    # Its run goes on (a listener running, or one started or finished lately), or the stuck
    # sweep requeues the one that runs (a retrying one waits for its own message).
    lately = Delivery.objects.filter(event_id=OuterRef("pk")).filter(
        Q(status__in=[Delivery.Status.RUNNING, Delivery.Status.RETRYING])
        | Q(started_at__gte=cutoff)
        | Q(finished_at__gte=cutoff)
    )
    ended = (
        Event.objects.filter(state=Event.State.INLINE, claimed_at__lt=cutoff)
        .filter(Q(published_at__isnull=True) | Q(published_at__lt=cutoff))
        .exclude(Exists(lately))
    )
    ids = list(ended.order_by("claimed_at").values_list("pk", flat=True)[:limit])
    if not ids:
        return 0
    requeued = requeue(
        Delivery.objects.filter(event_id__in=ids, status=Delivery.Status.PENDING),
        "the in-process run of its event (a sync fire) stopped before it",
    )
    # What the broker refused is still pending: its claim stays, for the next run.
    pending = Delivery.objects.filter(event_id=OuterRef("pk"), status=Delivery.Status.PENDING)
    Event.objects.filter(pk__in=ids).exclude(Exists(pending)).update(claimed_at=None)
    return requeued


#: How far back before the cutoff :func:`requeue_lost` looks for events (by fired_at).
LOST_SCAN_DAYS = 7


@dataclass
class LostReport:
    """What :func:`requeue_lost` published again, and what it could not."""

    events: int = 0
    deliveries: int = 0
    #: Events not published again (their missing Delivery rows could not be written again,
    #: or the broker refused that event alone): event id -> why.
    skipped: dict[str, str] = field(default_factory=dict)
    #: How many events were examined, published or not.
    examined: int = 0
    #: Why publishing stopped (the broker could not be reached), or "" when it did not.
    error: str = ""
    #: How many of ``skipped`` the broker refused alone.
    refused: int = 0


def requeue_lost(
    older_than: float,
    limit: int = 1000,
    events: Any = None,
    now: datetime.datetime | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> LostReport:
    """Publish again what has waited for a worker for more than ``older_than`` seconds.

    That is, of events last published that long ago (and fired within LOST_SCAN_DAYS
    before), with no delivery running: pending deliveries not started or finished since, and
    the groups no worker has started (no Delivery rows yet; written now from the listener
    registry). Their message is presumed lost by the broker (a Redis restarted without
    persistence): nothing else would ever run them. Choose ``older_than`` above the longest
    wait your queues ever see: a copy of a message still queued is harmless once either has
    finished (the other finds the deliveries finished, or not its own); two running at the
    same moment run each listener once, but may run a group's listeners out of order (a copy
    leaves a listener the other is running and goes on to the next).

    Each event is taken with a conditional update of its ``published_at`` (to now), so two
    runs at once do not both publish it, and a run does not take up what a requeue, a replay
    or an earlier run published since. ``events`` (a queryset) narrows the search; ``now``
    is what the wait counts back from; ``exclude``, event ids to leave out (those a run
    could not publish).
    Stops at the first publish that finds the broker unreachable, putting that event back
    as it was; an event the broker refuses alone is put back and skipped.
    """
    from messagio.brokers import broker_unreachable
    from messagio.models import Delivery, Event

    now = now or timezone.now()
    cutoff = now - datetime.timedelta(seconds=older_than)
    waiting = Delivery.objects.filter(
        Q(started_at__isnull=True) | Q(started_at__lt=cutoff),
        Q(finished_at__isnull=True) | Q(finished_at__lt=cutoff),
        status=Delivery.Status.PENDING,
    )
    published = Event.objects.filter(
        _published(),
        published_at__lt=cutoff,
        fired_at__gte=cutoff - datetime.timedelta(days=LOST_SCAN_DAYS),
    )
    if events is not None:
        published = published.filter(pk__in=events.values("pk"))
    # Each a check per event (two IN lists joined by OR cannot be joins: past ~300,000
    # waiting deliveries PostgreSQL searched the whole list once per event of the window).
    candidates = (
        published.with_written()
        .filter(
            Exists(waiting.filter(event_id=OuterRef("pk"))) | Q(written__lt=F("listener_count"))
        )
        .exclude(_has_running())
        .exclude(pk__in=list(exclude))
        .order_by("fired_at")[:limit]
    )
    with transaction.atomic(using=candidates.db):
        # JIT compiling took 0.7 s of a 1 s scan at 1,000,000 events.
        plan_without_jit(candidates.db)
        lost = list(candidates)
    report = LostReport()
    for event in lost:
        report.examined += 1
        held = _take(event, event.published_at)
        if held is None:
            continue
        try:
            _write_missing_deliveries(event)
        except LookupError as exc:
            _put_back(event, held)
            report.skipped[str(event.pk)] = str(exc)
            logger.error("messagio: event %s cannot be published again: %s", event.pk, exc)
            continue
        except BaseException:
            _put_back(event, held)
            raise
        members = list(waiting.filter(event=event).order_by("position"))
        if not members:
            _put_back(event, held)
            continue
        # A requeue or a replay that made some of these pending meanwhile moved published_at
        # first: then it publishes them, not this.
        retaken = _take(event, held)
        if retaken is None:
            _put_back(event, held)  # a no-op when a requeue or a replay moved it
            continue
        held = retaken
        try:
            publish_by_replay(members)
        except PublishRefusedError as refused:
            if not refused.published:
                _put_back(event, held)  # nothing went out; else what did must not go again
            if not broker_unreachable(refused.cause):  # this event alone: go on
                report.skipped[str(event.pk)] = str(refused)
                report.refused += 1
                logger.error("messagio: event %s cannot be published again: %s", event.pk, refused)
                continue
            report.error = str(refused)  # the broker is down: stop
            break
        report.events += 1
        report.deliveries += len(members)
    if report.events:
        logger.warning(
            "messagio: published again %d delivery(ies) of %d event(s) that waited for a "
            "worker for more than %gs",
            report.deliveries,
            report.events,
            older_than,
        )
    return report


def _take(event: Any, published_at: datetime.datetime) -> datetime.datetime | None:
    """Move the event's published_at from ``published_at`` to now, unless it moved
    meanwhile or one of its deliveries is running; the new value, or None."""
    from messagio.models import Event

    now = timezone.now()
    taken = (
        Event.objects.filter(pk=event.pk, published_at=published_at)
        .exclude(_has_running())
        .update(published_at=now)
    )
    return now if taken else None


def _put_back(event: Any, held: datetime.datetime) -> None:
    """Give the event back its published_at as it was read, if it is still ``held``."""
    from messagio.models import Event

    Event.objects.filter(pk=event.pk, published_at=held).update(published_at=event.published_at)


def may_be_lost(event: Any, deliveries: list[Any], older_than: float) -> bool:
    """Whether :func:`requeue_lost` (``older_than``) would look at ``event`` now, given all
    its Delivery rows: the same rules, for a page that has them in hand."""
    from messagio.models import Delivery, Event

    cutoff = timezone.now() - datetime.timedelta(seconds=older_than)
    return (
        (
            event.state == Event.State.PUBLISHED
            or (event.state == Event.State.INLINE and event.claimed_at is None)
        )
        and event.published_at is not None
        and event.published_at < cutoff
        and event.fired_at >= cutoff - datetime.timedelta(days=LOST_SCAN_DAYS)
        and not any(d.status == Delivery.Status.RUNNING for d in deliveries)
        and (
            len(deliveries) < event.listener_count
            or any(d.status == Delivery.Status.PENDING for d in deliveries)
        )
    )


def _published() -> Q:
    """Events whose deliveries wait for a message: published ones, and in-process runs that
    ended (no claim) with some of it published since (a replay, a requeue). A run still
    claimed is :func:`requeue_left_in_process`'s."""
    from messagio.models import Event

    return Q(state=Event.State.PUBLISHED) | Q(
        state=Event.State.INLINE, claimed_at__isnull=True, published_at__isnull=False
    )


def _has_running() -> Q:
    """Events with a delivery running: a live worker holds its group."""
    from messagio.models import Delivery

    return Q(
        Exists(Delivery.objects.filter(event_id=OuterRef("pk"), status=Delivery.Status.RUNNING))
    )


def _write_missing_deliveries(event: Any) -> None:
    """Write the pending Delivery rows of ``event`` that no worker has written, from its
    messagio type's listeners now; LookupError when they are not those it was fired with."""
    from messagio.center import get_message_center
    from messagio.models import Delivery
    from messagio.records import new_deliveries
    from messagio.registry import registry

    written = dict(event.deliveries.values_list("position", "listener"))
    missing = set(range(event.listener_count)) - set(written)
    if not missing:
        return
    # A type no listener subscribes to now (or that no longer imports) has none: reported.
    by_name = {cls.get_name(): cls for cls in registry.messagio_types()}
    messagio_class = by_name.get(event.messagio_type)
    subscriptions = get_message_center().subscriptions_for(messagio_class) if messagio_class else []
    if len(subscriptions) != event.listener_count:
        raise LookupError(
            f"{event.messagio_type} has {len(subscriptions)} listener(s) now and had "
            f"{event.listener_count} when it was fired"
        )
    for position, listener in written.items():
        if subscriptions[position].listener_id != listener:
            raise LookupError(
                f"its listener {position + 1} was {listener} and is "
                f"{subscriptions[position].listener_id} now"
            )
    rows = new_deliveries(event.pk, event.messagio_type, subscriptions, missing)
    Delivery.objects.bulk_create([row.as_model() for row in rows], ignore_conflicts=True)


def on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    """``worker_ready`` receiver: requeue orphans unless the broker redelivers by itself."""
    from messagio.brokers import is_amqp
    from messagio.conf import get_setting

    if not get_setting("RECORD") or is_amqp(sender.app):
        return
    try:
        requeue_orphans(sender.hostname)
    except Exception:  # a worker must start even if this recovery cannot run now
        logger.exception("messagio: could not requeue deliveries left running by %s", sender)
