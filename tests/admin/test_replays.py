"""The Replays screens: each replay's page, and stopping a running one from it."""

import pytest
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from messagio import tasks
from messagio.models import Attempt, Delivery, Replay
from messagio.replays import replay, run_replay
from messagio.seals import seal_of
from tests.admin.factories import client_for, make_event, make_user
from tests.routers import RecordsElsewhere

pytestmark = pytest.mark.django_db

REPLAYS = "/admin/messagio/replay/"


def replay_url(record: Replay) -> str:
    return f"{REPLAYS}{record.pk}/change/"


def stop_url(record: Replay) -> str:
    return f"{REPLAYS}{record.pk}/stop/"


def test_the_page_of_a_running_replay_offers_to_stop_it(admin_client):
    record = Replay.objects.create()

    html = admin_client.get(replay_url(record)).content.decode()

    assert f'<form method="post" action="{stop_url(record)}" id="stop-replay-form">' in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_the_page_of_a_replay_that_ended_offers_no_stop(admin_client):
    record = Replay.objects.create(state=Replay.State.FINISHED)

    assert "stop-replay-form" not in admin_client.get(replay_url(record)).content.decode()


def test_stopping_a_replay_records_who_stopped_it_and_when(admin_client):
    record = Replay.objects.create()

    response = admin_client.post(stop_url(record), follow=True)

    assert response.redirect_chain == [(replay_url(record), 302)]
    record.refresh_from_db()
    assert (record.state, record.stopped_reason) == ("stopped", "stopped from the admin by root")
    assert record.finished_at is not None
    assert f"Replay #{record.pk} stopped: it queues no more deliveries" in (
        response.content.decode()
    )


def test_a_stopped_replay_queues_nothing_more(admin_client, monkeypatch):
    """run_replay ends, before its next batch, a replay whose record is no longer running."""
    monkeypatch.setattr("messagio.replays.publish_all", lambda envelopes: None)
    events = [make_event("failed") for _ in range(3)]
    record = Replay.objects.create(total=3)

    def stop_after_the_first_batch(progress: Replay) -> None:
        admin_client.post(stop_url(record))

    run_replay(
        record,
        Delivery.objects.filter(status="failed"),
        batch_size=1,
        progress=stop_after_the_first_batch,
    )

    record.refresh_from_db()
    assert (record.state, record.queued) == ("stopped", 1)
    assert Delivery.objects.filter(event__in=events, status="failed").count() == 2


def test_a_replay_stopped_before_its_task_ran_is_not_run(admin_client):
    make_event("failed")
    record = Replay.objects.create(total=1)
    admin_client.post(stop_url(record))

    arguments = [record.pk, {"status": "failed"}]
    tasks.replay.apply(args=(*arguments, seal_of(arguments)))

    assert not Delivery.objects.filter(status="pending").exists()


def test_stopping_a_replay_that_ended_changes_nothing_and_says_so(admin_client):
    record = Replay.objects.create(state=Replay.State.FINISHED)

    response = admin_client.post(stop_url(record), follow=True)

    record.refresh_from_db()
    assert (record.state, record.stopped_reason) == ("finished", "")
    assert f"Replay #{record.pk} had already ended: finished." in response.content.decode()


def test_stopping_a_replay_needs_a_post(admin_client):
    record = Replay.objects.create()

    assert admin_client.get(stop_url(record)).status_code == 405
    record.refresh_from_db()
    assert record.state == "running"


def test_stopping_a_replay_needs_the_csrf_token(superuser):
    record = Replay.objects.create()

    response = client_for(superuser, enforce_csrf_checks=True).post(stop_url(record))

    assert response.status_code == 403
    record.refresh_from_db()
    assert record.state == "running"


def test_who_may_only_view_replays_may_not_stop_one():
    viewer = make_user("watcher", "messagio.view_replay")
    record = Replay.objects.create()

    page = client_for(viewer).get(replay_url(record)).content.decode()
    response = client_for(viewer).post(stop_url(record))

    assert "stop-replay-form" not in page
    assert response.status_code == 403
    record.refresh_from_db()
    assert record.state == "running"


def test_stopping_an_unknown_replay_is_a_404(admin_client):
    assert admin_client.post(f"{REPLAYS}12345/stop/").status_code == 404


def test_a_replays_outcome_counts_stay_once_a_later_replay_takes_its_deliveries(admin_client):
    event = make_event("failed", "failed")
    first, second = Delivery.objects.filter(event=event).order_by("position")
    earlier = Replay.objects.create(state="finished")
    later = Replay.objects.create(state="running")
    Attempt.objects.create(delivery=first, number=2, outcome="succeeded", replay=earlier)
    Attempt.objects.create(delivery=second, number=2, outcome="failed", replay=earlier)
    # The later replay took the failed one again: it is its now, in flight.
    Delivery.objects.filter(pk=first.pk).update(status="succeeded", replay=earlier)
    Delivery.objects.filter(pk=second.pk).update(status="pending", replay=later)

    earlier_page = admin_client.get(replay_url(earlier)).content.decode()
    later_page = admin_client.get(replay_url(later)).content.decode()

    assert "1 succeeded" in earlier_page and "1 failed" in earlier_page
    assert "0 in flight" in earlier_page
    assert "1 in flight" in later_page and "0 failed" in later_page


def test_stopping_a_replay_counts_what_it_queued_from_the_records(admin_client):
    """Its worker was killed before it wrote its last count."""
    event = make_event("failed", "failed", "failed")
    record = Replay.objects.create(total=3, runner="a-dead-run", queued=1)
    Delivery.objects.filter(event=event).update(status="pending", replay=record)

    admin_client.post(stop_url(record))

    record.refresh_from_db()
    assert (record.state, record.queued, record.runner) == ("stopped", 3, "")


def test_who_asked_for_a_replay_stays_on_it_once_their_user_is_deleted(admin_client, monkeypatch):
    monkeypatch.setattr("messagio.replays.publish_all", lambda envelopes: None)
    alice = make_user("alice", superuser=True)
    record = replay(make_event("failed"), requested_by=alice, reason="bug #7 fixed")

    alice.delete()

    record.refresh_from_db()
    assert (record.requested_by_id, record.requested_by_name) == (None, "alice")
    assert '<td class="field-requested_by_display">alice</td>' in (
        admin_client.get(REPLAYS).content.decode()
    )
    assert "alice" in admin_client.get(replay_url(record)).content.decode()


@pytest.mark.django_db(databases=["default", "records"])
def test_a_replay_recorded_on_a_database_of_its_own_keeps_who_asked(admin_client, monkeypatch):
    monkeypatch.setattr("messagio.replays.publish_all", lambda envelopes: None)
    alice = make_user("alice", superuser=True)
    with override_settings(DATABASE_ROUTERS=[RecordsElsewhere()]):
        # The user on the default database, the replay on the records': no relation the
        # router allows, yet recorded; and deleting her reaches it there.
        record = replay(make_event("failed"), requested_by=alice)
        alice.delete()
        record.refresh_from_db()
        with CaptureQueriesContext(connections["records"]) as on_records:
            pages = [admin_client.get(REPLAYS), admin_client.get(replay_url(record))]

    assert record._state.db == "records"
    assert (record.requested_by_id, record.requested_by_name) == (None, "alice")
    assert [page.status_code for page in pages] == [200, 200]
    assert all("alice" in page.content.decode() for page in pages)
    assert not [q for q in on_records.captured_queries if "auth_user" in q["sql"]]
