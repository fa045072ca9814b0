"""Signals for integrations, and what an in-process or sync fire records."""

from dataclasses import dataclass, field

import pytest
from django.db import transaction
from django.test import override_settings

from messagio import InProcessMessageCenter, MessageCenter, Messagio
from messagio.models import Attempt, Delivery, Event
from messagio.signals import delivery_failed, delivery_succeeded, messagio_fired

pytestmark = pytest.mark.django_db(transaction=True)

IN_PROCESS = {"MESSAGE_CENTER": "messagio.center.InProcessMessageCenter"}


@dataclass
class Pinged(Messagio):
    token: str
    seen: list = field(default_factory=list)


class Rollback(Exception):
    """Raised to roll a transaction back."""


attempts: list[str] = []


@pytest.fixture(autouse=True)
def clear_attempts():
    attempts.clear()


def succeed(event: Pinged) -> str:
    event.seen.append("succeed")
    return f"ok {event.token}"


def fail(event: Pinged) -> None:
    raise RuntimeError(f"fail {event.token}")


def fail_once(event: Pinged) -> str:
    attempts.append("fail_once")
    if len(attempts) == 1:
        raise ConnectionError("not yet")
    return "second time lucky"


def succeed_again(event: Pinged) -> str:
    return "again"


SUCCEED = "tests.test_signals.succeed"
SUCCEED_AGAIN = "tests.test_signals.succeed_again"
FAIL = "tests.test_signals.fail"
FAIL_ONCE = "tests.test_signals.fail_once"


def subscribe(*listeners, **options) -> None:
    for listener in listeners:
        MessageCenter.singleton().subscribe(Pinged, listener, **options)


@pytest.fixture
def received():
    """What each signal was sent with, in order: ``{"fired": [...], "succeeded": [...], ...}``."""
    log: dict[str, list[dict]] = {"fired": [], "succeeded": [], "failed": []}
    receivers = {
        messagio_fired: lambda **kwargs: log["fired"].append(kwargs),
        delivery_succeeded: lambda **kwargs: log["succeeded"].append(kwargs),
        delivery_failed: lambda **kwargs: log["failed"].append(kwargs),
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver, weak=False)
    yield log
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)


def fire_in_process(messagio: Messagio):
    with override_settings(MESSAGIO=IN_PROCESS):
        return messagio.fire()


# --- Signals ------------------------------------------------------------------------------


def test_messagio_fired_is_sent_with_the_messagio_event_id_and_report(received):
    subscribe(succeed)
    pinged = Pinged("a")

    report = fire_in_process(pinged)

    (sent,) = received["fired"]
    assert sent["sender"] is Pinged
    assert sent["signal"] is messagio_fired
    assert sent["messagio"] is pinged
    assert sent["report"] is report
    assert sent["event_id"] == report.event_id == Event.objects.get().pk


def test_messagio_fired_is_sent_after_the_listeners_ran(received):
    subscribe(succeed, fail)

    fire_in_process(Pinged("a"))

    assert len(received["fired"]) == 1
    report = received["fired"][0]["report"]
    assert [o.listener_id for o in report.outcomes] == [SUCCEED, FAIL]


def test_delivery_succeeded_is_sent_with_the_delivery_listener_and_result(received):
    subscribe(succeed)
    pinged = Pinged("a")

    fire_in_process(pinged)

    delivery = Delivery.objects.get()
    (sent,) = received["succeeded"]
    assert str(sent["delivery_id"]) == str(delivery.pk)
    assert str(sent["event_id"]) == str(delivery.event_id)
    assert sent["listener"] == SUCCEED
    assert sent["result"] == "ok a"
    # The copy the listener ran on (it travelled as a worker's would), not the fired object.
    assert sent["messagio"] is not pinged
    assert sent["messagio"] == Pinged("a", seen=["succeed"])
    assert pinged.seen == []
    assert received["failed"] == []


def test_delivery_failed_is_sent_with_the_exception_and_no_retry(received):
    subscribe(fail)

    fire_in_process(Pinged("b"))

    delivery = Delivery.objects.get()
    (sent,) = received["failed"]
    assert str(sent["delivery_id"]) == str(delivery.pk)
    assert str(sent["event_id"]) == str(delivery.event_id)
    assert sent["listener"] == FAIL
    assert isinstance(sent["exception"], RuntimeError)
    assert str(sent["exception"]) == "fail b"
    assert sent["will_retry"] is False
    assert sent["messagio"] == Pinged("b")
    assert received["succeeded"] == []


@dataclass
class Other(Messagio):
    token: str


def test_delivery_signals_are_sent_by_the_messagios_class(received):
    subscribe(succeed, fail)
    heard: dict[type, list[str]] = {Pinged: [], Other: []}

    def hear(sender=None, signal=None, **kwargs):
        heard[sender].append("succeeded" if signal is delivery_succeeded else "failed")

    for messagio_type in heard:
        for signal in (delivery_succeeded, delivery_failed):
            signal.connect(hear, sender=messagio_type, dispatch_uid=f"hear-{messagio_type}")
    try:
        fire_in_process(Pinged("a"))
    finally:
        for messagio_type in heard:
            for signal in (delivery_succeeded, delivery_failed):
                signal.disconnect(sender=messagio_type, dispatch_uid=f"hear-{messagio_type}")

    assert heard == {Pinged: ["succeeded", "failed"], Other: []}


def test_one_delivery_signal_is_sent_per_listener_in_order(received):
    subscribe(succeed, fail)
    MessageCenter.singleton().subscribe(Pinged, lambda event: "third", name="tests.third")

    fire_in_process(Pinged("c"))

    assert [s["listener"] for s in received["succeeded"]] == [SUCCEED, "tests.third"]
    assert [s["listener"] for s in received["failed"]] == [FAIL]
    delivery_ids = {str(s["delivery_id"]) for s in received["succeeded"] + received["failed"]}
    assert delivery_ids == {str(pk) for pk in Delivery.objects.values_list("pk", flat=True)}


def test_a_failed_attempt_that_will_be_retried_is_signalled_before_the_success(received):
    subscribe(fail_once, autoretry_for=(ConnectionError,), max_retries=2)

    fire_in_process(Pinged("d"))

    (failed,) = received["failed"]
    (succeeded,) = received["succeeded"]
    assert failed["will_retry"] is True
    assert isinstance(failed["exception"], ConnectionError)
    assert succeeded["result"] == "second time lucky"
    assert failed["delivery_id"] == succeeded["delivery_id"]


def test_the_last_failed_attempt_is_signalled_without_retry(received):
    subscribe(fail, autoretry_for=(RuntimeError,), max_retries=1)

    fire_in_process(Pinged("e"))

    assert [s["will_retry"] for s in received["failed"]] == [True, False]
    assert received["succeeded"] == []


def test_a_sync_fire_sends_the_signals_with_the_very_object(received):
    subscribe(succeed, fail)
    pinged = Pinged("f")

    report = pinged.fire(sync=True)

    (fired,) = received["fired"]
    assert fired["messagio"] is pinged
    assert fired["event_id"] == report.event_id
    assert received["succeeded"][0]["messagio"] is pinged
    assert received["failed"][0]["messagio"] is pinged


def test_a_fire_inside_a_transaction_is_signalled_on_commit(received):
    subscribe(succeed)

    with override_settings(MESSAGIO=IN_PROCESS):
        with transaction.atomic():
            Pinged("g").fire()
            assert received == {"fired": [], "succeeded": [], "failed": []}
            # Recorded in the caller's transaction, like an outbox; nothing ran yet.
            assert Event.objects.get().deliveries.get().status == "pending"

    assert len(received["fired"]) == 1
    assert len(received["succeeded"]) == 1
    assert received["fired"][0]["event_id"] == Event.objects.get().pk


def test_a_fire_rolled_back_is_never_signalled_nor_recorded(received):
    subscribe(succeed)

    with override_settings(MESSAGIO=IN_PROCESS):
        with pytest.raises(Rollback):
            with transaction.atomic():
                Pinged("h").fire()
                raise Rollback

    assert received == {"fired": [], "succeeded": [], "failed": []}
    assert not Event.objects.exists()


def test_without_recording_the_signals_are_sent_without_a_delivery_id(received):
    subscribe(succeed)

    with override_settings(MESSAGIO={**IN_PROCESS, "RECORD": False}):
        Pinged("i").fire()

    assert not Event.objects.exists()
    assert len(received["fired"]) == 1
    (sent,) = received["succeeded"]
    assert sent["delivery_id"] is None
    assert sent["result"] == "ok i"


def test_the_fired_and_delivery_signals_carry_the_same_event_id(received):
    subscribe(succeed, fail)

    fire_in_process(Pinged("j"))

    assert received["succeeded"][0]["event_id"] == received["fired"][0]["event_id"]
    assert received["failed"][0]["event_id"] == received["fired"][0]["event_id"]


@pytest.fixture
def broken_receivers():
    """A receiver of every signal that raises, as a broken metrics hook would."""

    def broken(**kwargs):
        raise RuntimeError("metrics backend down")

    signals = (messagio_fired, delivery_succeeded, delivery_failed)
    for signal in signals:
        signal.connect(broken, weak=False)
    yield
    for signal in signals:
        signal.disconnect(broken)


def test_a_receiver_that_raises_stops_neither_the_fire_nor_the_other_listeners(
    received, broken_receivers, caplog
):
    subscribe(succeed, fail, succeed_again)

    report = fire_in_process(Pinged("k"))

    assert report.event_id == received["fired"][0]["event_id"]
    assert [s["listener"] for s in received["succeeded"]] == [SUCCEED, SUCCEED_AGAIN]
    assert [s["listener"] for s in received["failed"]] == [FAIL]
    assert sorted(Delivery.objects.values_list("status", flat=True)) == [
        "failed",
        "succeeded",
        "succeeded",
    ]
    raised = [r for r in caplog.records if r.name == "django.dispatch"]
    assert len(raised) == 4  # fired, two succeeded, one failed
    assert all("metrics backend down" in str(r.exc_info[1]) for r in raised)


@pytest.fixture
def receiver_whose_query_fails():
    """A receiver whose own SQL fails, as a metrics hook writing to a missing table would."""
    from django.db import connection

    def query(**kwargs):
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM messagio_no_such_metrics_table")

    delivery_succeeded.connect(query, weak=False)
    yield
    delivery_succeeded.disconnect(query)


@pytest.mark.django_db  # the test's own transaction encloses the sync fire, as a TestCase's
def test_a_receivers_database_error_in_the_callers_transaction_stops_nothing(
    received, receiver_whose_query_fails
):
    # On PostgreSQL the error aborted the caller's transaction: the next listener's claim
    # failed and fire() raised.
    from django.db import connection

    subscribe(succeed, fail, succeed_again)

    report = Pinged("q").fire(sync=True)

    assert [o.succeeded for o in report.outcomes] == [True, False, True]
    assert [s["listener"] for s in received["succeeded"]] == [SUCCEED, SUCCEED_AGAIN]
    assert not connection.needs_rollback
    assert Event.objects.filter(pk=report.event_id).exists()  # the transaction goes on


@pytest.mark.django_db  # the test's own transaction encloses the sync fire, as a TestCase's
def test_a_receivers_plain_error_in_the_callers_transaction_undoes_no_other_receivers_writes(
    received, broken_receivers
):
    from tests.testapp.models import Call

    def audit(**kwargs):
        Call.objects.create(token="audit", listener=kwargs["listener"])

    delivery_succeeded.connect(audit, weak=False)
    try:
        subscribe(succeed)
        Pinged("r").fire(sync=True)
    finally:
        delivery_succeeded.disconnect(audit)

    assert list(Call.objects.filter(token="audit").values_list("listener", flat=True)) == [SUCCEED]


def exits(event: Pinged) -> None:
    raise SystemExit(3)


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "not recorded"])
def test_a_sync_fire_a_listener_exits_in_signals_the_listeners_it_left(received, record):
    subscribe(succeed, exits, succeed_again)

    with override_settings(MESSAGIO={"RECORD": record}), pytest.raises(SystemExit):
        Pinged("x").fire(sync=True)

    assert received["fired"] == []  # its report, cut short, would say nothing failed
    assert [s["listener"] for s in received["failed"]] == [
        "tests.test_signals.exits",
        SUCCEED_AGAIN,
    ]
    assert all((s["delivery_id"] is None) is not record for s in received["failed"])


# --- What an in-process fire records ------------------------------------------------------


def test_an_in_process_fire_records_an_inline_event_of_origin_fire():
    subscribe(succeed, fail)

    report = fire_in_process(Pinged("k"))

    event = Event.objects.get()
    assert event.pk == report.event_id
    assert event.origin == Event.Origin.FIRE
    assert event.state == Event.State.INLINE
    assert event.messagio_type == "tests.test_signals.Pinged"
    assert event.listener_count == 2
    assert event.summary == {"token": "k", "seen": "[]"}
    assert bytes(event.payload)  # signed pickle, for replays
    assert event.published_at is None


def test_an_in_process_fire_records_each_deliverys_outcome():
    subscribe(succeed, fail)

    fire_in_process(Pinged("l"))

    ok, failed = Delivery.objects.order_by("position")
    assert (ok.listener, ok.status, ok.attempts) == (SUCCEED, "succeeded", 1)
    assert ok.result == "'ok l'"
    assert ok.error_type == "" and ok.traceback == ""
    assert ok.finished_at is not None and ok.duration_ms is not None
    assert (failed.listener, failed.status, failed.attempts) == (FAIL, "failed", 1)
    assert failed.error_type == "builtins.RuntimeError"
    assert failed.error == "fail l"
    assert "RuntimeError: fail l" in failed.traceback


def test_an_in_process_fire_records_one_attempt_per_run():
    subscribe(succeed, fail)

    fire_in_process(Pinged("m"))

    rows = list(
        Attempt.objects.order_by("delivery__position").values_list(
            "delivery__listener", "number", "outcome"
        )
    )
    assert rows == [(SUCCEED, 1, "succeeded"), (FAIL, 1, "failed")]


def test_an_in_process_retry_is_recorded_as_another_attempt():
    subscribe(fail_once, autoretry_for=(ConnectionError,), max_retries=2)

    fire_in_process(Pinged("n"))

    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    history = list(delivery.history.values_list("number", "outcome", "error_type"))
    assert history == [(1, "retried", "builtins.ConnectionError"), (2, "succeeded", "")]


def test_an_in_process_fire_records_higher_priorities_first():
    MessageCenter.singleton().subscribe(Pinged, fail, priority=1)
    MessageCenter.singleton().subscribe(Pinged, succeed, priority=9)

    fire_in_process(Pinged("o"))

    positions = list(Delivery.objects.order_by("position").values_list("listener", "priority"))
    assert positions == [(SUCCEED, 9), (FAIL, 1)]


def test_a_sync_fire_records_an_inline_event_of_origin_sync():
    subscribe(succeed, fail)

    report = Pinged("p").fire(sync=True)

    event = Event.objects.get()
    assert event.pk == report.event_id
    assert event.origin == Event.Origin.SYNC
    assert event.state == Event.State.INLINE
    statuses = list(Delivery.objects.order_by("position").values_list("listener", "status"))
    assert statuses == [(SUCCEED, "succeeded"), (FAIL, "failed")]
    assert Attempt.objects.count() == 2


def notes_the_claim(event: Pinged) -> None:
    event.seen.append(Event.objects.values_list("claimed_at", flat=True).get())


def test_a_sync_fire_claims_its_event_while_it_runs_and_no_longer():
    # Claimed, the relay leaves it to this run; a run that never ends, it publishes what is
    # left once the claim is older than STUCK_TIMEOUT.
    MessageCenter.singleton().subscribe(Pinged, notes_the_claim)
    pinged = Pinged("p")

    report = pinged.fire(sync=True)

    event = Event.objects.get(pk=report.event_id)
    assert pinged.seen == [event.fired_at]
    assert event.claimed_at is None


def test_a_sync_fire_through_the_in_process_center_records_origin_sync():
    subscribe(succeed)

    with override_settings(MESSAGIO=IN_PROCESS):
        report = InProcessMessageCenter.singleton().send(Pinged("q"), sync=True)

    assert Event.objects.get(pk=report.event_id).origin == Event.Origin.SYNC


def test_a_fire_without_listeners_records_an_event_without_deliveries():
    report = fire_in_process(Pinged("r"))

    event = Event.objects.get(pk=report.event_id)
    assert event.listener_count == 0
    assert not event.deliveries.exists()


def test_a_fire_inside_a_transaction_reports_the_event_it_records():
    subscribe(succeed)

    with override_settings(MESSAGIO=IN_PROCESS):
        with transaction.atomic():
            report = Pinged("s").fire()

    assert Event.objects.get().pk == report.event_id
