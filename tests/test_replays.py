"""What a bulk replay publishes when its selection changes under it (the broker captured;
tests/integration/test_records.py runs replays against real workers)."""

import datetime
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from messagio import replays
from messagio.models import Attempt, Delivery, Event, Replay
from messagio.replays import replay
from tests.testapp.messagio import Ping

pytestmark = pytest.mark.django_db

PING = Ping.get_name()


def failed_event() -> Event:
    at = timezone.now() - datetime.timedelta(hours=1)
    event = Event.objects.create(
        messagio_type=PING, fired_at=at, published_at=at, state="published", payload=b"x",
        listener_count=2,
    )  # fmt: skip
    for position in range(2):
        Delivery.objects.create(
            event=event, position=position, messagio_type=PING, listener=f"l{position}",
            priority=position, status="failed", attempts=1, started_at=at, finished_at=at,
        )  # fmt: skip
    return event


def a_run_over(count: int) -> tuple[list[Event], Replay]:
    """``count`` failed events of one delivery each, and a run ("this-run") replaying them."""
    events = [failed_event() for _ in range(count)]
    Delivery.objects.filter(event__in=events, position=1).delete()
    record = Replay.objects.create(total=count, runner="this-run", snapshot_at=timezone.now())
    return events, record


def published_deliveries(monkeypatch) -> list[str]:
    """The ids of the deliveries the replay publishes from now on (the broker captured)."""
    sent: list[str] = []

    def publish_all(envelope_list):
        sent.extend(spec["delivery"] for e in envelope_list for spec in e["listeners"])
        return ["task"]

    monkeypatch.setattr(replays, "publish_all", publish_all)
    return sent


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
@pytest.mark.parametrize(
    ("meanwhile", "change"),
    [
        ("succeeded", {"status": "succeeded"}),
        # Still failed, but not the failure the batch read: what a retry or another
        # replay left is not this replay's to run again.
        ("failed", {}),
    ],
)
def test_a_delivery_run_by_someone_else_before_its_turn_is_left_alone(
    monkeypatch, meanwhile, change
):
    event = failed_event()
    first, second = event.deliveries.order_by("-priority")  # published in that order
    sent: list[str] = []

    def publish_all(envelope_list):
        sent.extend(spec["delivery"] for e in envelope_list for spec in e["listeners"])
        # Meanwhile another replay runs the second delivery.
        Delivery.objects.filter(pk=second.pk).update(finished_at=timezone.now(), **change)
        return ["task"]

    monkeypatch.setattr(replays, "publish_all", publish_all)

    record = replay(Delivery.objects.filter(event=event))

    assert sent == [str(first.pk)]
    assert Delivery.objects.get(pk=first.pk).replay == record
    assert Delivery.objects.get(pk=second.pk).replay is None
    assert Delivery.objects.get(pk=second.pk).status == meanwhile
    assert (record.total, record.queued) == (2, 1)


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
@pytest.mark.parametrize("meanwhile", ["failed again", "taken by another replay"])
def test_a_delivery_changed_after_the_selection_was_read_is_left_to_what_changed_it(
    monkeypatch, meanwhile
):
    event = failed_event()
    first, second = event.deliveries.order_by("pk")  # a replay goes in key order
    sent: list[str] = []
    change = {
        "failed again": {"finished_at": timezone.now()},
        "taken by another replay": {"status": "pending"},
    }[meanwhile]

    def publish_all(envelope_list):
        sent.extend(spec["delivery"] for e in envelope_list for spec in e["listeners"])
        Delivery.objects.filter(pk=second.pk).update(**change)  # before the next batch
        return ["task"]

    monkeypatch.setattr(replays, "publish_all", publish_all)

    record = replay(Delivery.objects.filter(event=event), batch_size=1)

    assert sent == [str(first.pk)]
    assert Delivery.objects.get(pk=second.pk).replay is None
    assert (record.state, record.total, record.queued) == ("finished", 2, 1)


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_a_canary_whose_deliveries_get_no_outcome_stops_the_replay(monkeypatch):
    event = failed_event()
    # Published, but no worker runs it: the canary's delivery stays pending.
    monkeypatch.setattr(replays, "publish_all", lambda envelope_list: ["task"])

    record = replay(Delivery.objects.filter(event=event), canary=1, canary_timeout=0.3)

    assert record.state == "stopped"
    assert (record.total, record.queued) == (2, 1)
    assert "canary: 1 of 1 replayed deliveries had no outcome after 0.3 s" in record.stopped_reason
    canary, rest = event.deliveries.order_by("pk")  # a replay goes in key order
    assert (canary.status, canary.replay) == ("pending", record)
    assert (rest.status, rest.replay) == ("failed", None)


@pytest.mark.parametrize(
    "option, value",
    [
        ("canary", 0),
        ("canary", 1.5),
        ("rate", 0),
        ("rate", -2.0),
        ("rate", float("nan")),
        ("max_failure_rate", 1.5),
        ("max_failure_rate", -0.1),
        ("batch_size", 0),
        ("canary_timeout", 0),
    ],
)
def test_a_bad_option_raises_before_anything_is_recorded_or_published(monkeypatch, option, value):
    event = failed_event()
    sent: list[dict] = []
    monkeypatch.setattr(replays, "publish_all", sent.extend)

    with pytest.raises(ValueError, match=f"^{option} takes"):
        replay(Delivery.objects.filter(event=event), **{option: value})

    assert not Replay.objects.exists()
    assert sent == []
    assert set(event.deliveries.values_list("status", flat=True)) == {"failed"}


def test_the_replay_task_does_not_run_a_replay_that_already_ended(monkeypatch):
    from messagio import tasks

    event = failed_event()
    sent: list[dict] = []
    monkeypatch.setattr(replays, "publish_all", sent.extend)
    record = Replay.objects.create(
        reason="ran", snapshot_at=timezone.now(), total=2, state="stopped", stopped_reason="x"
    )

    # Its message handed out again after the replay stopped.
    tasks.replay(record.pk, {"event_id": str(event.pk)})

    assert sent == []
    assert set(event.deliveries.values_list("status", flat=True)) == {"failed"}
    record.refresh_from_db()
    assert (record.state, record.stopped_reason, record.queued) == ("stopped", "x", 0)


def stopped_after_the_first_publish(monkeypatch, reason: str) -> list[str]:
    """What the replay publishes; after its first publish, something else stops it (the
    admin's Stop button, the other run of the same replay), saying ``reason``."""
    sent: list[str] = []

    def publish_all(envelope_list):
        sent.extend(spec["delivery"] for e in envelope_list for spec in e["listeners"])
        Replay.objects.filter(state="running").update(state="stopped", stopped_reason=reason)
        return ["task"]

    monkeypatch.setattr(replays, "publish_all", publish_all)
    monkeypatch.setattr(replays, "STOP_CHECK_INTERVAL", 0.0)
    return sent


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_a_second_run_of_one_replay_ends_when_the_other_ended_it(monkeypatch):
    event = failed_event()
    # Meanwhile the other run of this replay stopped it (its failure rate).
    sent = stopped_after_the_first_publish(monkeypatch, "other")

    record = replay(Delivery.objects.filter(event=event), batch_size=1)

    assert len(sent) == 1  # not the second batch
    assert (record.state, record.stopped_reason, record.queued) == ("stopped", "other", 1)


def test_a_replay_resumed_past_its_canary_replays_the_rest_without_waiting(monkeypatch):
    """Its worker died after the canary; the replay task's message came back."""
    event = failed_event()
    first, second = event.deliveries.order_by("pk")
    sent = published_deliveries(monkeypatch)
    record = Replay.objects.create(snapshot_at=timezone.now(), total=2, canary=1, queued=1)
    Delivery.objects.filter(pk=first.pk).update(status="succeeded", replay=record)

    replays.run_replay(record, Delivery.objects.filter(event=event).exclude(status="succeeded"))

    assert sent == [str(second.pk)]
    assert (record.state, record.queued) == ("finished", 2)


def test_a_replay_resumed_after_its_canary_went_out_judges_it_before_going_on(monkeypatch):
    """Its worker died while it waited for the canary; the task's message came back."""
    event = failed_event()
    first, second = event.deliveries.order_by("pk")
    sent: list[dict] = []
    monkeypatch.setattr(replays, "publish_all", sent.extend)
    record = Replay.objects.create(snapshot_at=timezone.now(), total=2, canary=1, queued=1)
    Delivery.objects.filter(pk=first.pk).update(status="pending", replay=record)  # no outcome

    replays.run_replay(record, Delivery.objects.filter(event=event), canary_timeout=0.3)

    assert sent == []
    assert record.state == "stopped"
    assert "canary: 1 of 1 replayed deliveries had no outcome" in record.stopped_reason
    assert Delivery.objects.get(pk=second.pk).status == "failed"


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_a_replay_at_a_rate_stops_within_its_batch_when_someone_stops_it(monkeypatch):
    events = [failed_event() for _ in range(6)]  # 12 deliveries: one batch
    sent = stopped_after_the_first_publish(monkeypatch, "by ann")

    record = replay(Delivery.objects.filter(event__in=events), rate=1000)

    assert len(sent) == 1  # not the rest of the batch
    assert (record.state, record.stopped_reason, record.queued) == ("stopped", "by ann", 1)


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_a_replay_waiting_for_its_canary_ends_when_someone_stops_it(monkeypatch):
    event = failed_event()
    sent = stopped_after_the_first_publish(monkeypatch, "by ann")

    # No worker runs the canary: without the stop, it would wait the whole timeout.
    record = replay(Delivery.objects.filter(event=event), canary=1, canary_timeout=600)

    assert len(sent) == 1
    assert (record.state, record.stopped_reason) == ("stopped", "by ann")


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_a_replay_at_a_slow_rate_publishes_nothing_more_once_stopped_during_its_wait(
    monkeypatch,
):
    # At 0.2 per second the wait before the next delivery is 5 s: the stop comes during
    # it, and nothing more goes out after it.
    events = [failed_event() for _ in range(2)]
    sent: list[str] = []
    naps: list[float] = []

    def publish_all(envelope_list):
        sent.extend(spec["delivery"] for e in envelope_list for spec in e["listeners"])
        return ["task"]

    def nap(seconds):
        naps.append(seconds)
        Replay.objects.filter(state="running").update(state="stopped", stopped_reason="by ann")

    monkeypatch.setattr(replays, "publish_all", publish_all)
    monkeypatch.setattr(replays.time, "sleep", nap)
    monkeypatch.setattr(replays, "STOP_CHECK_INTERVAL", 0.05)  # the naps' longest

    record = replay(Delivery.objects.filter(event__in=events), rate=0.2)

    assert len(sent) == 1  # the first delivery alone, of the four
    assert all(seconds <= replays.STOP_CHECK_INTERVAL for seconds in naps)
    assert (record.state, record.stopped_reason) == ("stopped", "by ann")


# --- Clocks of other hosts ------------------------------------------------------------------


def test_outcomes_count_what_a_worker_whose_clock_is_behind_finished(monkeypatch):
    event = failed_event()
    record = Replay.objects.create(snapshot_at=timezone.now(), total=2)
    behind = record.snapshot_at - datetime.timedelta(seconds=5)  # the worker's clock
    for status, delivery in zip(("failed", "succeeded"), event.deliveries.all(), strict=True):
        Delivery.objects.filter(pk=delivery.pk).update(
            status=status, replay=record, finished_at=behind
        )

    assert replays._outcomes(record) == (1, 2)  # the failure rate sees them


def test_a_resumed_replay_task_does_not_take_again_what_it_queued_and_failed_again(monkeypatch):
    """Its worker died mid-replay; the task's message came back. A delivery it queued
    failed again on a worker whose clock is behind: finished "before" the snapshot."""
    from messagio.seals import seal_of
    from messagio.tasks import replay as replay_task

    event = failed_event()
    first, second = event.deliveries.order_by("pk")
    sent = published_deliveries(monkeypatch)
    record = Replay.objects.create(snapshot_at=timezone.now(), total=2, queued=1)
    Delivery.objects.filter(pk=first.pk).update(
        replay=record, finished_at=record.snapshot_at - datetime.timedelta(seconds=5)
    )  # still "failed": it failed again

    arguments = [record.pk, {"event_id": str(event.pk)}]
    replay_task.apply(args=(*arguments, seal_of(arguments)))

    assert sent == [str(second.pk)]


@override_settings(MESSAGIO={"STUCK_TIMEOUT": 600})
def test_a_replay_whose_worker_was_lost_is_sent_again_and_goes_on_where_it_was(monkeypatch):
    from messagio import tasks
    from messagio.seals import is_sealed

    event = failed_event()
    first, second = event.deliveries.order_by("pk")
    sent = published_deliveries(monkeypatch)
    lookups = {"event_id": str(event.pk)}
    # After the failures, its worker queued the first delivery, then was killed longer
    # than STUCK_TIMEOUT ago: its task's message is gone.
    long_ago = timezone.now() - datetime.timedelta(minutes=30)
    record = Replay.objects.create(  # killed before it wrote its count
        snapshot_at=long_ago, total=2, queued=0, delivery_filter=lookups, progress_at=long_ago
    )
    Delivery.objects.filter(pk=first.pk).update(status="pending", replay=record)
    resent = []
    monkeypatch.setattr(tasks.replay, "delay", lambda *args: resent.append(args))

    report = replays.take_over_lost()
    again = replays.take_over_lost()  # the next relay run: it has just been sent

    assert (report.resumed, again.resumed) == ([record.pk], [])
    ((replay_id, lookups_sent, seal),) = resent
    assert (replay_id, lookups_sent) == (record.pk, lookups)
    assert is_sealed([replay_id, lookups_sent], seal)
    tasks.replay.apply(args=resent[0])  # a worker runs it
    assert sent == [str(second.pk)]  # not the one it queued before
    record.refresh_from_db()
    assert (record.state, record.queued) == ("finished", 2)


def test_a_replay_whose_own_process_was_lost_is_recorded_stopped_saying_so(monkeypatch):
    long_ago = timezone.now() - datetime.timedelta(hours=2)
    lost = Replay.objects.create(total=10, queued=2, source="command", progress_at=long_ago)
    # It had queued a third before its process ended, not counted yet: one ran since.
    for delivery in failed_event().deliveries.all()[:1]:
        Attempt.objects.create(delivery=delivery, number=2, outcome="succeeded", replay=lost)
    for delivery in failed_event().deliveries.all():
        Delivery.objects.filter(pk=delivery.pk).update(status="pending", replay=lost)
    alive = Replay.objects.create(total=10, queued=4, source="command")
    alive_before_upgrade = Replay.objects.create(total=1, requested_at=timezone.now())

    report = replays.take_over_lost()

    assert report.stopped == [lost.pk]
    lost.refresh_from_db()
    assert lost.state == "stopped"
    assert "its process ended without finishing it" in lost.stopped_reason
    assert "queued 3 of 10; replay the rest again" in lost.stopped_reason
    assert lost.queued == 3
    assert Replay.objects.get(pk=alive.pk).state == "running"
    assert Replay.objects.get(pk=alive_before_upgrade.pk).state == "running"


def test_a_replay_waiting_on_its_canary_shows_progress(monkeypatch):
    record = Replay.objects.create(total=1, progress_at=timezone.now() - datetime.timedelta(1))
    monkeypatch.setattr(replays, "PROGRESS_INTERVAL", 0.0)
    monkeypatch.setattr(replays, "STOP_CHECK_INTERVAL", 0.0)

    assert not replays._StopLookout(record).stopped()

    record.refresh_from_db()
    assert timezone.now() - record.progress_at < datetime.timedelta(minutes=1)


@pytest.mark.django_db(transaction=True)
def test_a_replay_in_a_transaction_runs_as_it_commits_and_not_if_it_rolls_back(monkeypatch):
    from django.db import transaction

    event = failed_event()
    sent = published_deliveries(monkeypatch)

    with transaction.atomic():
        record = replay(event.deliveries.order_by("pk").first())
        # A worker given its message now would wait on this transaction: nothing sent yet.
        assert (sent, record.state, record.queued) == ([], "running", 0)
    assert len(sent) == 1
    assert Replay.objects.get(pk=record.pk).state == "finished"

    with pytest.raises(RuntimeError), transaction.atomic():
        replay(event.deliveries.order_by("pk").last())
        raise RuntimeError("the request fails after it")
    assert len(sent) == 1
    assert Replay.objects.count() == 1


@pytest.mark.parametrize("stuck_timeout, every", [(3600, 60.0), (8, 2.0)])
def test_a_waiting_replay_shows_progress_well_within_stuck_timeout(stuck_timeout, every):
    # The relay takes a replay with no progress for STUCK_TIMEOUT for one whose process
    # was lost: a live one never goes that long without writing some.
    with override_settings(MESSAGIO={"STUCK_TIMEOUT": stuck_timeout}):
        assert replays.progress_interval() == every


def test_a_copy_of_a_replay_task_leaves_the_replay_to_the_run_showing_progress(monkeypatch):
    from messagio import tasks
    from messagio.seals import seal_of

    event = failed_event()
    sent = published_deliveries(monkeypatch)
    lookups = {"event_id": str(event.pk)}
    record = Replay.objects.create(
        total=2, canary=1, delivery_filter=lookups, runner="a-live-run", progress_at=timezone.now()
    )

    arguments = [record.pk, lookups]
    tasks.replay.apply(args=(*arguments, seal_of(arguments)))

    assert sent == []  # not a second canary, nor anything else
    assert Replay.objects.get(pk=record.pk).runner == "a-live-run"


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_replay_another_run_took_over_ends(monkeypatch):
    event = failed_event()
    sent = published_deliveries(monkeypatch)
    record = Replay.objects.create(total=2, runner="this-run", snapshot_at=timezone.now())
    original_take = replays._take

    def taken_over_after_the_first(event_id, deliveries, replay):
        took = original_take(event_id, deliveries, replay)
        Replay.objects.filter(pk=replay.pk).update(runner="the-relays-copy")
        return took

    monkeypatch.setattr(replays, "_take", taken_over_after_the_first)
    replays.run_replay(record, event.deliveries.order_by("pk"), batch_size=1)

    assert len(sent) == 1
    assert Replay.objects.get(pk=record.pk).state == "running"  # the other run's to end


def test_a_replay_whose_task_no_run_takes_up_is_stopped_after_a_few_resends(monkeypatch):
    from messagio import tasks

    long_ago = timezone.now() - datetime.timedelta(hours=2)
    record = Replay.objects.create(
        total=5, delivery_filter={"status": "failed"}, progress_at=long_ago, times_resent=3
    )
    monkeypatch.setattr(tasks.replay, "delay", lambda *args: pytest.fail("sent again"))

    report = replays.take_over_lost()

    assert report.stopped == [record.pk]
    record.refresh_from_db()
    assert record.state == "stopped"
    assert "its task was sent to a worker 4 times" in record.stopped_reason
    assert "check that SECRET_KEY / SIGNING_KEY match" in record.stopped_reason


@pytest.mark.django_db(transaction=True)
def test_an_error_taking_a_delivery_leaves_its_envelope_as_it_was_and_says_why(monkeypatch):
    from django.db import OperationalError

    event = failed_event()
    Delivery.objects.filter(event=event).update(priority=5)  # one group, one envelope
    sent = published_deliveries(monkeypatch)
    original_take = replays._take

    def locked_once_taken(event_id, deliveries, record):
        assert len(original_take(event_id, deliveries, record)) == 2
        raise OperationalError("database is locked")  # the envelope's transaction fails

    monkeypatch.setattr(replays, "_take", locked_once_taken)
    with pytest.raises(OperationalError):
        replay(event)

    assert sent == []
    assert set(event.deliveries.values_list("status", flat=True)) == {"failed"}
    record = Replay.objects.get()
    assert record.state == "stopped"
    assert "failed (OperationalError('database is locked'))" in record.stopped_reason


@pytest.mark.django_db(transaction=True)
def test_a_batch_writes_its_count_as_it_goes(monkeypatch):
    events = [failed_event() for _ in range(3)]  # three envelopes in one batch
    Delivery.objects.filter(event__in=events, position=1).delete()
    counts_seen = []

    def publish_all(envelope_list):
        counts_seen.append(Replay.objects.get().queued)
        return ["task"] * len(envelope_list)

    monkeypatch.setattr(replays, "publish_all", publish_all)
    monkeypatch.setattr(replays, "COUNT_INTERVAL", 0.0)

    record = replay(Delivery.objects.filter(event__in=events))

    assert counts_seen == [0, 1, 2]  # a run cut short here leaves its count near the truth
    assert Replay.objects.get(pk=record.pk).queued == 3


def test_a_replay_task_that_fails_before_it_runs_is_recorded_stopped_not_resent(monkeypatch):
    from messagio import tasks
    from messagio.seals import seal_of

    record = Replay.objects.create(total=1, delivery_filter={"no_such_field": 1})
    arguments = [record.pk, record.delivery_filter]

    result = tasks.replay.apply(args=(*arguments, seal_of(arguments)))

    assert result.failed()  # a filter an upgrade made invalid
    record.refresh_from_db()
    assert record.state == "stopped"
    assert "failed (FieldError(" in record.stopped_reason


@pytest.mark.django_db(transaction=True)
def test_a_run_taken_over_mid_batch_ends_and_its_count_leaves_the_other_runs(
    monkeypatch,
):
    events, record = a_run_over(3)
    monkeypatch.setattr(replays, "COUNT_INTERVAL", 0.0)
    sent = []

    def publish_all(envelope_list):
        sent.extend(envelope_list)
        if len(sent) == 1:  # the relay gave this run up; another copy took it over
            Replay.objects.filter(pk=record.pk).update(runner="the-relays-copy", queued=7)
        if len(sent) == 2:
            raise ConnectionResetError("broker connection lost")
        return ["task"] * len(envelope_list)

    monkeypatch.setattr(replays, "publish_all", publish_all)
    replays.run_replay(record, Delivery.objects.filter(event__in=events), batch_size=10)

    assert len(sent) == 1  # it ended at its next count, before a second publish
    record.refresh_from_db()
    assert (record.state, record.runner, record.queued) == ("running", "the-relays-copy", 7)


@pytest.mark.django_db(transaction=True)
@override_settings(CELERY_TASK_ALWAYS_EAGER=True)
def test_an_eager_replay_runs_its_listeners_after_its_transaction(monkeypatch):
    from django.db import connection

    from messagio import tasks

    event = failed_event()
    in_transaction = []
    assert tasks.deliver.app.conf.task_always_eager  # read from Django's settings

    def publish_all(envelope_list):
        in_transaction.append(connection.in_atomic_block)  # where a listener would run
        return ["task"] * len(envelope_list)

    monkeypatch.setattr(replays, "publish_all", publish_all)
    replay(event)

    assert in_transaction and not any(in_transaction)


def test_a_replay_whose_every_run_dies_before_queueing_is_stopped_after_a_few_resends(
    monkeypatch,
):
    from messagio import tasks

    event = failed_event()
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    record = Replay.objects.create(
        total=2, delivery_filter={"event_id": str(event.pk)}, progress_at=long_ago
    )
    resent = []
    monkeypatch.setattr(tasks.replay, "delay", lambda *args: resent.append(args))
    monkeypatch.setattr(replays, "run_replay", lambda *args, **kwargs: None)  # dies in it
    for _ in range(replays.RESENDS_AT_MOST + 1):
        replays.take_over_lost()
        if Replay.objects.get(pk=record.pk).state != "running":
            break
        tasks.replay.apply(args=resent[-1])  # a copy takes it up, and its worker dies
        Replay.objects.filter(pk=record.pk).update(progress_at=long_ago)  # and time passes

    record.refresh_from_db()
    assert record.state == "stopped"
    assert len(resent) == replays.RESENDS_AT_MOST


def a_replay_lost_after_its_canary() -> tuple[Replay, list[Any], dict]:
    """A replay of 10 deliveries with a canary of 2, its worker lost after the canary went
    out: the replay, its deliveries' ids by pk, and the lookups of its task."""
    events = [failed_event() for _ in range(5)]
    ids = list(
        Delivery.objects.filter(event__in=events).order_by("pk").values_list("pk", flat=True)
    )
    lookups = {"event_id__in": [str(e.pk) for e in events]}
    before = timezone.now() - datetime.timedelta(minutes=5)
    record = Replay.objects.create(
        total=10, canary=2, delivery_filter=lookups, snapshot_at=before, progress_at=before
    )
    return record, ids, lookups


def resume(record: Replay, lookups: dict) -> Replay:
    """Run its task, as the copy the relay sends."""
    from messagio import tasks
    from messagio.seals import seal_of

    arguments = [record.pk, lookups]
    tasks.replay.apply(args=(*arguments, seal_of(arguments)))
    record.refresh_from_db()
    return record


def test_a_resumed_replay_judges_its_canary_on_the_canary_alone(monkeypatch):
    """The canary (2) passed, 3 more went out and failed again, then the worker was lost:
    the resumed copy does not take the 3 for a canary that failed."""
    record, ids, lookups = a_replay_lost_after_its_canary()
    later = timezone.now()
    Delivery.objects.filter(pk__in=ids[:2]).update(
        replay=record, status="succeeded", finished_at=later
    )
    Delivery.objects.filter(pk__in=ids[2:5]).update(
        replay=record, status="failed", finished_at=later
    )
    sent = published_deliveries(monkeypatch)

    resume(record, lookups)

    assert not record.stopped_reason.startswith("canary")
    assert len(sent) == 5  # the rest
    assert (record.state, record.queued) == ("finished", 10)


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGIO={"STUCK_TIMEOUT": 600})
def test_a_run_the_relay_took_for_lost_ends_and_counts_nothing_more(monkeypatch):
    events = [failed_event() for _ in range(3)]
    Delivery.objects.filter(event__in=events, position=1).delete()
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    record = Replay.objects.create(
        total=3, runner="this-run", snapshot_at=long_ago, progress_at=long_ago
    )
    monkeypatch.setattr(replays, "COUNT_INTERVAL", 0.0)
    sent = []

    def publish_all(envelope_list):
        sent.extend(envelope_list)
        if len(sent) == 1:
            assert replays.take_over_lost().stopped == [record.pk]  # slow, taken for lost
        return ["task"] * len(envelope_list)

    monkeypatch.setattr(replays, "publish_all", publish_all)
    replays.run_replay(record, Delivery.objects.filter(event__in=events), batch_size=10)

    record.refresh_from_db()
    assert len(sent) == 1  # it ended at its next count
    assert (record.state, record.queued) == ("stopped", 1)


@pytest.mark.django_db(transaction=True)
def test_a_stop_in_a_run_taken_over_leaves_the_other_runs_replay(monkeypatch):
    events, record = a_run_over(2)
    sent = []

    def publish_all(envelope_list):
        sent.extend(envelope_list)
        if len(sent) == 1:  # committed with this envelope: taken over
            Replay.objects.filter(pk=record.pk).update(runner="the-relays-copy", queued=7)
            return ["task"]
        raise ConnectionResetError("broker connection lost")

    monkeypatch.setattr(replays, "publish_all", publish_all)
    replays.run_replay(record, Delivery.objects.filter(event__in=events), batch_size=10)

    assert len(sent) == 2  # its stop was reached
    record.refresh_from_db()
    assert (record.state, record.runner, record.queued) == ("running", "the-relays-copy", 7)


def resumed_with_its_canary_taken_by_a_later_replay(canary_outcome: str, monkeypatch):
    """Its canary ran under it, the canary's deliveries since taken by a later replay
    (which made them succeed), its worker lost: the task sent again resumes it."""
    record, ids, lookups = a_replay_lost_after_its_canary()
    for pk in ids[:2]:
        Attempt.objects.create(delivery_id=pk, number=2, outcome=canary_outcome, replay=record)
    later = Replay.objects.create(total=2, state="finished")
    Delivery.objects.filter(pk__in=ids[:2]).update(
        replay=later, status="succeeded", finished_at=timezone.now()
    )
    sent = published_deliveries(monkeypatch)
    return resume(record, lookups), sent


def test_a_resumed_replay_whose_canary_failed_under_it_stops_whatever_came_after(monkeypatch):
    record, sent = resumed_with_its_canary_taken_by_a_later_replay("failed", monkeypatch)

    assert sent == []
    assert record.state == "stopped"
    assert record.stopped_reason.startswith("canary: 2 of 2 replayed deliveries failed again")


def test_a_resumed_replay_whose_canary_passed_under_it_goes_on(monkeypatch):
    record, sent = resumed_with_its_canary_taken_by_a_later_replay("succeeded", monkeypatch)

    assert len(sent) == 8
    assert record.state == "finished"


@pytest.mark.django_db(transaction=True)
def test_a_replay_stopped_from_the_admin_mid_batch_counts_all_it_queued(monkeypatch, admin_client):
    events, record = a_run_over(3)
    sent = []

    def publish_all(envelope_list):
        sent.extend(envelope_list)
        if len(sent) == 1:
            admin_client.post(f"/admin/messagio/replay/{record.pk}/stop/")
        return ["task"] * len(envelope_list)

    monkeypatch.setattr(replays, "publish_all", publish_all)
    replays.run_replay(record, Delivery.objects.filter(event__in=events), batch_size=10)

    record.refresh_from_db()
    assert record.state == "stopped"
    assert record.queued == replays.queued_so_far(record) == len(sent)
