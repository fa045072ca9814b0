"""The admin's queries: index walks, per-page aggregates, percentiles."""

import datetime

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from messagio.models import Delivery, Event
from messagio_admin import queries
from tests.admin.factories import LISTENERS, PING, make_event
from tests.routers import RecordsElsewhere

pytestmark = pytest.mark.django_db


def test_distinct_values_lists_each_value_once_in_order():
    make_event("succeeded", messagio_type="b.Two")
    make_event("succeeded", messagio_type="a.One")
    make_event("succeeded", messagio_type="b.Two")

    assert queries.distinct_values(Event, "messagio_type") == ["a.One", "b.Two"]


def test_distinct_values_of_an_empty_table_is_empty():
    assert queries.distinct_values(Event, "messagio_type") == []


def test_distinct_values_stops_at_its_limit():
    for name in ("a.A", "b.B", "c.C"):
        make_event("succeeded", messagio_type=name)

    assert queries.distinct_values(Event, "messagio_type", limit=2) == ["a.A", "b.B"]


def test_distinct_values_is_one_statement():
    for name in ("a.A", "b.B", "c.C"):
        make_event("succeeded", messagio_type=name)

    with CaptureQueriesContext(connection) as captured:
        queries.distinct_values(Event, "messagio_type")

    assert len(captured.captured_queries) == 1


def test_delivery_counts_counts_each_events_deliveries_by_outcome():
    event = make_event("succeeded", "failed", "running", "succeeded")
    empty = make_event()

    counts = queries.delivery_counts([event.pk, empty.pk])

    assert counts == {event.pk: queries.EventCounts(total=4, succeeded=2, failed=1)}
    assert counts[event.pk].in_flight == 1


def test_in_flight_event_ids_lists_each_event_once_up_to_one_past_the_limit():
    three = make_event("running", "pending", "retrying")
    one = make_event("succeeded", "running")
    make_event("succeeded", "failed")

    assert sorted(queries.in_flight_event_ids(limit=5)) == sorted([three.pk, one.pk])
    assert len(queries.in_flight_event_ids(limit=1)) == 2
    assert len(queries.in_flight_event_ids(limit=0)) == 1


@pytest.mark.parametrize(
    "limit", [1000, 1], ids=["by id under the limit", "by subquery past it (a backlog)"]
)
def test_in_flight_selects_the_published_events_with_a_delivery_in_flight(monkeypatch, limit):
    monkeypatch.setattr(queries, "IN_FLIGHT_LIMIT", limit)
    running = make_event("succeeded", "running")
    pending = make_event("pending", "pending")
    retrying = make_event("failed", "retrying")
    make_event("succeeded", "failed")
    make_event()
    make_event("pending", state=Event.State.RECORDED)
    make_event("pending", state=Event.State.PUBLISHING)

    selected = queries.in_flight(Event.objects.all())

    assert set(selected) == {running, pending, retrying}


@pytest.mark.parametrize(
    "limit", [1000, 1], ids=["by id under the limit", "by subquery past it (a backlog)"]
)
def test_in_flight_selects_the_events_waiting_for_a_worker_too(monkeypatch, limit):
    monkeypatch.setattr(queries, "IN_FLIGHT_LIMIT", limit)
    running = make_event("succeeded", "running")
    pending = make_event("pending")
    waiting = make_event(waiting=3)
    make_event("succeeded", "succeeded")

    selected = queries.in_flight(Event.objects.all())

    assert set(selected) == {running, pending, waiting}


def ago(**delta) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(**delta)


def test_waiting_event_ids_are_published_events_with_listeners_and_no_delivery_newest_first():
    older = make_event(waiting=3, fired_at=ago(hours=2))
    newer = make_event(waiting=1, fired_at=ago(hours=1))
    make_event("succeeded", "running")  # deliveries written
    make_event()  # no listeners
    make_event(waiting=2, state=Event.State.INLINE)  # ran in process, nothing to wait for
    make_event(waiting=2, state=Event.State.RECORDED)  # not published: "never published"

    assert queries.waiting_event_ids() == [newer.pk, older.pk]


def test_waiting_event_ids_look_back_24_hours_only():
    """An event fired earlier is not looked at: the lookup probes each event's deliveries
    and must not read every event (messages a day in the broker are a broker matter)."""
    make_event(waiting=3, fired_at=ago(hours=24, minutes=1))
    recent = make_event(waiting=3, fired_at=ago(hours=23, minutes=59))

    assert queries.waiting_event_ids() == [recent.pk]
    assert queries.waiting_count() == 1


def test_waiting_event_ids_look_among_the_newest_events_only(monkeypatch):
    monkeypatch.setattr(queries, "WAITING_SCAN", 2)
    make_event(waiting=3, fired_at=ago(minutes=3))  # third newest: not looked at
    make_event("succeeded", fired_at=ago(minutes=2))
    newest = make_event(waiting=1, fired_at=ago(minutes=1))

    assert queries.waiting_event_ids() == [newest.pk]
    assert queries.waiting_count() == 1


def test_waiting_event_ids_stop_at_their_limit():
    make_event(waiting=1, fired_at=ago(minutes=2))
    newest = make_event(waiting=1, fired_at=ago(minutes=1))

    assert queries.waiting_event_ids(limit=1) == [newest.pk]
    assert queries.waiting_count() == 2


def test_waiting_event_ids_and_count_are_one_statement_each():
    for _ in range(3):
        make_event(waiting=2)

    with CaptureQueriesContext(connection) as captured:
        queries.waiting_event_ids()
        queries.waiting_count()

    assert len(captured.captured_queries) == 2


def test_waiting_for_worker_counts_the_listeners_of_a_published_event_without_a_row():
    assert queries.waiting_for_worker(make_event("succeeded", waiting=2), recorded=1) == 2
    assert queries.waiting_for_worker(make_event("succeeded", "failed"), recorded=2) == 0
    recorded = make_event("pending", waiting=1, state=Event.State.RECORDED)
    assert queries.waiting_for_worker(recorded, recorded=1) == 0


def test_in_flight_keeps_the_filters_it_is_given():
    make_event("running")
    flaky = make_event("running", messagio_type="tests.testapp.messagio.Flaky")

    selected = queries.in_flight(Event.objects.filter(messagio_type=flaky.messagio_type))

    assert list(selected) == [flaky]


def test_last_finished_gives_each_listeners_latest_finish():
    make_event("succeeded", fired_at=datetime.datetime(2024, 3, 10, tzinfo=datetime.UTC))
    latest = make_event("succeeded", fired_at=datetime.datetime(2024, 3, 12, tzinfo=datetime.UTC))

    finished = queries.last_finished([LISTENERS[0], "never.ran"])

    assert finished == {LISTENERS[0]: latest.deliveries.get().finished_at}


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([10.0, 20.0, 30.0, 40.0], 0.5, 25.0),
        ([10.0, 20.0, 30.0, 40.0], 0.95, 38.5),
        ([7.0], 0.95, 7.0),
        ([], 0.5, None),
    ],
)
def test_percentile_interpolates_like_percentile_cont(values, fraction, expected):
    assert queries.percentile(values, fraction) == expected


def test_listener_stats_count_runs_failures_and_durations_since_a_time():
    for status in ("succeeded", "failed", "succeeded"):
        make_event(status)
    Delivery.objects.filter(listener=LISTENERS[0]).update(duration_ms=10.0)

    stats = queries.listener_stats([LISTENERS[0]], timezone.now() - datetime.timedelta(hours=1))

    entry = stats[(LISTENERS[0], PING)]
    assert (entry.runs, entry.failures, entry.p50, entry.p95) == (3, 1, 10.0, 10.0)
    assert entry.failure_rate == pytest.approx(1 / 3)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="percentile_cont is PostgreSQL's")
def test_on_postgresql_percentiles_cost_no_extra_query_and_run_without_jit():
    make_event("succeeded")

    with CaptureQueriesContext(connection) as captured:
        queries.listener_stats([LISTENERS[0]], timezone.now() - datetime.timedelta(hours=1))

    # The test runs in a transaction: the function's own is a savepoint here.
    statements = [q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 2
    assert statements[0] == "SET LOCAL jit = off"
    assert "PERCENTILE_CONT" in statements[1]


def test_failure_groups_pick_a_sample_per_group_in_one_more_query():
    for error_type in ("errors.A", "errors.B", "errors.C"):
        make_event("failed", error_type=error_type)

    with CaptureQueriesContext(connection) as captured:
        groups, more = queries.failure_groups()

    assert len(captured.captured_queries) == 2
    assert not more
    assert {g.error_type for g in groups} == {"errors.A", "errors.B", "errors.C"}
    assert all(g.sample["error_type"] == g.error_type for g in groups)


@pytest.mark.django_db(databases=["default", "records"])
def test_the_index_walks_and_statistics_read_the_database_the_records_are_routed_to(
    admin_client,
):
    with override_settings(DATABASE_ROUTERS=[RecordsElsewhere()]):
        make_event("succeeded", "failed", messagio_type="a.Elsewhere")
        assert not Event.objects.using("default").exists()

        types = queries.distinct_values(Event, "messagio_type")
        listeners = queries.distinct_values(Delivery, "listener")
        stats = queries.listener_stats(LISTENERS, timezone.now() - datetime.timedelta(hours=1))
        pages = [
            admin_client.get(url)
            for url in (
                "/admin/messagio/event/",
                "/admin/messagio/delivery/",
                "/admin/messagio/delivery/listeners/",
            )
        ]

    assert types == ["a.Elsewhere"]
    assert listeners == LISTENERS[:2]
    assert stats[(LISTENERS[1], "a.Elsewhere")].failures == 1
    assert [page.status_code for page in pages] == [200, 200, 200]
