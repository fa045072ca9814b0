"""Operations through a real worker: scheduled messagios and the relay and replay commands."""

import uuid

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from messagio.models import Delivery, Event, Replay
from messagio.tasks import fire_scheduled, replay
from tests.polling import wait_for
from tests.testapp.messagio import Fixable, Ping
from tests.testapp.models import Call

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_scheduled_messagio_is_fired_by_a_worker_with_its_fields(worker):
    token = uuid.uuid4().hex

    # What a django-celery-beat PeriodicTask with task "messagio.tasks.fire_scheduled" sends.
    fire_scheduled.delay("tests.testapp.messagio.Ping", {"token": token})

    wait_for(lambda: Call.objects.filter(token=token).count() == 5, what="the scheduled fire")
    event = Event.objects.get(summary__token=token)
    assert event.origin == "schedule"


def test_a_replay_task_message_messagio_did_not_seal_replays_nothing(worker):
    from django.utils import timezone

    from messagio.tasks import send_replay

    token = uuid.uuid4().hex
    event = Fixable(token).fire().event_id
    wait_for(
        lambda: Delivery.objects.filter(event_id=event, status="failed").exists(), what="a failure"
    )
    record = Replay.objects.create(snapshot_at=timezone.now(), total=1)
    chosen = {"event_id": str(event)}
    Call.objects.create(token=token, listener="fix-deployed")

    # Whoever can write to the broker, naming deliveries of a replay still running.
    replay.delay(record.pk, chosen)
    replay.delay(record.pk, chosen, "0" * 64)

    wait_for(lambda: worker.output().count("dropped a replay task message") >= 2, what="both")
    assert Delivery.objects.get(event_id=event).attempts == 1
    send_replay(record.pk, chosen)  # messagio's own
    wait_for(
        lambda: Delivery.objects.filter(event_id=event, status="succeeded").exists(),
        what="the sealed replay to run",
    )


def test_the_replay_command_replays_the_selected_failures(worker):
    tokens = [uuid.uuid4().hex for _ in range(3)]
    events = [Fixable(token).fire().event_id for token in tokens]
    wait_for(
        lambda: Delivery.objects.filter(event_id__in=events, status="failed").count() == 3,
        what="three failures",
    )
    for token in tokens:
        Call.objects.create(token=token, listener="fix-deployed")

    call_command("messagio_replay", "--listener", "fixable", "--reason", "fix deployed")

    wait_for(
        lambda: Delivery.objects.filter(event_id__in=events, status="succeeded").count() == 3,
        what="the replays to succeed",
    )
    replay = Replay.objects.get()
    assert (replay.source, replay.reason, replay.queued) == ("command", "fix deployed", 3)


def test_the_relay_command_publishes_what_the_broker_missed(worker, broker_outage):
    token = uuid.uuid4().hex
    broker_outage.cut()
    report = Ping(token).fire()
    broker_outage.restore()

    call_command("messagio_relay", "--grace", "0")

    wait_for(lambda: Call.objects.filter(token=token).count() == 5, what="the relayed event")
    assert Event.objects.get(pk=report.event_id).state == "published"


def test_the_relay_command_fails_while_the_broker_refuses_and_delivers_once_it_is_back(
    worker, broker_outage
):
    token = uuid.uuid4().hex
    broker_outage.cut()
    report = Ping(token).fire()

    with pytest.raises(CommandError, match=r"could not be reached; 1 event\(s\) still wait"):
        call_command("messagio_relay", "--grace", "0")
    assert Event.objects.get(pk=report.event_id).state == "recorded"

    broker_outage.restore()
    call_command("messagio_relay", "--grace", "0")
    wait_for(lambda: Call.objects.filter(token=token).count() == 5, what="the relayed event")


def test_the_relay_task_drains_more_than_one_batch_in_a_run(worker, broker_outage):
    from messagio import tasks

    tokens = [uuid.uuid4().hex for _ in range(5)]
    broker_outage.cut()
    reports = [Ping(token).fire() for token in tokens]
    broker_outage.restore()

    with override_settings(MESSAGIO={"RELAY_GRACE": 0}):
        assert tasks.relay(batch_size=2) == 5

    events = Event.objects.filter(pk__in=[r.event_id for r in reports])
    assert set(events.values_list("state", flat=True)) == {"published"}
    # Each of their 5 listeners runs (and the worker is done writing before the test ends).
    wait_for(lambda: Call.objects.filter(token__in=tokens).count() == 25, what="the relayed events")
