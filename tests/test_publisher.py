"""messagio.publisher: a fire's message on a kept producer is the message apply_async sends."""

import functools
import gc
import os
import threading
import uuid
import weakref

import pytest
from celery import Celery, Task
from celery.local import Proxy
from celery.signals import before_task_publish
from kombu import Exchange, Queue, pools
from kombu.exceptions import EncodeError

from messagio.publisher import kept_group, kept_producers, publish_task
from messagio.tasks import DELIVER_TASK

ENVELOPE = {"event": "e", "type": "t", "listeners": [], "priority": 5, "queue": None}


@pytest.fixture(autouse=True)
def _no_broker_from_the_environment(monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to broker=


def memory_app(**config):
    app = Celery(broker="memory://", set_as_current=False)
    queue = f"publisher-test-{uuid.uuid4().hex[:8]}"
    app.conf.update(
        task_default_queue=queue,
        task_queues=[Queue(queue, Exchange(queue), routing_key=queue, max_priority=10)],
        **config,
    )
    return app


def received(app, count):
    """The raw messages waiting in the app's default queue, oldest first."""
    with app.connection_for_read() as connection:
        waiting = connection.SimpleQueue(app.conf.task_default_queue, accept=["json"])
        messages = []
        for _ in range(count):
            message = waiting.get(timeout=5)
            message.ack()
            messages.append(message)
        waiting.close()
    return messages


#: What differs between any two messages of one task: their ids and where they came from.
PER_MESSAGE = {"id", "root_id", "origin", "correlation_id"}


def comparable(message):
    headers = {k: v for k, v in message.headers.items() if k not in PER_MESSAGE}
    properties = {
        k: v for k, v in message.properties.items() if k not in PER_MESSAGE and k != "delivery_tag"
    }
    delivery_info = {k: v for k, v in message.delivery_info.items() if k != "delivery_tag"}
    return headers, properties, delivery_info, message.content_type, message.decode()


def test_a_kept_producer_sends_the_message_apply_async_sends():
    app = memory_app(
        task_send_sent_event=True,
        task_annotations={DELIVER_TASK: {"time_limit": 30, "soft_time_limit": 20}},
    )
    deliver = app.tasks[DELIVER_TASK]
    options = {"priority": 7, "argsrepr": "(<t event e>,)", "kwargsrepr": "{}"}

    task_id = publish_task(deliver, (ENVELOPE,), dict(options))
    deliver.apply_async((ENVELOPE,), **options)

    kept, applied = received(app, 2)
    assert kept.headers["id"] == task_id
    assert comparable(kept) == comparable(applied)
    assert kept.properties["priority"] == 7
    assert kept.headers["argsrepr"] == "(<t event e>,)"
    assert kept.headers["timelimit"] == [30, 20]


def test_the_task_routes_of_the_project_are_followed():
    app = memory_app()
    routed = f"routed-{uuid.uuid4().hex[:8]}"
    app.conf.task_routes = {DELIVER_TASK: {"queue": routed}}

    publish_task(app.tasks[DELIVER_TASK], (ENVELOPE,), {"priority": 5})

    with app.connection_for_read() as connection:
        waiting = connection.SimpleQueue(routed, accept=["json"])
        assert waiting.get(timeout=5).headers["task"] == DELIVER_TASK
        waiting.close()


def test_one_producer_serves_one_publish_after_another():
    app = memory_app()
    deliver = app.tasks[DELIVER_TASK]

    for _ in range(3):
        assert publish_task(deliver, (ENVELOPE,), {"priority": 5})

    kept = kept_producers(app)
    assert (kept.count, len(kept.idle)) == (1, 1)
    assert len(received(app, 3)) == 3


def hold_first_publish(publish_second):
    """Publish once on this thread, and ``publish_second()`` on another while the first
    holds its producer (from inside Celery's before_task_publish)."""
    outcome = {}

    def during_first(**kwargs):
        before_task_publish.disconnect(during_first)
        other = threading.Thread(target=lambda: outcome.update(second=publish_second()))
        other.start()
        other.join(10)

    before_task_publish.connect(during_first, weak=False)
    return outcome


def test_threads_publishing_at_once_never_share_a_producer():
    app = memory_app()
    deliver = app.tasks[DELIVER_TASK]
    outcome = hold_first_publish(lambda: publish_task(deliver, (ENVELOPE,), {"priority": 5}))

    first = publish_task(deliver, (ENVELOPE,), {"priority": 5})

    assert first and outcome["second"] and first != outcome["second"]
    assert kept_producers(app).count == 2
    assert {m.headers["id"] for m in received(app, 2)} == {first, outcome["second"]}


def test_past_broker_pool_limit_apply_async_publishes():
    app = memory_app(broker_pool_limit=1)
    deliver = app.tasks[DELIVER_TASK]
    outcome = hold_first_publish(lambda: publish_task(deliver, (ENVELOPE,), {"priority": 5}))

    assert publish_task(deliver, (ENVELOPE,), {"priority": 5})
    assert outcome["second"] is None  # the caller falls back to apply_async
    assert kept_producers(app).count == 1


def test_no_producer_is_kept_when_celery_keeps_no_connections():
    app = memory_app(broker_pool_limit=None)

    assert publish_task(app.tasks[DELIVER_TASK], (ENVELOPE,), {"priority": 5}) is None


@pytest.mark.parametrize(
    ("config", "options"),
    [
        ({"task_always_eager": True}, {}),
        ({}, {"countdown": 5}),
        ({"task_annotations": {DELIVER_TASK: {"expires": 60}}}, {}),
        ({"task_annotations": {DELIVER_TASK: {"ignore_result": False}}}, {}),
        ({"task_annotations": {DELIVER_TASK: {"time_limit": 5, "soft_time_limit": 9}}}, {}),
    ],
    ids=["eager", "countdown", "expires", "results-stored", "soft-limit-past-hard"],
)
def test_apply_async_publishes_what_the_kept_producer_would_send_differently(config, options):
    app = memory_app(**config)

    assert publish_task(app.tasks[DELIVER_TASK], (ENVELOPE,), {"priority": 5, **options}) is None


def traced(original):
    """A wrapper as monitoring tools (Sentry's tracing) put around apply_async or send_task
    to add their headers."""

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        return original(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("where", ["task class", "task", "app class", "app"])
def test_a_wrapped_apply_async_or_send_task_is_left_to_do_the_publishing(where, monkeypatch):
    app = memory_app()
    deliver = app.tasks[DELIVER_TASK]
    owner, name = {
        "task class": (type(deliver), "apply_async"),
        "task": (deliver, "apply_async"),  # mock.patch.object(deliver, "apply_async") does this
        "app class": (type(app), "send_task"),
        "app": (app, "send_task"),
    }[where]
    monkeypatch.setattr(owner, name, traced(getattr(owner, name)))

    assert publish_task(deliver, (ENVELOPE,), {"priority": 5}) is None


@pytest.mark.parametrize("hook", ["apply_async", "shadow_name"])
def test_a_task_class_of_the_project_that_overrides_a_hook_is_left_to_apply_async(hook):
    def override(self, *args, **kwargs):
        return getattr(Task, hook)(self, *args, **kwargs)

    app = Celery(
        broker="memory://",
        set_as_current=False,
        task_cls=type("ProjectTask", (Task,), {hook: override}),
    )

    assert publish_task(app.tasks[DELIVER_TASK], (ENVELOPE,), {"priority": 5}) is None


def test_shared_tasks_proxy_publishes_on_a_kept_producer():
    app = memory_app()

    task_id = publish_task(Proxy(lambda: app.tasks[DELIVER_TASK]), (ENVELOPE,), {"priority": 5})

    assert task_id and received(app, 1)[0].headers["id"] == task_id


def test_a_fire_from_inside_a_task_names_it_as_parent_and_root():
    app = memory_app()
    deliver = app.tasks[DELIVER_TASK]

    @app.task(bind=True)
    def outer(self):
        published = publish_task(deliver, (ENVELOPE,), {"priority": 5})
        return published, [(child.id, child.ignored) for child in self.request.children]

    published, children = outer.apply(task_id="the-parent").get()

    (message,) = received(app, 1)
    assert (message.headers["parent_id"], message.headers["root_id"]) == ("the-parent",) * 2
    # As apply_async leaves it in the parent's trail: ignored, so its get() never waits.
    assert children == [(published, True)]


def test_a_publish_that_fails_closes_its_producer():
    app = memory_app()
    deliver = app.tasks[DELIVER_TASK]
    publish_task(deliver, (ENVELOPE,), {"priority": 5})
    (kept,) = kept_producers(app).idle
    assert kept.producer.connection.connected

    with pytest.raises(EncodeError):
        publish_task(deliver, (object(),), {"priority": 5})  # JSON cannot carry it

    assert (kept_producers(app).count, len(kept_producers(app).idle)) == (0, 0)
    assert not kept.producer.connection.connected


def test_an_app_no_longer_used_takes_its_producers_with_it():
    app = memory_app()
    publish_task(app.tasks[DELIVER_TASK], (ENVELOPE,), {"priority": 5})
    gone = weakref.ref(app), weakref.ref(kept_producers(app))

    del app
    gc.collect()

    assert [ref() for ref in gone] == [None, None]


def test_a_publish_while_kombus_pools_reset_is_closed_by_the_next_reset():
    app = memory_app()
    deliver = app.tasks[DELIVER_TASK]
    publish_task(deliver, (ENVELOPE,), {"priority": 5})
    for pool in kept_group.values():  # kombu.pools.reset(), in two steps
        pool.force_close_all()
    publish_task(deliver, (ENVELOPE,), {"priority": 5})  # from another thread, meanwhile
    kept_group.clear()
    latest = kept_producers(app)
    assert latest.idle

    pools.reset()

    assert latest.closed and not latest.idle


def test_resetting_kombus_pools_closes_the_kept_producers():
    app = memory_app()
    publish_task(app.tasks[DELIVER_TASK], (ENVELOPE,), {"priority": 5})
    kept = kept_producers(app)

    pools.reset()

    assert kept.closed and not kept.idle
    assert kept_producers(app) is not kept


def test_a_forked_process_never_uses_its_parents_producers():
    app = memory_app()
    publish_task(app.tasks[DELIVER_TASK], (ENVELOPE,), {"priority": 5})
    parents = kept_producers(app)
    read, write = os.pipe()

    pid = os.fork()
    if pid == 0:  # the child
        try:
            mine = kept_producers(app)
            os.write(write, b"new" if mine is not parents and not mine.idle else b"shared")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)

    assert os.read(read, 16) == b"new"
    assert parents.idle  # the parent's stay its own
