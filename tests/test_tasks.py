"""messagio's Celery tasks: stable names, and what they travel as."""

from messagio.const import TASK_NAME_PREFIX
from messagio.tasks import DELIVER_TASK, FIRE_SCHEDULED_TASK, PRUNE_TASK, RELAY_TASK, REPLAY_TASK


def test_every_messagio_task_has_its_stable_name_and_travels_as_pickle():
    # A project that accepts only pickle (the original library's README) must still run the
    # relay, prune, scheduled fires and admin replays, not refuse them as JSON.
    from project.celery import app

    names = {name for name in app.tasks if name.startswith(TASK_NAME_PREFIX)}

    assert names == {DELIVER_TASK, RELAY_TASK, PRUNE_TASK, FIRE_SCHEDULED_TASK, REPLAY_TASK}
    assert {app.tasks[name].serializer for name in names} == {"pickle"}
