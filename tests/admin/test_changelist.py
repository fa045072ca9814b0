"""What the changelists of the records take from the query string: the lookups of their
filters, of their date hierarchy and of messagio_admin's own links, and nothing else."""

import html as html_module
import re
from urllib.parse import urlencode, urljoin

import pytest

from messagio.models import Replay
from tests.admin.factories import make_event

pytestmark = pytest.mark.django_db

EVENTS = "/admin/messagio/event/"
DELIVERIES = "/admin/messagio/delivery/"
REPLAYS = "/admin/messagio/replay/"


@pytest.mark.parametrize(
    ("changelist", "lookup"),
    [
        (EVENTS, "payload=x"),  # a BinaryField: a 500 (TypeError, memoryview)
        (EVENTS, "summary__icontains=x"),  # the search's job, through its index
        (DELIVERIES, "traceback__icontains=x"),  # a scan of every traceback
        (DELIVERIES, "error__icontains=x"),
        (DELIVERIES, "event__payload=x"),
        (REPLAYS, "reason__icontains=x"),
    ],
)
def test_a_lookup_no_filter_or_link_makes_is_refused_as_django_refuses_a_bad_one(
    admin_client, failed_event, changelist, lookup
):
    Replay.objects.create(reason="x")

    response = admin_client.get(f"{changelist}?{lookup}")

    assert response.status_code == 302
    assert response["Location"] == f"{changelist}?e=1"


@pytest.mark.parametrize(
    ("changelist", "lookup"),
    [
        # Without their year, Django filters by EXTRACT(month) of every row.
        (DELIVERIES, "started_at__month=3"),
        (DELIVERIES, "started_at__day=10"),
        (DELIVERIES, "started_at__year=2024&started_at__day=10"),  # a day needs its month
        (EVENTS, "fired_at__month=3"),
        (EVENTS, "fired_at__month=3&fired_at__day=10"),
        # Django computes the end of the period: after 9999, none (a ValueError, a 500).
        (EVENTS, "fired_at__year=9999"),
        (EVENTS, "fired_at__year=9999&fired_at__month=12"),
        (DELIVERIES, "started_at__year=9999&started_at__month=12&started_at__day=31"),
        (EVENTS, "fired_at__year=1"),
        (EVENTS, "fired_at__year=20000"),
        # A date Django cannot make (an OverflowError, a 500).
        (DELIVERIES, "started_at__year=2024&started_at__month=99999999999999999999"),
        (EVENTS, "fired_at__year=2024&fired_at__month=2&fired_at__day=99999999999999999999"),
        (EVENTS, "fired_at__year=2024&fired_at__month=13"),
    ],
)
def test_a_date_lookup_without_its_year_or_out_of_range_is_refused_as_a_bad_one(
    admin_client, failed_event, changelist, lookup
):
    response = admin_client.get(f"{changelist}?{lookup}")

    assert response.status_code == 302
    assert response["Location"] == f"{changelist}?e=1"


@pytest.mark.parametrize(
    "lookup",
    [
        "fired_at__year=2024",
        "fired_at__year=2024&fired_at__month=3",
        "fired_at__year=2024&fired_at__month=3&fired_at__day=10",
        "fired_at__year=9998&fired_at__month=12&fired_at__day=31",
    ],
)
def test_a_period_of_the_date_hierarchy_is_taken(admin_client, failed_event, lookup):
    assert admin_client.get(f"{EVENTS}?{lookup}").status_code == 200


def links_to_changelists(page: str, html: str) -> list[str]:
    """The links of ``html`` (the page at ``page``) to a changelist, with a query string."""
    links = (
        urljoin(page, html_module.unescape(href))
        for href in re.findall(r'href="([^"]*\?[^"]*)"', html)
    )
    return [link for link in links if link.split("?")[0] in (EVENTS, DELIVERIES, REPLAYS)]


def test_every_link_of_the_admin_to_a_changelist_is_taken(admin_client, failed_event):
    """The filters' choices, the date hierarchy's periods, the overview's counts, the
    Failures page's groups, the Listener registry's counts and a replay's deliveries."""
    make_event("succeeded", "pending", state="recorded")
    make_event(waiting=2)
    record = Replay.objects.create()
    broken = failed_event.deliveries.get(position=2)
    key = {name: getattr(broken, name) for name in ("listener", "messagio_type", "error_type")}
    pages = [
        EVENTS,
        f"{EVENTS}{failed_event.pk}/change/",
        DELIVERIES,
        f"{DELIVERIES}{broken.pk}/change/",
        f"{DELIVERIES}failures/",
        f"{DELIVERIES}failures/group/?{urlencode(key)}",
        f"{DELIVERIES}listeners/",
        REPLAYS,
        f"{REPLAYS}{record.pk}/change/",
    ]
    links = {
        link
        for page in pages
        for link in links_to_changelists(page, admin_client.get(page).content.decode())
    }
    lookups = {re.sub(r"=[^&]*", "", link.partition("?")[2]) for link in links}

    for link in sorted(links):
        response = admin_client.get(link)
        assert response.status_code == 200, link
    # Each kind of link was followed.
    assert {
        "status",  # the events' status filter and the overview's counts
        "messagio_type",
        "fired_at__year",
        "status__exact&started_at__gte",  # the overview's failed deliveries
        "status__exact&listener&messagio_type&error_type",  # a failure group's
        "listener&messagio_type&status__exact&finished_at__gte",  # the registry's failures
        "listener",
        "error_type",
        "started_at__year",
        "replay__id__exact",
        "state__exact",
        "source__exact",
    } <= lookups
