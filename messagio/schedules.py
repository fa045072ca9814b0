"""The periodic tasks messagio needs (relay, prune), kept in django-celery-beat by migrate."""

from __future__ import annotations

from typing import Any

from messagio.conf import EXPIRES_AFTER_RUNS, get_setting
from messagio.tasks import PRUNE_TASK, RELAY_TASK

#: PeriodicTask names messagio owns.
RELAY_SCHEDULE_NAME = "messagio: relay unpublished events"
PRUNE_SCHEDULE_NAME = "messagio: prune expired records"


def whole_seconds(interval: float) -> int:
    """``interval`` in the whole seconds of an IntervalSchedule: rounded, and at least 1
    (its field's own minimum, which ``create()`` does not enforce)."""
    return max(1, round(interval))


def ensure_periodic_tasks(using: str = "default", **kwargs: Any) -> None:
    """Create or update the relay and prune PeriodicTasks (a post_migrate receiver).

    Only their task, interval and expiry are set: a task an operator disabled stays
    disabled, an expiry an operator set stays. A run's message expires after
    :data:`EXPIRES_AFTER_RUNS` intervals: while no worker takes them (an outage), at most
    that many pile up, yet a run waiting behind a backlog of deliveries on the same queue
    still runs.
    Nothing happens where django-celery-beat's tables are not (``migrate messagio`` before
    them, a database the routers keep them out of).
    """
    from django.apps import apps
    from django.core.exceptions import ValidationError
    from django.db import IntegrityError, connections, router, transaction

    if not get_setting("SCHEDULE_PERIODIC_TASKS") or not apps.is_installed("django_celery_beat"):
        return
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    if not router.allow_migrate_model(using, PeriodicTask):
        return
    tables = connections[using].introspection.table_names()
    if not {PeriodicTask._meta.db_table, IntervalSchedule._meta.db_table} <= set(tables):
        return

    for name, task, seconds in (
        (RELAY_SCHEDULE_NAME, RELAY_TASK, whole_seconds(get_setting("RELAY_INTERVAL"))),
        (PRUNE_SCHEDULE_NAME, PRUNE_TASK, whole_seconds(get_setting("PRUNE_INTERVAL"))),
    ):
        intervals = IntervalSchedule.objects.using(using)
        # Not unique in django-celery-beat: take the first equal one, as its scheduler does.
        interval = intervals.filter(every=seconds, period=IntervalSchedule.SECONDS).first()
        if interval is None:
            interval = intervals.create(every=seconds, period=IntervalSchedule.SECONDS)
        existing = PeriodicTask.objects.using(using).filter(name=name).first()
        if existing is None:
            try:
                with transaction.atomic(using=using):
                    PeriodicTask.objects.using(using).create(
                        name=name,
                        task=task,
                        interval=interval,
                        expire_seconds=seconds * EXPIRES_AFTER_RUNS,
                    )
            except (IntegrityError, ValidationError):  # beat's save() validates its name
                pass  # another migrate (one per deployed container) made it meanwhile
        elif existing.interval_id is not None:
            # An operator who moved it to another kind of schedule keeps that schedule.
            ours = existing.expire_seconds in (None, existing.interval.every * EXPIRES_AFTER_RUNS)
            if existing.expires is None and ours:  # else the operator's expiry
                existing.expire_seconds = seconds * EXPIRES_AFTER_RUNS
            existing.task, existing.interval = task, interval
            existing.save(update_fields=["task", "interval", "expire_seconds"])
