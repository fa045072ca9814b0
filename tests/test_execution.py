"""Running one listener: its time limit, and a listener that ends its process."""

import contextlib
import signal
import sys
import time
import uuid
from dataclasses import dataclass

import pytest
from celery.exceptions import WorkerTerminate

from messagio import MessageCenter, Messagio
from messagio.execution import time_limit
from messagio.models import Delivery


def test_an_alarm_due_as_the_limit_is_lifted_neither_escapes_nor_stays_installed():
    before = signal.getsignal(signal.SIGALRM)
    with time_limit(5):
        handler = signal.getsignal(signal.SIGALRM)

    handler(signal.SIGALRM, None)  # what runs if the alarm comes as the listener returns

    assert signal.getsignal(signal.SIGALRM) is before


def test_a_listener_that_swallows_its_timeout_is_stopped_again():
    from messagio.exceptions import ListenerTimeoutError

    swallowed = []
    with pytest.raises(ListenerTimeoutError), time_limit(0.05) as limit:
        try:
            limit.start()
            try:
                time.sleep(5)  # the listener's work, past its limit
            except Exception as exc:  # noqa: BLE001 - what a listener's own handler may do
                swallowed.append(exc)
            time.sleep(5)  # and it goes on
        finally:
            limit.stop()
    assert len(swallowed) == 1


ZEROS = [0] * 5_000_000


def ends_in_c_past_its_repeat(messagio: object) -> bool:
    from messagio.exceptions import ListenerTimeoutError

    try:
        time.sleep(5)
    except ListenerTimeoutError:
        pass
    # Its last work in C, past the next repeat, then straight back to messagio: the alarm is
    # handled in the first Python frame after it (the with's exit, were the limit not
    # stopped in its body first).
    return -1 in ZEROS


def no_timer_left(before) -> bool:
    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and (
        signal.getsignal(signal.SIGALRM) is before
    )


def test_a_limit_too_short_to_enter_its_listener_leaves_no_timer_behind():
    from messagio.exceptions import ListenerTimeoutError

    before = signal.getsignal(signal.SIGALRM)
    for _ in range(200):  # due at once: as the timer is armed, or as the body begins
        with contextlib.suppress(ListenerTimeoutError), time_limit(1e-6) as limit:
            try:
                limit.start()
            finally:
                limit.stop()
        assert no_timer_left(before)


def test_a_limit_longer_than_the_timer_takes_is_the_longest_it_takes():
    before = signal.getsignal(signal.SIGALRM)

    with time_limit(1e12) as limit:
        try:
            limit.start()
            ran = True
        finally:
            limit.stop()

    assert ran and no_timer_left(before)


def test_a_limit_inside_another_leaves_the_outer_one_running():
    from messagio.exceptions import ListenerTimeoutError

    with pytest.raises(ListenerTimeoutError), time_limit(0.2) as outer:
        try:
            outer.start()
            with time_limit(5) as inner:  # a listener running another's limit: not armed
                try:
                    inner.start()
                finally:
                    inner.stop()
            time.sleep(5)
        finally:
            outer.stop()


def test_a_repeat_due_as_the_listener_returns_leaves_no_timer_behind():
    from messagio.execution import RunContext, run_once

    before = signal.getsignal(signal.SIGALRM)
    ctx = RunContext(str(uuid.uuid4()), "t", record=False, enforce_time_limit=True)
    spec = {"id": "l", "attempt": 1, "max_retries": 0, "autoretry_for": [], "time_limit": 0.01}

    # The outcome (and its exception's traceback) held, as deliver holds it meanwhile.
    outcome, _ = run_once(object(), spec, ctx, listener=ends_in_c_past_its_repeat)

    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before
    assert outcome is not None


@dataclass
class Quits(Messagio):
    code: int


ran: list[str] = []


def quits(messagio: Quits) -> None:
    ran.append("quits")
    sys.exit(messagio.code)


def after_quits(messagio: Messagio) -> None:
    ran.append("after")


def subscribe(messagio_type: type[Messagio], *listeners) -> None:
    """Subscribe ``listeners`` in order (the test's isolated_registry undoes it)."""
    ran.clear()
    for listener in listeners:
        MessageCenter.singleton().subscribe(messagio_type, listener)


@pytest.mark.django_db(transaction=True)
def test_a_listener_that_exits_is_recorded_as_failed_and_the_exit_goes_through(
    isolated_registry,
):
    from messagio.signals import delivery_failed, messagio_fired

    subscribe(Quits, quits, after_quits)
    failed, fired = [], []

    def on_failed(**kwargs):
        failed.append((kwargs["listener"], kwargs["will_retry"]))

    def on_fired(**kwargs):
        fired.append(kwargs["event_id"])

    delivery_failed.connect(on_failed)
    messagio_fired.connect(on_fired)
    try:
        with pytest.raises(SystemExit):
            Quits(3).fire(sync=True)
    finally:
        delivery_failed.disconnect(on_failed)
        messagio_fired.disconnect(on_fired)

    exited, after = Delivery.objects.order_by("position")
    # Every final failure is signalled, the listeners never run too; not the fire, whose
    # report the exit cut short (it would say nothing failed).
    assert failed == [(exited.listener, False), (after.listener, False)]
    assert fired == []
    assert (exited.status, exited.error_type, exited.error) == (
        "failed",
        "builtins.SystemExit",
        "3",
    )
    assert [a.outcome for a in exited.history.all()] == ["failed"]
    assert ran == ["quits"]
    # Nothing else would run it (no message in a sync fire): failed, never run, replayable.
    assert (after.status, after.attempts, after.error_type) == ("failed", 0, "builtins.SystemExit")
    assert "not run" in after.error and not after.history.exists()
    # Among the recent failures of the admin's lists and overview, which go by start.
    assert after.started_at == after.finished_at and after.finished_at >= exited.finished_at


def retried_then_requeued(messagio: Quits) -> None:
    from messagio.recovery import requeue

    ran.append("retried")
    if ran.count("retried") == 1:
        raise ValueError("fails once")
    # Its second attempt ran past STUCK_TIMEOUT: the relay takes it over meanwhile.
    requeue(Delivery.objects.filter(status="running"), "stuck")


@pytest.mark.django_db(transaction=True)
def test_a_sync_fire_whose_retry_was_requeued_leaves_the_rest_to_the_requeue(
    isolated_registry, monkeypatch
):
    from messagio import records

    published: list[list[str]] = []

    def publish_all(envelopes):
        published.extend([spec["delivery"] for spec in e["listeners"]] for e in envelopes)
        return ["task"] * len(envelopes)

    monkeypatch.setattr(records, "publish_all", publish_all)
    ran.clear()
    center = MessageCenter.singleton()
    center.subscribe(Quits, retried_then_requeued, autoretry_for=(ValueError,), max_retries=1)
    center.subscribe(Quits, after_quits, priority=1)  # another group: one in-process run

    Quits(0).fire(sync=True)

    requeued, after = Delivery.objects.order_by("position")
    # Every listener after it goes with it, whatever its group: nothing else would run it.
    assert published == [[str(requeued.pk)], [str(after.pk)]]
    assert ran == ["retried", "retried"]  # this run stops there
    assert (requeued.status, after.status) == ("pending", "pending")
    # Its claim stays: were the requeue's message lost, the relay finds them by it.
    assert requeued.event.claimed_at is not None


#: A SystemExit of a class whose dotted path is longer than Delivery.error_type holds.
LongExit = type("Exit" + "s" * 300, (SystemExit,), {})


def quits_with_a_long_class(messagio: Quits) -> None:
    raise LongExit(messagio.code)


@pytest.mark.django_db(transaction=True)
def test_an_error_class_too_long_for_its_field_is_cut_for_the_listeners_not_run_too(
    isolated_registry,
):
    subscribe(Quits, quits_with_a_long_class, after_quits)

    with pytest.raises(LongExit):
        Quits(3).fire(sync=True)

    limit = Delivery._meta.get_field("error_type").max_length
    exited, after = Delivery.objects.order_by("position")
    assert exited.error_type == after.error_type  # "not run" for the one that exited
    assert len(after.error_type) == limit and after.error_type.startswith("tests.")


def shut_down(messagio: Quits) -> None:
    raise WorkerTerminate()  # what a solo pool's worker raises in the task on a hard shutdown


class PoolKill(BaseException):
    """What gevent's Timeout or GreenletExit are: a BaseException a pool stops a task with,
    told from a listener's own by its module (gevent is not installed here)."""


PoolKill.__module__ = "gevent.timeout"


def killed_by_its_pool(messagio: Quits) -> None:
    raise PoolKill()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("listener", "raised"),
    [(shut_down, WorkerTerminate), (killed_by_its_pool, PoolKill)],
    ids=["worker-shutting-down", "pool-stopping-the-task"],
)
def test_a_task_stopped_in_a_listener_goes_through_and_leaves_it_running_for_its_message(
    isolated_registry, listener, raised
):
    subscribe(Quits, listener, after_quits)

    with pytest.raises(raised):
        Quits(0).fire(sync=True)

    interrupted, after = Delivery.objects.order_by("position")
    assert (interrupted.status, after.status) == ("running", "pending")
    assert not interrupted.history.exists()
    assert ran == []


def interrupted(messagio: Quits) -> None:
    raise KeyboardInterrupt  # as Ctrl-C does, where Python's default SIGINT handler runs


@pytest.mark.django_db(transaction=True)
def test_a_ctrl_c_in_a_sync_fire_leaves_the_listener_running_for_the_relay(isolated_registry):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    subscribe(Quits, interrupted)

    with pytest.raises(KeyboardInterrupt):
        Quits(0).fire(sync=True)

    assert Delivery.objects.get().status == "running"  # requeued once STUCK_TIMEOUT passes


# --- Outcomes whose text is hard to make ----------------------------------------------------


@dataclass
class Awkward(Messagio):
    number: int


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Mute(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def returns_unprintable(messagio: Awkward) -> Unprintable:
    return Unprintable()


def raises_mute(messagio: Awkward) -> None:
    raise Mute()


def raises_nul(messagio: Awkward) -> None:
    raise ValueError("a\x00b\ud800c")  # neither goes into a PostgreSQL text column as is


def is_cancelled(messagio: Awkward) -> None:
    import asyncio

    raise asyncio.CancelledError()  # a BaseException, not an Exception


@pytest.mark.django_db(transaction=True)
def test_an_outcome_whose_text_cannot_be_made_or_stored_is_recorded_all_the_same(
    isolated_registry,
):
    subscribe(Awkward, returns_unprintable, raises_mute, raises_nul, is_cancelled, after_quits)

    Awkward(1).fire(sync=True)

    unprintable, mute, nul, cancelled, after = Delivery.objects.order_by("position")
    assert unprintable.status == "succeeded"
    assert unprintable.result == "<Unprintable: its text could not be made (RuntimeError)>"
    assert (mute.status, mute.error_type) == ("failed", "tests.test_execution.Mute")
    assert mute.error == "<Mute: its text could not be made (RuntimeError)>"
    assert (nul.status, nul.error) == ("failed", "a\\x00b\\ud800c")
    assert "ValueError: a\\x00b\\ud800c" in nul.traceback
    assert (cancelled.status, cancelled.error_type) == (
        "failed",
        "asyncio.exceptions.CancelledError",
    )
    assert [a.outcome for a in cancelled.history.all()] == ["failed"]
    assert after.status == "succeeded" and ran == ["after"]


# --- Listeners that leave a transaction open, or swallow an enclosing limit -----------------


def leaves_a_savepointless_block_open(messagio: Quits) -> None:
    from django.db import transaction

    transaction.atomic(savepoint=False).__enter__()
    ran.append("left open")


def leaves_a_savepoint_open(messagio: Quits) -> None:
    from django.db import transaction

    transaction.atomic().__enter__()
    ran.append("left open")


@pytest.mark.django_db  # the test's own atomic block encloses the sync fire
@pytest.mark.parametrize(
    ("listener", "said"),
    [
        (leaves_a_savepoint_open, "it was rolled back"),
        (leaves_a_savepointless_block_open, "it was rolled back"),
    ],
)
def test_a_block_left_open_in_the_callers_transaction_fails_the_listener_not_the_caller(
    isolated_registry, listener, said
):
    from django.db import connection

    subscribe(Quits, listener, after_quits)
    depth = len(connection.atomic_blocks)

    Quits(0).fire(sync=True)

    assert len(connection.atomic_blocks) == depth and not connection.needs_rollback
    left, after = Delivery.objects.order_by("position")
    assert (left.status, left.error_type) == (
        "failed",
        "messagio.exceptions.ListenerLeftTransactionOpenError",
    )
    assert said in left.error
    assert (after.status, ran) == ("succeeded", ["left open", "after"])


def breaks_a_unique_constraint(messagio: Quits) -> None:
    from tests.testapp.models import Call

    first = Call.objects.create(token="partial", listener="breaks")
    ran.append("breaks")
    Call.objects.create(pk=first.pk, token="duplicate", listener="breaks")  # IntegrityError


def swallows_a_database_error(messagio: Quits) -> None:
    from django.db import IntegrityError

    try:
        breaks_a_unique_constraint(messagio)
    except IntegrityError:
        ran.append("swallowed")


def writes_after(messagio: Quits) -> None:
    from tests.testapp.models import Call

    Call.objects.create(token="after", listener="after")
    ran.append("after")


@pytest.mark.django_db  # the test's own atomic block encloses the sync fire
@pytest.mark.parametrize(
    ("listener", "error_type", "ran_first"),
    [
        (breaks_a_unique_constraint, "django.db.utils.IntegrityError", ["breaks"]),
        (
            swallows_a_database_error,
            "messagio.exceptions.ListenerTransactionRolledBackError",
            ["breaks", "swallowed"],
        ),
    ],
    ids=["raised", "swallowed"],
)
def test_a_database_error_in_the_callers_transaction_undoes_that_listener_only(
    isolated_registry, listener, error_type, ran_first
):
    from django.db import connection

    from tests.testapp.models import Call

    subscribe(Quits, listener, writes_after)

    report = Quits(0).fire(sync=True)

    assert not connection.needs_rollback  # the caller's transaction goes on
    assert ran == [*ran_first, "after"]
    assert [o.succeeded for o in report.outcomes] == [False, True]
    failed, after = Delivery.objects.order_by("position")
    assert (failed.status, failed.error_type, after.status) == ("failed", error_type, "succeeded")
    assert list(Call.objects.values_list("token", flat=True)) == ["after"]


def commits_durably(messagio: Quits) -> None:
    from django.db import transaction

    with transaction.atomic(durable=True):
        ran.append("durable")


@pytest.mark.django_db  # a test case's transaction, in which Django allows durable blocks
def test_a_listener_may_open_a_durable_block_in_a_test_cases_transaction(isolated_registry):
    subscribe(Quits, commits_durably)

    report = Quits(0).fire(sync=True)

    assert (ran, [o.succeeded for o in report.outcomes]) == (["durable"], [True])


def turns_autocommit_off_on_records(messagio: Quits) -> None:
    from django.db import transaction

    transaction.set_autocommit(False, using="records")
    ran.append("autocommit off")


@pytest.mark.django_db(transaction=True, databases=["default", "records"])
def test_autocommit_left_off_on_a_database_first_used_by_the_listener_is_given_back(
    isolated_registry,
):
    import threading

    from django.db import connections

    subscribe(Quits, turns_autocommit_off_on_records)
    left_as: list[bool] = []

    def in_a_fresh_thread() -> None:  # its connections are new: none used before the fire
        Quits(0).fire(sync=True)
        left_as.append(connections["records"].get_autocommit())
        connections.close_all()

    thread = threading.Thread(target=in_a_fresh_thread)
    thread.start()
    thread.join()

    assert left_as == [True]
    delivery = Delivery.objects.get()
    assert delivery.status == "failed"
    assert "autocommit turned off on 'records'" in delivery.error


@dataclass
class Inner(Messagio):
    n: int


def swallows_everything_for_a_while(messagio: Inner) -> str:
    swallowed = 0
    while swallowed < 2:  # the enclosing limit and its first repeat
        try:
            time.sleep(0.02)
        except Exception:  # noqa: BLE001 - the loop the enclosing limit must beat
            swallowed += 1
    # Returns just after a repeat: the next is a whole period away, time for the outcome.
    return "finished anyway"


@pytest.mark.django_db(transaction=True)
def test_a_sync_run_that_swallows_the_limit_of_the_listener_running_it_is_stopped_by_it(
    isolated_registry,
):
    from messagio.exceptions import ListenerTimeoutError

    MessageCenter.singleton().subscribe(Inner, swallows_everything_for_a_while)

    # What a limited listener in a worker that fires with sync=True does.
    with contextlib.suppress(ListenerTimeoutError), time_limit(0.5) as limit:
        try:
            limit.start()
            Inner(1).fire(sync=True)
        finally:
            limit.stop()

    delivery = Delivery.objects.get()
    assert delivery.status == "failed"
    assert delivery.error.startswith("stopped by the time limit of the listener running it")
