"""The overview at the top of the Events list: the last 24 hours by status and by hour."""

import datetime
import re

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from messagio.models import Event
from messagio_admin import queries
from messagio_admin.overview import chart
from messagio_admin.queries import overview
from tests.admin.factories import make_event

pytestmark = pytest.mark.django_db

EVENTS = "/admin/messagio/event/"


def counts(html: str) -> dict[str, str]:
    """{label: number} of the overview's counters."""
    section = html[html.index('id="messagio-overview"') : html.index('<svg class="messagio-chart"')]
    pairs = re.findall(r"<strong>(?:<a [^>]*>)?(\d+)(?:</a>)?</strong>\s*([^<]+)</div>", section)
    return {label.strip(): number for number, label in pairs}


def test_the_overview_counts_events_and_deliveries_by_status(admin_client):
    make_event("succeeded", "failed", "running")
    make_event("succeeded", "retrying", "pending")
    make_event("pending", state=Event.State.RECORDED)

    html = admin_client.get(EVENTS).content.decode()

    assert counts(html) == {
        "events fired": "3",
        "deliveries succeeded": "2",
        "delivery failed": "1",
        "retrying": "1",
        "running": "1",
        "pending (all)": "2",
        "events waiting for a worker": "0",
        "event not published yet (all)": "1",
    }


def test_the_overview_counts_the_events_waiting_for_a_worker(admin_client):
    make_event(waiting=3)
    make_event("succeeded", "running", waiting=2)  # some groups written: in flight
    make_event(waiting=3, fired_at=timezone.now() - datetime.timedelta(hours=30))

    html = admin_client.get(EVENTS).content.decode()

    assert counts(html)["event waiting for a worker"] == "1"
    # The link lists the event it counts, not every event in flight.
    listed = admin_client.get(f"{EVENTS}?status=waiting")
    assert '<a href="?status=waiting">1</a>' in html
    assert listed.context["cl"].result_count == 1


def test_the_overview_counts_a_backlog_up_to_its_cap_and_says_there_is_more(
    admin_client, monkeypatch
):
    monkeypatch.setattr(queries, "BACKLOG_CAP", 2)
    make_event("pending", "pending", "pending")
    for _ in range(3):
        make_event(state=Event.State.RECORDED)

    html = admin_client.get(EVENTS).content.decode()

    assert "<strong>2+</strong>pending (all)" in html
    assert '<a href="?status=unpublished">2+</a>' in html


def test_the_overview_counts_of_a_backlog_under_the_cap_are_exact(admin_client, monkeypatch):
    monkeypatch.setattr(queries, "BACKLOG_CAP", 2)
    make_event("pending", "pending")
    make_event(state=Event.State.RECORDED)

    result = overview()

    assert (result.by_status["pending"], result.unpublished, result.capped) == (2, 1, set())


def test_the_overview_never_counts_a_backlog_whole(admin_client):
    with CaptureQueriesContext(connection) as captured:
        overview()

    backlog = [
        q["sql"]
        for q in captured.captured_queries
        if "'pending'" in q["sql"] or "'recorded'" in q["sql"]
    ]
    assert len(backlog) == 2
    assert all(f"LIMIT {queries.BACKLOG_CAP + 1}" in sql for sql in backlog)


def test_the_overview_leaves_out_what_is_older_than_24_hours(admin_client):
    make_event("succeeded", "failed", fired_at=timezone.now() - datetime.timedelta(hours=30))

    html = admin_client.get(EVENTS).content.decode()

    assert counts(html)["events fired"] == "0"
    assert counts(html)["deliveries failed"] == "0"


def test_the_failed_count_links_to_the_same_failures(admin_client):
    make_event("failed", fired_at=timezone.now() - datetime.timedelta(hours=30))
    make_event("succeeded", "failed")

    html = admin_client.get(EVENTS).content.decode()
    link = re.search(r'<a href="([^"]*status__exact=failed[^"]*)">(\d+)</a>', html)

    assert link.group(2) == "1"
    listed = admin_client.get(link.group(1).replace("&amp;", "&"))
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == 1


def test_the_chart_has_a_bar_per_hour_for_24_hours():
    result = overview()

    assert len(result.hours) == 24
    assert len(chart(result).bars) == 24


def test_the_chart_puts_an_event_in_the_bar_of_its_hour(admin_client):
    # Half past, not now: an event at the end of an hour has its delivery in the next one.
    now = timezone.now().replace(minute=30, second=0, microsecond=0)
    make_event("failed", fired_at=now - datetime.timedelta(hours=3))

    result = overview(now=now)

    assert [bar.events for bar in result.hours][-4] == 1
    assert [bar.failed for bar in result.hours][-4] == 1
    assert sum(bar.events for bar in result.hours) == 1


def test_the_chart_is_inline_svg_with_a_title_per_hour(admin_client):
    make_event("failed", fired_at=timezone.now() - datetime.timedelta(minutes=5))

    html = admin_client.get(EVENTS).content.decode()

    assert '<svg class="messagio-chart"' in html
    assert html.count('<rect class="events"') == 24
    assert "1 event, 1 failed delivery</title>" in html


def test_the_overview_costs_as_many_queries_with_many_events_as_with_few(admin_client):
    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            overview()
        return len(captured.captured_queries)

    make_event("succeeded")
    few = count()
    for hours in range(20):
        make_event("succeeded", "failed", fired_at=timezone.now() - datetime.timedelta(hours=hours))
        make_event(waiting=2, fired_at=timezone.now() - datetime.timedelta(hours=hours))

    assert count() == few == 6


def test_the_overview_is_not_computed_for_a_user_who_may_not_see_events(client):
    from tests.admin.factories import make_user

    client.force_login(make_user("nobody"))

    with CaptureQueriesContext(connection) as captured:
        response = client.get(EVENTS)

    assert response.status_code == 403
    assert not any("messagio_event" in q["sql"] for q in captured.captured_queries)


@pytest.mark.parametrize("time_zone", ["UTC", "Europe/Paris"])
def test_the_events_list_and_its_overview_work_without_use_tz(admin_client, time_zone):
    with override_settings(USE_TZ=False, TIME_ZONE=time_zone):
        now = timezone.now().replace(minute=30, second=0, microsecond=0)
        make_event("succeeded", "failed", fired_at=now)
        make_event("succeeded", fired_at=now)

        response = admin_client.get(EVENTS)
        result = overview(now=now)

    assert response.status_code == 200
    assert counts(response.content.decode())["events fired"] == "2"
    # Both in the current hour's bar, the last of the 24.
    assert [bar.events for bar in result.hours][-1] == 2
    assert [bar.failed for bar in result.hours][-1] == 1
