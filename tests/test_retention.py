"""Retention: finished records older than their cut-off are deleted, in-flight ones never."""

import datetime
import io
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone

from messagio import tasks
from messagio.models import Attempt, Delivery, Event, Replay
from messagio.retention import cutoff, prune_expired
from tests.polling import wait_for
from tests.terminal import Terminal

pytestmark = pytest.mark.django_db

TYPE = "tests.testapp.messagio.Ping"
OUTCOME = {"succeeded": "succeeded", "failed": "failed"}


def make_event(
    days_old: float, *statuses: str, state: str = "published", messagio_type: str = TYPE
) -> Event:
    """An event fired ``days_old`` days ago with one delivery per status, each with an attempt."""
    event = Event.objects.create(
        messagio_type=messagio_type,
        fired_at=timezone.now() - datetime.timedelta(days=days_old),
        payload=b"x",
        state=state,
        listener_count=len(statuses),
    )
    for position, status in enumerate(statuses):
        delivery = Delivery.objects.create(
            event=event,
            position=position,
            messagio_type=messagio_type,
            listener=f"tests.listener_{position}",
            status=status,
            attempts=1,
        )
        Attempt.objects.create(delivery=delivery, number=1, outcome=OUTCOME.get(status, "lost"))
    return event


def days_ago(days: float) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(days=days)


def exists(event: Event) -> bool:
    return Event.objects.filter(pk=event.pk).exists()


def test_an_event_whose_deliveries_no_worker_has_written_yet_is_kept():
    waiting = make_event(40)  # published outside a transaction: its worker writes them
    Event.objects.filter(pk=waiting.pk).update(listener_count=2)
    half_written = make_event(40, "succeeded")  # one group run, the other still queued
    Event.objects.filter(pk=half_written.pk).update(listener_count=2)
    no_listeners = make_event(40)

    deleted = Event.objects.prune(succeeded_before=days_ago(30), failed_before=days_ago(30))

    assert deleted == 1
    assert exists(waiting) and exists(half_written)
    assert not exists(no_listeners)


def test_an_all_succeeded_event_older_than_the_cutoff_is_deleted_with_its_records():
    old = make_event(40, "succeeded", "succeeded")

    deleted = Event.objects.prune(succeeded_before=days_ago(30), failed_before=days_ago(90))

    assert deleted == 1
    assert not exists(old)
    assert not Delivery.objects.filter(event_id=old.pk).exists()
    assert not Attempt.objects.filter(delivery__event_id=old.pk).exists()
    assert Attempt.objects.count() == 0


def test_an_all_succeeded_event_newer_than_the_cutoff_is_kept():
    recent = make_event(10, "succeeded")

    deleted = Event.objects.prune(succeeded_before=days_ago(30), failed_before=days_ago(90))

    assert deleted == 0
    assert exists(recent)
    assert Attempt.objects.filter(delivery__event=recent).count() == 1


def test_a_failed_event_past_the_succeeded_cutoff_but_not_the_failed_one_is_kept():
    failed = make_event(40, "succeeded", "failed")

    Event.objects.prune(succeeded_before=days_ago(30), failed_before=days_ago(90))

    assert exists(failed)
    assert Delivery.objects.filter(event=failed).count() == 2


def test_a_failed_event_older_than_the_failed_cutoff_is_deleted_with_its_records():
    failed = make_event(100, "succeeded", "failed")

    deleted = Event.objects.prune(succeeded_before=days_ago(30), failed_before=days_ago(90))

    assert deleted == 1
    assert not exists(failed)
    assert Delivery.objects.count() == 0
    assert Attempt.objects.count() == 0


def test_only_expired_events_go_and_the_others_keep_their_records():
    expired_ok = make_event(40, "succeeded")
    expired_failed = make_event(100, "failed")
    recent_ok = make_event(1, "succeeded")
    recent_failed = make_event(40, "failed")

    deleted = Event.objects.prune(succeeded_before=days_ago(30), failed_before=days_ago(90))

    assert deleted == 2
    assert set(Event.objects.values_list("pk", flat=True)) == {recent_ok.pk, recent_failed.pk}
    assert set(Delivery.objects.values_list("event_id", flat=True)) == {
        recent_ok.pk,
        recent_failed.pk,
    }
    assert Attempt.objects.count() == 2
    assert not exists(expired_ok) and not exists(expired_failed)


@pytest.mark.parametrize("status", ["pending", "running", "retrying"])
def test_an_event_with_a_delivery_in_flight_is_kept_however_old(status):
    in_flight = make_event(1000, "succeeded", status)
    failing_in_flight = make_event(1000, "failed", status)

    deleted = Event.objects.prune(succeeded_before=days_ago(1), failed_before=days_ago(1))

    assert deleted == 0
    assert exists(in_flight) and exists(failing_in_flight)
    assert Attempt.objects.count() == 4


@pytest.mark.parametrize("state", ["recorded", "publishing"])
def test_an_event_not_yet_published_is_kept_however_old(state):
    unpublished = make_event(1000, "succeeded", state=state)

    deleted = Event.objects.prune(succeeded_before=days_ago(1), failed_before=days_ago(1))

    assert deleted == 0
    assert exists(unpublished)


def test_an_event_run_in_process_is_pruned_like_a_published_one():
    inline = make_event(40, "succeeded", state="inline")

    Event.objects.prune(succeeded_before=days_ago(30), failed_before=None)

    assert not exists(inline)


def test_an_old_event_without_listeners_is_pruned_with_the_succeeded_ones():
    unheard = make_event(40)

    Event.objects.prune(succeeded_before=days_ago(30), failed_before=None)

    assert not exists(unheard)


def test_no_succeeded_cutoff_keeps_succeeded_events_forever():
    succeeded = make_event(10_000, "succeeded")
    failed = make_event(10_000, "failed")

    deleted = Event.objects.prune(succeeded_before=None, failed_before=days_ago(1))

    assert deleted == 1
    assert exists(succeeded)
    assert not exists(failed)


def test_no_failed_cutoff_keeps_failed_events_forever():
    succeeded = make_event(10_000, "succeeded")
    failed = make_event(10_000, "failed")

    deleted = Event.objects.prune(succeeded_before=days_ago(1), failed_before=None)

    assert deleted == 1
    assert not exists(succeeded)
    assert exists(failed)


def test_a_batch_smaller_than_the_expired_rows_still_deletes_them_all():
    for _ in range(5):
        make_event(40, "succeeded", "succeeded")
    for _ in range(3):
        make_event(100, "failed")
    kept = make_event(1, "succeeded")

    deleted = Event.objects.prune(
        succeeded_before=days_ago(30), failed_before=days_ago(90), batch_size=2
    )

    assert deleted == 8
    assert list(Event.objects.values_list("pk", flat=True)) == [kept.pk]
    assert Delivery.objects.count() == 1
    assert Attempt.objects.count() == 1


def test_progress_is_called_with_the_running_total_after_each_batch():
    for _ in range(5):
        make_event(40, "succeeded")
    seen: list[int] = []

    Event.objects.prune(
        succeeded_before=days_ago(30), failed_before=None, batch_size=2, progress=seen.append
    )

    assert seen == [2, 4, 5]


def test_a_prune_goes_once_through_its_window_oldest_first():
    """Each batch starts where the last one ended, so the old events a prune keeps (a
    failure kept longer, one in flight) are read once, not again for every batch: one it
    passed that becomes prunable meanwhile waits for the next prune."""
    passed = make_event(40, "running")
    first = make_event(39, "succeeded")
    second = make_event(38, "succeeded")

    def finish_the_passed_one(deleted: int) -> None:
        Delivery.objects.filter(event=passed).update(status="succeeded")

    deleted = Event.objects.prune(
        succeeded_before=days_ago(30),
        failed_before=None,
        batch_size=1,
        progress=finish_the_passed_one,
    )

    assert deleted == 2
    assert not exists(first) and not exists(second)
    assert exists(passed)
    assert Event.objects.prune(succeeded_before=days_ago(30), failed_before=None) == 1
    assert not exists(passed)


def test_events_fired_at_the_same_moment_are_each_pruned_across_batches():
    same_moment = days_ago(40)
    events = [make_event(40, "succeeded") for _ in range(3)]
    Event.objects.filter(pk__in=[e.pk for e in events]).update(fired_at=same_moment)

    deleted = Event.objects.prune(succeeded_before=days_ago(30), failed_before=None, batch_size=1)

    assert deleted == 3
    assert not Event.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's local times")
def test_without_use_tz_every_expired_event_of_the_hour_a_clock_goes_back_is_pruned():
    """PostgreSQL gives a fired_at as a local time without USE_TZ: in the hour the clock
    goes back it names two moments, and a prune's place taken from it could skip events."""
    with override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris"):
        events = [make_event(40, "succeeded") for _ in range(3)]
        # 02:10 and 02:20 summer time, then 02:30 winter time, on 2023-10-29 in Paris.
        for event, utc in zip(events, ["00:10", "00:20", "01:30"], strict=True):
            at = datetime.datetime.fromisoformat(f"2023-10-29T{utc}:00+00:00")
            Event.objects.filter(pk=event.pk).update(fired_at=at)

        deleted = Event.objects.prune(
            succeeded_before=days_ago(30), failed_before=None, batch_size=1
        )

        assert deleted == 3
        assert not Event.objects.exists()


def test_a_newer_replay_of_a_pruned_event_is_kept_and_loses_its_link():
    original = make_event(40, "succeeded")
    replayed = make_event(1, "succeeded")
    Event.objects.filter(pk=replayed.pk).update(replay_of=original, origin="replay")

    Event.objects.prune(succeeded_before=days_ago(30), failed_before=None)

    replayed.refresh_from_db()
    assert not exists(original)
    assert replayed.replay_of is None


def test_a_failure_a_replay_mended_is_kept_as_long_as_failures():
    mended = make_event(40, "succeeded", "succeeded")
    fixed = mended.deliveries.get(position=1)  # its first try failed; a replay succeeded
    Attempt.objects.filter(delivery=fixed).update(outcome="failed")
    Attempt.objects.create(delivery=fixed, number=2, outcome="succeeded")
    Delivery.objects.filter(pk=fixed.pk).update(replay=Replay.objects.create(), attempts=2)

    assert Event.objects.prune(succeeded_before=days_ago(30), failed_before=days_ago(90)) == 0
    assert Attempt.objects.filter(delivery__event=mended, outcome="failed").exists()
    assert Event.objects.prune(succeeded_before=days_ago(30), failed_before=days_ago(35)) == 1


def test_an_events_age_counts_from_its_last_finished_delivery():
    replayed = make_event(40, "succeeded", "succeeded")
    replayed.deliveries.filter(position=1).update(finished_at=days_ago(5))
    finished_long_ago = make_event(40, "succeeded")
    finished_long_ago.deliveries.update(finished_at=days_ago(39))

    assert Event.objects.prune(succeeded_before=days_ago(30), failed_before=None) == 1
    assert exists(replayed) and not exists(finished_long_ago)


@pytest.mark.django_db(transaction=True)
def test_an_event_whose_delivery_a_replay_takes_while_prune_reads_it_is_kept():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite lets one writer in at a time: no such interleaving")
    import psycopg

    old = make_event(100, "failed")
    delivery = old.deliveries.get()
    replay = psycopg.connect(**connection.get_connection_params())
    # A replay taking the delivery in another session, not yet committed when prune reads.
    replay.execute("UPDATE messagio_delivery SET status = 'pending' WHERE id = %s", [delivery.pk])
    outcome: dict[str, int] = {}

    def prune() -> None:
        try:
            outcome["deleted"] = Event.objects.prune(None, failed_before=days_ago(90))
        finally:
            connections.close_all()

    pruning = threading.Thread(target=prune)
    pruning.start()
    try:
        wait_for(lambda: waiting_on_a_lock() >= 1, what="prune to wait for the replay's lock")
    finally:
        replay.commit()
        replay.close()
    pruning.join(timeout=30)

    assert outcome == {"deleted": 0}
    assert Delivery.objects.get(pk=delivery.pk).status == "pending"
    assert Attempt.objects.filter(delivery=delivery).count() == 1


def waiting_on_a_lock() -> int:
    """Sessions of this database waiting for a lock on deliveries (the prune's)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE '%%messagio_delivery%%' "
            "AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_cutoff_is_that_many_days_before_now_or_none():
    before = timezone.now() - datetime.timedelta(days=2)
    result = cutoff(2)
    after = timezone.now() - datetime.timedelta(days=2)

    assert before <= result <= after
    assert cutoff(None) is None


def test_prune_expired_uses_the_retention_settings():
    succeeded = make_event(6, "succeeded")
    failed_recent = make_event(6, "failed")
    failed_old = make_event(11, "failed")

    with override_settings(MESSAGIO={"RETAIN_SUCCEEDED_DAYS": 5, "RETAIN_FAILED_DAYS": 10}):
        deleted = prune_expired()

    assert deleted == 2
    assert not exists(succeeded) and not exists(failed_old)
    assert exists(failed_recent)


def test_prune_expired_keeps_forever_what_the_settings_set_to_none():
    succeeded = make_event(10_000, "succeeded")
    failed = make_event(10_000, "failed")

    with override_settings(MESSAGIO={"RETAIN_SUCCEEDED_DAYS": None, "RETAIN_FAILED_DAYS": None}):
        deleted = prune_expired()

    assert deleted == 0
    assert exists(succeeded) and exists(failed)


def test_prune_expired_days_given_win_over_the_settings():
    succeeded = make_event(3, "succeeded")
    failed = make_event(3, "failed")

    deleted = prune_expired(succeeded_days=2, failed_days=4)

    assert deleted == 1
    assert not exists(succeeded)
    assert exists(failed)


def test_prune_expired_without_settings_keeps_forever_what_is_not_given():
    succeeded = make_event(10_000, "succeeded")
    failed = make_event(10_000, "failed")

    deleted = prune_expired(failed_days=1, use_settings=False)

    assert deleted == 1
    assert exists(succeeded)
    assert not exists(failed)


def test_prune_expired_batches_by_the_setting_and_reports_progress():
    for _ in range(3):
        make_event(40, "succeeded")
    seen: list[int] = []

    with override_settings(MESSAGIO={"PRUNE_BATCH_SIZE": 2}):
        prune_expired(progress=seen.append)

    assert seen == [2, 3]


def test_the_prune_task_applies_the_retention_settings():
    make_event(40, "succeeded")
    kept = make_event(40, "failed")

    assert tasks.prune() == 1
    assert list(Event.objects.values_list("pk", flat=True)) == [kept.pk]


def test_the_prune_command_deletes_past_the_days_given():
    succeeded = make_event(3, "succeeded")
    failed_recent = make_event(3, "failed")
    failed_old = make_event(6, "failed")
    out = io.StringIO()

    call_command("messagio_prune", "--succeeded-days=2", "--failed-days=5", stdout=out)

    assert not exists(succeeded) and not exists(failed_old)
    assert exists(failed_recent)
    assert out.getvalue().endswith("Deleted 2 event(s).\n")


def test_the_prune_command_defaults_to_the_retention_settings():
    succeeded = make_event(40, "succeeded")
    failed = make_event(40, "failed")
    out = io.StringIO()

    call_command("messagio_prune", stdout=out)

    assert not exists(succeeded)
    assert exists(failed)
    assert "Deleted 1 event(s)." in out.getvalue()


def test_the_prune_command_deletes_in_batches_showing_progress_on_a_terminal():
    for _ in range(3):
        make_event(40, "succeeded")
    out = Terminal()

    call_command("messagio_prune", "--succeeded-days", "1", "--batch-size", "2", stdout=out)

    assert Event.objects.count() == 0
    assert out.getvalue() == "\rdeleted 2 event(s)\rdeleted 3 event(s)\nDeleted 3 event(s).\n"


@pytest.mark.parametrize(
    ("verbosity", "progress"), [(1, ""), (2, "deleted 2 event(s)\ndeleted 3 event(s)\n")]
)
def test_the_prune_command_writes_no_carriage_return_to_a_log(verbosity, progress):
    for _ in range(3):
        make_event(40, "succeeded")
    out = io.StringIO()

    call_command(
        "messagio_prune", "--succeeded-days=1", "--batch-size=2", verbosity=verbosity, stdout=out
    )

    assert out.getvalue() == f"{progress}Deleted 3 event(s).\n"


def test_the_prune_command_with_nothing_expired_deletes_nothing():
    recent = make_event(1, "succeeded")
    out = io.StringIO()

    call_command("messagio_prune", "--succeeded-days", "2", "--failed-days", "2", stdout=out)

    assert exists(recent)
    assert out.getvalue().endswith("Deleted 0 event(s).\n")


@pytest.mark.parametrize(
    "options, error",
    [
        ({"succeeded_days": -1}, "the succeeded days .* takes a number of days, 0 or more"),
        ({"failed_days": float("nan")}, "the failed days .* takes a number of days, 0 or more"),
        ({"succeeded_days": float("inf")}, "the succeeded days"),
        ({"failed_days": 1e7}, "the failed days .* 0 or more, at most 36,500"),
        ({"batch_size": 0}, "the batch size .* takes a number of events, 1 or more"),
    ],
)
def test_prune_expired_refuses_what_would_delete_too_much_or_never_end(options, error):
    old = make_event(40, "succeeded")
    recent = make_event(0, "succeeded")

    with pytest.raises(ValueError, match=error):
        prune_expired(**options)

    assert exists(old) and exists(recent)


def test_a_negative_retention_setting_is_refused_too():
    recent = make_event(0, "failed")

    with override_settings(MESSAGIO={"RETAIN_FAILED_DAYS": -5}):
        with pytest.raises(ValueError, match="RETAIN_FAILED_DAYS"):
            prune_expired()

    assert exists(recent)


def test_the_prune_command_refuses_a_negative_number_of_days():
    recent = make_event(0, "succeeded")

    with pytest.raises(CommandError, match="--succeeded-days"):
        call_command("messagio_prune", "--succeeded-days=-1", stdout=io.StringIO())

    assert exists(recent)


@pytest.mark.parametrize(
    "options, error",
    [
        (["--succeeded-days", "1e7"], "--succeeded-days.* at most 36,500"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_the_prune_command_dry_run_refuses_what_the_real_run_would(options, error):
    with pytest.raises(CommandError, match=error):
        call_command("messagio_prune", *options, "--dry-run", stdout=io.StringIO())


def test_the_prune_command_dry_run_counts_and_deletes_nothing():
    expired = [make_event(40, "succeeded"), make_event(100, "failed")]
    kept = [make_event(1, "succeeded"), make_event(40, "failed"), make_event(100, "running")]
    out = io.StringIO()

    call_command("messagio_prune", "--dry-run", stdout=out)

    assert out.getvalue() == "2 event(s) would be deleted.\n"
    assert all(exists(event) for event in expired + kept)


def test_an_event_a_replay_takes_while_its_batch_is_pruned_is_kept(monkeypatch):
    """The replay's delivery goes out pending: deleted, its worker would find no record and
    write the event again from its message, without its history."""
    from django.db import transaction

    from messagio import querysets

    taken = make_event(100, "succeeded", "failed")
    other = make_event(100, "failed")  # in the same batch
    real_atomic = transaction.atomic

    class ReplayTakesItFirst:
        """The transaction that deletes a batch, entered just after a replay took one."""

        @staticmethod
        def atomic(*args, **kwargs):
            Delivery.objects.filter(event=taken, status="failed").update(status="pending")
            return real_atomic(*args, **kwargs)

    monkeypatch.setattr(querysets, "transaction", ReplayTakesItFirst)

    deleted = Event.objects.prune(succeeded_before=days_ago(30), failed_before=days_ago(90))

    assert deleted == 1
    assert exists(taken) and not exists(other)
    assert Delivery.objects.filter(event=taken).count() == 2


def ended_replay(days_ago_ended: float, state: str = Replay.State.FINISHED) -> Replay:
    return Replay.objects.create(state=state, finished_at=days_ago(days_ago_ended))


def test_a_replay_record_goes_once_nothing_it_ran_is_kept_and_it_ended_past_the_failed_days():
    gone_with_its_event = ended_replay(11)
    failed_old = make_event(11, "failed")
    Delivery.objects.filter(event=failed_old).update(replay=gone_with_its_event)
    stopped_long_ago = ended_replay(11, Replay.State.STOPPED)
    ended_lately = ended_replay(9)
    still_running = Replay.objects.create(finished_at=None)
    names_a_kept_attempt = ended_replay(11)
    failed_recent = make_event(6, "failed")
    Attempt.objects.filter(delivery__event=failed_recent).update(replay=names_a_kept_attempt)
    replays: list[int] = []

    deleted = prune_expired(succeeded_days=5, failed_days=10, replays_deleted=replays.append)

    assert deleted == 1 and not exists(failed_old)
    assert replays == [2]
    assert set(Replay.objects.values_list("pk", flat=True)) == {
        ended_lately.pk,
        still_running.pk,
        names_a_kept_attempt.pk,
    }
    assert not Replay.objects.filter(pk__in=[gone_with_its_event.pk, stopped_long_ago.pk]).exists()


def test_replay_records_are_kept_forever_when_failures_are():
    kept = ended_replay(10_000)

    prune_expired(succeeded_days=1, failed_days=None, use_settings=False)

    assert Replay.objects.filter(pk=kept.pk).exists()


def test_replay_records_are_deleted_in_batches():
    for _ in range(5):
        ended_replay(40)

    prune_expired(failed_days=30, batch_size=2, use_settings=False)

    assert not Replay.objects.exists()


def test_the_prune_command_says_how_many_replay_records_went():
    make_event(40, "succeeded")
    ended_replay(100)
    out = io.StringIO()

    call_command("messagio_prune", stdout=out)

    assert out.getvalue().endswith("Deleted 1 event(s) and 1 replay record(s).\n")
