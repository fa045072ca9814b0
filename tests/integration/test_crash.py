"""A worker killed mid-listener: the delivery completes once, and its attempts show the crash."""

import os
import signal
import uuid
from typing import Any

import pytest
from django.conf import settings

from messagio.brokers import is_amqp
from messagio.conf import get_setting
from messagio.models import Delivery
from project.celery import app
from tests.integration.conftest import purge_queue
from tests.polling import wait_for
from tests.testapp.messagio import Exits, KillsItsWorker, Slow, SlowPair
from tests.testapp.models import Call

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def kill_mid_listener_and_restart(start_worker: Any, messagio_class: type, token: str) -> Any:
    """Fire, SIGKILL the worker while the slow listener runs, start one of the same name,
    and release the listener once it has started again there. Returns (report, worker)."""
    name = f"crash-{token[:8]}"
    # Nothing an earlier test left on the queue (its slow listener never released) runs first.
    purge_queue(settings.TEST_CRASH_QUEUE)
    first = start_worker([settings.TEST_CRASH_QUEUE], concurrency=1, name=name)
    report = messagio_class(token).fire()
    try:
        wait_for(
            lambda: Call.objects.filter(token=token, listener="slow-started").exists(),
            what="the slow listener to start",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker:\n{first.output()}") from None

    first.stop(signal.SIGKILL)  # the whole process group: main process and pool child
    # RabbitMQ hands the unacked message back at once; on Redis and the filesystem broker
    # the restarted worker of the same name requeues what its predecessor left running.
    second = start_worker([settings.TEST_CRASH_QUEUE], concurrency=1, name=name)
    try:
        wait_for(
            lambda: Call.objects.filter(token=token, listener="slow-started").count() == 2,
            what="the listener to start again on the restarted worker",
        )
    except AssertionError:
        Call.objects.create(token=token, listener="release")
        second.stop()  # left consuming the crash queue, it would take a later test's messages
        raise
    Call.objects.create(token=token, listener="release")
    return report, second


def both_succeeded(event_id: Any) -> list:
    """The event's two deliveries, once both succeeded."""
    return wait_for(
        lambda: (
            rows
            if len(rows := list(Delivery.objects.filter(event_id=event_id))) == 2
            and all(d.status == "succeeded" for d in rows)
            else None
        ),
        what="both deliveries to succeed",
    )


def run_both_listeners(start_worker: Any, messagio: Any, timeout: float = 30) -> tuple[Any, list]:
    """Fire a messagio of two listeners on the crash queue to a new one-process worker, wait
    until both finished, stop the worker. Returns (worker, deliveries in order)."""
    purge_queue(settings.TEST_CRASH_QUEUE)  # see kill_mid_listener_and_restart
    worker = start_worker([settings.TEST_CRASH_QUEUE], concurrency=1)
    report = messagio.fire()

    def both_finished():
        deliveries = list(Delivery.objects.filter(event_id=report.event_id).order_by("position"))
        finished = [d for d in deliveries if d.status in ("succeeded", "failed")]
        return deliveries if len(finished) == 2 else None

    try:
        deliveries = wait_for(both_finished, timeout=timeout, what="both listeners to finish")
    except AssertionError:
        rows = Delivery.objects.filter(event_id=report.event_id).values_list(
            "position", "status", "attempts", "error_type"
        )
        raise AssertionError(f"deliveries: {list(rows)}\nworker:\n{worker.output()}") from None
    finally:
        worker.stop()
    return worker, deliveries


def test_a_worker_killed_mid_listener_is_followed_by_one_success_with_two_attempts(start_worker):
    token = uuid.uuid4().hex
    report, worker = kill_mid_listener_and_restart(start_worker, Slow, token)
    try:
        delivery = wait_for(
            lambda: Delivery.objects.filter(event_id=report.event_id, status="succeeded").first(),
            what="the delivery to succeed",
        )
    finally:
        worker.stop()
    assert delivery.attempts == 2
    assert list(delivery.history.order_by("number").values_list("number", "outcome")) == [
        (1, "lost"),
        (2, "succeeded"),
    ]
    assert Call.objects.filter(token=token, listener="slow-finished").count() == 1


def test_the_listeners_after_the_one_a_worker_died_in_run_once(start_worker):
    # The listener after the slow one is pending in the same task message, which the
    # filesystem broker never gives back (and Redis only after its visibility timeout).
    token = uuid.uuid4().hex
    report, worker = kill_mid_listener_and_restart(start_worker, SlowPair, token)
    try:
        deliveries = both_succeeded(report.event_id)
    finally:
        worker.stop()
    slow_one, after = sorted(deliveries, key=lambda d: d.position)
    assert [a.outcome for a in slow_one.history.order_by("number")] == ["lost", "succeeded"]
    assert [a.outcome for a in after.history.order_by("number")] == ["succeeded"]
    assert Call.objects.filter(token=token, listener="slow-finished").count() == 1
    assert Call.objects.filter(token=token, listener="after-slow").count() == 1


def test_a_listener_that_exits_its_process_is_recorded_failed_and_the_next_one_runs(
    start_worker,
):
    # sys.exit() in a listener would end the pool process, which Celery takes for a lost
    # worker: the message comes back or is dropped with the listeners after it. It is
    # recorded as the listener's failure, and the group goes on in the same process.
    token = uuid.uuid4().hex
    worker, (exited, after) = run_both_listeners(start_worker, Exits(token))
    assert (exited.status, exited.error_type) == ("failed", "builtins.SystemExit")
    assert [a.outcome for a in exited.history.all()] == ["failed"]
    assert (after.status, after.attempts) == ("succeeded", 1)
    assert Call.objects.filter(token=token, listener="exits").count() == 1
    assert Call.objects.filter(token=token, listener="after-exit").count() == 1
    assert "exitcode 3" not in worker.output()  # the pool process did not end with it


def test_a_listener_that_kills_every_worker_it_runs_on_is_failed_after_max_lost_attempts(
    start_worker,
):
    # Celery hands the message of a killed pool process back (task_reject_on_worker_lost):
    # without a limit, the listener would kill the next pool process, and the next, for ever.
    token = uuid.uuid4().hex
    worker, (killer, after) = run_both_listeners(start_worker, KillsItsWorker(token), timeout=90)
    limit = get_setting("MAX_LOST_ATTEMPTS")
    assert (killer.status, killer.attempts) == ("failed", limit + 1)
    assert killer.error_type == "messagio.exceptions.WorkerLostTooOftenError"
    assert [a.outcome for a in killer.history.order_by("number")] == ["lost"] * limit + ["failed"]
    assert f"was lost {limit} times" in worker.output()  # reported by the worker that gave up
    assert Call.objects.filter(token=token, listener="kills").count() == limit
    assert (after.status, after.attempts) == ("succeeded", 1)
    assert Call.objects.filter(token=token, listener="after-kill").count() == 1


def test_a_bulk_replay_whose_worker_is_killed_is_sent_again_by_the_relay_and_finishes(
    start_worker, worker
):
    """The replay task is acknowledged as it starts: a worker killed mid-replay takes its
    message with it. The relay finds the replay without progress, sends its task again, and
    the replay goes on where it was: each delivery replayed once."""
    from django.test import override_settings
    from django.utils import timezone

    from messagio import tasks
    from messagio.models import Replay
    from messagio.replays import take_over_lost
    from messagio.seals import seal_of
    from tests.testapp.messagio import Fixable

    token = uuid.uuid4().hex
    events = [str(Fixable(token).fire().event_id) for _ in range(6)]
    wait_for(
        lambda: Delivery.objects.filter(event_id__in=events, status="failed").count() == 6,
        what="the six first attempts to fail",
    )
    Call.objects.create(token=token, listener="fix-deployed")
    lookups = {"event_id__in": events, "status": "failed"}
    now = timezone.now()
    record = Replay.objects.create(
        total=6, rate=2, delivery_filter=lookups, snapshot_at=now, progress_at=now
    )
    purge_queue(settings.TEST_CRASH_QUEUE)
    doomed = start_worker([settings.TEST_CRASH_QUEUE], concurrency=1)
    arguments = [record.pk, lookups]
    # As the admin sends it, to a queue only the worker to be killed takes.
    tasks.replay.apply_async(args=(*arguments, seal_of(arguments)), queue=settings.TEST_CRASH_QUEUE)
    wait_for(
        lambda: Delivery.objects.filter(replay=record).count() >= 2,
        what="the replay to be under way",
    )

    doomed.stop(signal.SIGKILL)
    with override_settings(MESSAGIO={"STUCK_TIMEOUT": 1}):
        wait_for(lambda: take_over_lost().resumed, what="the relay to send it again")

    wait_for(
        lambda: Replay.objects.filter(pk=record.pk, state="finished").exists(),
        timeout=60,
        what="the resumed replay to finish",
    )
    wait_for(
        lambda: Delivery.objects.filter(event_id__in=events, status="succeeded").count() == 6,
        what="every replayed delivery to succeed",
    )
    deliveries = Delivery.objects.filter(event_id__in=events)
    assert sorted(d.attempts for d in deliveries) == [2] * 6  # each replayed once
    assert Call.objects.filter(token=token, listener="fixable").count() == 12
    assert Replay.objects.get(pk=record.pk).queued == 6


def test_a_cold_shutdown_then_a_restart_runs_a_groups_listeners_once_each_in_order(
    start_worker,
):
    # The stopped worker's message goes back to the broker, and on Redis and the filesystem
    # broker the restarted one of the same name requeues what its predecessor left running:
    # two messages of one group, run side by side by its two processes. The one that finds
    # the slow listener running under the other leaves the rest of the group to it.
    token = uuid.uuid4().hex
    name = f"cold-{token[:8]}"
    purge_queue(settings.TEST_CRASH_QUEUE)
    first = start_worker([settings.TEST_CRASH_QUEUE], concurrency=1, name=name)
    report = SlowPair(token).fire()
    wait_for(
        lambda: Call.objects.filter(token=token, listener="slow-started").exists(),
        what="the slow listener to start",
    )
    os.kill(first.process.pid, signal.SIGQUIT)  # the main process: Celery's cold shutdown
    first.process.wait(30)
    second = start_worker([settings.TEST_CRASH_QUEUE], concurrency=2, name=name)
    try:
        wait_for(
            lambda: Call.objects.filter(token=token, listener="slow-started").count() == 2,
            what="the slow listener to start again",
        )
        if not is_amqp(app):  # RabbitMQ hands the message back, and nothing is requeued
            # The other message has run what it would of the group before the slow one ends.
            wait_for(lambda: " succeeded in " in second.output(), what="the second message to end")
        Call.objects.create(token=token, listener="release")

        deliveries = both_succeeded(report.event_id)
    finally:
        Call.objects.get_or_create(token=token, listener="release")
        second.stop()
    calls = list(Call.objects.filter(token=token).values_list("listener", flat=True))
    assert calls.count("slow-finished") == 1 and calls.count("after-slow") == 1, calls
    assert calls.index("slow-finished") < calls.index("after-slow"), calls
    slow_one, _ = sorted(deliveries, key=lambda d: d.position)
    assert [a.outcome for a in slow_one.history.order_by("number")] == ["lost", "succeeded"]


def test_a_solo_pools_cold_shutdown_leaves_the_listener_running_for_its_message(start_worker):
    # The shutdown's handler runs in the listener's thread and raises there (the solo pool
    # cannot kill its task): taken for the listener's own failure, the interrupted listener
    # was failed for good and its message acknowledged.
    token = uuid.uuid4().hex
    name = f"solo-{token[:8]}"
    purge_queue(settings.TEST_CRASH_QUEUE)
    solo = start_worker([settings.TEST_CRASH_QUEUE], name=name, options=("--pool=solo",))
    report = Slow(token).fire()
    wait_for(
        lambda: Call.objects.filter(token=token, listener="slow-started").exists(),
        what="the slow listener to start",
    )
    os.kill(solo.process.pid, signal.SIGQUIT)
    solo.process.wait(30)
    delivery = Delivery.objects.get(event_id=report.event_id)
    assert delivery.status == "running", solo.output()

    again = start_worker([settings.TEST_CRASH_QUEUE], concurrency=1, name=name)
    try:
        wait_for(
            lambda: Call.objects.filter(token=token, listener="slow-started").count() == 2,
            what="the listener to start again",
        )
        Call.objects.create(token=token, listener="release")
        delivery = wait_for(
            lambda: Delivery.objects.filter(event_id=report.event_id, status="succeeded").first(),
            what="the delivery to succeed",
        )
    finally:
        Call.objects.get_or_create(token=token, listener="release")
        again.stop()
    assert list(delivery.history.order_by("number").values_list("outcome", flat=True)) == [
        "lost",
        "succeeded",
    ]
