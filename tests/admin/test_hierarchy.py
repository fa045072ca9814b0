"""The date hierarchy's periods, listed from the first and the last date alone, and how
those two dates are found."""

import datetime
import re

import pytest
from django.contrib import admin
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from messagio.models import Event
from messagio_admin.hierarchy import bounds, periods_between
from messagio_admin.paginator import LargeTablePaginator
from tests.admin.factories import make_event

UTC = datetime.UTC


def at(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


def test_every_day_between_the_first_and_the_last_is_listed():
    days = periods_between(at(2024, 2, 27, 23), at(2024, 3, 2, 1), "day")

    assert [(d.month, d.day) for d in days] == [(2, 27), (2, 28), (2, 29), (3, 1), (3, 2)]


def test_every_month_between_the_first_and_the_last_is_listed_across_a_new_year():
    months = periods_between(at(2023, 11, 5), at(2024, 2, 1), "month")

    assert [(m.year, m.month) for m in months] == [(2023, 11), (2023, 12), (2024, 1), (2024, 2)]


def test_every_year_between_the_first_and_the_last_is_listed():
    years = periods_between(at(2021, 6, 1), at(2024, 1, 1), "year")

    assert [y.year for y in years] == [2021, 2022, 2023, 2024]


def test_periods_are_in_the_current_time_zone():
    with timezone.override("Asia/Tokyo"):
        days = periods_between(at(2024, 3, 10, 20), at(2024, 3, 10, 20), "day")

    assert [(d.month, d.day) for d in days] == [(3, 11)]


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        periods_between(at(2024, 1, 1), at(2024, 1, 2), "week")


# --- The first and the last date, on the Events changelist ---------------------------------

EVENTS = "/admin/messagio/event/"


def day_links(response) -> list[tuple[int, int, int]]:
    """(year, month, day) of each day the hierarchy lists."""
    return [
        (int(year), int(month), int(day))
        for day, month, year in re.findall(
            r'href="\?fired_at__day=(\d+)&amp;fired_at__month=(\d+)&amp;fired_at__year=(\d+)[&"]',
            response.content.decode(),
        )
    ]


def month_links(response) -> list[tuple[int, int]]:
    return [
        (int(year), int(month))
        for month, year in re.findall(
            r'href="\?fired_at__month=(\d+)&amp;fired_at__year=(\d+)[&"]', response.content.decode()
        )
    ]


@pytest.fixture
def in_flight_among_finished():
    """March 2024: finished events on the 8th and the 14th, one in flight on the 11th."""
    make_event("succeeded", fired_at=at(2024, 3, 8, 12))
    make_event("succeeded", "running", fired_at=at(2024, 3, 11, 12))
    make_event("failed", fired_at=at(2024, 3, 14, 12))


@pytest.fixture
def counted_selections_are_large(monkeypatch):
    """Any filtered selection of two rows or more is past the changelists' count cap."""
    monkeypatch.setattr(LargeTablePaginator, "cap", 1)


@pytest.mark.django_db
def test_a_small_selection_lists_the_days_of_its_own_first_and_last_date(
    admin_client, in_flight_among_finished
):
    response = admin_client.get(f"{EVENTS}?status=in_flight")

    assert day_links(response) == [(2024, 3, 11)]


@pytest.mark.django_db
def test_a_selection_past_the_count_cap_lists_the_days_between_the_tables_first_and_last(
    admin_client, in_flight_among_finished, counted_selections_are_large
):
    make_event("succeeded", "pending", fired_at=at(2024, 3, 12, 12))

    response = admin_client.get(f"{EVENTS}?status=in_flight")

    # The selection's dates would walk the date index to its first row in flight: the
    # table's first and last date instead, the empty days listed too.
    assert day_links(response) == [(2024, 3, day) for day in range(8, 15)]


@pytest.mark.django_db
def test_a_large_selection_lists_only_the_months_of_the_chosen_year(
    admin_client, counted_selections_are_large
):
    make_event("succeeded", fired_at=at(2023, 11, 5))
    for month in (2, 4):
        make_event("succeeded", fired_at=at(2024, month, 5))
    make_event("succeeded", fired_at=at(2025, 1, 5))

    response = admin_client.get(f"{EVENTS}?status=ok&fired_at__year=2024")

    assert month_links(response) == [(2024, 2), (2024, 3), (2024, 4)]


def changelist(user, query: str):
    """The Events changelist of ``?query``, as the admin builds it for ``user``."""
    request = RequestFactory().get(f"{EVENTS}?{query}")
    request.user = user
    return admin.site.get_model_admin(Event).get_changelist_instance(request)


@pytest.mark.django_db
@pytest.mark.parametrize("large", [False, True])
def test_the_first_and_the_last_date_cost_one_statement(superuser, monkeypatch, large):
    for day in (8, 11, 14):
        make_event("succeeded", fired_at=at(2024, 3, day))
    if large:
        monkeypatch.setattr(LargeTablePaginator, "cap", 1)
    cl = changelist(superuser, "status=ok")

    with CaptureQueriesContext(connection) as captured:
        first, last = bounds(cl)

    assert len(captured.captured_queries) == 1
    assert (first, last) == (at(2024, 3, 8), at(2024, 3, 14))


@pytest.mark.django_db
def test_an_empty_selection_shows_no_hierarchy(admin_client):
    make_event("succeeded", fired_at=at(2024, 3, 8))

    html = admin_client.get(f"{EVENTS}?status=in_flight").content.decode()

    assert 'class="toplinks"' not in html


@pytest.mark.django_db
def test_a_large_selection_of_deliveries_none_of_them_started_shows_no_hierarchy(
    admin_client, counted_selections_are_large
):
    # Workers that never took their queue: every delivery pending, none with a start date.
    make_event("pending", "pending", fired_at=at(2024, 3, 8))

    response = admin_client.get("/admin/messagio/delivery/?status__exact=pending")

    assert response.status_code == 200
    assert 'class="toplinks"' not in response.content.decode()
