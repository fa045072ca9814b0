"""Counting large tables without counting them: the estimate and the capped count."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from messagio.models import Event
from messagio_admin import paginator as paginator_module
from messagio_admin.paginator import (
    PAGES_AHEAD,
    LargeTablePaginator,
    estimated_row_count,
    is_unfiltered,
)
from tests.admin.factories import make_event

pytestmark = pytest.mark.django_db

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the estimate is PostgreSQL's pg_class.reltuples"
)


def test_a_small_selection_is_counted_exactly():
    for _ in range(3):
        make_event("succeeded")

    paginator = LargeTablePaginator(Event.objects.filter(listener_count=1).order_by("pk"), 2)

    assert paginator.count == 3
    assert not paginator.count_is_capped
    assert not paginator.count_is_estimate


def test_a_selection_past_the_cap_is_counted_up_to_the_cap_and_flagged(monkeypatch):
    monkeypatch.setattr(LargeTablePaginator, "cap", 2)
    monkeypatch.setattr(paginator_module, "PAGES_AHEAD", 0)  # the cap, not the page, counts
    for _ in range(5):
        make_event("succeeded")

    paginator = LargeTablePaginator(Event.objects.filter(listener_count=1).order_by("pk"), 2)

    assert paginator.count == 3
    assert paginator.count_is_capped
    assert paginator.num_pages == 2


def one_a_page(monkeypatch, events: int, page_asked: int) -> LargeTablePaginator:
    """A paginator of one event a page over ``events`` events, its cap at 2 rows, told the
    page the changelist asked for."""
    monkeypatch.setattr(LargeTablePaginator, "cap", 2)
    for _ in range(events):
        make_event("succeeded")
    paginator = LargeTablePaginator(Event.objects.filter(listener_count=1).order_by("pk"), 1)
    paginator.page_asked = page_asked
    return paginator


def test_a_page_past_the_cap_is_counted_a_few_pages_further_and_has_a_next_page(monkeypatch):
    # Past the cap's pages (2): the old count stopped at 3 rows.
    paginator = one_a_page(monkeypatch, events=20, page_asked=5)

    page = paginator.page(5)

    assert paginator.count == (5 + PAGES_AHEAD) * 1 + 1
    assert paginator.count_is_capped
    assert page.has_next()
    assert paginator.count_limit_display == str(5 + PAGES_AHEAD)


def test_a_page_past_the_cap_near_the_end_is_counted_exactly(monkeypatch):
    paginator = one_a_page(monkeypatch, events=6, page_asked=5)

    assert paginator.count == 6
    assert not paginator.count_is_capped
    assert not paginator.page(6).has_next()


def test_the_count_costs_one_query_however_deep_the_page(monkeypatch):
    monkeypatch.setattr(LargeTablePaginator, "cap", 2)
    for _ in range(8):
        make_event("succeeded")
    selection = Event.objects.filter(listener_count=1).order_by("pk")

    def queries_of_count(page_asked: int) -> list[str]:
        paginator = LargeTablePaginator(selection, 1)
        paginator.page_asked = page_asked
        with CaptureQueriesContext(connection) as captured:
            assert paginator.count
        return [query["sql"] for query in captured.captured_queries]

    shallow, deep = queries_of_count(1), queries_of_count(3)

    assert len(shallow) == len(deep) == 1
    # Bounded by the page asked for, not by the table.
    assert f"LIMIT {(3 + PAGES_AHEAD) + 1}" in deep[0]


def test_a_capped_count_links_its_last_page_then_an_ellipsis(monkeypatch):
    paginator = one_a_page(monkeypatch, events=20, page_asked=5)

    pages = list(paginator.get_elided_page_range(5))

    assert pages[-2:] == [5 + PAGES_AHEAD + 1, paginator.ELLIPSIS]


def test_a_list_is_counted_by_its_length():
    assert LargeTablePaginator([1, 2, 3], 2).count == 3


def test_ordering_does_not_make_a_queryset_filtered():
    assert is_unfiltered(Event.objects.order_by("-fired_at"))
    assert not is_unfiltered(Event.objects.filter(origin="fire"))


@pytest.mark.skipif(connection.vendor == "postgresql", reason="SQLite has no estimate")
def test_sqlite_has_no_estimate():
    assert estimated_row_count(Event.objects.all()) is None


@postgres_only
def test_an_unfiltered_table_past_the_cap_is_estimated_by_postgresql(monkeypatch):
    monkeypatch.setattr(LargeTablePaginator, "cap", 1)
    for _ in range(3):
        make_event("succeeded")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messagio_event")

    paginator = LargeTablePaginator(Event.objects.order_by("-fired_at"), 2)

    assert paginator.count == 3
    assert paginator.count_is_estimate


@postgres_only
def test_the_events_list_says_its_count_is_an_estimate(admin_client, monkeypatch):
    monkeypatch.setattr(LargeTablePaginator, "cap", 1)
    for _ in range(3):
        make_event("succeeded")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messagio_event")

    response = admin_client.get("/admin/messagio/event/")

    assert "about 3 events (an estimate)" in response.content.decode()


def test_an_estimated_count_links_no_page_past_the_cap(monkeypatch):
    monkeypatch.setattr(LargeTablePaginator, "count_is_estimate", True)
    paginator = LargeTablePaginator(list(range(1000)), 10)
    paginator.cap = 50

    pages = list(paginator.get_elided_page_range(1))

    assert pages == [1, 2, 3, 4, paginator.ELLIPSIS]


def test_an_estimated_count_still_links_around_the_current_page(monkeypatch):
    monkeypatch.setattr(LargeTablePaginator, "count_is_estimate", True)
    paginator = LargeTablePaginator(list(range(1000)), 10)
    paginator.cap = 50

    pages = list(paginator.get_elided_page_range(30))

    assert pages == [1, 2, paginator.ELLIPSIS, 27, 28, 29, 30, paginator.ELLIPSIS]


def test_an_exact_count_links_the_last_pages():
    paginator = LargeTablePaginator(list(range(1000)), 10)

    assert list(paginator.get_elided_page_range(1))[-2:] == [99, 100]
