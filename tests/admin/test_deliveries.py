"""The Deliveries changelist, its "replay selected" action, and each delivery's page."""

import datetime
import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_results.models import TaskResult

from messagio import tasks
from messagio.models import Attempt, Delivery, Replay
from messagio.seals import is_sealed
from messagio_admin.paginator import LargeTablePaginator
from tests.admin.factories import ERROR, HOSTILE, LISTENERS, client_for, make_event

pytestmark = pytest.mark.django_db

DELIVERIES = "/admin/messagio/delivery/"
FLAKY = "tests.testapp.messagio.Flaky"


def delivery_url(delivery: Delivery) -> str:
    return f"{DELIVERIES}{delivery.pk}/change/"


def listed(response) -> list[str]:
    html = response.content.decode()
    return re.findall(r'href="/admin/messagio/delivery/([0-9a-f-]{36})/change/[?"]', html)


@pytest.fixture
def sent(monkeypatch):
    """The replay tasks sent, as (replay id, delivery filter); nothing reaches the broker."""
    calls = []
    monkeypatch.setattr(tasks.replay, "delay", lambda *args: calls.append(args))
    return calls


# --- The list -------------------------------------------------------------------------------


def test_the_deliveries_list_shows_listener_type_status_attempts_and_error_class(
    admin_client, failed_event
):
    response = admin_client.get(DELIVERIES)

    html = response.content.decode()
    assert response.status_code == 200
    assert '<span title="tests.testapp.messagio.broken">broken</span>' in html
    assert '<span title="tests.testapp.messagio.Ping">Ping</span>' in html
    assert '<span class="messagio-badge messagio-failed">failed</span>' in html
    assert '<span title="builtins.RuntimeError">RuntimeError</span>' in html


def test_the_deliveries_list_shows_the_newest_start_first(admin_client):
    now = datetime.datetime.now(datetime.UTC)
    old = make_event("failed", fired_at=now - datetime.timedelta(hours=3))
    new = make_event("failed", fired_at=now - datetime.timedelta(hours=1))

    response = admin_client.get(DELIVERIES)

    assert listed(response) == [str(new.deliveries.get().pk), str(old.deliveries.get().pk)]


def test_the_deliveries_list_costs_as_many_queries_for_50_rows_as_for_5(admin_client):
    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(DELIVERIES).status_code == 200
        return len(captured.captured_queries)

    make_event("succeeded", "failed", "succeeded", "failed", "running")
    admin_client.get(DELIVERIES)
    few = count()
    for _ in range(9):
        make_event("succeeded", "failed", "succeeded", "failed", "running")

    assert count() == few


@pytest.mark.parametrize("status", ["succeeded", "failed", "running"])
def test_the_status_filter_selects_deliveries_of_one_status(admin_client, status):
    event = make_event("succeeded", "failed", "running")

    response = admin_client.get(f"{DELIVERIES}?status__exact={status}")

    assert listed(response) == [str(event.deliveries.get(status=status).pk)]


def test_the_listener_filter_offers_recorded_listeners_and_selects_one(admin_client, failed_event):
    response = admin_client.get(f"{DELIVERIES}?listener={LISTENERS[2]}")

    html = response.content.decode()
    assert f'href="?listener={LISTENERS[0]}"' in html
    assert listed(response) == [str(failed_event.deliveries.get(position=2).pk)]


def test_the_type_filter_selects_deliveries_of_one_messagio_type(admin_client, failed_event):
    flaky = make_event("failed", messagio_type=FLAKY)

    response = admin_client.get(f"{DELIVERIES}?messagio_type={FLAKY}")

    assert listed(response) == [str(flaky.deliveries.get().pk)]


def test_the_error_class_filter_offers_classes_of_recent_failures_and_selects_one(admin_client):
    make_event("failed")
    value_error = make_event("failed", error_type="builtins.ValueError")

    response = admin_client.get(f"{DELIVERIES}?error_type=builtins.ValueError")

    html = response.content.decode()
    assert 'href="?error_type=builtins.RuntimeError"' in html
    assert listed(response) == [str(value_error.deliveries.get().pk)]


def test_the_date_hierarchy_selects_deliveries_started_on_one_day(admin_client):
    march_10 = make_event(
        "failed", fired_at=datetime.datetime(2024, 3, 10, 12, tzinfo=datetime.UTC)
    )
    make_event("failed", fired_at=datetime.datetime(2024, 3, 11, 12, tzinfo=datetime.UTC))

    response = admin_client.get(
        f"{DELIVERIES}?started_at__year=2024&started_at__month=3&started_at__day=10"
    )

    assert listed(response) == [str(march_10.deliveries.get().pk)]


def test_the_deliveries_of_a_replay_can_be_listed(admin_client, failed_event):
    record = Replay.objects.create()
    replayed = failed_event.deliveries.get(position=2)
    Delivery.objects.filter(pk=replayed.pk).update(replay=record)

    response = admin_client.get(f"{DELIVERIES}?replay__id__exact={record.pk}")

    assert listed(response) == [str(replayed.pk)]


def test_searching_an_event_id_finds_its_deliveries(admin_client, failed_event):
    make_event("failed")

    response = admin_client.get(f"{DELIVERIES}?q={failed_event.pk}")

    assert sorted(listed(response)) == sorted(str(d.pk) for d in failed_event.deliveries.all())


def test_searching_a_delivery_id_finds_it(admin_client, failed_event):
    wanted = failed_event.deliveries.get(position=1)

    response = admin_client.get(f"{DELIVERIES}?q={wanted.pk}")

    assert listed(response) == [str(wanted.pk)]


def test_searching_part_of_a_listener_or_error_class_finds_its_deliveries(
    admin_client, failed_event
):
    broken = str(failed_event.deliveries.get(position=2).pk)

    assert listed(admin_client.get(f"{DELIVERIES}?q=broken")) == [broken]
    assert listed(admin_client.get(f"{DELIVERIES}?q=RuntimeErr")) == [broken]


def test_a_capped_count_says_more_than(admin_client, monkeypatch):
    monkeypatch.setattr("messagio_admin.paginator.LargeTablePaginator.cap", 3)
    make_event("failed", "failed", "failed", "failed", "failed")

    response = admin_client.get(f"{DELIVERIES}?status__exact=failed")

    assert "more than 3 deliveries" in response.content.decode()
    assert len(listed(response)) == 5


# --- The delivery's page --------------------------------------------------------------------


def test_the_delivery_page_shows_its_outcome_and_attempts(admin_client, failed_event):
    broken = failed_event.deliveries.get(position=2)
    Attempt.objects.create(delivery=broken, number=2, outcome="failed", error="again")

    response = admin_client.get(delivery_url(broken))

    html = response.content.decode()
    assert response.status_code == 200
    assert ERROR in html
    assert "again" in html
    assert html.count('<tr id="attempt-') == 2
    assert '<details class="messagio-traceback"><summary>Traceback</summary>' in html


def test_the_delivery_page_shows_the_summary_of_its_event(admin_client):
    event = make_event("failed", summary={"order_id": 42})

    html = admin_client.get(delivery_url(event.deliveries.get())).content.decode()

    assert '<th scope="row">order_id</th><td><code>42</code></td>' in html


def test_the_delivery_page_escapes_a_hostile_error(admin_client):
    event = make_event("failed", error=HOSTILE, summary={"x": HOSTILE})

    html = admin_client.get(delivery_url(event.deliveries.get())).content.decode()

    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_delivery_page_costs_as_many_queries_for_ten_attempts_as_for_one(admin_client):
    def count(delivery) -> int:
        with CaptureQueriesContext(connection) as captured:
            admin_client.get(delivery_url(delivery))
        return len(captured.captured_queries)

    one = make_event("failed").deliveries.get()
    ten = make_event("failed").deliveries.get()
    for number in range(2, 11):
        Attempt.objects.create(delivery=ten, number=number, outcome="failed", task_id=str(number))
    admin_client.get(delivery_url(one))

    assert count(ten) == count(one)


def test_deliveries_cannot_be_added_or_changed(admin_client, failed_event):
    delivery = failed_event.deliveries.get(position=2)

    assert admin_client.get(f"{DELIVERIES}add/").status_code == 403
    assert admin_client.post(delivery_url(delivery), {"status": "succeeded"}).status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == "failed"


# --- Replaying one delivery -----------------------------------------------------------------


def test_replaying_a_delivery_from_its_page_queues_it_again(admin_client, superuser, failed_event):
    broken = failed_event.deliveries.get(position=2)

    response = admin_client.post(f"{DELIVERIES}{broken.pk}/replay/", {"reason": "fixed"})

    assert response.status_code == 302
    assert response["Location"] == delivery_url(broken)
    broken.refresh_from_db()
    assert broken.status == "pending"
    record = Replay.objects.get()
    assert (record.requested_by, record.reason, record.source, record.total) == (
        superuser,
        "fixed",
        "admin",
        1,
    )


def test_replaying_a_delivery_from_the_event_page_goes_back_to_the_event(
    admin_client, failed_event
):
    broken = failed_event.deliveries.get(position=2)
    back = f"/admin/messagio/event/{failed_event.pk}/change/"

    response = admin_client.post(f"{DELIVERIES}{broken.pk}/replay/", {"next": back})

    assert response["Location"] == back


def test_replaying_a_delivery_never_goes_back_to_another_site(admin_client, failed_event):
    broken = failed_event.deliveries.get(position=2)

    response = admin_client.post(
        f"{DELIVERIES}{broken.pk}/replay/", {"next": "https://evil.example.com/"}
    )

    assert response["Location"] == delivery_url(broken)


# --- Replaying the selected deliveries ------------------------------------------------------


def select(*deliveries, **extra) -> dict:
    return {
        "action": "replay_selected",
        ACTION_CHECKBOX_NAME: [str(d.pk) for d in deliveries],
        **extra,
    }


def test_the_replay_action_first_asks_why(admin_client, failed_event, sent):
    broken = failed_event.deliveries.get(position=2)

    response = admin_client.post(DELIVERIES, select(broken, index=0))

    html = response.content.decode()
    assert response.status_code == 200
    assert "1 delivery will be replayed on a worker" in html
    assert 'name="reason"' in html
    assert not Replay.objects.exists()
    assert sent == []


def test_the_replay_action_says_first_that_succeeded_deliveries_run_again(
    admin_client, failed_event, sent
):
    broken = failed_event.deliveries.get(position=2)
    done = failed_event.deliveries.get(position=0)

    html = admin_client.post(DELIVERIES, select(broken, done, index=0)).content.decode()
    only_failed = admin_client.post(DELIVERIES, select(broken, index=0)).content.decode()

    assert "2 deliveries will be replayed on a worker" in html
    assert "1 of them succeeded: its listener runs again." in html
    assert "of them succeeded" not in only_failed
    assert sent == []


def test_the_replay_action_records_a_replay_and_sends_the_replay_task(
    admin_client, superuser, failed_event, sent, django_capture_on_commit_callbacks
):
    broken = failed_event.deliveries.get(position=2)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            DELIVERIES, select(broken, post="yes", reason="bug #12 fixed", canary="1", rate="5")
        )

    assert response.status_code == 302
    record = Replay.objects.get()
    assert (record.source, record.requested_by, record.reason) == (
        "admin",
        superuser,
        "bug #12 fixed",
    )
    assert (record.total, record.canary, record.rate) == (1, 1, 5.0)
    assert [args[:2] for args in sent] == [(record.pk, {"pk__in": [str(broken.pk)]})]
    assert is_sealed(list(sent[0][:2]), sent[0][2])  # a worker runs only what is sealed


def test_the_replay_task_sent_by_the_action_requeues_the_deliveries(
    admin_client, failed_event, sent, django_capture_on_commit_callbacks
):
    broken = failed_event.deliveries.get(position=2)
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(DELIVERIES, select(broken, post="yes", reason="fixed"))

    tasks.replay.apply(args=sent[0])

    broken.refresh_from_db()
    assert broken.status == "pending"
    record = Replay.objects.get()
    assert (record.state, record.queued) == ("finished", 1)


def test_the_replay_action_reports_what_it_started(
    admin_client, failed_event, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            DELIVERIES,
            select(*failed_event.deliveries.all(), post="yes", reason="fixed"),
            follow=True,
        )

    record = Replay.objects.get()
    assert f"Replay #{record.pk} started: 4 deliveries go to a worker." in (
        response.content.decode()
    )


def test_the_replay_action_needs_a_reason(admin_client, failed_event, sent):
    broken = failed_event.deliveries.get(position=2)

    response = admin_client.post(DELIVERIES, select(broken, post="yes", reason=""))

    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert not Replay.objects.exists()


def test_the_replay_action_leaves_deliveries_in_flight_alone(
    admin_client, sent, django_capture_on_commit_callbacks
):
    event = make_event("failed", "running")
    failed, running = event.deliveries.order_by("position")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            DELIVERIES, select(failed, running, post="yes", reason="x"), follow=True
        )

    assert sent[0][1] == {"pk__in": [str(failed.pk)]}
    assert "1 delivery is still in flight and is left alone." in response.content.decode()


def test_the_replay_action_over_the_whole_selection_replays_what_the_filters_select(
    admin_client, sent, django_capture_on_commit_callbacks
):
    event = make_event("failed", "succeeded", "failed")
    first_failed = event.deliveries.get(position=0)

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            f"{DELIVERIES}?status__exact=failed",
            select(first_failed, post="yes", reason="x", select_across="1"),
        )

    failed = {str(d.pk) for d in event.deliveries.filter(status="failed")}
    assert set(sent[0][1]["pk__in"]) == failed


def test_the_replay_action_refuses_a_selection_too_big_to_list(
    admin_client, failed_event, sent, monkeypatch
):
    monkeypatch.setattr("messagio_admin.actions.BULK_LIMIT", 2)

    response = admin_client.post(
        DELIVERIES, select(*failed_event.deliveries.all(), post="yes", reason="x"), follow=True
    )

    assert "More than 2 deliveries are selected" in response.content.decode()
    assert not Replay.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_replay_task_that_cannot_be_sent_stops_the_replay_and_says_so(
    admin_client, failed_event, monkeypatch, caplog
):
    # Outside a transaction, as in production: the task is sent as soon as the Replay is saved.
    def broker_down(*args):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.replay, "delay", broker_down)
    broken = failed_event.deliveries.get(position=2)

    response = admin_client.post(DELIVERIES, select(broken, post="yes", reason="x"), follow=True)

    record = Replay.objects.get()
    assert record.state == "stopped"
    assert "broker down" in record.stopped_reason
    assert f"Replay #{record.pk} could not be started" in response.content.decode()
    assert "could not send the task of replay" in caplog.text


def test_a_search_matches_listeners_and_error_classes_not_the_rows_themselves(
    admin_client, failed_event
):
    # Matched against the distinct listeners and error classes, then selected through
    # them: a substring match on the rows would read every delivery for a rare term.
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(f"{DELIVERIES}?q=NoSuchListenerOrError")

    assert listed(response) == []
    assert not [q["sql"] for q in queries.captured_queries if "LIKE" in q["sql"].upper()]


def test_the_delivery_page_links_its_task_result_only_for_who_may_view_it(
    admin_client, viewer, failed_event
):
    delivery = failed_event.deliveries.get(position=0)
    result = TaskResult.objects.create(task_id=delivery.task_id, status="SUCCESS")
    link = f'href="/admin/django_celery_results/taskresult/{result.pk}/change/"'

    as_superuser = admin_client.get(delivery_url(delivery)).content.decode()
    as_viewer = client_for(viewer).get(delivery_url(delivery))

    assert link in as_superuser
    assert as_viewer.status_code == 200
    assert delivery.task_id in as_viewer.content.decode()
    assert "/taskresult/" not in as_viewer.content.decode()


def test_select_all_says_when_the_count_is_capped(admin_client, monkeypatch):
    monkeypatch.setattr(LargeTablePaginator, "cap", 2)
    make_event("failed", "failed", "failed", "failed")

    capped = admin_client.get(f"{DELIVERIES}?status__exact=failed").content.decode()
    counted = admin_client.get(f"{DELIVERIES}?status__exact=failed&listener={LISTENERS[0]}")

    assert "Select all (more than 2) deliveries" in capped
    assert "All (more than 2) selected" in capped
    assert "Select all 3" not in capped
    assert "(more than" not in counted.content.decode()
