"""What a fire leaves behind: Events, Deliveries and Attempts, written by a real worker."""

import base64
import contextlib
import pickle
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import OperationalError, ProgrammingError, connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

import messagio
from messagio import MessageCenter, Messagio, tasks
from messagio.models import Delivery, Event, Replay
from messagio.payload import MAGIC, sign
from messagio.publisher import kept_producers
from messagio.records import publish_recorded
from messagio.relay import relay
from messagio.seals import sealed
from tests.hostile import WritesFile
from tests.polling import wait_for
from tests.testapp.messagio import Fixable, Flaky, Ping, Split, SplitHeld
from tests.testapp.models import Call

FIXABLE = "tests.testapp.messagio:fixable"

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def new_token() -> str:
    return uuid.uuid4().hex


def wait_finished(event_id, timeout: float = 30) -> list[Delivery]:
    """Every listener's Delivery, once each is written (a worker writes a published fire's
    rows group by group) and finished."""

    def finished():
        listeners = Event.objects.values_list("listener_count", flat=True).get(pk=event_id)
        deliveries = list(Delivery.objects.filter(event_id=event_id).order_by("position"))
        done = len(deliveries) >= listeners and all(
            d.status in ("succeeded", "failed") for d in deliveries
        )
        return deliveries if deliveries and done else None

    return wait_for(finished, timeout=timeout, what=f"deliveries of {event_id} to finish")


def test_a_fire_records_the_event_and_each_listeners_outcome(worker):
    report = Ping(new_token()).fire()

    deliveries = wait_finished(report.event_id)
    event = Event.objects.get(pk=report.event_id)
    assert event.messagio_type == "tests.testapp.messagio.Ping"
    assert event.state == "published"
    assert event.origin == "fire"
    assert event.summary["token"] == Event.objects.get(pk=report.event_id).summary["token"]
    assert event.listener_count == 5
    assert [d.listener.rsplit(".", 1)[-1] for d in deliveries] == [
        "first",
        "second",
        "broken",
        "third",
        "of_many",
    ]
    assert [d.status for d in deliveries] == [
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
        "succeeded",
    ]
    first, broken = deliveries[0], deliveries[2]
    assert first.result == "'first done'"
    assert first.attempts == 1 and first.duration_ms is not None
    assert first.task_id == report.task_ids[0]
    assert first.worker.startswith("test-")
    assert broken.error_type == "builtins.RuntimeError"
    assert broken.error == "broken listener fails on purpose"
    assert "Traceback" in broken.traceback
    assert list(broken.history.values_list("outcome", flat=True)) == ["failed"]


def test_a_fire_outside_a_transaction_costs_at_most_two_statements(worker):
    Ping(new_token()).fire()  # warm up connections
    with CaptureQueriesContext(connection) as queries:
        report = Ping(new_token()).fire()
    control = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")  # SQLite logs its transaction control
    statements = [q["sql"] for q in queries if not q["sql"].startswith(control)]
    assert len(statements) <= 2, statements
    wait_finished(report.event_id)


def test_a_rolled_back_fire_leaves_no_record_and_runs_no_listener(worker):
    token = new_token()
    with pytest.raises(RuntimeError), transaction.atomic():
        report = Ping(token).fire()
        raise RuntimeError("the caller's transaction fails")

    assert report.task_ids == []
    assert not Event.objects.filter(pk=report.event_id).exists()
    # A later fire goes through the same worker; the rolled-back one never shows up.
    later = Ping(new_token()).fire()
    wait_finished(later.event_id)
    assert not Call.objects.filter(token=token).exists()


def test_a_published_fire_writes_its_event_and_leaves_the_deliveries_to_the_worker(worker):
    Ping(new_token()).fire()  # warm up connections
    with CaptureQueriesContext(connection) as queries:
        report = Ping(new_token()).fire()
    written = " ".join(q["sql"] for q in queries)
    assert "messagio_event" in written and "messagio_delivery" not in written

    deliveries = wait_finished(report.event_id)
    assert len(deliveries) == Event.objects.get(pk=report.event_id).listener_count == 5
    assert [d.attempts for d in deliveries] == [1] * 5
    assert [d.history.count() for d in deliveries] == [1] * 5


def test_each_group_of_a_published_fire_writes_its_own_deliveries(worker):
    token = new_token()
    with CaptureQueriesContext(connection) as queries:
        report = Split(token).fire()
    assert len(report.task_ids) == 2  # one task per priority
    assert "messagio_delivery" not in " ".join(q["sql"] for q in queries)

    deliveries = wait_finished(report.event_id)
    assert [d.listener.rsplit(".", 1)[-1] for d in deliveries] == [
        "split_urgent", "split_first", "split_second"
    ]  # fmt: skip
    assert [d.status for d in deliveries] == ["succeeded"] * 3
    assert [d.attempts for d in deliveries] == [1] * 3
    assert {d.task_id for d in deliveries} == set(report.task_ids)
    assert Call.objects.filter(token=token).count() == 3


def test_a_fire_in_a_transaction_publishes_when_it_commits(worker):
    token = new_token()
    with transaction.atomic():
        report = Ping(token).fire()
        assert Event.objects.get(pk=report.event_id).state == "recorded"

    deliveries = wait_finished(report.event_id)
    assert Event.objects.get(pk=report.event_id).state == "published"
    assert len(deliveries) == 5


def test_retries_are_recorded_as_attempts_of_one_delivery(worker):
    report = Flaky(new_token(), fail_times=2).fire()

    deliveries = wait_finished(report.event_id)
    flaky = next(d for d in deliveries if d.listener.endswith(".flaky"))
    assert flaky.status == "succeeded"
    assert flaky.attempts == 3
    assert list(flaky.history.order_by("number").values_list("number", "outcome")) == [
        (1, "retried"),
        (2, "retried"),
        (3, "succeeded"),
    ]
    sibling = next(d for d in deliveries if d.listener.endswith(".flaky_sibling"))
    assert sibling.attempts == 1


def test_a_listener_waiting_for_its_retry_runs_only_in_its_retrys_own_task(worker):
    """The broker hands a group's message out again (a worker killed in a later listener, a
    cut connection) while one of its listeners waits for its retry: the returned message
    leaves that one to its retry instead of running it at once, before its delay, and
    starting a second chain of retries."""
    from django.utils import timezone

    from messagio.tasks import publish

    token = new_token()
    event, group = recorded_group(Flaky(token, fail_times=0))
    flaky, sibling = (spec["delivery"] for spec in group["listeners"])
    failed_at = timezone.now()
    Delivery.objects.filter(pk=flaky).update(
        status="retrying", attempts=1, started_at=failed_at, finished_at=failed_at,
        task_id="the-retrys-task",
    )  # fmt: skip

    publish(group)  # the group's message, handed out again

    wait_for(
        lambda: Delivery.objects.filter(pk=sibling, status="succeeded").exists(),
        what="the sibling after it to run",
    )
    waiting = Delivery.objects.get(pk=flaky)
    assert (waiting.status, waiting.attempts) == ("retrying", 1)
    assert not Call.objects.filter(token=token, listener="flaky").exists()

    publish(
        dict(group, listeners=[dict(group["listeners"][0], attempt=2)]), task_id="the-retrys-task"
    )

    wait_for(
        lambda: Delivery.objects.filter(pk=flaky, status="succeeded").exists(),
        what="its retry to run it",
    )
    assert Delivery.objects.get(pk=flaky).attempts == 2
    assert Call.objects.filter(token=token, listener="flaky").count() == 1


def test_a_retry_the_broker_refuses_leaves_its_delivery_retrying_and_the_group_goes_on(
    worker, broker_outage
):
    from messagio import tasks
    from messagio.records import RETRY_NOT_SENT
    from messagio.recovery import requeue_stuck

    token = new_token()
    event, envelope = recorded_group(Flaky(token, fail_times=1))
    broker_outage.cut()

    tasks.deliver.apply(args=(sealed(envelope),))

    flaky, sibling = Delivery.objects.filter(event_id=event.id).order_by("position")
    assert (flaky.status, flaky.attempts, flaky.task_id) == ("retrying", 1, RETRY_NOT_SENT)
    assert (sibling.status, sibling.attempts) == ("succeeded", 1)
    broker_outage.restore()
    # Once its delay (0.1 s) has passed, not after STUCK_TIMEOUT (an hour).
    wait_for(lambda: requeue_stuck() == 1, what="the relay to requeue the refused retry")
    wait_for(
        lambda: Delivery.objects.get(pk=flaky.pk).status == "succeeded",
        what="the requeued retry to succeed",
    )
    assert Call.objects.filter(token=token, listener="flaky").count() == 2


def test_a_retry_records_its_own_task_as_the_one_that_may_run_it(worker):
    report = Flaky(new_token(), fail_times=1).fire()

    deliveries = wait_finished(report.event_id)

    flaky = next(d for d in deliveries if d.listener.endswith(".flaky"))
    first, second = flaky.history.order_by("number")
    assert (first.outcome, second.outcome) == ("retried", "succeeded")
    assert first.task_id != second.task_id  # the retry went in a task of its own
    assert flaky.task_id == second.task_id  # published under the id recorded for it


def test_a_failure_replayed_after_the_fix_succeeds_and_keeps_the_failed_attempt(worker):
    token = new_token()
    report = Fixable(token).fire()
    (delivery,) = wait_finished(report.event_id)
    assert delivery.status == "failed"

    Call.objects.create(token=token, listener="fix-deployed")
    record = messagio.replay(delivery, reason="bug #12 fixed")

    wait_for(
        lambda: Delivery.objects.get(pk=delivery.pk).status == "succeeded",
        what="the replayed delivery to succeed",
    )
    delivery.refresh_from_db()
    assert delivery.attempts == 2
    assert delivery.result == "'fixed'"
    assert list(delivery.history.order_by("number").values_list("outcome", flat=True)) == [
        "failed",
        "succeeded",
    ]
    assert delivery.history.get(number=2).replay_id == record.pk
    assert (record.reason, record.source, record.queued, record.state) == (
        "bug #12 fixed",
        "code",
        1,
        "finished",
    )


def test_replaying_a_whole_event_reruns_every_listener(worker):
    report = Ping(new_token()).fire()
    wait_finished(report.event_id)

    messagio.replay(Event.objects.get(pk=report.event_id))

    deliveries = wait_for(
        lambda: (ds := wait_finished(report.event_id)) and all(d.attempts == 2 for d in ds) and ds,
        what="every listener to run a second time",
    )
    assert len(deliveries) == 5


def test_a_bulk_replay_does_not_pick_up_what_fails_again(worker):
    reports = [Fixable(new_token()).fire() for _ in range(3)]
    for report in reports:
        wait_finished(report.event_id)
    selection = Delivery.objects.filter(event_id__in=[r.event_id for r in reports])

    record = messagio.replay(selection, reason="still broken")

    assert record.total == 3 and record.queued == 3
    for report in reports:
        wait_for(
            lambda r=report: Delivery.objects.filter(
                event_id=r.event_id, attempts=2, status="failed"
            ).exists(),
            what="the replayed attempt to fail again",
        )
    assert list(selection.values_list("status", flat=True)) == ["failed"] * 3
    assert Replay.objects.count() == 1


def test_a_bulk_replay_with_a_canary_stops_itself_when_the_canary_fails(worker):
    reports = [Fixable(new_token()).fire() for _ in range(4)]
    for report in reports:
        wait_finished(report.event_id)
    selection = Delivery.objects.filter(event_id__in=[r.event_id for r in reports])

    record = messagio.replay(selection, canary=1, canary_timeout=30)

    assert record.state == "stopped"
    assert record.queued == 1
    assert "canary: 1 of 1" in record.stopped_reason
    assert selection.filter(attempts=1).count() == 3


def test_a_tampered_payload_runs_no_code_and_fails_its_delivery(worker, tmp_path):
    token = new_token()
    report = Fixable(token).fire()
    (delivery,) = wait_finished(report.event_id)
    marker = tmp_path / "pwned"
    hostile = pickle.dumps(WritesFile(str(marker)))
    for forged in (hostile, MAGIC + b"\0" * 32 + hostile):
        Event.objects.filter(pk=report.event_id).update(payload=forged)
        messagio.replay(delivery)
        wait_for(
            lambda: (
                Delivery.objects.get(pk=delivery.pk).status == "failed"
                and Delivery.objects.get(pk=delivery.pk).replay_id is not None
                and Delivery.objects.get(pk=delivery.pk).attempts >= 2
            ),
            what="the tampered replay to fail",
        )
        delivery.refresh_from_db()
        assert "payload signature mismatch" in delivery.error
        assert delivery.error_type.endswith("PayloadSignatureError")
    assert not Path(marker).exists()
    assert Call.objects.filter(token=token, listener="fixable").count() == 1


def send_as_is(envelope, task=None, args=None, **embed) -> None:
    """Put ``envelope`` (or ``args`` of ``task``) on the messagio queue as it is: what
    whoever can write to the broker can do (messagio's own publish would seal it), down to
    the request fields a message's body may set (``embed``, such as ``is_eager``)."""
    from django.conf import settings

    from messagio.tasks import DELIVER_TASK
    from project.celery import app

    task = task or DELIVER_TASK
    message = app.amqp.as_task_v2(str(uuid.uuid4()), task, args=args or (envelope,), kwargs={})
    body_args, body_kwargs, body_embed = message.body
    message = message._replace(body=(body_args, body_kwargs, dict(body_embed, **embed)))
    with app.producer_or_acquire() as producer:
        app.amqp.send_task_message(producer, task, message, queue=settings.MESSAGIO_QUEUE)


def test_a_task_message_messagio_did_not_seal_runs_and_writes_nothing(worker):
    token = new_token()
    forged = {}
    for how in ("unsealed", "reused seal", "said eager"):
        # A real signed payload (any message on the queue has one), its frame rewritten:
        # the listener named by path, so that a worker would import and call it.
        event, envelope = published_group(Fixable(token), record_event=False)
        redirected = [dict(envelope["listeners"][0], id="any.function", import_path=FIXABLE)]
        forged[event.id] = dict(envelope, listeners=redirected)
        if how == "reused seal":
            forged[event.id] = dict(sealed(envelope), listeners=redirected)
        # A message's body can set the request's fields: one saying it runs eagerly, as in
        # the process that called apply(), is checked all the same.
        eager = {"is_eager": True, "called_directly": True} if how == "said eager" else {}
        send_as_is(forged[event.id], **eager)

    for event_id in forged:
        wait_for(
            lambda e=event_id: f"for event '{e}' that messagio did not seal" in worker.output(),
            what=f"the message of {event_id} to be dropped",
        )
    assert not Event.objects.filter(pk__in=forged).exists()
    assert not Delivery.objects.filter(event_id__in=forged).exists()
    assert not Call.objects.filter(token=token).exists()


def test_a_replay_message_messagio_did_not_seal_replays_nothing(worker):
    from messagio.tasks import REPLAY_TASK

    report = Fixable(new_token()).fire()
    (failed,) = wait_finished(report.event_id)
    assert failed.status == "failed"
    replays = [Replay.objects.create(total=1), Replay.objects.create(total=1)]

    send_as_is(None, task=REPLAY_TASK, args=(replays[0].pk, {"event_id": str(report.event_id)}))
    send_as_is(
        None,
        task=REPLAY_TASK,
        args=(replays[1].pk, {"event_id": str(report.event_id)}),
        is_eager=True,
    )

    for record in replays:
        wait_for(
            lambda pk=record.pk: f"replay task message for replay {pk} that" in worker.output(),
            what=f"the message of replay {record.pk} to be dropped",
        )
    assert Delivery.objects.get(pk=failed.pk).attempts == 1
    assert Delivery.objects.get(pk=failed.pk).status == "failed"
    assert Delivery.objects.get(pk=failed.pk).replay_id is None


def test_a_sealed_task_whose_payload_was_swapped_fails_its_delivery_unread(worker):
    victim, other = new_token(), new_token()
    event, envelope = published_group(Fixable(victim))
    _, elsewhere = published_group(Fixable(other))
    # Validly signed, but another message's payload: the listener would act on other data.
    send_as_is(dict(sealed(envelope), payload=elsewhere["payload"]))

    (delivery,) = wait_finished(event.id)
    assert delivery.status == "failed"
    assert "payload signature mismatch" in delivery.error
    assert not Call.objects.filter(token__in=[victim, other]).exists()


def test_a_listener_that_no_longer_exists_fails_its_replay_saying_which(worker):
    report = Fixable(new_token()).fire()
    (delivery,) = wait_finished(report.event_id)
    Delivery.objects.filter(pk=delivery.pk).update(
        listener="shop.listeners.removed_listener", import_path="shop.listeners:removed_listener"
    )

    messagio.replay(Delivery.objects.get(pk=delivery.pk))

    wait_for(
        lambda: Delivery.objects.filter(pk=delivery.pk, attempts=2, status="failed").exists(),
        what="the replay to fail",
    )
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert "'shop.listeners.removed_listener' is not registered in this worker" in delivery.error


def test_a_messagio_class_that_no_longer_imports_fails_its_replay_saying_which(worker):
    report = Fixable(new_token()).fire()
    (delivery,) = wait_finished(report.event_id)
    event = Event.objects.get(pk=report.event_id)
    data = bytes(event.payload)[len(MAGIC) + 32 :]
    moved = data.replace(b"tests.testapp.messagio", b"tests.testapp.vanished")
    Event.objects.filter(pk=event.pk).update(payload=sign(moved))

    messagio.replay(Delivery.objects.get(pk=delivery.pk))

    wait_for(
        lambda: Delivery.objects.filter(pk=delivery.pk, attempts=2, status="failed").exists(),
        what="the replay to fail",
    )
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert "messagio class tests.testapp.messagio.Fixable no longer imports" in delivery.error
    assert "needs a restart" in delivery.error


@dataclass
class RetriesAnything(Messagio):
    token: str


def retries_anything(event: RetriesAnything) -> None:
    Call.objects.create(token=event.token, listener="retries-anything")


@pytest.mark.parametrize(
    "broken, error",
    [
        ("payload swapped", "payload signature mismatch"),
        ("class gone", "no longer imports"),
        ("listener gone", "'shop.gone' is not registered in this worker"),
    ],
)
def test_what_no_retry_can_mend_fails_at_once_whatever_autoretry_for_says(
    isolated_registry, monkeypatch, broken, error
):
    from messagio.records import envelope_payload
    from messagio.tasks import deliver

    MessageCenter.singleton().subscribe(
        RetriesAnything, retries_anything, autoretry_for=(Exception,), max_retries=3
    )
    retries = []
    monkeypatch.setattr(tasks, "publish", lambda envelope, **options: retries.append(envelope))
    token = new_token()
    event, envelope = published_group(RetriesAnything(token))
    message = sealed(envelope)
    if broken == "payload swapped":
        _, other = published_group(RetriesAnything(new_token()))
        message["payload"] = other["payload"]  # sealed frame, another message's payload
    elif broken == "class gone":
        data = envelope_payload(envelope)[len(MAGIC) + 32 :]
        moved = sign(data.replace(b"integration.test_records", b"integration.gone_records"))
        message = sealed(dict(envelope, payload=base64.b64encode(moved).decode("ascii")))
    else:
        spec = dict(envelope["listeners"][0], id="shop.gone", import_path="shop:gone")
        message = sealed(dict(envelope, listeners=[spec]))

    deliver.apply(args=(message,))

    (delivery,) = Delivery.objects.filter(event_id=event.id)
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert error in delivery.error
    assert retries == []
    assert not Call.objects.filter(token=token).exists()


def test_a_fire_while_the_broker_is_down_is_recorded_and_relayed_once_it_is_back(
    worker, broker_outage
):
    token = new_token()
    broker_outage.cut()

    report = Ping(token).fire()

    event = Event.objects.get(pk=report.event_id)
    assert event.state == "recorded"
    assert event.publish_error
    assert Delivery.objects.filter(event=event, status="pending").count() == 5
    assert relay(grace=0).published == 0  # still down: nothing published, nothing lost

    broker_outage.restore()
    assert relay(grace=0).published == 1

    deliveries = wait_finished(report.event_id)
    assert [d.attempts for d in deliveries] == [1] * 5
    assert Event.objects.get(pk=report.event_id).state == "published"
    assert Call.objects.filter(token=token).count() == 5


@pytest.fixture
def sent_deliveries():
    """The delivery ids of each messagio task this process publishes, as the broker takes it."""
    from celery.signals import after_task_publish

    sent: list[list[str]] = []

    def took(sender=None, body=None, **kwargs):
        if sender == "messagio.tasks.deliver":
            (envelope,), _, _ = body
            sent.append([spec["delivery"] for spec in envelope["listeners"]])

    after_task_publish.connect(took, weak=False)
    yield sent
    after_task_publish.disconnect(took)


def cut_after_the_first_group(broker_outage):
    """Have the broker take the next fire's first group and refuse the second: cut once the
    first has run (so its message surely reached the broker), before the second goes."""
    from celery.signals import after_task_publish

    def cut(body=None, **kwargs):
        after_task_publish.disconnect(cut)
        (envelope,), _, _ = body
        first = envelope["listeners"][0]["delivery"]
        wait_for(
            lambda: Delivery.objects.filter(pk=first, status="succeeded").exists(),
            what="the first group to run",
        )
        broker_outage.cut()

    after_task_publish.connect(cut, weak=False)


def listener_ids(event_id, *names: str) -> list[str]:
    return [
        str(Delivery.objects.get(event_id=event_id, listener__endswith=f".{name}").pk)
        for name in names
    ]


@pytest.mark.parametrize("in_transaction", [False, True], ids=["published-at-once", "on-commit"])
def test_a_fire_the_broker_takes_only_partly_is_completed_by_the_relay_once(
    worker, broker_outage, sent_deliveries, in_transaction
):
    token = new_token()
    cut_after_the_first_group(broker_outage)

    # Published at once, the worker of the first group writes the Event from its message
    # (as published) before the firing process records the fire.
    with transaction.atomic() if in_transaction else contextlib.nullcontext():
        report = Split(token).fire()

    assert Event.objects.get(pk=report.event_id).state == "recorded"  # the rest waits
    broker_outage.restore()
    the_relay_sends_the_rest_and_each_listener_runs_once(report.event_id, token, sent_deliveries)
    assert Event.objects.get(pk=report.event_id).state == "published"


def the_relay_sends_the_rest_and_each_listener_runs_once(event_id, token, sent_deliveries):
    """Of a Split fire whose first group (split_urgent) went out and second did not."""
    sent_deliveries.clear()
    assert relay(grace=0).published == 1
    assert sent_deliveries == [listener_ids(event_id, "split_first", "split_second")]

    deliveries = wait_finished(event_id)
    assert [(d.status, d.attempts) for d in deliveries] == [("succeeded", 1)] * 3
    assert sorted(Call.objects.filter(token=token).values_list("listener", flat=True)) == [
        "split_first",
        "split_second",
        "split_urgent",
    ]


class RequestTimeout(BaseException):
    """What a web server raises in a request it gives up on (gunicorn's SystemExit, a
    gevent.Timeout): not an Exception."""


def test_a_fire_interrupted_between_its_groups_leaves_the_rest_to_the_relay(
    worker, sent_deliveries
):
    from celery.signals import before_task_publish

    token = new_token()
    publishes = []

    def interrupt_the_second(**kwargs):
        publishes.append(kwargs)
        if len(publishes) == 2:
            raise RequestTimeout("the request ran out of time")

    before_task_publish.connect(interrupt_the_second, weak=False)
    try:
        with pytest.raises(RequestTimeout):
            Split(token).fire()
    finally:
        before_task_publish.disconnect(interrupt_the_second)

    (event,) = Event.objects.filter(summary__token=token)
    assert event.state == "recorded"  # the rest waits for the relay, however the first went
    the_relay_sends_the_rest_and_each_listener_runs_once(event.pk, token, sent_deliveries)


def test_a_partly_published_fire_leaves_the_rest_of_a_running_group_to_its_message(
    worker, broker_outage, sent_deliveries
):
    """The group that went out is still running when the relay publishes the rest: the
    listener after its first, pending meanwhile, is not published again."""
    from celery.signals import after_task_publish

    token = new_token()

    def cut_once_the_first_listener_runs(body=None, **kwargs):
        after_task_publish.disconnect(cut_once_the_first_listener_runs)
        wait_for(
            lambda: Call.objects.filter(token=token, listener="slow-started").exists(),
            what="the first group's first listener to start",
        )
        broker_outage.cut()

    after_task_publish.connect(cut_once_the_first_listener_runs, weak=False)
    try:
        report = SplitHeld(token).fire()
    finally:
        after_task_publish.disconnect(cut_once_the_first_listener_runs)

    broker_outage.restore()
    sent_deliveries.clear()
    assert relay(grace=0).published == 1
    assert sent_deliveries == [listener_ids(report.event_id, "held_regular")]
    after = Delivery.objects.get(event_id=report.event_id, listener__endswith=".held_after")
    assert after.status == "pending"  # its group's message runs it

    Call.objects.create(token=token, listener="release")
    deliveries = wait_finished(report.event_id)
    assert [(d.status, d.attempts) for d in deliveries] == [("succeeded", 1)] * 3
    calls = sorted(Call.objects.filter(token=token).values_list("listener", flat=True))
    assert calls == ["held_after", "held_regular", "release", "slow-finished", "slow-started"]


def test_what_an_in_process_run_never_ran_is_delivered_by_the_relay_through_a_worker(worker):
    """Its on_commit never ran (a callback registered before it raised): the event and its
    deliveries are committed, pending, and no message carries them."""
    import datetime

    from django.utils import timezone

    from messagio.center import InProcessMessageCenter
    from messagio.recovery import requeue_stuck

    token = new_token()

    def another_apps_callback_fails():
        raise RuntimeError("another app's on_commit")

    with pytest.raises(RuntimeError, match="another app's on_commit"):
        with transaction.atomic():
            transaction.on_commit(another_apps_callback_fails)
            report = InProcessMessageCenter.singleton().send(Ping(token))
    assert set(
        Delivery.objects.filter(event_id=report.event_id).values_list("status", flat=True)
    ) == {"pending"}
    two_hours_ago = timezone.now() - datetime.timedelta(hours=2)
    # Claimed by its in-process run since it was fired, past STUCK_TIMEOUT.
    Event.objects.filter(pk=report.event_id).update(
        fired_at=two_hours_ago, claimed_at=two_hours_ago
    )

    assert requeue_stuck() == Event.objects.get(pk=report.event_id).listener_count

    deliveries = wait_finished(report.event_id)
    assert all(d.attempts == 1 and d.worker for d in deliveries)  # each run once, in a worker
    ran = sorted(Call.objects.filter(token=token).values_list("listener", flat=True))
    assert ran == sorted(["first", "second", "broken", "third", "of_many"])


def test_a_setting_makes_fire_raise_when_the_broker_is_down(worker, broker_outage):
    broker_outage.cut()
    with override_settings(MESSAGIO={"RAISE_ON_PUBLISH_ERROR": True}):
        with pytest.raises(Exception):  # noqa: B017 - whatever the transport raises
            Ping(new_token()).fire()
    assert Event.objects.filter(state="recorded").count() == 1


def test_a_fire_after_the_broker_dropped_the_kept_connection_is_published(worker, broker_outage):
    """messagio keeps its producer between fires (messagio.publisher): one whose connection
    the broker closed meanwhile (a restart, an idle timeout) publishes on a new one."""
    from project.celery import app

    if broker_outage.proxy is None:
        pytest.skip("the filesystem broker keeps no connection")
    wait_finished(Ping(new_token()).fire().event_id)  # a producer is kept, connected
    assert kept_producers(app).idle

    broker_outage.proxy.cut()  # every open connection reset: the kept one is dead now
    broker_outage.proxy.restore()
    token = new_token()
    report = Ping(token).fire()

    assert Event.objects.get(pk=report.event_id).state == "published"
    assert len(wait_finished(report.event_id)) == Call.objects.filter(token=token).count() == 5


def test_on_commit_and_the_relay_never_both_publish_an_event(worker):
    with transaction.atomic():
        report = Ping(new_token()).fire()
        event = Event.objects.get(pk=report.event_id)
        deliveries = list(event.deliveries.all())
        # The relay claims it first, still inside the transaction; on_commit then finds it taken.
        assert publish_recorded(event, deliveries) is True
        assert publish_recorded(event, deliveries) is False

    wait_finished(report.event_id)
    assert Delivery.objects.filter(event_id=report.event_id, attempts=1).count() == 5


def a_fire_recorded_in_a_transaction(messagio_obj):
    """The Event and pending Deliveries a fire in ``atomic()`` leaves for ``on_commit``, and
    what ``on_commit`` holds of them."""
    from messagio.center import MessageCenter
    from messagio.payload import encode
    from messagio.records import build_records, save_records

    subscriptions = MessageCenter.singleton().subscriptions_for(type(messagio_obj))
    event, deliveries = build_records(messagio_obj, encode(messagio_obj, 1 << 20), subscriptions)
    event.state = "recorded"
    save_records(event, deliveries)
    return event, deliveries


def test_on_commit_leaves_an_event_a_relay_tried_first_to_the_relay(monkeypatch):
    """A transaction longer than RELAY_GRACE: right after its commit, a relay took the event
    first, sent its first group, and the broker refused the next. on_commit, late, must not
    send the first group again: the relay sends what is left."""
    from messagio import records

    event, deliveries = a_fire_recorded_in_a_transaction(Ping(new_token()))
    sent_by_the_relay = str(deliveries[0].id)
    Delivery.objects.filter(pk=sent_by_the_relay).update(task_id="the-relays-task")
    Event.objects.filter(pk=event.id).update(publish_error="the broker refused a group")
    published = []
    monkeypatch.setattr(records, "publish_each", lambda envelopes: published.extend(envelopes))

    assert publish_recorded(event, deliveries) is False  # on_commit, late
    assert published == []

    assert publish_recorded(Event.objects.get(pk=event.id)) is True  # the relay
    sent = [spec["delivery"] for envelope in published for spec in envelope["listeners"]]
    assert sorted(sent) == sorted(str(d.id) for d in deliveries[1:])


def test_a_publisher_whose_claim_the_relay_took_over_leaves_the_event_to_it(monkeypatch):
    """A publish slower than PUBLISH_CLAIM_TIMEOUT: the relay took the event over meanwhile.
    The first publisher's failure must not put the event back for a third publish."""
    from messagio import records

    event, deliveries = a_fire_recorded_in_a_transaction(Ping(new_token()))

    def slow_then_refused(envelopes):
        # Meanwhile the relay took the claim over and published the event.
        Event.objects.filter(pk=event.id).update(state="published", claimed_at=None)
        raise records.PublishRefusedError([], ConnectionRefusedError("the broker went away"))

    monkeypatch.setattr(records, "publish_each", slow_then_refused)

    assert publish_recorded(event, deliveries) is False
    recorded = Event.objects.get(pk=event.id)
    assert (recorded.state, recorded.publish_error) == ("published", "")


def test_a_replay_while_the_broker_is_down_stops_and_leaves_deliveries_as_they_were(
    worker, broker_outage
):
    report = Fixable(new_token()).fire()
    (delivery,) = wait_finished(report.event_id)
    broker_outage.cut()

    record = messagio.replay(Delivery.objects.filter(pk=delivery.pk))

    assert record.state == "stopped"
    assert "the broker refused a publish" in record.stopped_reason
    assert record.queued == 0
    delivery.refresh_from_db()
    assert (delivery.status, delivery.replay_id) == ("failed", None)


def recorded_group(messagio_obj):
    """Record a fire without publishing it, and return its one task envelope."""
    from messagio.center import MessageCenter
    from messagio.payload import encode
    from messagio.records import build_records, envelopes, save_records

    subscriptions = MessageCenter.singleton().subscriptions_for(type(messagio_obj))
    event, deliveries = build_records(messagio_obj, encode(messagio_obj, 1 << 20), subscriptions)
    event.state = "published"
    save_records(event, deliveries)
    (envelope,) = envelopes(event, deliveries)
    return event, envelope


def published_group(messagio_obj, record_event: bool = True):
    """A fire as published outside a transaction: its Event only (or nothing, as when the
    firing process died right after publishing), and the task envelope of its one group."""
    from messagio.center import MessageCenter
    from messagio.payload import encode
    from messagio.records import build_records, envelopes, save_records

    subscriptions = MessageCenter.singleton().subscriptions_for(type(messagio_obj))
    event, deliveries = build_records(messagio_obj, encode(messagio_obj, 1 << 20), subscriptions)
    event.state = "published"
    if record_event:
        save_records(event, [])
    (envelope,) = envelopes(event, deliveries, deliveries_recorded=False)
    return event, envelope


def test_the_first_claim_writes_the_groups_deliveries_in_one_statement():
    from messagio.tasks import deliver

    event, envelope = published_group(Ping(new_token()))
    listeners = len(envelope["listeners"])
    assert not Delivery.objects.filter(event_id=event.id).exists()
    with CaptureQueriesContext(connection) as queries:
        deliver.apply(args=(sealed(envelope),))

    deliveries = list(Delivery.objects.filter(event_id=event.id).order_by("position"))
    assert [d.id for d in deliveries] == [uuid.UUID(s["delivery"]) for s in envelope["listeners"]]
    assert [d.attempts for d in deliveries] == [1] * listeners
    assert [d.history.count() for d in deliveries] == [1] * listeners
    assert [d.status for d in deliveries].count("failed") == 1
    assert all(d.task_id == deliveries[0].task_id != "" for d in deliveries)
    if connection.vendor == "postgresql":
        # The rows with the first claim, then per listener its outcome and the next claim.
        statements = [q["sql"] for q in queries if q["sql"].startswith("WITH")]
        assert len(statements) == listeners + 1, statements


def test_a_redelivered_message_of_a_published_fire_runs_only_what_did_not_finish():
    from messagio.tasks import deliver

    token = new_token()
    event, envelope = published_group(Ping(token))
    # The first delivery of the message wrote the rows.
    deliver.apply(args=(sealed(envelope),), task_id="the-groups-task")
    first = Delivery.objects.get(event_id=event.id, position=0)
    second = Delivery.objects.get(event_id=event.id, position=1)
    Delivery.objects.filter(pk=second.pk).update(status="running")  # its worker died
    Call.objects.filter(token=token).delete()

    deliver.apply(args=(sealed(envelope),), task_id="the-groups-task")  # the same message again

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.attempts == 1 and first.history.count() == 1  # not run again
    assert second.attempts == 2
    assert list(second.history.values_list("outcome", flat=True)) == [
        "succeeded", "lost", "succeeded"
    ]  # fmt: skip
    assert list(Call.objects.filter(token=token).values_list("listener", flat=True)) == ["second"]


def test_a_worker_writes_the_event_too_when_the_firing_process_died_after_publishing():
    from messagio.tasks import deliver

    token = new_token()
    event, envelope = published_group(Ping(token), record_event=False)

    deliver.apply(args=(sealed(envelope),))

    recorded = Event.objects.get(pk=event.id)
    assert (recorded.state, recorded.summary["token"]) == ("published", token)
    deliveries = list(Delivery.objects.filter(event_id=event.id).order_by("position"))
    assert [d.attempts for d in deliveries] == [1] * len(envelope["listeners"])
    assert Call.objects.filter(token=token, listener="first").count() == 1


def test_a_group_records_each_outcome_and_claims_the_next_listener_in_one_statement():
    from messagio.tasks import deliver

    event, envelope = recorded_group(Ping(new_token()))
    listeners = len(envelope["listeners"])
    with CaptureQueriesContext(connection) as queries:
        deliver.apply(args=(sealed(envelope),))

    deliveries = list(Delivery.objects.filter(event_id=event.id).order_by("position"))
    assert [d.attempts for d in deliveries] == [1] * listeners
    assert [d.history.count() for d in deliveries] == [1] * listeners
    assert all(d.started_at <= d.finished_at for d in deliveries)
    statements = [q["sql"] for q in queries if q["sql"].startswith("WITH")]
    if connection.vendor == "postgresql":
        # One claim, then one statement per listener: its outcome and the next one's claim.
        assert len(statements) == listeners + 1, statements
        assert [d.status for d in deliveries].count("failed") == 1


def test_a_delivery_a_later_replay_took_is_left_to_that_replays_own_message():
    """A copy of an earlier message (an earlier replay's, sent again by the relay, or the
    fire's own) that arrives after a later replay took the deliveries runs nothing: the later
    replay's message runs them, and their attempts count under it, where its canary and its
    counts look."""
    from django.utils import timezone

    from messagio.tasks import deliver

    token = new_token()
    event, envelope = recorded_group(Ping(token))
    earlier, later = (
        Replay.objects.create(total=1, runner=name, snapshot_at=timezone.now())
        for name in ("earlier", "later")
    )
    Delivery.objects.filter(event_id=event.id).update(status="pending", replay=later)

    for stale in (earlier.pk, None):
        deliver.apply(args=(sealed({**envelope, "replay": stale}),))

        assert set(Delivery.objects.filter(event_id=event.id).values_list("status", flat=True)) == {
            "pending"
        }
        assert not Call.objects.filter(token=token).exists()

    deliver.apply(args=(sealed({**envelope, "replay": later.pk}),))

    deliveries = Delivery.objects.filter(event_id=event.id)
    assert set(deliveries.values_list("status", flat=True)) == {"succeeded", "failed"}
    assert {d.history.get().replay_id for d in deliveries} == {later.pk}
    assert Call.objects.filter(token=token).count() == len(envelope["listeners"])


def test_a_replays_message_whose_deliveries_are_written_again_from_it_runs_them():
    """Deliveries a replay's message writes again (its event was deleted meanwhile) belong to
    no replay: the message that wrote them runs them, none other would."""
    from django.utils import timezone

    from messagio.center import MessageCenter
    from messagio.payload import encode
    from messagio.records import build_records, envelopes
    from messagio.tasks import deliver

    token = new_token()
    ping = Ping(token)
    subscriptions = MessageCenter.singleton().subscriptions_for(Ping)
    event, deliveries = build_records(ping, encode(ping, 1 << 20), subscriptions)
    replayed = Replay.objects.create(total=1, runner="gone", snapshot_at=timezone.now())
    (envelope,) = envelopes(event, deliveries, replay_id=replayed.pk)  # nothing recorded

    deliver.apply(args=(sealed(envelope),))

    assert Call.objects.filter(token=token).count() == len(envelope["listeners"])
    assert not Delivery.objects.filter(event_id=event.id, status="pending").exists()


def test_a_listener_its_retry_runs_elsewhere_is_not_run_again_by_its_groups_message():
    """A listener's retry runs on one worker while its group's message comes back to another
    (the worker that went on with the group died in a later listener): the returned message
    leaves the running attempt to its retry's task, instead of recording it lost and running
    the listener a second time alongside it."""
    from messagio.tasks import deliver

    token = new_token()
    event, envelope = recorded_group(Ping(token))
    first, second = (spec["delivery"] for spec in envelope["listeners"][:2])
    Delivery.objects.filter(pk=first).update(
        status="running", attempts=2, task_id="the-retrys-task", worker="other@host"
    )  # its retry, running on another worker
    Delivery.objects.filter(pk=second).update(
        status="running", attempts=1, task_id="the-groups-task"
    )  # where the group's worker died

    deliver.apply(args=(sealed(envelope),), task_id="the-groups-task")

    retried = Delivery.objects.get(pk=first)
    assert (retried.status, retried.attempts, retried.task_id) == (
        "running", 2, "the-retrys-task"
    )  # fmt: skip
    assert not retried.history.exists()  # no lost attempt made up for the live one
    assert not Call.objects.filter(token=token, listener="first").exists()
    interrupted = Delivery.objects.get(pk=second)
    assert (interrupted.status, interrupted.attempts) == ("succeeded", 2)
    assert list(interrupted.history.values_list("outcome", flat=True)) == ["lost", "succeeded"]


def test_a_redelivered_group_runs_only_what_did_not_finish():
    from messagio.tasks import deliver

    token = new_token()
    event, envelope = recorded_group(Ping(token))
    first = Delivery.objects.get(event_id=event.id, position=0)
    Delivery.objects.filter(pk=first.pk).update(status="succeeded", attempts=1)
    second = Delivery.objects.get(event_id=event.id, position=1)
    Delivery.objects.filter(pk=second.pk).update(
        status="running", attempts=1, task_id="the-groups-task"
    )  # its worker died

    deliver.apply(args=(sealed(envelope),), task_id="the-groups-task")  # its message again

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.attempts == 1 and not first.history.exists()  # not run again
    assert second.status == "succeeded" and second.attempts == 2
    assert list(second.history.values_list("outcome", flat=True)) == ["lost", "succeeded"]
    assert Call.objects.filter(token=token, listener="first").count() == 0


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("the database went away"),
        # Code and schema out of step mid-deploy: acknowledged as a failed task, the group
        # would be lost (a first claim writes its rows: none would exist).
        ProgrammingError('column "time_limit" does not exist'),
    ],
    ids=["outage", "schema-out-of-step"],
)
def test_a_group_the_database_interrupts_is_sent_again_from_the_interrupted_listener(
    monkeypatch, error
):
    from messagio import records, tasks

    event, envelope = recorded_group(Ping(new_token()))
    finishes = []
    original_finish = records.finish

    def finish_until_the_database_goes(*args, **kwargs):
        finishes.append(args[0])
        if len(finishes) == 2:
            raise error
        return original_finish(*args, **kwargs)

    monkeypatch.setattr(records, "finish", finish_until_the_database_goes)
    monkeypatch.setattr(records, "DB_RETRY_SECONDS", 0)  # give up at once
    requeued = []
    monkeypatch.setattr(
        tasks,
        "publish",
        lambda e, countdown=None, task_id=None: requeued.append((e, countdown, task_id)),
    )

    tasks.deliver.apply(args=(sealed(envelope),), task_id="the-groups-task")

    ((again, countdown, task_id),) = requeued
    assert countdown == tasks.DB_OUTAGE_REQUEUE_DELAY
    # Under its own id: a retry's delivery waits for that one.
    assert task_id == "the-groups-task"
    # Not the first listener, finished: from the one whose outcome could not be written.
    assert [s["delivery"] for s in again["listeners"]] == [
        s["delivery"] for s in envelope["listeners"][1:]
    ]
    assert again["deliveries_recorded"] is True


def test_a_group_neither_the_database_nor_the_broker_takes_goes_back_to_its_queue(monkeypatch):
    """Acknowledged as a failed task, the message would leave the interrupted listener and
    the ones after it pending (or unwritten) with no message and nothing to requeue them."""
    from celery.exceptions import Reject
    from django.db import OperationalError
    from kombu.exceptions import OperationalError as BrokerError

    from messagio import records, tasks

    event, envelope = recorded_group(Ping(new_token()))

    def the_database_went_away(*args, **kwargs):
        raise OperationalError("the database went away")

    def the_broker_refuses(*args, **kwargs):
        raise BrokerError("the broker refuses it")

    monkeypatch.setattr(records, "finish", the_database_went_away)
    monkeypatch.setattr(records, "DB_RETRY_SECONDS", 0)  # give up at once
    monkeypatch.setattr(tasks, "publish", the_broker_refuses)

    outcome = tasks.deliver.apply(args=(sealed(envelope),), task_id="the-groups-task")

    assert isinstance(outcome.result, Reject) and outcome.result.requeue


def first_reply_lost(monkeypatch, meanwhile=lambda: None) -> list:
    """The first outcome a worker records commits, with its claim of the next listener,
    and its reply is lost (``meanwhile`` runs in between); the worker then sends it again.
    Returns the delivery that lost statement claimed, once it ran."""
    from django.db import OperationalError

    from messagio import records

    real_finish = records.finish
    lost = []

    def finish_whose_first_reply_is_lost(*args, **kwargs):
        outcome = real_finish(*args, **kwargs)
        if not lost:
            lost.append(kwargs.get("claim_next"))
            meanwhile()
            raise OperationalError("server closed the connection unexpectedly")
        return outcome

    monkeypatch.setattr(records, "finish", finish_whose_first_reply_is_lost)
    monkeypatch.setattr(records.time, "sleep", lambda seconds: None)  # the retry's back-off
    return lost


def test_a_claim_whose_reply_was_lost_is_taken_as_this_runs_own(monkeypatch):
    """The statement that records a listener's outcome and claims the next one committed,
    and its reply was lost: the outcome is sent again alone, and the next listener, found
    running under this very task, is run as its claim, not recorded as a lost attempt."""
    from messagio.tasks import deliver

    token = new_token()
    event, envelope = recorded_group(Ping(token))
    first, second = (spec["delivery"] for spec in envelope["listeners"][:2])
    lost = first_reply_lost(monkeypatch)

    deliver.apply(args=(sealed(envelope),), task_id="the-groups-task")

    assert lost == [second]  # the lost reply was that of the statement claiming the second
    assert Delivery.objects.get(pk=first).history.count() == 1
    claimed = Delivery.objects.get(pk=second)
    assert (claimed.status, claimed.attempts) == ("succeeded", 1)
    assert list(claimed.history.values_list("outcome", flat=True)) == ["succeeded"]
    assert Call.objects.filter(token=token, listener="second").count() == 1


def test_a_claim_another_copy_made_meanwhile_is_not_taken_for_the_lost_one(monkeypatch):
    """The same message running twice on one host (same task id and worker name): after
    this run's lost reply, the other copy claimed the next listener. That claim is not this
    run's, so this run takes it over as any redelivered copy does, recording it lost."""
    from messagio import records
    from messagio.tasks import deliver

    event, envelope = recorded_group(Ping(new_token()))
    second = envelope["listeners"][1]["delivery"]

    def the_other_copy_claims_it():
        # It finds the delivery running under its task, and claims it.
        mine = Delivery.objects.get(pk=second)
        records.claim(second, mine.task_id, mine.worker)

    first_reply_lost(monkeypatch, meanwhile=the_other_copy_claims_it)

    deliver.apply(args=(sealed(envelope),), task_id="the-groups-task")

    taken = Delivery.objects.get(pk=second)
    assert (taken.status, taken.attempts) == ("succeeded", 3)
    assert list(taken.history.order_by("number").values_list("outcome", flat=True)) == [
        "lost", "lost", "succeeded"
    ]  # fmt: skip


def test_an_outcome_written_again_after_a_lost_reply_is_recorded_once():
    from django.utils import timezone

    from messagio.records import claim, finish

    event, envelope = recorded_group(Ping(new_token()))
    delivery_id = envelope["listeners"][0]["delivery"]
    claimed = claim(delivery_id, "task", "worker@host")
    started = timezone.now()

    for _ in range(2):  # the first write committed; its reply was lost, so it is sent again
        finish(delivery_id, claimed.number, started, 1.0, result="done")

    delivery = Delivery.objects.get(pk=delivery_id)
    assert (delivery.status, delivery.result) == ("succeeded", "'done'")
    assert list(delivery.history.values_list("number", "outcome")) == [(1, "succeeded")]


def test_a_late_outcome_does_not_overwrite_a_later_attempts():
    from django.utils import timezone

    from messagio.records import AttemptTakenOverError, claim, finish

    event, envelope = recorded_group(Ping(new_token()))
    delivery_id = envelope["listeners"][0]["delivery"]
    first = claim(delivery_id, "task-1", "slow@host")
    second = claim(delivery_id, "task-1", "other@host")  # presumed dead: the message came back
    finish(delivery_id, second.number, timezone.now(), 1.0, result="second")

    with pytest.raises(AttemptTakenOverError):
        finish(delivery_id, first.number, timezone.now(), 9.0, exception=RuntimeError("late"))

    delivery = Delivery.objects.get(pk=delivery_id)
    assert (delivery.status, delivery.result, delivery.attempts) == ("succeeded", "'second'", 2)
    assert list(delivery.history.values_list("number", "outcome")) == [
        (1, "lost"),
        (2, "succeeded"),
    ]


def test_an_attempt_taken_over_while_it_ran_records_nothing_and_claims_nothing():
    from django.utils import timezone

    from messagio.models import Attempt
    from messagio.records import AttemptTakenOverError, claim, finish

    event, envelope = recorded_group(Ping(new_token()))
    first, second = (spec["delivery"] for spec in envelope["listeners"][:2])
    mine = claim(first, "task-1", "slow@host")
    claim(first, "task-1", "other@host")  # its message handed to another worker meanwhile

    with pytest.raises(AttemptTakenOverError, match="taken over"):
        finish(first, mine.number, timezone.now(), 1.0, result="late", claim_next=second)

    assert Delivery.objects.get(pk=second).status == "pending"
    assert not Attempt.objects.filter(delivery_id=second).exists()


def group_in_a_worker():
    """A recorded group's first two listeners, and the context a worker runs them in."""
    from messagio.execution import RunContext

    event, envelope = recorded_group(Ping(new_token()))
    first, second = envelope["listeners"][:2]
    ctx = RunContext(
        event_id=envelope["event"], messagio_type=envelope["type"], envelope=envelope,
        task_id="task-1", worker="slow@host",
    )  # fmt: skip
    return first, second, ctx


def test_a_worker_whose_attempt_was_taken_over_leaves_the_rest_of_the_group_to_the_other():
    from messagio.execution import run_once
    from messagio.records import claim

    first, second, ctx = group_in_a_worker()

    def taken_over_meanwhile(messagio):
        claim(first["delivery"], "task-1", "other@host")  # RabbitMQ's consumer_timeout, say

    outcome, will_retry = run_once(
        None, first, ctx, listener=taken_over_meanwhile, next_spec=second
    )

    assert ctx.taken_over and not will_retry
    assert Delivery.objects.get(pk=second["delivery"]).status == "pending"
    taken = Delivery.objects.get(pk=first["delivery"])
    assert (taken.status, taken.attempts, taken.worker) == ("running", 2, "other@host")


@pytest.mark.parametrize("fails", [False, True])
def test_an_attempt_taken_over_sends_no_signal_its_copy_will(fails):
    from messagio import signals
    from messagio.execution import run_once
    from messagio.records import claim

    first, second, ctx = group_in_a_worker()
    sent = []

    def taken_over_meanwhile(messagio):
        claim(first["delivery"], "task-1", "other@host")
        if fails:
            raise ValueError("after the takeover")

    def receiver(signal=None, **kwargs):
        sent.append(signal)

    for signal in (signals.delivery_succeeded, signals.delivery_failed):
        signal.connect(receiver, dispatch_uid="taken-over-test")
    try:
        run_once(None, first, ctx, listener=taken_over_meanwhile, next_spec=second)
    finally:
        for signal in (signals.delivery_succeeded, signals.delivery_failed):
            signal.disconnect(dispatch_uid="taken-over-test")

    assert ctx.taken_over
    assert sent == []


def test_an_exit_after_the_attempt_was_taken_over_leaves_the_rest_to_the_other_copy():
    import sys

    from messagio.execution import RECORDED_EXIT, run_once
    from messagio.records import claim

    first, second, ctx = group_in_a_worker()

    def taken_over_then_exits(messagio):
        claim(first["delivery"], "task-1", "other@host")
        sys.exit(1)

    with pytest.raises(SystemExit) as exited:
        run_once(None, first, ctx, listener=taken_over_then_exits, next_spec=second)

    assert getattr(exited.value, RECORDED_EXIT) and ctx.taken_over  # the task stops there
    assert Delivery.objects.get(pk=second["delivery"]).status == "pending"


def test_records_get_time_ordered_ids():
    event, envelope = recorded_group(Ping(new_token()))
    assert event.id.version == 7
    assert {uuid.UUID(spec["delivery"]).version for spec in envelope["listeners"]} == {7}


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's"
)
def test_messagios_statements_are_prepared_and_nobody_elses():
    from messagio.tasks import deliver

    event, envelope = published_group(Ping(new_token()))
    deliver.apply(args=(sealed(envelope),))
    Delivery.objects.filter(event_id=event.id).count()  # an ORM query on the same connection

    prepared = prepared_statements()
    assert any('INSERT INTO "messagio_delivery"' in text for text in prepared), prepared
    assert any('INSERT INTO "messagio_attempt"' in text for text in prepared), prepared
    assert not any("COUNT(*)" in text for text in prepared), prepared


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's"
)
def test_statements_the_server_lost_run_unprepared_from_then_on(monkeypatch, caplog):
    """A pooler in transaction mode hands the next transaction another server connection,
    which has none of them: psycopg would send their names for ever, and every group fail."""
    import logging

    from messagio import records
    from messagio.tasks import deliver

    monkeypatch.setattr(records, "_prepared_statements_lost", False)
    event, envelope = published_group(Ping(new_token()))
    deliver.apply(args=(sealed(envelope),))
    assert prepared_statements()
    connection.connection.pgconn.exec_(b"DEALLOCATE ALL")  # unseen by psycopg, as a pooler's

    later, envelope = published_group(Ping(new_token()))
    with caplog.at_level(logging.WARNING, logger="messagio"):
        deliver.apply(args=(sealed(envelope),))

    statuses = set(Delivery.objects.filter(event_id=later.id).values_list("status", flat=True))
    assert statuses == {"succeeded", "failed"}  # Ping's "broken" fails on purpose
    assert "set MESSAGIO['PREPARED_STATEMENTS'] = False" in caplog.text
    assert prepared_statements() == []  # nothing prepared since


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's"
)
def test_a_setting_turns_prepared_statements_off_for_poolers_that_cannot_keep_them():
    from messagio.tasks import deliver

    connection.close()  # prepared statements belong to a session: start a new one
    with override_settings(MESSAGIO={"PREPARED_STATEMENTS": False}):
        event, envelope = published_group(Ping(new_token()))
        deliver.apply(args=(sealed(envelope),))

        assert Delivery.objects.filter(event_id=event.id).count() == len(envelope["listeners"])
        assert prepared_statements() == []


def test_a_claim_waits_for_a_requeue_still_writing_and_takes_what_it_wrote():
    """A requeue makes a stuck delivery pending and publishes it in one transaction: a
    worker given the message before it commits must not read the delivery as it was
    (running under another task) and leave it to no one.

    The requeue commits once the claim has been sent and, on PostgreSQL, is seen waiting
    for its lock; SQLite shows no waiter, so there the claim may run either side of the
    commit, and the outcome is checked alike."""
    import threading

    from django.db import connections

    from messagio.records import claim

    event, envelope = published_group(Ping(new_token()))
    tasks.deliver.apply(args=(sealed(envelope),))
    stuck = Delivery.objects.filter(event_id=event.id).order_by("position").first()
    Delivery.objects.filter(pk=stuck.pk).update(status="running", task_id="the-dead-one")
    writing = threading.Event()
    claim_sent = threading.Event()

    claimer = None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # the connection the claim runs on
            cursor.execute("SELECT pg_backend_pid()")
            claimer = cursor.fetchone()[0]

    def claim_waits_for_its_lock() -> bool:
        with connections["default"].cursor() as cursor:
            # Blocked by this thread's transaction, not by anything else in the database.
            cursor.execute("SELECT pg_backend_pid() = ANY(pg_blocking_pids(%s))", [claimer])
            return cursor.fetchone()[0]

    def requeue_still_writing() -> None:
        try:
            with transaction.atomic():
                Delivery.objects.filter(pk=stuck.pk).update(status="pending")
                writing.set()  # then it publishes, and commits
                assert claim_sent.wait(10)
                if connection.vendor == "postgresql":
                    wait_for(claim_waits_for_its_lock, timeout=10, what="the claim to wait")
        finally:
            connections.close_all()

    def sent(execute, sql, params, many, context):
        claim_sent.set()
        return execute(sql, params, many, context)

    requeue = threading.Thread(target=requeue_still_writing)
    requeue.start()
    assert writing.wait(10)

    with connection.execute_wrapper(sent):
        claimed = claim(str(stuck.pk), "the-requeued-message", "w1")
    requeue.join(10)

    assert not requeue.is_alive()
    assert claimed is not None and claimed.run
    assert Delivery.objects.get(pk=stuck.pk).task_id == "the-requeued-message"


@pytest.mark.parametrize(
    ("how", "error_type", "outcome"),
    [
        ("leaves atomic open", "messagio.exceptions.ListenerLeftTransactionOpenError", "failed"),
        ("leaves autocommit off", "messagio.exceptions.ListenerLeftTransactionOpenError", "failed"),
        ("raises GeneratorExit", "builtins.GeneratorExit", "failed"),
        ("raises its own BaseException", "tests.testapp.messagio.OwnBaseException", "failed"),
        ("swallows its time limit", "messagio.exceptions.ListenerTimeoutError", "timeout"),
        (
            "runs a sync fire past its time limit",
            "messagio.exceptions.ListenerTimeoutError",
            "timeout",
        ),
    ],
)
def test_a_misbehaving_listener_is_recorded_failed_and_the_next_one_runs_and_is_recorded(
    worker, how, error_type, outcome
):
    from messagio.models import Attempt
    from tests.testapp.messagio import Misbehaves

    token = new_token()
    report = Misbehaves(token, how).fire()

    wait_for(
        lambda: (
            Delivery.objects.filter(event_id=report.event_id, finished_at__isnull=False)
            .exclude(status="running")
            .count()
            == 2
        ),
        what=f"both deliveries of a listener that {how} to be recorded",
    )
    misbehaved, after = Delivery.objects.filter(event_id=report.event_id).order_by("position")
    assert (misbehaved.status, misbehaved.attempts, misbehaved.error_type) == (
        "failed",
        1,
        error_type,
    )
    assert list(Attempt.objects.filter(delivery=misbehaved).values_list("outcome", flat=True)) == [
        outcome
    ]
    assert (after.status, after.attempts) == ("succeeded", 1)
    # What it wrote in the transaction it left open was rolled back; the next one's write stays.
    assert list(Call.objects.filter(token=token).values_list("listener", flat=True)) == ["after"]


def test_a_sync_run_stopped_by_the_limit_of_the_listener_that_fired_it_says_so(worker):
    from tests.testapp.messagio import Misbehaves, SleepsInside

    token = new_token()
    Misbehaves(token, "runs a sync fire past its time limit").fire()

    wait_for(
        lambda: Delivery.objects.filter(
            messagio_type=SleepsInside.get_name(), status="failed", event__summary__token=token
        ).exists(),
        what="the sync run to be recorded",
    )
    inner = Delivery.objects.get(messagio_type=SleepsInside.get_name(), event__summary__token=token)
    assert inner.error.startswith("stopped by the time limit of the listener running it: ")
