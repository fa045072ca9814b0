"""What recovery publishes again, and what it leaves alone (the broker is captured here;
tests/integration/test_crash.py and test_lost_messages.py run it against real workers)."""

import datetime
import io
import logging

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from messagio import records
from messagio.exceptions import WorkerLostTooOftenError
from messagio.models import Attempt, Delivery, Event, Replay
from messagio.recovery import requeue, requeue_lost
from messagio.registry import registry
from messagio.signals import delivery_failed
from tests.testapp.messagio import Ping

pytestmark = pytest.mark.django_db

PING = Ping.get_name()


@pytest.fixture
def published(monkeypatch):
    """The listeners of each envelope recovery publishes, by delivery id."""
    sent: list[list[str]] = []

    def publish_all(envelope_list):
        sent.extend([spec["delivery"] for spec in e["listeners"]] for e in envelope_list)
        return ["task"] * len(envelope_list)

    monkeypatch.setattr(records, "publish_all", publish_all)
    return sent


def hours_ago(hours: float) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(hours=hours)


def event_with(
    *rows: tuple[str, int], priority: int = 5, at=None, state: str = "published"
) -> tuple[Event, list]:
    """A published Ping event (or as ``state`` says) and its deliveries: (status, attempts)
    at positions 0, 1, ..."""
    at = at or hours_ago(2)
    event = Event.objects.create(
        messagio_type=PING, fired_at=at, published_at=at if state == "published" else None,
        state=state, payload=b"x", listener_count=len(registry.subscriptions_for(Ping)),
        claimed_at=at if state == "inline" else None,  # by its in-process run
    )  # fmt: skip
    listeners = [s.listener_id for s in registry.subscriptions_for(Ping)]
    deliveries = [
        Delivery.objects.create(
            event=event,
            position=position,
            messagio_type=PING,
            listener=listeners[position],
            status=status,
            attempts=attempts,
            priority=priority,
            started_at=at if status != "pending" else None,
        )  # fmt: skip
        for position, (status, attempts) in enumerate(rows)
    ]
    return event, deliveries


def test_a_first_attempt_requeued_takes_the_pending_listeners_after_it_in_its_group(
    published, caplog
):
    event, (done, dead, after) = event_with(("succeeded", 1), ("running", 1), ("pending", 0))
    elsewhere = Delivery.objects.create(
        event=event, position=3, messagio_type=PING, listener="other", priority=9
    )

    with caplog.at_level(logging.WARNING, logger="messagio"):
        assert requeue(Delivery.objects.filter(pk=dead.pk), "test") == 1

    assert published == [[str(dead.pk), str(after.pk)]]
    assert str(elsewhere.pk) not in sum(published, [])
    assert "requeued 1 delivery(ies), with 1 pending after them" in caplog.text


def test_a_delivery_another_worker_claims_meanwhile_is_not_requeued(published, monkeypatch):
    # RabbitMQ hands a dead worker's message to another worker at once: that worker may
    # claim the delivery (running again, one more attempt) while a requeue reads it.
    from messagio import recovery

    event, (dead, after) = event_with(("running", 1), ("pending", 0))
    Delivery.objects.filter(pk=dead.pk).update(task_id="its-task")
    mark = recovery.mark_published_again

    def mark_then_claim_elsewhere(event_ids):  # runs between the requeue's read and take
        mark(event_ids)
        records.claim(str(dead.pk), "its-task", "other@host")  # its message, delivered again

    monkeypatch.setattr(recovery, "mark_published_again", mark_then_claim_elsewhere)

    assert requeue(Delivery.objects.filter(pk=dead.pk), "test") == 0

    assert published == []
    dead.refresh_from_db()
    assert (dead.status, dead.attempts, dead.worker) == ("running", 2, "other@host")
    assert [a.outcome for a in dead.history.all()] == ["lost"]  # the claim's, not the requeue's


@pytest.mark.parametrize("replayed", [False, True], ids=["retry", "replay"])
def test_a_later_attempt_requeued_takes_the_pending_listeners_after_it_along(published, replayed):
    # The message it is taken from (a replay's, an earlier requeue's) runs nothing more once
    # its attempt is taken over; what else carries them (the group's message, for a retry)
    # finds them finished or held, and each runs once.
    _, (retried, after) = event_with(("running", 2), ("pending", 0))
    if replayed:
        record = Replay.objects.create(state=Replay.State.RUNNING)
        Delivery.objects.filter(pk__in=[retried.pk, after.pk]).update(replay=record)

    requeue(Delivery.objects.filter(pk=retried.pk), "test")

    assert published == [[str(retried.pk), str(after.pk)]]


def test_a_retry_requeued_leaves_the_listeners_after_it_to_the_message_walking_its_group(
    published,
):
    # The broker refused its retry; its group's message went on and runs the next one.
    _, (retried, running, after) = event_with(("retrying", 1), ("running", 1), ("pending", 0))
    Delivery.objects.filter(pk=running.pk).update(started_at=timezone.now())

    requeue(Delivery.objects.filter(pk=retried.pk), "test")

    assert published == [[str(retried.pk)]]


def test_a_retry_running_before_the_delivery_requeued_leaves_it_the_listeners_after_it(
    published,
):
    # The retry of the first travels alone: the pending listeners after the one its group's
    # message died in are the requeue's to take, or no message would ever run them.
    _, (retrying, dead, *after) = event_with(
        ("running", 2), ("running", 1), ("pending", 0), ("pending", 0)
    )
    Attempt.objects.create(delivery=retrying, number=1, outcome=Attempt.Outcome.RETRIED)

    requeue(Delivery.objects.filter(pk=dead.pk), "test")

    assert published == [[str(dead.pk), *(str(d.pk) for d in after)]]


def test_a_requeued_retry_running_before_the_delivery_requeued_leaves_it_the_listeners_after(
    published,
):
    # The retry was requeued as lost since (its last attempt): it still travels alone.
    _, (retry, dead, after) = event_with(("running", 3), ("running", 1), ("pending", 0))
    Attempt.objects.create(delivery=retry, number=1, outcome=Attempt.Outcome.RETRIED)
    Attempt.objects.create(delivery=retry, number=2, outcome=Attempt.Outcome.LOST)

    requeue(Delivery.objects.filter(pk=dead.pk), "test")

    assert published == [[str(dead.pk), str(after.pk)]]


def test_a_replay_running_in_an_in_process_run_leaves_it_the_listeners_after_one_requeued(
    published,
):
    # The replay's message carries its own delivery only.
    _, (replayed, dead, after) = event_with(
        ("running", 2), ("running", 1), ("pending", 0), state="inline"
    )
    record = Replay.objects.create(state=Replay.State.RUNNING)
    Delivery.objects.filter(pk=replayed.pk).update(replay=record)

    requeue(Delivery.objects.filter(pk=dead.pk), "test")

    assert published == [[str(dead.pk), str(after.pk)]]


def test_what_waits_for_a_lost_message_is_published_again_once(published):
    event, (done, waiting) = event_with(("succeeded", 1), ("pending", 0))

    report = requeue_lost(3600)
    again = requeue_lost(3600)

    assert (report.events, report.deliveries) == (1, 1 + event.listener_count - 2)
    assert published[0][0] == str(waiting.pk)
    assert event.deliveries.count() == event.listener_count  # the unwritten ones written
    assert (again.events, len(published)) == (0, 1)


def test_an_event_a_worker_is_running_is_not_lost(published):
    event_with(("running", 1), ("pending", 0))

    assert requeue_lost(3600).events == 0
    assert published == []


def test_what_a_requeue_published_since_is_not_lost(published):
    _, (dead, after) = event_with(("running", 1), ("pending", 0))
    requeue(Delivery.objects.filter(pk=dead.pk), "test")

    assert requeue_lost(3600).events == 0
    assert len(published) == 1


def test_an_event_whose_written_listeners_are_not_the_registrys_is_reported(published):
    event, (first, _) = event_with(("succeeded", 1), ("pending", 0))
    Delivery.objects.filter(pk=first.pk).update(listener="tests.testapp.messagio.gone")

    report = requeue_lost(3600)

    assert "its listener 1 was tests.testapp.messagio.gone" in report.skipped[str(event.pk)]
    assert published == []
    assert Event.objects.get(pk=event.pk).published_at == event.published_at


def test_a_broker_that_refuses_stops_it_and_leaves_the_event_as_it_was(monkeypatch):
    def refuse(envelope_list):
        raise ConnectionError("broker down")

    monkeypatch.setattr(records, "publish_all", refuse)
    event, _ = event_with(("pending", 0), ("pending", 0))

    report = requeue_lost(3600)

    assert "broker down" in report.error
    assert report.events == 0
    assert Event.objects.get(pk=event.pk).published_at == event.published_at


def test_what_a_replay_that_died_left_pending_is_lost_like_the_rest(published):
    event, (waiting,) = event_with(("pending", 1))
    Event.objects.filter(pk=event.pk).update(listener_count=1)  # its only delivery
    replay = Replay.objects.create(state=Replay.State.RUNNING)  # its process was killed
    Delivery.objects.filter(pk=waiting.pk).update(replay=replay)

    assert requeue_lost(3600).events == 1
    assert published == [[str(waiting.pk)]]


def test_a_broker_that_refuses_after_a_first_group_leaves_the_event_taken(monkeypatch):
    sent = []

    def refuse_the_second(envelope_list):
        if sent:
            raise ConnectionError("broker down")
        sent.extend(envelope_list)
        return ["task"]

    monkeypatch.setattr(records, "publish_all", refuse_the_second)
    event, (first, _) = event_with(("pending", 0), ("pending", 0))
    Delivery.objects.filter(pk=first.pk).update(priority=9)  # a group of its own

    report = requeue_lost(3600)

    assert "broker down" in report.error
    assert len(sent) == 1
    # What went out must not go out again at once: the event stays published now.
    assert Event.objects.get(pk=event.pk).published_at > event.published_at


def lost_before(delivery: Delivery, count: int, replay=None) -> None:
    """``count`` attempts of ``delivery`` lost with their worker, numbered from 1."""
    for number in range(1, count + 1):
        Attempt.objects.create(delivery=delivery, number=number, outcome="lost", replay=replay)


@pytest.fixture
def failures():
    """What delivery_failed is sent with, meanwhile."""
    sent: list[dict] = []

    def receiver(**kwargs):
        sent.append(kwargs)

    delivery_failed.connect(receiver)
    yield sent
    delivery_failed.disconnect(receiver)


@override_settings(MESSAGIO={"MAX_LOST_ATTEMPTS": 1})
def test_a_delivery_whose_worker_is_lost_too_often_is_failed_and_its_followers_go_on(
    published, failures, caplog
):
    # A listener that kills every worker it runs on (out of memory, a crash in native code)
    # would otherwise be requeued and kill the next worker, for ever.
    _, (dead, after) = event_with(("running", 1), ("pending", 0))

    with caplog.at_level(logging.ERROR, logger="messagio"):
        assert requeue(Delivery.objects.filter(pk=dead.pk), "test") == 0

    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == ("failed", 2)
    assert dead.error_type == "messagio.exceptions.WorkerLostTooOftenError"
    assert "lost 1 times" in dead.error
    assert list(dead.history.order_by("number").values_list("number", "outcome")) == [
        (1, "lost"),
        (2, "failed"),
    ]
    # Its first attempt ran from its group's message: the listener after it goes, as it would
    # have with it.
    assert published == [[str(after.pk)]]
    assert "MAX_LOST_ATTEMPTS" in caplog.text
    assert isinstance(failures[-1]["exception"], WorkerLostTooOftenError)
    assert failures[-1]["delivery_id"] == str(dead.pk)
    assert failures[-1]["messagio"] is None  # the relay loads no payload
    assert failures[-1]["sender"] is Ping  # its type, for receivers of one type


def test_a_worker_presumed_dead_that_finishes_late_finds_its_attempt_taken_over(published):
    _, (dead,) = event_with(("running", 3))
    lost_before(dead, 2)

    assert requeue(Delivery.objects.filter(pk=dead.pk), "test") == 0

    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == ("failed", 4)
    assert [a.outcome for a in dead.history.order_by("number")] == ["lost"] * 3 + ["failed"]
    assert published == []
    with pytest.raises(records.AttemptTakenOverError):
        records.finish(str(dead.pk), 3, timezone.now(), 1.0)
    assert dead.history.count() == 4


def test_lost_attempts_of_an_earlier_replay_do_not_count(published):
    _, (dead,) = event_with(("running", 3))
    lost_before(dead, 2, replay=Replay.objects.create(state=Replay.State.FINISHED))

    assert requeue(Delivery.objects.filter(pk=dead.pk), "test") == 1

    dead.refresh_from_db()
    assert dead.status == "pending"


@override_settings(MESSAGIO={"MAX_LOST_ATTEMPTS": None})
def test_no_limit_to_lost_attempts_when_the_setting_is_none(published):
    _, (dead,) = event_with(("running", 9))
    lost_before(dead, 8)

    assert requeue(Delivery.objects.filter(pk=dead.pk), "test") == 1


def test_a_redelivered_message_whose_listener_lost_its_worker_too_often_does_not_run_it():
    # Celery hands the message of a killed pool process back (task_reject_on_worker_lost):
    # the claim of the third copy records the lost attempt and fails the delivery.
    _, (dead,) = event_with(("running", 3))
    Delivery.objects.filter(pk=dead.pk).update(task_id="its-task")
    lost_before(dead, 2)

    claimed = records.claim(str(dead.pk), "its-task", "worker@host")

    assert claimed.run is False
    assert isinstance(claimed.lost_too_often, WorkerLostTooOftenError)
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == ("failed", 4)
    assert dead.error_type == "messagio.exceptions.WorkerLostTooOftenError"
    assert list(dead.history.order_by("number").values_list("number", "outcome")) == [
        (1, "lost"),
        (2, "lost"),
        (3, "lost"),
        (4, "failed"),
    ]
    # Below the limit, the claim runs it again.
    _, (once,) = event_with(("running", 1))
    Delivery.objects.filter(pk=once.pk).update(task_id="its-task")
    assert records.claim(str(once.pk), "its-task", "worker@host").run is True


def test_the_relay_requeues_the_oldest_stuck_deliveries_a_batch_at_a_time(published):
    from messagio.recovery import requeue_stuck

    stuck = [event_with(("running", 1), at=hours_ago(hours))[1][0] for hours in (5, 3, 4)]

    assert requeue_stuck(limit=2) == 2

    assert sorted(sum(published, [])) == sorted([str(stuck[0].pk), str(stuck[2].pk)])
    assert Delivery.objects.get(pk=stuck[1].pk).status == "running"  # for the next run
    assert requeue_stuck(limit=2) == 1


def test_the_relay_command_says_how_many_stuck_deliveries_it_queued_again(published):
    event_with(("running", 1), at=hours_ago(5))
    out = io.StringIO()

    call_command("messagio_relay", stdout=out)

    assert "Queued again 1 delivery(ies) stuck running or retrying." in out.getvalue()
    assert len(published) == 1


def test_a_stuck_delivery_that_finishes_before_its_requeue_reads_it_is_left_alone(
    published, monkeypatch
):
    from messagio import recovery

    event, (stuck,) = event_with(("running", 1), at=hours_ago(5))
    original = recovery.requeue

    def finishes_first(deliveries, why):
        Delivery.objects.filter(pk=stuck.pk).update(status="succeeded")
        return original(deliveries, why)

    monkeypatch.setattr(recovery, "requeue", finishes_first)

    assert recovery.requeue_stuck() == 0

    assert published == []
    assert Delivery.objects.get(pk=stuck.pk).status == "succeeded"


def test_refused_retries_that_are_due_are_requeued_behind_any_number_not_due(published):
    from messagio.recovery import requeue_stuck

    def refused_retry(finished_hours_ago: float, delay: float) -> Delivery:
        _, (delivery,) = event_with(("retrying", 1), at=hours_ago(finished_hours_ago))
        Delivery.objects.filter(pk=delivery.pk).update(
            task_id=records.RETRY_NOT_SENT,
            finished_at=hours_ago(finished_hours_ago),
            retry_delay=delay,
        )
        return delivery

    # Three waiting a day, written first and finished longest ago: a read of the first
    # two unsent retries would have found none due.
    for _ in range(3):
        refused_retry(0.5, delay=86_400)
    due = refused_retry(0.1, delay=60)

    assert requeue_stuck(timeout=86_400 * 30, limit=2) == 1

    assert published == [[str(due.pk)]]


def test_a_requeued_retry_goes_on_with_the_retries_it_was_given(monkeypatch):
    """A retry stuck (or refused by the broker) and requeued counts the retries made before
    it, in its replay: max_retries is not granted afresh by a requeue."""
    sent: list[dict] = []
    monkeypatch.setattr(
        records, "publish_all", lambda envelopes: sent.extend(envelopes) or ["task"]
    )
    earlier = Replay.objects.create(state=Replay.State.FINISHED, snapshot_at=hours_ago(3))
    _, (retrying, fresh) = event_with(("retrying", 3), ("retrying", 1))
    for number, outcome, replay in [
        (1, "retried", earlier),  # an earlier replay's chain: not this one's
        (2, "lost", None),  # its worker died: no retry given
        (3, "retried", None),
    ]:
        Attempt.objects.create(delivery=retrying, number=number, outcome=outcome, replay=replay)
    Attempt.objects.create(delivery=fresh, number=1, outcome="retried")

    assert requeue(Delivery.objects.filter(pk__in=[retrying.pk, fresh.pk]), "test") == 2

    attempts = {spec["delivery"]: spec["attempt"] for e in sent for spec in e["listeners"]}
    assert attempts == {str(retrying.pk): 2, str(fresh.pk): 2}


# --- What an in-process run (a sync fire) left ---------------------------------------------


def test_the_relay_publishes_what_an_in_process_run_left_pending_once(published):
    from messagio.recovery import requeue_stuck

    # Its process died after the first listener (or the on_commit that was to run it never
    # did): no message carries the others.
    event, (done, left, other) = event_with(
        ("succeeded", 1), ("pending", 0), ("pending", 0), state="inline"
    )
    Delivery.objects.filter(pk=other.pk).update(priority=1)  # another group: it goes too

    assert requeue_stuck() == 2
    assert requeue_stuck() == 0  # published since: not taken twice while it waits

    assert sorted(sum(published, [])) == sorted([str(left.pk), str(other.pk)])
    assert str(done.pk) not in sum(published, [])
    # The claim ends once a worker ran them, and STUCK_TIMEOUT passed.
    assert Event.objects.get(pk=event.pk).claimed_at is not None
    Delivery.objects.filter(pk__in=[left.pk, other.pk]).update(
        status="succeeded", started_at=hours_ago(1.5), finished_at=hours_ago(1.5)
    )
    Event.objects.filter(pk=event.pk).update(published_at=hours_ago(1.5))
    requeue_stuck()
    assert Event.objects.get(pk=event.pk).claimed_at is None


def test_the_claim_of_an_in_process_run_that_ended_with_nothing_left_just_ends(published):
    from messagio.recovery import requeue_stuck

    # Its listeners all ran; the statement that was to end its claim did not.
    event, _ = event_with(("succeeded", 1), ("failed", 1), state="inline")

    assert requeue_stuck() == 0

    assert published == []
    assert Event.objects.get(pk=event.pk).claimed_at is None


@pytest.mark.parametrize(
    ("rows", "fired"),
    [
        ((("running", 1), ("pending", 0)), 2),  # its run goes on (requeued once stuck)
        ((("succeeded", 1), ("pending", 0)), 0.1),  # fired within STUCK_TIMEOUT
        ((("succeeded", 1), ("pending", 0)), 2),  # ...but its last listener ended lately
    ],
    ids=["a-listener-of-it-running", "fired-recently", "a-listener-of-it-ended-lately"],
)
def test_the_relay_leaves_an_in_process_run_that_may_go_on(published, rows, fired):
    from messagio.recovery import requeue_stuck

    event, deliveries = event_with(*rows, state="inline", at=hours_ago(fired))
    Delivery.objects.filter(status="running").update(started_at=timezone.now())
    # A run longer than STUCK_TIMEOUT in all, between two of its listeners.
    Delivery.objects.filter(status="succeeded").update(finished_at=timezone.now())

    assert requeue_stuck() == 0
    assert published == []


def test_a_stuck_in_process_run_is_requeued_with_every_listener_after_it(published):
    event, (stuck, same, other) = event_with(
        ("running", 1), ("pending", 0), ("pending", 0), state="inline"
    )
    Delivery.objects.filter(pk=other.pk).update(priority=1)

    assert requeue(Delivery.objects.filter(pk=stuck.pk), "test") == 1

    # One run of all its listeners: the ones after it in any group are carried by nothing.
    assert sorted(sum(published, [])) == sorted([str(stuck.pk), str(same.pk), str(other.pk)])


def test_the_upgrade_claims_the_in_process_runs_that_left_deliveries_pending():
    import importlib

    from django.apps import apps
    from django.db import connection

    migration = importlib.import_module("messagio.migrations.0009_events_claimed_in_process")
    stranded, _ = event_with(("succeeded", 1), ("pending", 0), state="inline")
    finished, _ = event_with(("succeeded", 1), state="inline")
    Event.objects.update(claimed_at=None)  # as recorded before the claims

    migration.claim_unfinished_runs(apps, type("Editor", (), {"connection": connection})())

    stranded.refresh_from_db()
    assert stranded.claimed_at == stranded.fired_at  # the relay's, once STUCK_TIMEOUT passed
    assert Event.objects.get(pk=finished.pk).claimed_at is None


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_a_replay_of_an_in_process_run_whose_message_was_lost_is_published_again(
    published, monkeypatch
):
    import messagio
    from messagio import replays
    from messagio.recovery import may_be_lost

    monkeypatch.setattr(replays, "publish_all", records.publish_all)  # the captured one
    event, (failed,) = event_with(("failed", 1), state="inline")
    Event.objects.filter(pk=event.pk).update(listener_count=1, claimed_at=None)  # run ended
    messagio.replay(Delivery.objects.get(pk=failed.pk))  # its message lost on the way
    assert published == [[str(failed.pk)]]
    event = Event.objects.get(pk=event.pk)

    assert may_be_lost(event, list(event.deliveries.all()), 0)  # the admin offers it
    assert requeue_lost(0).events == 1
    assert published == [[str(failed.pk)]] * 2


def test_an_in_process_run_still_claimed_is_not_taken_for_lost(published):
    event, _ = event_with(("succeeded", 1), ("pending", 0), state="inline")
    Event.objects.filter(pk=event.pk).update(published_at=hours_ago(1))  # a replay of one

    assert requeue_lost(0).events == 0
    assert published == []


@pytest.mark.django_db(transaction=True)
@override_settings(CELERY_TASK_ALWAYS_EAGER=True)
def test_an_eager_requeue_runs_its_listeners_after_its_transaction(monkeypatch):
    from django.db import connection

    in_transaction = []

    def publish_all(envelope_list):
        in_transaction.append(connection.in_atomic_block)  # where a listener would run
        return ["task"] * len(envelope_list)

    monkeypatch.setattr(records, "publish_all", publish_all)
    _, (dead, _) = event_with(("running", 1), ("pending", 0))

    assert requeue(Delivery.objects.filter(pk=dead.pk), "test") == 1
    assert in_transaction == [False]


# Replays beside a requeue: each replay's message carries its own deliveries only.


@pytest.fixture
def broker(monkeypatch):
    """Every envelope replays and requeues publish, with a task id of its own, in order."""
    from messagio import replays

    sent: list[tuple[str, dict]] = []

    def publish_all(envelope_list):
        ids = []
        for envelope in envelope_list:
            ids.append(f"task-{len(sent)}")
            sent.append((ids[-1], envelope))
        return ids

    monkeypatch.setattr(records, "publish_all", publish_all)
    monkeypatch.setattr(replays, "publish_all", publish_all)
    return sent


def ran_through(statuses: list[str]) -> tuple[Event, list]:
    """A Ping fired an hour ago whose group ran, each listener ending as ``statuses`` says."""
    from messagio.payload import encode

    at = hours_ago(1)
    subscriptions = registry.subscriptions_for(Ping)
    event = Event.objects.create(
        messagio_type=PING, fired_at=at, published_at=at, state="published",
        payload=encode(Ping("replayed")), listener_count=len(subscriptions),
    )  # fmt: skip
    rows = []
    for position, (subscription, status) in enumerate(zip(subscriptions, statuses, strict=True)):
        delivery = Delivery.objects.create(
            event=event, position=position, messagio_type=PING,
            listener=subscription.listener_id, status=status, attempts=1, started_at=at,
            finished_at=at, task_id="M", worker="w0",
        )  # fmt: skip
        Attempt.objects.create(delivery=delivery, number=1, outcome=status, finished_at=at)
        rows.append(delivery)
    return event, rows


def run_message(envelope: dict, task_id: str, worker: str) -> None:
    from messagio import tasks
    from messagio.dispatch import compacted
    from messagio.seals import sealed

    tasks.deliver.apply(args=(sealed(compacted(envelope)),), task_id=task_id, hostname=worker)


def replayed_side_by_side(broker: list, together: list, alone: Delivery) -> None:
    """Replay ``together`` in one replay and ``alone`` in another; the first one's worker w1
    claims its first delivery, the second one's worker w2 its one, as their messages start."""
    from messagio.replays import replay

    together_replay = replay(Delivery.objects.filter(pk__in=[d.pk for d in together]))
    alone_replay = replay(alone)
    (together_task, _), (alone_task, _) = broker
    assert records.claim(str(together[0].pk), together_task, "w1", together_replay.pk).run
    assert records.claim(str(alone.pk), alone_task, "w2", alone_replay.pk).run


@pytest.mark.django_db(transaction=True)  # a replay publishes once it commits
def test_a_requeue_takes_the_followers_of_its_replay_beside_another_replay_running(broker):
    # Replay P of first and broken; replay P2 of third alone, running. P's worker dies in
    # first and comes back: the requeue takes broken along (P2's message carries only third).
    from messagio.recovery import requeue_orphans

    _, (first, _, broken, third, _) = ran_through(
        ["failed", "succeeded", "failed", "failed", "succeeded"]
    )
    replayed_side_by_side(broker, [first, broken], third)

    requeue_orphans("w1")

    assert [[s["delivery"] for s in e["listeners"]] for _, e in broker[2:]] == [
        [str(first.pk), str(broken.pk)]
    ]


@pytest.mark.django_db(transaction=True)  # a replay publishes once it commits
def test_a_requeue_leaves_another_replays_followers_to_its_message(broker):
    # Replay P of first and broken, running first; replay P2 of second alone, whose worker
    # died: broken is P's to run after first, not the requeue's to run now.
    from messagio.recovery import requeue_orphans

    _, (first, second, broken, _, _) = ran_through(
        ["failed", "failed", "failed", "succeeded", "succeeded"]
    )
    replayed_side_by_side(broker, [first, broken], second)

    requeue_orphans("w2")
    for task_id, envelope in broker[2:]:
        run_message(envelope, task_id, "w2")

    assert [[s["delivery"] for s in e["listeners"]] for _, e in broker[2:]] == [[str(second.pk)]]
    broken.refresh_from_db()
    assert (broken.status, broken.attempts) == ("pending", 1)  # for P's message, after first
