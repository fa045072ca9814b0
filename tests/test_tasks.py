"""messagio's Celery tasks: stable names, and what they travel as."""

import uuid

import pytest
from celery import Celery, Task

from messagio.const import TASK_NAME_PREFIX
from messagio.tasks import DELIVER_TASK, FIRE_SCHEDULED_TASK, PRUNE_TASK, RELAY_TASK, REPLAY_TASK


def test_every_messagio_task_has_its_stable_name():
    from project.celery import app

    names = {name for name in app.tasks if name.startswith(TASK_NAME_PREFIX)}

    assert names == {DELIVER_TASK, RELAY_TASK, PRUNE_TASK, FIRE_SCHEDULED_TASK, REPLAY_TASK}


ARGS = {
    DELIVER_TASK: ({"event": "e", "type": "t", "listeners": []},),
    RELAY_TASK: (),
    PRUNE_TASK: (),
    FIRE_SCHEDULED_TASK: ("tests.testapp.messagio.Ping", {"token": "t"}),
    REPLAY_TASK: (1, {"status": "failed"}),
}


@pytest.mark.parametrize(
    ("accept_content", "project_serializer", "content_type"),
    [
        (["json"], "pickle", "application/json"),
        (["json", "pickle"], "pickle", "application/json"),
        # The original library's README accepts pickle alone: JSON would be refused.
        (["pickle"], "json", "application/x-python-serialize"),
    ],
)
def test_every_messagio_task_is_sent_as_the_workers_accept_it(
    accept_content, project_serializer, content_type, monkeypatch
):
    # However it is sent (delay, apply_async, celery beat's apply_async), whatever the
    # project's own tasks are sent as.
    app = memory_app(accept_content=accept_content, task_serializer=project_serializer)
    for name, args in ARGS.items():
        app.tasks[name].apply_async(args)

    assert sent(app) == dict.fromkeys(ARGS, content_type)


class ProjectTask(Task):
    """A project's own base class for its tasks (tenant headers, request context...)."""


def test_every_messagio_task_keeps_the_projects_task_class():
    app = memory_app(task_cls=ProjectTask)

    assert all(isinstance(app.tasks[name], ProjectTask) for name in ARGS)


def test_the_deliver_task_acks_late_and_is_handed_back_whatever_the_project_says():
    # At least once does not hang on the project's settings: Celery's defaults acknowledge a
    # message before its task runs, and one whose pool process died.
    app = memory_app(task_acks_late=False, task_reject_on_worker_lost=False)

    deliver = app.tasks[DELIVER_TASK]
    assert (deliver.acks_late, deliver.reject_on_worker_lost) == (True, True)
    relay = app.tasks[RELAY_TASK]  # the project's settings, where messagio says nothing
    assert (relay.acks_late, relay.reject_on_worker_lost) == (False, False)


def test_the_replay_task_is_acknowledged_as_it_starts_whatever_the_project_says():
    # A replay at a rate can outlast the brokers' redelivery timeouts: a second worker would
    # be handed it while the first still runs it. The relay sends a lost one again.
    app = memory_app(task_acks_late=True, task_reject_on_worker_lost=True)

    replay = app.tasks[REPLAY_TASK]
    assert (replay.acks_late, replay.reject_on_worker_lost) == (False, False)
    relay = app.tasks[RELAY_TASK]
    assert (relay.acks_late, relay.reject_on_worker_lost) == (True, True)


@pytest.fixture(autouse=True)
def _no_broker_from_the_environment(monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to broker=


def memory_app(task_cls=None, **config):
    app = Celery(broker="memory://", set_as_current=False, task_cls=task_cls)
    app.conf.update(task_default_queue=f"serializer-test-{uuid.uuid4().hex[:8]}", **config)
    return app


def sent(app):
    """{task name: content type} of the messages waiting in the app's default queue."""
    with app.connection_for_read() as connection:
        # Only this test's own arguments are in it.
        waiting = connection.SimpleQueue(app.conf.task_default_queue, accept=["json", "pickle"])
        messages = {}
        for _ in ARGS:
            message = waiting.get(timeout=5)
            messages[message.headers["task"]] = message.content_type
            message.ack()
        waiting.close()
    return messages


def test_a_scheduled_fire_names_only_a_messagio_class_already_loaded():
    import sys

    from messagio.tasks import fire_scheduled

    sys.modules.pop("this", None)
    for path in ("this.Anything", "os.system", "builtins:print"):
        with pytest.raises(TypeError, match="not a Messagio subclass this worker has loaded"):
            fire_scheduled(path, {})

    assert "this" not in sys.modules  # named by a message, never imported


def test_a_scheduled_fire_asks_no_loaded_module_for_what_it_lacks(monkeypatch):
    import sys
    import types

    from messagio.tasks import fire_scheduled

    asked = []
    lazy = types.ModuleType("lazy_package")
    lazy.__getattr__ = lambda name: asked.append(name)  # as a package importing on demand
    monkeypatch.setitem(sys.modules, "lazy_package", lazy)

    with pytest.raises(TypeError, match="not a Messagio subclass this worker has loaded"):
        fire_scheduled("lazy_package.submodule.Anything", {})

    assert asked == []


def test_a_scheduled_fire_may_name_its_class_where_a_loaded_package_exports_it(monkeypatch):
    import tests.testapp
    from messagio.tasks import fire_scheduled
    from messagio.testing import capture_messagios
    from tests.testapp.messagio import Ping

    monkeypatch.setattr(tests.testapp, "ExportedPing", Ping, raising=False)

    with capture_messagios() as fired:
        fire_scheduled("tests.testapp.ExportedPing", {"token": "t"})

    fired.assert_fired(Ping, 1, token="t")


def test_a_tasks_argsrepr_names_four_listeners_and_counts_the_rest():
    from messagio.tasks import _argsrepr

    def group(count):
        specs = [{"id": f"shop.l{n}"} for n in range(count)]
        return {"type": "shop.Placed", "event": "e", "listeners": specs}

    assert _argsrepr(group(4)) == "(<shop.Placed event e for shop.l0, shop.l1, shop.l2, shop.l3>,)"
    assert _argsrepr(group(16)) == "(<shop.Placed event e for shop.l0, shop.l1, shop.l2, 13 more>,)"


def test_the_deliver_task_refuses_retry_only_while_a_listener_runs():
    # Outside a listener (a project's Task class with autoretry_for, after an error that
    # escaped the group), retry() is Celery's: here, called directly, it raises Retry.
    from celery.exceptions import Retry

    from messagio.exceptions import CeleryRetryRefusedError
    from messagio.execution import listener_running
    from messagio.tasks import deliver

    with pytest.raises(Retry):
        deliver.retry()
    running = listener_running.set(True)
    try:
        with pytest.raises(CeleryRetryRefusedError, match="autoretry_for"):
            deliver.retry()
    finally:
        listener_running.reset(running)


def test_a_message_of_a_newer_layout_is_sent_back_unread_for_an_upgraded_worker(monkeypatch):
    # A deploy under way: the processes that fire run a newer messagio than this worker.
    from messagio import tasks
    from messagio.seals import sealed

    newer = {
        "v": 99, "event": "0190c2a0-0000-7000-8000-000000000001", "type": "shop.Placed",
        "payload": "", "priority": 5, "queue": None, "record": True,
        "listeners": [{"delivery": "d1", "position": 0, "how": "unknown to this worker"}],
    }  # fmt: skip
    sent_back = []
    monkeypatch.setattr(tasks, "publish", lambda envelope, **options: sent_back.append(
        (envelope, options)))  # fmt: skip

    tasks.deliver.apply(args=(sealed(newer),), task_id="its-task")

    assert sent_back == [
        (sealed(newer), {"countdown": tasks.DB_OUTAGE_REQUEUE_DELAY, "task_id": "its-task"})
    ]


def test_an_envelope_of_a_newer_layout_is_published_as_it_came():
    from messagio.dispatch import compacted

    newer = {"v": 99, "listeners": [{"delivery": "d1", "id": "a.b", "import_path": "a:b"}]}

    assert compacted(newer) is newer


@pytest.mark.django_db
def test_a_groups_message_runs_the_listeners_after_one_a_retry_runs(monkeypatch):
    # A retry travels alone: the group's message, handed back after its worker died, does
    # not leave the pending listeners after the retried one to it.
    from django.utils import timezone

    from messagio import records, tasks
    from messagio.dispatch import compacted
    from messagio.models import Attempt, Delivery, Event
    from messagio.payload import encode
    from messagio.registry import registry
    from messagio.seals import sealed
    from tests.testapp.messagio import Ping
    from tests.testapp.models import Call

    monkeypatch.setattr(records, "publish_all", lambda envelopes: [])  # retries, captured
    subscriptions = registry.subscriptions_for(Ping)
    event = Event.objects.create(
        messagio_type=Ping.get_name(), fired_at=timezone.now(), published_at=timezone.now(),
        state="published", payload=encode(Ping("held")), listener_count=len(subscriptions),
    )  # fmt: skip
    rows = [
        Delivery.objects.create(
            event=event,
            position=position,
            messagio_type=Ping.get_name(),
            listener=subscription.listener_id,
            status="pending",
            task_id="M",
        )  # fmt: skip
        for position, subscription in enumerate(subscriptions)
    ]
    first, *after = rows
    Delivery.objects.filter(pk=first.pk).update(
        status="running", attempts=2, task_id="R", worker="w2", started_at=timezone.now()
    )
    Attempt.objects.create(delivery=first, number=1, outcome=Attempt.Outcome.RETRIED)
    envelope = records.envelopes(event, rows)[0]

    tasks.deliver.apply(args=(sealed(compacted(envelope)),), task_id="M", hostname="w1")

    statuses = dict(Delivery.objects.filter(event=event).values_list("pk", "status"))
    assert statuses[first.pk] == "running"  # the retry's, still
    assert all(statuses[d.pk] in ("succeeded", "failed", "retrying") for d in after), statuses
    assert Call.objects.filter(token="held").exists()


@pytest.mark.django_db
def test_without_records_a_workers_delivery_signals_name_no_delivery(monkeypatch):
    # A receiver looking the delivery up would find no row: there is none.
    from messagio import records, tasks
    from messagio.dispatch import compacted
    from messagio.payload import encode
    from messagio.registry import registry
    from messagio.seals import sealed
    from messagio.signals import delivery_failed, delivery_succeeded
    from tests.testapp.messagio import Ping

    monkeypatch.setattr(records, "publish_all", lambda envelopes: [])  # retries, captured
    ping = Ping("unrecorded")
    event, deliveries = records.build_records(
        ping, encode(ping, 1_000_000), registry.subscriptions_for(Ping), origin="fire"
    )
    (envelope,) = records.envelopes(event, deliveries, record=False)
    sent = []

    def note(**kwargs):
        sent.append(kwargs["delivery_id"])

    for signal in (delivery_succeeded, delivery_failed):
        signal.connect(note, weak=False)
    try:
        tasks.deliver.apply(args=(sealed(compacted(envelope)),), task_id="unrecorded")
    finally:
        for signal in (delivery_succeeded, delivery_failed):
            signal.disconnect(note)

    assert len(sent) == len(deliveries) and set(sent) == {None}
