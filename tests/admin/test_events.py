"""The Events changelist and each event's page."""

import datetime
import re

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_results.models import TaskResult

from messagio import tasks
from messagio.models import Attempt, Delivery, Event, Replay
from messagio.registry import registry
from messagio_admin import queries
from tests.admin.factories import ERROR, HOSTILE, PING, make_event
from tests.testapp.messagio import Ping

pytestmark = pytest.mark.django_db

EVENTS = "/admin/messagio/event/"
FLAKY = "tests.testapp.messagio.Flaky"


def event_url(event: Event) -> str:
    return f"{EVENTS}{event.pk}/change/"


def listed(response) -> list[str]:
    """Ids of the events on a changelist page, in order."""
    html = response.content.decode()
    return re.findall(r'href="/admin/messagio/event/([0-9a-f-]{36})/change/', html)


def ago(**delta) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(**delta)


def count_queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries)


# --- The list -------------------------------------------------------------------------------


def test_the_events_list_shows_the_newest_event_first(admin_client):
    old = make_event("succeeded", fired_at=ago(hours=2))
    new = make_event("succeeded", fired_at=ago(minutes=1))

    response = admin_client.get(EVENTS)

    assert response.status_code == 200
    assert listed(response) == [str(new.pk), str(old.pk)]


def test_the_events_list_shows_the_short_type_with_the_dotted_path_on_hover(admin_client):
    make_event("succeeded")

    response = admin_client.get(EVENTS)

    assert '<span title="tests.testapp.messagio.Ping">Ping</span>' in response.content.decode()


def test_the_status_badge_counts_succeeded_and_failed_deliveries(admin_client, failed_event):
    response = admin_client.get(EVENTS)

    assert "3/4 ok, 1 failed" in response.content.decode()


def test_the_status_badge_counts_deliveries_in_flight(admin_client):
    make_event("succeeded", "pending", "running")

    response = admin_client.get(EVENTS)

    assert "1/3 ok, 2 in flight" in response.content.decode()


def test_the_status_badge_counts_listeners_waiting_for_a_worker(admin_client):
    make_event(waiting=3)  # published, no Delivery row written yet

    response = admin_client.get(EVENTS)

    assert (
        '<span class="messagio-badge messagio-flight">0/3 ok, 3 waiting for a worker</span>'
        in response.content.decode()
    )


def test_the_status_badge_counts_groups_no_worker_started_beside_the_written_ones(
    admin_client,
):
    make_event("succeeded", "running", waiting=2)

    response = admin_client.get(EVENTS)

    assert "1/4 ok, 1 in flight, 2 waiting for a worker" in response.content.decode()


def test_the_status_badge_of_an_unpublished_event_says_so(admin_client):
    make_event("pending", state=Event.State.RECORDED)

    response = admin_client.get(EVENTS)

    assert "not published yet" in response.content.decode()


def test_the_status_badge_of_an_event_without_listeners_says_so(admin_client):
    make_event()

    response = admin_client.get(EVENTS)

    assert "no listeners" in response.content.decode()


def test_the_events_list_shows_listener_count_and_origin(admin_client):
    make_event("succeeded", "succeeded", origin=Event.Origin.SYNC)

    response = admin_client.get(EVENTS)

    html = response.content.decode()
    assert '<td class="field-listener_count">2</td>' in html
    assert '<td class="field-origin">sync fire</td>' in html


def test_the_status_badges_of_a_page_cost_one_query_whatever_the_number_of_events(admin_client):
    for _ in range(5):
        make_event("succeeded", "failed")
    admin_client.get(EVENTS)  # warm caches (content types, session)
    few = count_queries(admin_client, EVENTS)
    for _ in range(45):
        make_event("succeeded", "failed")

    many = count_queries(admin_client, EVENTS)

    assert many == few


def test_the_events_list_never_reads_a_payload(admin_client, failed_event):
    with CaptureQueriesContext(connection) as captured:
        admin_client.get(EVENTS)

    assert not any('"payload"' in query["sql"] for query in captured.captured_queries)


def test_the_events_list_never_counts_the_whole_table(admin_client, failed_event):
    with CaptureQueriesContext(connection) as captured:
        admin_client.get(EVENTS + "?status=failed")

    counts = [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]
    assert any("LIMIT 1001" in sql for sql in counts)
    assert not [sql for sql in counts if "WHERE" not in sql.upper()]


# --- Filters --------------------------------------------------------------------------------


@pytest.fixture
def one_of_each():
    """One event per status filter choice."""
    return {
        "failed": make_event("succeeded", "failed"),
        "ok": make_event("succeeded", "succeeded"),
        "in_flight": make_event("succeeded", "running"),
        "unpublished": make_event("pending", state=Event.State.RECORDED),
    }


@pytest.mark.parametrize("choice", ["failed", "ok", "in_flight", "unpublished"])
def test_the_status_filter_selects_the_events_of_its_choice(admin_client, one_of_each, choice):
    response = admin_client.get(f"{EVENTS}?status={choice}")

    assert listed(response) == [str(one_of_each[choice].pk)]


def test_the_in_flight_filter_selects_events_by_id_without_joining_their_deliveries(
    admin_client,
):
    make_event("succeeded", "succeeded", fired_at=ago(hours=3))
    flying = make_event("succeeded", "running", fired_at=ago(hours=2))
    backlog = make_event("pending", "pending", fired_at=ago(hours=1))

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(f"{EVENTS}?status=in_flight")

    assert listed(response) == [str(backlog.pk), str(flying.pk)]
    # A join lets the planner walk every event to find the few in flight (issue #4). The
    # statements that read both tables look for the events waiting for a worker (the
    # filter's ids, the overview's count): an anti-join over a derived table of the newest
    # events, bounded by its LIMIT.
    both = [
        q["sql"]
        for q in captured.captured_queries
        if '"messagio_event"' in q["sql"] and '"messagio_delivery"' in q["sql"]
    ]
    assert len(both) == 2
    assert all(") recent WHERE" in sql and "NOT EXISTS" in sql for sql in both)


def test_the_in_flight_filter_selects_events_waiting_for_a_worker(admin_client):
    waiting = make_event(waiting=3, fired_at=ago(minutes=1))
    make_event("succeeded", "succeeded", "succeeded", fired_at=ago(minutes=2))
    make_event(fired_at=ago(minutes=3))  # no listeners: nothing to wait for

    response = admin_client.get(f"{EVENTS}?status=in_flight")

    assert listed(response) == [str(waiting.pk)]


def test_the_in_flight_filter_lists_events_in_flight_and_waiting_newest_first(admin_client):
    running = make_event("succeeded", "running", fired_at=ago(minutes=3))
    partly = make_event("succeeded", waiting=1, fired_at=ago(minutes=2))  # one group written
    waiting = make_event(waiting=2, fired_at=ago(minutes=1))

    response = admin_client.get(f"{EVENTS}?status=in_flight")

    # partly: its written delivery has succeeded, the other group is not looked for (only
    # events without any Delivery row are).
    assert listed(response) == [str(waiting.pk), str(running.pk)]
    assert str(partly.pk) not in listed(response)


def test_the_in_flight_filter_looks_for_waiting_events_in_the_last_24_hours_only(
    admin_client,
):
    """Finding an event without deliveries probes its deliveries: over every event that
    would read the whole table, so only the last 24 hours are looked at."""
    make_event(waiting=3, fired_at=ago(hours=25))
    recent = make_event(waiting=3, fired_at=ago(hours=23))

    response = admin_client.get(f"{EVENTS}?status=in_flight")

    assert listed(response) == [str(recent.pk)]


def test_the_in_flight_filter_costs_as_many_queries_for_many_waiting_events_as_for_few(
    admin_client,
):
    for _ in range(2):
        make_event(waiting=3)
        make_event("running")
    url = f"{EVENTS}?status=in_flight"
    few = count_queries(admin_client, url)
    for _ in range(20):
        make_event(waiting=3)
        make_event("running")

    assert count_queries(admin_client, url) == few


@pytest.mark.parametrize("choice", ["waiting", "in_flight"])
def test_a_list_of_waiting_events_past_its_limit_says_it_is_not_all_of_them(
    admin_client, monkeypatch, choice
):
    monkeypatch.setattr(queries, "IN_FLIGHT_LIMIT", 2)
    newest = [make_event(waiting=1, fired_at=ago(minutes=m)) for m in (1, 2)]
    make_event(waiting=1, fired_at=ago(minutes=3))

    response = admin_client.get(f"{EVENTS}?status={choice}")

    assert listed(response) == [str(event.pk) for event in newest]
    assert (
        "Of the events waiting for a worker, only the newest 2 are listed: there are more."
        in response.content.decode()
    )


@pytest.mark.parametrize("choice", ["waiting", "in_flight"])
def test_a_list_of_all_the_waiting_events_does_not_say_there_are_more(
    admin_client, monkeypatch, choice
):
    monkeypatch.setattr(queries, "IN_FLIGHT_LIMIT", 2)
    make_event(waiting=1)
    make_event(waiting=1)

    response = admin_client.get(f"{EVENTS}?status={choice}")

    assert len(listed(response)) == 2
    assert "there are more" not in response.content.decode()


def test_the_all_ok_filter_leaves_out_events_whose_listeners_no_worker_has_run_yet(
    admin_client,
):
    ok = make_event("succeeded", "succeeded")
    make_event(waiting=3)
    make_event("succeeded", waiting=1)  # one group done, the other not started
    no_listeners = make_event(fired_at=ago(minutes=5))

    response = admin_client.get(f"{EVENTS}?status=ok")

    assert listed(response) == [str(ok.pk), str(no_listeners.pk)]


def test_the_status_filter_offers_its_four_choices(admin_client):
    response = admin_client.get(EVENTS)

    html = response.content.decode()
    for label in ("has failures", "all ok", "in flight", "never published"):
        assert label in html


def test_the_type_filter_offers_each_recorded_type_by_its_short_name(admin_client):
    make_event("succeeded")
    make_event("succeeded", messagio_type=FLAKY)

    response = admin_client.get(EVENTS)

    html = response.content.decode()
    assert f'href="?messagio_type={PING}"' in html
    assert f'href="?messagio_type={FLAKY}"' in html
    assert ">Flaky</a>" in html


def test_the_type_filter_selects_the_events_of_one_type(admin_client):
    make_event("succeeded")
    flaky = make_event("succeeded", messagio_type=FLAKY)

    response = admin_client.get(f"{EVENTS}?messagio_type={FLAKY}")

    assert listed(response) == [str(flaky.pk)]


def test_the_date_hierarchy_selects_one_day(admin_client):
    march_10 = make_event(
        "succeeded", fired_at=datetime.datetime(2024, 3, 10, 12, tzinfo=datetime.UTC)
    )
    make_event("succeeded", fired_at=datetime.datetime(2024, 3, 12, 12, tzinfo=datetime.UTC))

    response = admin_client.get(f"{EVENTS}?fired_at__year=2024&fired_at__month=3&fired_at__day=10")

    assert listed(response) == [str(march_10.pk)]


def test_the_date_hierarchy_lists_the_days_from_the_first_event_to_the_last(admin_client):
    make_event("succeeded", fired_at=datetime.datetime(2024, 3, 10, 12, tzinfo=datetime.UTC))
    make_event("succeeded", fired_at=datetime.datetime(2024, 3, 12, 12, tzinfo=datetime.UTC))

    response = admin_client.get(EVENTS)

    html = response.content.decode()
    for day in (10, 11, 12):
        assert f"fired_at__day={day}&amp;fired_at__month=3&amp;fired_at__year=2024" in html


def test_the_date_hierarchy_reads_first_and_last_dates_not_every_date(admin_client):
    make_event("succeeded", fired_at=datetime.datetime(2023, 3, 10, 12, tzinfo=datetime.UTC))
    make_event("succeeded", fired_at=datetime.datetime(2024, 5, 12, 12, tzinfo=datetime.UTC))

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(EVENTS + "?fired_at__year=2024")

    assert "fired_at__month=5&amp;fired_at__year=2024" in response.content.decode()
    assert not any("DISTINCT" in q["sql"].upper() for q in captured.captured_queries)


def test_the_date_hierarchy_lists_the_years_from_the_first_event_to_the_last(admin_client):
    make_event("succeeded", fired_at=datetime.datetime(2022, 3, 10, 12, tzinfo=datetime.UTC))
    make_event("succeeded", fired_at=datetime.datetime(2024, 5, 12, 12, tzinfo=datetime.UTC))

    html = admin_client.get(EVENTS).content.decode()

    assert re.findall(r'href="\?fired_at__year=(\d+)"', html) == ["2022", "2023", "2024"]


def test_the_date_hierarchy_is_left_out_during_a_search(admin_client, failed_event):
    html = admin_client.get(f"{EVENTS}?q=token").content.decode()

    assert 'class="toplinks"' not in html


# --- Search ---------------------------------------------------------------------------------


def test_searching_an_event_id_finds_that_event(admin_client):
    wanted = make_event("succeeded")
    make_event("succeeded")

    response = admin_client.get(f"{EVENTS}?q={wanted.pk}")

    assert listed(response) == [str(wanted.pk)]


def test_searching_part_of_a_type_finds_the_events_of_that_type(admin_client):
    make_event("succeeded")
    flaky = make_event("succeeded", messagio_type=FLAKY)

    response = admin_client.get(f"{EVENTS}?q=flak")

    assert listed(response) == [str(flaky.pk)]


def test_searching_text_of_the_summary_finds_the_event(admin_client):
    alice = make_event("succeeded", summary={"customer": "alice@example.com", "total": "12.50"})
    make_event("succeeded", summary={"customer": "bob@example.com", "total": "3.00"})

    response = admin_client.get(f"{EVENTS}?q=alice")

    assert listed(response) == [str(alice.pk)]


def test_a_search_that_matches_nothing_lists_nothing(admin_client, failed_event):
    response = admin_client.get(f"{EVENTS}?q=nothing-like-this")

    assert listed(response) == []


@pytest.mark.parametrize(
    "hostile_query",
    ["%", "_", "100%_off", "' OR 1=1 --", '"; DROP TABLE messagio_event; --', "\\", "[a-z]*"],
)
def test_sql_and_wildcard_characters_in_a_search_are_matched_literally(admin_client, hostile_query):
    make_event("succeeded", summary={"note": "plain text"})
    literal = make_event("succeeded", summary={"note": f"has {hostile_query} inside"})

    response = admin_client.get(EVENTS, {"q": hostile_query})

    assert response.status_code == 200
    assert listed(response) == [str(literal.pk)]
    assert Event.objects.count() == 2  # and the table is still there


# --- The event's page -----------------------------------------------------------------------


def test_the_event_page_shows_the_summary_as_a_field_table(admin_client):
    event = make_event("succeeded", summary={"order_id": 42, "email": "alice@example.com"})

    response = admin_client.get(event_url(event))

    html = response.content.decode()
    assert '<th scope="row">order_id</th><td><code>42</code></td>' in html
    assert '<th scope="row">email</th><td><code>alice@example.com</code></td>' in html


def test_the_event_page_lists_deliveries_in_subscription_order(admin_client, failed_event):
    response = admin_client.get(event_url(failed_event))

    html = response.content.decode()
    ids = re.findall(r'<tr id="delivery-([0-9a-f-]{36})">', html)
    expected = Delivery.objects.filter(event=failed_event).order_by("position")
    assert ids == [str(d.pk) for d in expected]


def test_the_event_page_shows_the_error_and_a_collapsible_traceback(admin_client, failed_event):
    response = admin_client.get(event_url(failed_event))

    html = response.content.decode()
    assert ERROR in html
    assert '<details class="messagio-traceback"><summary>Traceback</summary><pre>Traceback' in html


def test_the_event_page_shows_each_attempt_of_a_delivery(admin_client, failed_event):
    broken = failed_event.deliveries.get(position=2)
    Attempt.objects.create(delivery=broken, number=2, outcome="failed", error="second try")

    response = admin_client.get(event_url(failed_event))

    html = response.content.decode()
    assert "History: 2 attempts" in html
    assert "second try" in html


def test_the_event_page_links_the_celery_task_result_where_one_exists(admin_client, failed_event):
    delivery = failed_event.deliveries.get(position=0)
    result = TaskResult.objects.create(task_id=delivery.task_id, status="SUCCESS")

    response = admin_client.get(event_url(failed_event))

    html = response.content.decode()
    url = f"/admin/django_celery_results/taskresult/{result.pk}/change/"
    assert f'<a href="{url}">{delivery.task_id}</a>' in html


@override_settings(ROOT_URLCONF="tests.admin.urls_without_task_results")
def test_the_event_page_shows_the_task_unlinked_where_task_results_have_no_admin(
    admin_client, failed_event
):
    delivery = failed_event.deliveries.get(position=0)
    TaskResult.objects.create(task_id=delivery.task_id, status="SUCCESS")

    response = admin_client.get(event_url(failed_event))

    assert response.status_code == 200
    assert delivery.task_id in response.content.decode()
    assert "/taskresult/" not in response.content.decode()


def test_the_event_page_links_the_event_it_replays_and_its_replays(admin_client, failed_event):
    again = make_event("succeeded", origin=Event.Origin.REPLAY)
    Event.objects.filter(pk=again.pk).update(replay_of=failed_event)

    original_page = admin_client.get(event_url(failed_event)).content.decode()
    replay_page = admin_client.get(event_url(again)).content.decode()

    assert f'href="{event_url(again)}"' in original_page
    assert f'<a href="{event_url(failed_event)}">{failed_event.pk}</a>' in replay_page


def test_the_event_page_links_the_replay_of_a_replayed_delivery(admin_client, failed_event):
    record = Replay.objects.create(reason="fixed")
    failed_event.deliveries.filter(position=2).update(replay=record)

    response = admin_client.get(event_url(failed_event))

    assert f'href="/admin/messagio/replay/{record.pk}/change/"' in response.content.decode()


def test_the_event_page_refreshes_itself_while_a_delivery_is_in_flight(admin_client):
    running = make_event("succeeded", "running")
    done = make_event("succeeded")

    # A script, not a meta refresh: it waits while someone types a replay's reason.
    assert 'refresh.js" data-seconds="5"' in admin_client.get(event_url(running)).content.decode()
    assert "refresh.js" not in admin_client.get(event_url(done)).content.decode()


def test_the_event_page_says_how_many_listeners_no_worker_has_picked_up_yet(admin_client):
    event = make_event(waiting=3)

    html = admin_client.get(event_url(event)).content.decode()

    assert "3 listeners have not been picked up by a worker yet" in html
    assert "No delivery is recorded for this event." not in html
    assert "refresh.js" in html  # in flight: the page refreshes itself


def test_the_event_page_lists_the_written_deliveries_and_counts_the_others(admin_client):
    event = make_event("succeeded", waiting=1)

    html = admin_client.get(event_url(event)).content.decode()

    assert len(re.findall(r'<tr id="delivery-', html)) == 1
    assert "1 listener has not been picked up by a worker yet" in html
    assert "refresh.js" in html


def test_the_event_page_of_an_event_with_every_delivery_written_counts_none_waiting(
    admin_client, failed_event
):
    html = admin_client.get(event_url(failed_event)).content.decode()

    assert "picked up by a worker" not in html


def test_the_event_page_costs_as_many_queries_for_ten_deliveries_as_for_two(admin_client):
    small = make_event("succeeded", "failed")
    big = make_event(*(["succeeded", "failed"] * 5))
    admin_client.get(event_url(small))

    assert count_queries(admin_client, event_url(big)) == count_queries(
        admin_client, event_url(small)
    )


def test_the_event_page_never_reads_the_payload(admin_client, failed_event):
    with CaptureQueriesContext(connection) as captured:
        admin_client.get(event_url(failed_event))

    assert not any('"payload"' in query["sql"] for query in captured.captured_queries)


def test_the_event_page_offers_both_replay_buttons_to_a_superuser(admin_client, failed_event):
    response = admin_client.get(event_url(failed_event))

    html = response.content.decode()
    assert f'action="{EVENTS}{failed_event.pk}/replay-failed/"' in html
    assert f'action="{EVENTS}{failed_event.pk}/replay/"' in html


def test_the_event_page_offers_a_replay_button_on_the_failed_deliveries_only(
    admin_client, failed_event
):
    make_event("running")
    broken = failed_event.deliveries.get(position=2)

    html = admin_client.get(event_url(failed_event)).content.decode()

    # One click would run a listener that succeeded (or is running) again: the whole
    # event's replay, with its warning, is there for that.
    assert re.findall(r'form="replay-delivery-([0-9a-f-]{36})"', html) == [str(broken.pk)]
    assert re.findall(r'id="replay-delivery-([0-9a-f-]{36})"', html) == [str(broken.pk)]


def test_the_event_page_of_an_event_without_failures_offers_no_replay_of_failures(
    admin_client,
):
    event = make_event("succeeded")

    html = admin_client.get(event_url(event)).content.decode()

    assert "replay-failed/" not in html
    assert f'action="{EVENTS}{event.pk}/replay/"' in html


def test_an_unknown_event_id_redirects_to_the_list_with_a_message(admin_client):
    response = admin_client.get(
        f"{EVENTS}00000000-0000-0000-0000-000000000000/change/", follow=True
    )

    assert response.redirect_chain[-1][0] == "/admin/"
    assert b"doesn" in response.content


# --- Replays from the event's page ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_replaying_the_failed_deliveries_requeues_only_those(admin_client, failed_event):
    response = admin_client.post(
        f"{EVENTS}{failed_event.pk}/replay-failed/", {"reason": "bug #12 fixed"}
    )

    assert response.status_code == 302
    assert response["Location"] == event_url(failed_event)
    statuses = list(failed_event.deliveries.order_by("position").values_list("status", flat=True))
    assert statuses == ["succeeded", "succeeded", "pending", "succeeded"]


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_replaying_the_failed_deliveries_records_who_asked_and_why(
    admin_client, superuser, failed_event
):
    admin_client.post(f"{EVENTS}{failed_event.pk}/replay-failed/", {"reason": "bug #12 fixed"})

    record = Replay.objects.get()
    assert (record.requested_by, record.reason, record.source) == (
        superuser,
        "bug #12 fixed",
        "admin",
    )
    assert (record.total, record.queued, record.state) == (1, 1, "finished")
    assert failed_event.deliveries.get(position=2).replay == record


def succeeded_of(event: Event) -> str:
    """What the event's page confirms: the ids of its succeeded deliveries."""
    succeeded = event.deliveries.filter(status="succeeded").values_list("pk", flat=True)
    return ",".join(sorted(str(pk) for pk in succeeded))


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_replaying_the_whole_event_requeues_every_delivery(admin_client, failed_event):
    admin_client.post(f"{EVENTS}{failed_event.pk}/replay/", {"confirm": succeeded_of(failed_event)})

    assert set(failed_event.deliveries.values_list("status", flat=True)) == {"pending"}
    assert Replay.objects.get().total == 4


def test_the_whole_event_replay_asks_to_confirm_running_what_succeeded_again(
    admin_client, failed_event
):
    html = admin_client.get(event_url(failed_event)).content.decode()

    form = html[html.index('id="replay-event-form"') :]
    form = form[: form.index("</form>")]
    assert f'name="confirm" value="{succeeded_of(failed_event)}" required' in form
    assert "3 of its deliveries succeeded: run their listeners again too" in form


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_the_whole_event_replay_of_an_event_without_success_asks_nothing(admin_client):
    event = make_event("failed", "failed")

    html = admin_client.get(event_url(event)).content.decode()
    response = admin_client.post(f"{EVENTS}{event.pk}/replay/")

    form = html[html.index('id="replay-event-form"') :]
    assert 'name="confirm"' not in form[: form.index("</form>")]
    assert response.status_code == 302
    assert set(event.deliveries.values_list("status", flat=True)) == {"pending"}


def test_the_whole_event_is_not_replayed_without_confirmation_and_says_why(
    admin_client, failed_event
):
    response = admin_client.post(
        f"{EVENTS}{failed_event.pk}/replay/", {"reason": "redo"}, follow=True
    )

    assert response.redirect_chain[0][0] == event_url(failed_event)
    assert not Replay.objects.exists()
    statuses = list(failed_event.deliveries.order_by("position").values_list("status", flat=True))
    assert statuses == ["succeeded", "succeeded", "failed", "succeeded"]
    assert (
        f"Event {failed_event.pk} was not replayed: 3 of its deliveries succeeded, and their "
        "listeners would run again."
    ) in response.content.decode()


def test_a_confirmed_whole_event_replay_refuses_one_that_succeeded_since_the_page(
    admin_client, failed_event
):
    shown = succeeded_of(failed_event)
    failed_event.deliveries.filter(status="failed").update(status="succeeded")

    response = admin_client.post(
        f"{EVENTS}{failed_event.pk}/replay/", {"confirm": shown}, follow=True
    )

    assert not Replay.objects.exists()
    assert "1 more of its deliveries succeeded since its page was shown" in (
        response.content.decode()
    )


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_replaying_an_event_says_how_many_deliveries_were_queued(admin_client, failed_event):
    response = admin_client.post(
        f"{EVENTS}{failed_event.pk}/replay/", {"confirm": succeeded_of(failed_event)}, follow=True
    )

    record = Replay.objects.get()
    assert f"Replay #{record.pk}: 4 deliveries of event {failed_event.pk} queued." in (
        response.content.decode()
    )


def test_replaying_an_event_whose_deliveries_are_in_flight_queues_nothing_and_says_so(
    admin_client,
):
    event = make_event("running")

    response = admin_client.post(f"{EVENTS}{event.pk}/replay/", follow=True)

    assert "nothing to replay" in response.content.decode()
    assert event.deliveries.get().status == "running"


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_a_replay_the_broker_refuses_is_reported_with_why_it_stopped(
    admin_client, failed_event, monkeypatch
):
    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr("messagio.replays.publish_all", broker_down)

    response = admin_client.post(
        f"{EVENTS}{failed_event.pk}/replay/", {"confirm": succeeded_of(failed_event)}, follow=True
    )

    html = response.content.decode()
    assert "stopped: the broker refused a publish" in html
    assert "broker down" in html


# --- Publishing again what a broker lost ----------------------------------------------------


def minutes_ago(minutes: float) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(minutes=minutes)


def offers_to_publish_again(client, event) -> bool:
    return 'id="publish-again-form"' in client.get(event_url(event)).content.decode()


def test_the_event_page_offers_to_publish_again_what_has_waited_for_a_worker(admin_client):
    assert offers_to_publish_again(
        admin_client, make_event("succeeded", "pending", waiting=2, fired_at=minutes_ago(15))
    )


def test_the_event_page_does_not_offer_it_for_what_is_just_on_its_way_or_finished(
    admin_client, failed_event
):
    assert not offers_to_publish_again(admin_client, make_event("pending", waiting=2))
    assert not offers_to_publish_again(admin_client, failed_event)
    # Five minutes behind a backlog is still on its way (PUBLISH_AGAIN_AFTER: ten).
    behind = make_event("pending", waiting=2, fired_at=minutes_ago(5))
    assert not offers_to_publish_again(admin_client, behind)


def test_the_event_page_does_not_offer_it_while_a_worker_runs_one_of_its_deliveries(
    admin_client,
):
    event = make_event("running", "pending", fired_at=minutes_ago(15))

    assert not offers_to_publish_again(admin_client, event)


def test_the_wait_before_publishing_again_is_the_publish_again_after_setting(
    admin_client, settings
):
    settings.MESSAGIO = {**getattr(settings, "MESSAGIO", {}), "PUBLISH_AGAIN_AFTER": 1200}
    fifteen = make_event("succeeded", "pending", waiting=2, fired_at=minutes_ago(15))
    thirty = make_event("succeeded", "pending", waiting=2, fired_at=minutes_ago(30))

    assert not offers_to_publish_again(admin_client, fifteen)
    assert offers_to_publish_again(admin_client, thirty)
    refused = admin_client.post(f"{EVENTS}{fifteen.pk}/publish-again/", follow=True)
    assert "Nothing of this event has waited for a worker" in refused.content.decode()
    assert fifteen.deliveries.filter(status="pending").count() == 1


def ping_listeners() -> int:
    return len(registry.subscriptions_for(Ping))


def test_publishing_again_writes_the_missing_deliveries_and_queues_what_waits(admin_client):
    listeners = ping_listeners()
    event = make_event("succeeded", "pending", waiting=listeners - 2, fired_at=minutes_ago(15))
    published_before = event.published_at

    response = admin_client.post(f"{EVENTS}{event.pk}/publish-again/", follow=True)

    assert f"{listeners - 1} deliveries published again." in response.content.decode()
    statuses = list(event.deliveries.order_by("position").values_list("status", flat=True))
    assert statuses == ["succeeded"] + ["pending"] * (listeners - 1)
    event.refresh_from_db()
    assert event.published_at > published_before

    again = admin_client.post(f"{EVENTS}{event.pk}/publish-again/", follow=True)

    assert "Nothing of this event has waited for a worker" in again.content.decode()


def test_publishing_again_an_event_whose_listeners_changed_says_why_it_did_not(admin_client):
    event = make_event("pending", waiting=1, fired_at=minutes_ago(15))  # with two listeners

    response = admin_client.post(f"{EVENTS}{event.pk}/publish-again/", follow=True)

    assert f"has {ping_listeners()} listener(s) now and had 2 when it was fired" in (
        response.content.decode()
    )
    assert event.deliveries.count() == 1


def test_replaying_an_unknown_event_is_a_404(admin_client):
    response = admin_client.post(f"{EVENTS}00000000-0000-0000-0000-000000000000/replay/")

    assert response.status_code == 404


# --- Escaping -------------------------------------------------------------------------------


def test_a_hostile_summary_is_escaped_on_the_event_page(admin_client):
    event = make_event("failed", summary={"note": HOSTILE, HOSTILE: "key"})

    html = admin_client.get(event_url(event)).content.decode()

    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_hostile_error_and_result_are_escaped_on_the_event_page(admin_client):
    event = make_event("failed", error=HOSTILE, error_type=f"x.{HOSTILE}")
    event.deliveries.update(result=HOSTILE)

    html = admin_client.get(event_url(event)).content.decode()

    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_hostile_summary_is_escaped_in_the_events_list(admin_client):
    make_event("succeeded", summary={"note": HOSTILE})

    html = admin_client.get(EVENTS).content.decode()

    assert HOSTILE not in html
    assert "&lt;script&gt;" in html


def test_a_hostile_type_is_escaped_in_the_events_list(admin_client):
    make_event("succeeded", messagio_type=f"evil.{HOSTILE}")

    html = admin_client.get(EVENTS).content.decode()

    assert HOSTILE not in html


# --- Read-only ------------------------------------------------------------------------------


def test_events_cannot_be_added(admin_client):
    assert admin_client.get(f"{EVENTS}add/").status_code == 403


def test_an_event_cannot_be_changed(admin_client, failed_event):
    response = admin_client.post(event_url(failed_event), {"messagio_type": "x.Y"})

    assert response.status_code == 403
    failed_event.refresh_from_db()
    assert failed_event.messagio_type == PING


def test_a_superuser_may_delete_an_event_with_its_records(admin_client, failed_event):
    response = admin_client.post(f"{EVENTS}{failed_event.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Event.objects.filter(pk=failed_event.pk).exists()
    assert not Delivery.objects.filter(event_id=failed_event.pk).exists()


# --- Replaying the failed deliveries of selected events -------------------------------------


def test_the_event_action_replays_the_failed_deliveries_of_the_selected_events(
    admin_client, failed_event, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []
    monkeypatch.setattr(tasks.replay, "delay", lambda *args: sent.append(args))
    make_event("failed")  # not selected
    form = {
        "action": "replay_failed_of_selected",
        "_selected_action": [str(failed_event.pk)],
        "post": "yes",
        "reason": "fixed",
    }

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(EVENTS, form)

    assert response.status_code == 302
    broken = failed_event.deliveries.get(position=2)
    record = Replay.objects.get()
    # Only while still failed: not one that someone else replays meanwhile, and it succeeds.
    assert [args[:2] for args in sent] == [
        (record.pk, {"pk__in": [str(broken.pk)], "status": "failed"})
    ]
    assert record.description == "failed deliveries of 1 selected event"


def test_the_event_action_refuses_more_events_than_it_lists(admin_client, monkeypatch):
    monkeypatch.setattr("messagio_admin.events.BULK_LIMIT", 1)
    events = [make_event("failed"), make_event("failed")]

    response = admin_client.post(
        EVENTS,
        {"action": "replay_failed_of_selected", "_selected_action": [str(e.pk) for e in events]},
        follow=True,
    )

    assert "More than 1 events are selected" in response.content.decode()
    assert not Replay.objects.exists()


def test_a_column_not_sortable_is_not_sorted_by_even_when_asked_in_the_url(admin_client):
    # ?o=4 is listener_count (after the action checkbox): no index, a full sort of a million
    # events.
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(f"{EVENTS}?o=4")

    assert response.status_code == 200
    page_query = [q["sql"] for q in queries.captured_queries if "ORDER BY" in q["sql"]]
    assert page_query and not any(
        '"listener_count"' in sql.split("ORDER BY")[-1] for sql in page_query
    )


def test_a_replay_asked_in_a_transaction_says_it_is_queued_as_the_request_commits(
    admin_client, failed_event, django_capture_on_commit_callbacks
):
    """As with ATOMIC_REQUESTS: the view runs in a transaction (here, the test's)."""
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"{EVENTS}{failed_event.pk}/replay-failed/", {"reason": "fixed"}, follow=True
        )
        assert failed_event.deliveries.get(position=2).status == "failed"  # not yet

    assert "1 delivery of" in response.content.decode()
    assert "is queued as this request commits" in response.content.decode()
    assert failed_event.deliveries.get(position=2).status == "pending"
