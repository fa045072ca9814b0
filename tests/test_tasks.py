"""messagio's Celery tasks: stable names, and what they travel as."""

import uuid

import pytest
from celery import Celery

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
    ("accept_content", "content_type"),
    [
        (["json"], "application/json"),
        (["json", "pickle"], "application/json"),
        # The original library's README accepts pickle alone: JSON would be refused.
        (["pickle"], "application/x-python-serialize"),
    ],
)
def test_every_messagio_task_is_sent_as_the_workers_accept_it(
    accept_content, content_type, monkeypatch
):
    # However it is sent (delay, apply_async, celery beat's apply_async), in a project whose
    # own tasks are pickled or not.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to broker=
    queue = f"serializer-test-{uuid.uuid4().hex[:8]}"
    app = Celery(broker="memory://", set_as_current=False)
    app.conf.update(
        accept_content=accept_content, task_serializer="pickle", task_default_queue=queue
    )
    for name, args in ARGS.items():
        app.tasks[name].apply_async(args)

    with app.connection_for_read() as connection:
        # Only this test's own arguments are in it.
        waiting = connection.SimpleQueue(queue, accept=["json", "pickle"])
        sent = {}
        for _ in ARGS:
            message = waiting.get(timeout=5)
            sent[message.headers["task"]] = message.content_type
            message.ack()
        waiting.close()

    assert sent == dict.fromkeys(ARGS, content_type)
