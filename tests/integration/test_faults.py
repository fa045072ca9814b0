"""Faults a worker survives: a hanging listener, a database outage, a stuck delivery."""

import datetime
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from kombu import Exchange, Queue

from messagio import Messagio, listen_to_message
from messagio.brokers import is_amqp, is_redis
from messagio.models import Delivery, Event
from messagio.relay import relay
from messagio.report import DispatchReport
from project.celery import app
from tests.integration.conftest import BROKER_URL, Worker, database_url, purge_queue
from tests.polling import wait_for
from tests.tcp_proxy import TcpProxy
from tests.testapp.messagio import FileGated, Fixable, Hang
from tests.testapp.models import Call
from tests.testapp.runtime_listeners import runtime_listener

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_listener_past_its_time_limit_is_stopped_and_recorded_as_timed_out(worker):
    token = uuid.uuid4().hex
    report = Hang(token).fire()

    delivery = wait_for(
        lambda: Delivery.objects.filter(event_id=report.event_id, status="failed").first(),
        what="the hanging listener to be stopped",
    )
    assert delivery.error_type == "messagio.exceptions.ListenerTimeoutError"
    assert "time limit of 0.5s" in delivery.error
    assert list(delivery.history.values_list("outcome", flat=True)) == ["timeout"]
    assert not Call.objects.filter(token=token, listener="hangs-woke").exists()


def fire_file_gated(worker: Worker, folder: Path) -> DispatchReport:
    """Fire a FileGated to the one worker on the crash queue and wait for its listener to
    start. Returns the fire's report."""
    report = FileGated(uuid.uuid4().hex, str(folder)).fire()
    try:
        wait_for(lambda: (folder / "started").exists(), timeout=90, what="the listener to start")
    except AssertionError as exc:
        rows = Delivery.objects.filter(event_id=report.event_id).values_list(
            "status", "attempts", "error"
        )
        raise AssertionError(
            f"{exc}\ndeliveries: {list(rows)}\nworker:\n{worker.output()}"
        ) from None
    return report


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs a database server to cut the way to"
)
def test_a_worker_that_loses_its_database_mid_listener_records_the_outcome_once_it_is_back(
    start_worker, tmp_path
):
    db = connection.settings_dict
    proxy = TcpProxy((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))).start()
    proxied = database_url().replace(
        f"@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/", f"@127.0.0.1:{proxy.port}/"
    )
    assert str(proxy.port) in proxied
    # Nothing an earlier test left on the queue (a listener never released) runs first.
    purge_queue(settings.TEST_CRASH_QUEUE)
    worker = start_worker([settings.TEST_CRASH_QUEUE], concurrency=1, env={"DATABASE_URL": proxied})
    try:
        report = fire_file_gated(worker, tmp_path)

        proxy.cut()
        (tmp_path / "release").touch()
        wait_for(
            lambda: "database unavailable" in worker.output(),
            what="the worker to notice the outage",
        )
        proxy.restore()

        delivery = wait_for(
            lambda: Delivery.objects.filter(event_id=report.event_id, status="succeeded").first(),
            what="the outcome to be recorded after the outage",
        )
        assert delivery.attempts == 1
        assert delivery.result == "'released'"
    finally:
        (tmp_path / "release").touch()  # a listener left waiting would hold the worker's stop
        worker.stop()
        proxy.stop()


def stuck_after_its_fix():
    """A delivery whose first attempt failed, its fix since deployed, left ``running`` for
    two hours as a worker that died on a broker without redelivery would leave it."""
    token = uuid.uuid4().hex
    report = Fixable(token).fire()
    wait_for(
        lambda: Delivery.objects.filter(event_id=report.event_id, status="failed").exists(),
        what="the first attempt",
    )
    Call.objects.create(token=token, listener="fix-deployed")
    long_ago = timezone.now() - datetime.timedelta(hours=2)
    Delivery.objects.filter(event_id=report.event_id).update(
        status="running", started_at=long_ago, worker="gone@nowhere"
    )
    return report.event_id


def succeeds_after_a_lost_attempt(event_id) -> None:
    delivery = wait_for(
        lambda: Delivery.objects.filter(event_id=event_id, status="succeeded").first(),
        what="the requeued delivery to succeed",
    )
    assert list(delivery.history.order_by("number").values_list("outcome", flat=True)) == [
        "failed",
        "lost",
        "succeeded",
    ]


def test_the_relay_requeues_a_delivery_stuck_running_past_the_timeout(worker):
    event_id = stuck_after_its_fix()

    assert relay(grace=0).requeued == 1

    succeeds_after_a_lost_attempt(event_id)


def test_a_requeue_the_broker_refuses_leaves_the_delivery_as_it_was_for_the_next_run(
    worker, broker_outage
):
    event_id = stuck_after_its_fix()
    broker_outage.cut()

    assert relay(grace=0).requeued == 0

    # Not left pending with no message: as it was, its lost attempt not yet recorded.
    delivery = Delivery.objects.get(event_id=event_id)
    assert (delivery.status, delivery.worker) == ("running", "gone@nowhere")
    assert list(delivery.history.values_list("outcome", flat=True)) == ["failed"]
    broker_outage.restore()
    assert relay(grace=0).requeued == 1
    succeeds_after_a_lost_attempt(event_id)


@pytest.mark.skipif(
    not (is_redis(app) or is_amqp(app)), reason="the filesystem broker has no connection to cut"
)
def test_a_broker_connection_cut_while_a_listener_runs_is_recorded_once(start_worker, tmp_path):
    url = urlsplit(BROKER_URL)
    proxy = TcpProxy((url.hostname or "127.0.0.1", url.port or (6379 if is_redis(app) else 5672)))
    proxy.start()
    proxied = urlunsplit(
        url._replace(
            netloc=url.netloc.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{proxy.port}")
        )
    )
    purge_queue(settings.TEST_CRASH_QUEUE)  # see the test above
    worker = start_worker(
        [settings.TEST_CRASH_QUEUE], concurrency=1, env={"CELERY_BROKER_URL": proxied}
    )
    try:
        report = fire_file_gated(worker, tmp_path)

        proxy.cut()  # the worker holds the message unacknowledged
        if is_amqp(app):
            # RabbitMQ hands the message to a worker again at once: this one stops the
            # listener rather than run on beside the copy (W013). Celery says so before it
            # stops it: released only once the copy runs, it cannot finish first.
            wait_for(
                lambda: "cannot be acknowledged after a connection loss" in worker.output(),
                what="the worker to say it stops the listener",
            )
            proxy.restore()
            wait_for(
                lambda: (tmp_path / "runs").read_text().count("run") == 2,
                what="the handed-back message to run the listener again",
            )
        (tmp_path / "release").touch()
        delivery = wait_for(
            lambda: Delivery.objects.filter(event_id=report.event_id, status="succeeded").first(),
            what="the outcome to be recorded",
        )
    finally:
        (tmp_path / "release").touch()  # see the test above
        worker.stop()
        proxy.stop()

    history = list(delivery.history.order_by("number").values_list("outcome", flat=True))
    if is_amqp(app):
        # Stopped, then run again by the message RabbitMQ handed back: one after the other.
        assert history == ["lost", "succeeded"]
        assert (tmp_path / "runs").read_text().count("run") == 2
    else:
        # Redis keeps the message until its visibility timeout: the listener finished.
        assert history == ["succeeded"]
        assert (tmp_path / "runs").read_text().count("run") == 1


@dataclass
class ToARefusedQueue(Messagio):
    token: str


@pytest.fixture
def refused_queue():
    """A queue someone declared with other arguments than Celery's: RabbitMQ refuses every
    publish to it (PRECONDITION_FAILED), while the broker is up for everything else."""
    if not is_amqp(app):
        pytest.skip("RabbitMQ refuses a queue declared otherwise")
    name = f"refused-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), routing_key=name, queue_arguments={"x-max-priority": 3})
    # Straight to the broker, not through a test's outage proxy.
    with app.connection_for_write(BROKER_URL) as conn:
        queue.bind(conn.default_channel).declare()
    yield name
    with app.connection_for_write(BROKER_URL) as conn:
        try:
            conn.default_channel.queue_delete(name)
        finally:
            conn.default_channel.exchange_delete(name)


@pytest.mark.usefixtures("isolated_registry")
def test_an_event_the_broker_refuses_alone_does_not_hold_back_the_relay(
    worker, broker_outage, refused_queue
):
    listen_to_message(ToARefusedQueue, queue=refused_queue)(runtime_listener)
    refused = ToARefusedQueue(uuid.uuid4().hex).fire()  # the oldest: the relay's first
    broker_outage.cut()
    waiting = Fixable(uuid.uuid4().hex).fire()
    broker_outage.restore()

    first = relay(grace=0, batch_size=1)
    # Held for PUBLISH_CLAIM_TIMEOUT, the refused event leaves the next batch to the others.
    second = relay(grace=0, batch_size=1)

    assert (first.published, first.failed, first.unreachable) == (0, 1, False)
    assert (second.published, second.failed) == (1, 0)
    event = Event.objects.get(pk=refused.event_id)
    assert (event.state, event.claimed_at is not None) == ("recorded", True)
    assert "PRECONDITION_FAILED" in event.publish_error
    wait_for(
        lambda: Delivery.objects.filter(
            event_id=waiting.event_id, status__in=["succeeded", "failed"]
        ).exists(),
        what="the event behind the refused one to be delivered",
    )
    # By hand, the held event is tried at once: refused still, then published once fixed.
    with pytest.raises(CommandError, match=r"refused 1 event\(s\) on their own"):
        call_command("messagio_relay", "--grace", "0")
    with app.connection_for_write(BROKER_URL) as conn:
        conn.default_channel.queue_delete(refused_queue)  # the fix: Celery declares it anew
    call_command("messagio_relay", "--grace", "0")
    assert Event.objects.get(pk=refused.event_id).state == "published"


def test_the_relay_stops_at_the_first_event_while_the_broker_cannot_be_reached(
    worker, broker_outage
):
    broker_outage.cut()
    fired = [Fixable(uuid.uuid4().hex).fire().event_id for _ in range(2)]

    report = relay(grace=0)

    assert (report.published, report.failed, report.unreachable) == (0, 1, True)
    assert report.remaining == 2
    # Not held: the next run tries them at once.
    assert Event.objects.filter(pk__in=fired, claimed_at__isnull=True).count() == 2
    broker_outage.restore()
    assert relay(grace=0).published == 2
    wait_for(
        lambda: (
            Delivery.objects.filter(event_id__in=fired, status__in=["succeeded", "failed"]).count()
            == 2
        ),
        what="both events to be delivered",
    )


def test_a_requeue_the_broker_refuses_alone_does_not_hold_back_the_others(worker, refused_queue):
    # Requeued event by event, in event id order: the refused one first.
    first, second = sorted([stuck_after_its_fix(), stuck_after_its_fix()])
    Delivery.objects.filter(event_id=first).update(queue=refused_queue)

    assert relay(grace=0).requeued == 1

    delivery = Delivery.objects.get(event_id=first)
    assert (delivery.status, delivery.worker) == ("running", "gone@nowhere")  # as it was
    succeeds_after_a_lost_attempt(second)


def test_a_lost_event_the_broker_refuses_alone_makes_the_relay_command_fail(worker, refused_queue):
    token = uuid.uuid4().hex
    report = Fixable(token).fire()
    wait_for(
        lambda: Delivery.objects.filter(event_id=report.event_id, status="failed").exists(),
        what="its first attempt",
    )
    # Waiting for a message the broker lost, on a queue the broker now refuses.
    Delivery.objects.filter(event_id=report.event_id).update(status="pending", queue=refused_queue)
    published_at = Event.objects.get(pk=report.event_id).published_at

    with pytest.raises(CommandError, match=r"refused 1 event\(s\) on their own"):
        call_command("messagio_relay", "--grace", "0", "--lost-after", "0")

    assert Event.objects.get(pk=report.event_id).published_at == published_at  # put back
    assert Delivery.objects.get(event_id=report.event_id).status == "pending"


@pytest.mark.skipif(
    not is_amqp(app), reason="RabbitMQ drops a message for a queue it does not have"
)
def test_a_kept_producer_declares_its_queue_again_after_a_reconnect(monkeypatch):
    """messagio binds the queue to a kept producer's channel once (messagio.publisher):
    after the broker lost the queue and the connection, the next publish declares it
    again on the new connection instead of publishing to no queue."""
    from celery import Celery

    from messagio.publisher import kept_producers, publish_task
    from messagio.tasks import DELIVER_TASK

    proxy = TcpProxy(("127.0.0.1", urlsplit(BROKER_URL).port or 5672)).start()
    url = urlsplit(BROKER_URL)
    proxied = urlunsplit(
        url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}")
    )
    name = f"redeclared-{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to broker=
    own = Celery(broker=proxied, set_as_current=False)
    own.conf.update(task_default_queue=name, task_queues=[Queue(name, Exchange(name), name)])
    envelope = {"event": "e", "type": "t", "listeners": [], "priority": 5, "queue": None}
    try:
        for _ in range(2):  # the second publish declares the queue bound to the channel
            assert publish_task(own.tasks[DELIVER_TASK], (envelope,), {"priority": 5})
        with app.connection_for_write(BROKER_URL) as conn:
            conn.default_channel.queue_delete(name)  # as a broker that lost it
        proxy.cut()  # and the kept connection with it
        proxy.restore()

        task_id = publish_task(own.tasks[DELIVER_TASK], (envelope,), {"priority": 5})

        with app.connection_for_read(BROKER_URL) as conn:
            waiting = conn.SimpleQueue(name, accept=["json"])
            message = waiting.get(timeout=5)
            message.ack()
            waiting.close()
        assert message.headers["id"] == task_id
        assert kept_producers(own).count == 1
    finally:
        kept_producers(own).force_close_all()
        with app.connection_for_write(BROKER_URL) as conn:
            conn.default_channel.queue_delete(name)
            conn.default_channel.exchange_delete(name)
        proxy.stop()
