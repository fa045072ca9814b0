"""The relay and prune PeriodicTasks that migrate keeps in django-celery-beat."""

import pytest
from django.core.management.sql import emit_post_migrate_signal
from django.test import override_settings
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from messagio.conf import get_setting
from messagio.schedules import PRUNE_SCHEDULE_NAME, RELAY_SCHEDULE_NAME, ensure_periodic_tasks

pytestmark = pytest.mark.django_db


def relay_task() -> PeriodicTask:
    return PeriodicTask.objects.select_related("interval").get(name=RELAY_SCHEDULE_NAME)


def prune_task() -> PeriodicTask:
    return PeriodicTask.objects.select_related("interval").get(name=PRUNE_SCHEDULE_NAME)


def test_migrate_made_the_relay_task_at_the_relay_interval():
    task = relay_task()

    assert task.task == "messagio.tasks.relay"
    assert task.interval.every == get_setting("RELAY_INTERVAL")
    assert task.interval.period == IntervalSchedule.SECONDS
    assert task.enabled is True


def test_migrate_made_the_prune_task_at_the_prune_interval():
    task = prune_task()

    assert task.task == "messagio.tasks.prune"
    assert task.interval.every == get_setting("PRUNE_INTERVAL")
    assert task.interval.period == IntervalSchedule.SECONDS
    assert task.enabled is True


def test_each_run_expires_after_ten_intervals_so_runs_no_worker_took_do_not_pile_up():
    from django_celery_beat.schedulers import ModelEntry

    ensure_periodic_tasks()
    with override_settings(MESSAGIO={"RELAY_INTERVAL": 5, "PRUNE_INTERVAL": 600}):
        ensure_periodic_tasks()

    # What beat publishes each run with (apply_async's expires, in seconds): ten runs at
    # most pile up, and one behind a backlog of deliveries still runs.
    assert ModelEntry(relay_task()).options["expires"] == 50
    assert ModelEntry(prune_task()).options["expires"] == 6000


def test_an_expiry_in_seconds_an_operator_set_is_kept():
    PeriodicTask.objects.filter(name=RELAY_SCHEDULE_NAME).update(expire_seconds=7)

    with override_settings(MESSAGIO={"RELAY_INTERVAL": 5}):
        ensure_periodic_tasks()

    assert relay_task().expire_seconds == 7


def test_an_expiry_date_an_operator_set_is_kept():
    import datetime

    from django.utils import timezone

    until = timezone.now() + datetime.timedelta(days=1)
    PeriodicTask.objects.filter(name=RELAY_SCHEDULE_NAME).update(expires=until, expire_seconds=None)

    ensure_periodic_tasks()

    task = relay_task()
    assert (task.expires, task.expire_seconds) == (until, None)


def test_post_migrate_recreates_a_deleted_task():
    PeriodicTask.objects.filter(name__in=[RELAY_SCHEDULE_NAME, PRUNE_SCHEDULE_NAME]).delete()

    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")

    assert relay_task().task == "messagio.tasks.relay"
    assert prune_task().task == "messagio.tasks.prune"


def test_a_changed_interval_setting_updates_the_task():
    with override_settings(MESSAGIO={"RELAY_INTERVAL": 5, "PRUNE_INTERVAL": 600}):
        ensure_periodic_tasks()

    assert relay_task().interval.every == 5
    assert prune_task().interval.every == 600
    assert PeriodicTask.objects.filter(name=RELAY_SCHEDULE_NAME).count() == 1


def test_an_interval_under_a_second_is_scheduled_every_second_not_every_0():
    """The settings check refuses it (E003), but migrate may run without the checks."""
    with override_settings(MESSAGIO={"RELAY_INTERVAL": 0.5, "PRUNE_INTERVAL": 0.2}):
        ensure_periodic_tasks()

    assert relay_task().interval.every == 1
    assert prune_task().interval.every == 1
    assert not IntervalSchedule.objects.filter(every__lt=1).exists()


def test_a_fractional_interval_is_rounded_to_the_nearest_second():
    with override_settings(MESSAGIO={"RELAY_INTERVAL": 2.6}):
        ensure_periodic_tasks()

    assert relay_task().interval.every == 3


def test_a_task_an_operator_disabled_stays_disabled():
    PeriodicTask.objects.filter(name=RELAY_SCHEDULE_NAME).update(enabled=False)

    with override_settings(MESSAGIO={"RELAY_INTERVAL": 5}):
        ensure_periodic_tasks()

    task = relay_task()
    assert task.enabled is False
    assert task.interval.every == 5


def test_what_else_an_operator_set_on_the_task_is_kept():
    PeriodicTask.objects.filter(name=PRUNE_SCHEDULE_NAME).update(
        queue="maintenance", description="nightly cleanup", priority=1
    )

    ensure_periodic_tasks()

    task = prune_task()
    assert (task.queue, task.description, task.priority) == ("maintenance", "nightly cleanup", 1)


def test_a_task_pointed_elsewhere_is_pointed_back_at_messagios_task():
    PeriodicTask.objects.filter(name=RELAY_SCHEDULE_NAME).update(task="somewhere.else")

    ensure_periodic_tasks()

    assert relay_task().task == "messagio.tasks.relay"


def test_running_it_again_reuses_the_interval_schedules():
    ensure_periodic_tasks()
    ensure_periodic_tasks()

    seconds = IntervalSchedule.objects.filter(period=IntervalSchedule.SECONDS)
    assert seconds.filter(every=get_setting("RELAY_INTERVAL")).count() == 1
    assert seconds.filter(every=get_setting("PRUNE_INTERVAL")).count() == 1
    assert PeriodicTask.objects.filter(name__startswith="messagio: ").count() == 2


def test_schedule_periodic_tasks_off_creates_nothing():
    PeriodicTask.objects.filter(name__in=[RELAY_SCHEDULE_NAME, PRUNE_SCHEDULE_NAME]).delete()

    with override_settings(MESSAGIO={"SCHEDULE_PERIODIC_TASKS": False}):
        ensure_periodic_tasks()
        emit_post_migrate_signal(verbosity=0, interactive=False, db="default")

    assert not PeriodicTask.objects.filter(name__startswith="messagio: ").exists()


def test_schedule_periodic_tasks_off_leaves_existing_tasks_alone():
    with override_settings(MESSAGIO={"SCHEDULE_PERIODIC_TASKS": False, "RELAY_INTERVAL": 5}):
        ensure_periodic_tasks()

    assert relay_task().interval.every == get_setting("RELAY_INTERVAL")
    assert not IntervalSchedule.objects.filter(every=5).exists()


def test_a_task_an_operator_moved_to_a_crontab_does_not_break_migrate():
    nightly = CrontabSchedule.objects.create(minute="0", hour="3")
    task = prune_task()
    task.interval, task.crontab = None, nightly
    task.save()

    ensure_periodic_tasks()

    assert prune_task().crontab == nightly


def test_two_equal_interval_schedules_do_not_break_migrate():
    IntervalSchedule.objects.create(
        every=get_setting("RELAY_INTERVAL"), period=IntervalSchedule.SECONDS
    )

    ensure_periodic_tasks()

    assert relay_task().interval.every == get_setting("RELAY_INTERVAL")


class KeepsBeatOut:
    """A database router that keeps django-celery-beat's tables out of every database."""

    def allow_migrate(self, db, app_label, **hints):
        return False if app_label == "django_celery_beat" else None


def test_a_database_the_routers_keep_beat_out_of_gets_no_periodic_tasks():
    PeriodicTask.objects.filter(name__in=[RELAY_SCHEDULE_NAME, PRUNE_SCHEDULE_NAME]).delete()

    with override_settings(DATABASE_ROUTERS=[KeepsBeatOut()]):
        ensure_periodic_tasks()

    assert not PeriodicTask.objects.filter(name__startswith="messagio: ").exists()


def test_a_task_another_migrate_made_meanwhile_is_left_to_it(monkeypatch):
    """Two containers migrating at once: both looked and found no task; the other one
    created it before this one could."""
    from django.db.models import QuerySet

    PeriodicTask.objects.filter(name=RELAY_SCHEDULE_NAME).delete()
    first = QuerySet.first

    def made_by_the_other_after_the_look(queryset):
        found = first(queryset)
        if queryset.model is PeriodicTask and found is None:
            interval = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
            PeriodicTask.objects.create(
                name=RELAY_SCHEDULE_NAME, task="messagio.tasks.relay", interval=interval
            )
        return found

    monkeypatch.setattr(QuerySet, "first", made_by_the_other_after_the_look)
    ensure_periodic_tasks()
    monkeypatch.undo()

    assert PeriodicTask.objects.filter(name=RELAY_SCHEDULE_NAME).count() == 1


def test_the_longest_interval_the_settings_take_is_scheduled_with_its_expiry():
    from messagio.conf import EXPIRES_AFTER_RUNS, INTERVAL_AT_MOST

    longest = {"RELAY_INTERVAL": INTERVAL_AT_MOST, "PRUNE_INTERVAL": INTERVAL_AT_MOST}
    with override_settings(MESSAGIO=longest):
        ensure_periodic_tasks()  # PostgreSQL's integer columns take it

    relay = PeriodicTask.objects.get(name=RELAY_SCHEDULE_NAME)
    assert relay.interval.every == INTERVAL_AT_MOST
    assert relay.expire_seconds == INTERVAL_AT_MOST * EXPIRES_AFTER_RUNS
