"""The periodic tasks messagio needs (relay, prune), kept in django-celery-beat by migrate."""

from __future__ import annotations

from typing import Any

from messagio.conf import get_setting
from messagio.tasks import PRUNE_TASK, RELAY_TASK

#: PeriodicTask names messagio owns.
RELAY_SCHEDULE_NAME = "messagio: relay unpublished events"
PRUNE_SCHEDULE_NAME = "messagio: prune expired records"


def ensure_periodic_tasks(using: str = "default", **kwargs: Any) -> None:
    """Create or update the relay and prune PeriodicTasks (a post_migrate receiver).

    Only their task and interval are set: a task an operator disabled stays disabled.
    """
    from django.apps import apps

    if not get_setting("SCHEDULE_PERIODIC_TASKS") or not apps.is_installed("django_celery_beat"):
        return
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, task, seconds in (
        (RELAY_SCHEDULE_NAME, RELAY_TASK, int(get_setting("RELAY_INTERVAL"))),
        (PRUNE_SCHEDULE_NAME, PRUNE_TASK, int(get_setting("PRUNE_INTERVAL"))),
    ):
        interval, _ = IntervalSchedule.objects.using(using).get_or_create(
            every=seconds, period=IntervalSchedule.SECONDS
        )
        PeriodicTask.objects.using(using).update_or_create(
            name=name, defaults={"task": task, "interval": interval}
        )
