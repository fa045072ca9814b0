"""The Listener registry page: the live registry, 24-hour statistics, orphans, unheard types."""

import datetime
import re

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from messagio.models import Delivery
from messagio.registry import registry
from tests.admin.factories import LISTENERS, make_event
from tests.testapp.messagio import Unheard
from tests.testapp.runtime_listeners import runtime_listener

pytestmark = pytest.mark.django_db

LISTENERS_PAGE = "/admin/messagio/delivery/listeners/"
FIRST = LISTENERS[0]


def page(client) -> str:
    """The page's HTML without the line-break hints of dotted paths (``<wbr>``)."""
    return client.get(LISTENERS_PAGE).content.decode().replace("<wbr>", "")


def row_of(html: str, listener: str) -> list[str]:
    """The cells of the listener's row, tags stripped."""
    match = re.search(
        r'<tr class="listener[^"]*">\s*<td>[^<]*</td>\s*<td><a href="[^"]*listener='
        + re.escape(listener)
        + r'".*?</tr>',
        html,
        re.S,
    )
    assert match, f"no row for {listener}"
    cells = re.findall(r"<td>(.*?)</td>", match.group(0), re.S)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


def test_the_page_says_it_shows_the_live_registry_of_this_process(admin_client):
    response = admin_client.get(LISTENERS_PAGE)

    assert response.status_code == 200
    assert "live registry of the web process that renders this page" in response.content.decode()


def test_the_page_lists_a_types_listeners_in_subscription_order(admin_client):
    html = page(admin_client)

    section = html[html.index('<h2 title="tests.testapp.messagio.Ping">') :]
    section = section[: section.index("</table>")]
    names = re.findall(r'title="tests\.testapp\.messagio:(\w+)"', section)
    assert names == ["first", "second", "broken", "third", "of_many"]


def test_the_page_shows_each_listeners_priority_queue_and_retry_policy(admin_client):
    html = page(admin_client)

    flaky = row_of(html, "tests.testapp.messagio.flaky")
    high = row_of(html, "tests.testapp.messagio.high")
    assert flaky[2:5] == ["5", "(routed)", "on ConnectionError: up to 3 retries, 0.1 s apart"]
    assert high[2:4] == ["10", settings.TEST_PRIORITY_QUEUE]


def test_a_listener_subscribed_at_run_time_shows_up(admin_client):
    registry.subscribe(Unheard, runtime_listener)

    html = page(admin_client)

    assert "tests.testapp.runtime_listeners.runtime_listener" in html


def test_the_page_counts_runs_and_failures_of_the_last_24_hours(admin_client):
    for status in ("succeeded", "succeeded", "succeeded", "failed"):
        make_event(status)
    make_event("failed", fired_at=timezone.now() - datetime.timedelta(days=2))

    cells = row_of(page(admin_client), FIRST)

    assert cells[5:8] == ["4", "1", "25.0%"]


def test_the_page_shows_median_and_p95_durations(admin_client):
    for _ in range(4):
        make_event("succeeded")
    for duration, delivery in zip(
        (10.0, 20.0, 30.0, 40.0), Delivery.objects.filter(listener=FIRST), strict=True
    ):
        Delivery.objects.filter(pk=delivery.pk).update(duration_ms=duration)

    cells = row_of(page(admin_client), FIRST)

    assert cells[9:11] == ["25.0 ms", "38.5 ms"]


def test_the_page_shows_when_a_listener_last_ran(admin_client):
    make_event("succeeded", fired_at=datetime.datetime(2024, 3, 10, 12, tzinfo=datetime.UTC))
    make_event("succeeded", fired_at=datetime.datetime(2024, 3, 12, 12, tzinfo=datetime.UTC))

    cells = row_of(page(admin_client), FIRST)

    assert cells[8] == "March 12, 2024, noon"


def test_a_listener_seen_in_the_records_but_not_registered_is_flagged_an_orphan(admin_client):
    make_event("failed", listeners=["shop.listeners.removed_long_ago"])

    html = page(admin_client)

    orphans = html[html.index('id="orphans"') :]
    assert "shop.listeners.removed_long_ago" in orphans
    assert "not registered" in orphans
    assert row_of(html, "shop.listeners.removed_long_ago")[5:7] == ["1", "1"]


def test_a_registered_listener_is_no_orphan(admin_client, failed_event):
    html = page(admin_client)

    orphans = html[html.index('id="orphans"') :]
    assert FIRST not in orphans


def test_a_messagio_type_nobody_listens_to_is_flagged(admin_client):
    html = page(admin_client)

    unheard = html[html.index('id="unheard"') :]
    assert (
        '<li class="messagio-flag"><span class="messagio-dotted">tests.testapp.messagio.Unheard'
        "</span></li>"
    ) in unheard
    assert "tests.testapp.messagio.Ping<" not in unheard


def test_dotted_paths_may_wrap_after_each_dot(admin_client):
    make_event("failed", listeners=["shop.listeners.removed_long_ago"])

    html = admin_client.get(LISTENERS_PAGE).content.decode()

    assert '<h2 title="tests.testapp.messagio.Ping">' in html
    assert "tests.<wbr>testapp.<wbr>messagio.<wbr>Ping</span></h2>" in html
    assert ">shop.<wbr>listeners.<wbr>removed_long_ago</span></a>" in html


def test_a_recorded_type_this_process_does_not_know_is_flagged(admin_client):
    make_event("succeeded", messagio_type="shop.events.RemovedLongAgo")

    html = page(admin_client)

    unheard = html[html.index('id="unheard"') :]
    assert "shop.events.RemovedLongAgo" in unheard


def test_the_page_costs_as_many_queries_with_many_records_as_with_few(admin_client):
    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(LISTENERS_PAGE).status_code == 200
        return len(captured.captured_queries)

    make_event("succeeded", "failed")
    admin_client.get(LISTENERS_PAGE)
    few = count()
    for index in range(20):
        make_event("succeeded", "failed", listeners=[f"gone.listener_{index}", FIRST])

    assert count() == few


def test_the_admin_index_links_to_the_registry_and_the_failures(admin_client):
    html = admin_client.get("/admin/").content.decode()

    assert f'<a href="{LISTENERS_PAGE}">Listener registry</a>' in html
    assert '<a href="/admin/messagio/delivery/failures/">Failures</a>' in html


def test_the_messagio_app_index_links_to_the_registry(admin_client):
    html = admin_client.get("/admin/messagio/").content.decode()

    assert f'<a href="{LISTENERS_PAGE}">Listener registry</a>' in html


def test_a_listener_of_two_types_shows_under_each_its_runs_of_that_type(admin_client):
    of_many = "tests.testapp.messagio.of_many"  # listens to Ping and PlainPing
    plain_ping = "tests.testapp.messagio.PlainPing"
    for status in ("succeeded", "succeeded"):
        make_event(status, listeners=[of_many])
    make_event("failed", messagio_type=plain_ping, listeners=[of_many])
    html = page(admin_client)

    def section(messagio_type: str) -> str:
        (found,) = [
            part
            for part in html.split('<div class="module messagio-type"')[1:]
            if f'<h2 title="{messagio_type}">' in part
        ]
        return found

    assert row_of(section("tests.testapp.messagio.Ping"), of_many)[5:7] == ["2", "0"]
    plain = section(plain_ping)
    assert row_of(plain, of_many)[5:7] == ["1", "1"]
    assert f"listener={of_many}&amp;messagio_type={plain_ping}&amp;status__exact=failed" in plain


def test_a_listeners_failure_count_links_to_the_same_failures(admin_client):
    make_event("failed")
    make_event("failed", fired_at=timezone.now() - datetime.timedelta(days=2))
    html = page(admin_client)
    row = re.search(
        r'<tr class="listener[^"]*">\s*<td>[^<]*</td>\s*<td><a href="[^"]*listener='
        + re.escape(FIRST)
        + r'".*?</tr>',
        html,
        re.S,
    ).group(0)
    link = re.search(r'<a href="([^"]*status__exact=failed[^"]*)">(\d+)</a>', row)

    assert link.group(2) == "1"
    listed = admin_client.get(link.group(1).replace("&amp;", "&"))
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == 1
