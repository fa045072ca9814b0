"""The Deliveries changelist, its "replay selected" action, and each delivery's page."""

import datetime
import importlib
import re

import pytest
from django.apps import apps as django_apps
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django_celery_results.models import TaskResult

from messagio import tasks
from messagio.models import Attempt, Delivery, Replay
from messagio.seals import is_sealed
from messagio_admin import hierarchy
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


def test_the_deliveries_list_shows_those_no_worker_has_started_last(admin_client):
    # PostgreSQL puts NULLs first in a descending order: a backlog of pending deliveries
    # would hide every recent outcome.
    pending = make_event("pending").deliveries.get()
    started = make_event("failed", fired_at=datetime.datetime(2024, 3, 10, tzinfo=datetime.UTC))

    response = admin_client.get(DELIVERIES)

    assert listed(response) == [str(started.deliveries.get().pk), str(pending.pk)]


#: ?o= of the "started at" column of the Deliveries list (after the action checkbox's).
STARTED_AT = 6


def test_sorting_the_deliveries_by_start_keeps_the_never_started_at_the_newest_end(
    admin_client,
):
    pending = str(make_event("pending").deliveries.get().pk)
    older, newer = (
        str(make_event("failed", fired_at=datetime.datetime(2024, 3, day, tzinfo=datetime.UTC))
            .deliveries.get().pk)
        for day in (10, 11)
    )  # fmt: skip

    assert f'href="?o={STARTED_AT}"' in admin_client.get(DELIVERIES).content.decode()
    oldest_first = listed(admin_client.get(f"{DELIVERIES}?o={STARTED_AT}"))
    newest_first = listed(admin_client.get(f"{DELIVERIES}?o=-{STARTED_AT}"))

    # The two ends of the one index the list reads.
    assert oldest_first == [pending, older, newer]
    assert newest_first == [newer, older, pending]


def plan(query) -> str:
    """PostgreSQL's plan of ``query`` (a queryset, or SQL) when it may read no table whole
    (a test table is too small for it to choose an index otherwise)."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        # A sort of the few rows of a test table costs next to nothing: one only if no
        # index gives the order.
        cursor.execute("SET LOCAL enable_sort = off")
        if not isinstance(query, str):
            return query.explain()
        cursor.execute(f"EXPLAIN {query}")
        return "\n".join(row[0] for row in cursor.fetchall())


def sorts(explained: str) -> list[str]:
    """The plan's Sort nodes, which sort what they read whole (an Incremental Sort only
    breaks the ties of what an index gave in order)."""
    return re.findall(r"^\s*(?:->\s*)?Sort\s+\(.*$", explained, re.MULTILINE)


def changelist(superuser, query: str = ""):
    """The Deliveries changelist for ``query``, as the superuser sees it."""
    request = RequestFactory().get(f"{DELIVERIES}?{query}")
    request.user = superuser
    return admin.site.get_model_admin(Delivery).get_changelist_instance(request)


postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite puts NULLs last in DESC by itself"
)


@postgres_only
@pytest.mark.parametrize(
    ("query", "index"),
    [("", "messagio_dl_newest"), ("status__exact=failed", "messagio_dl_status_newest")],
    ids=["the list", "filtered by status"],
)
def test_on_postgresql_a_page_of_deliveries_is_read_in_order_from_an_index(superuser, query, index):
    make_event("succeeded", "failed", "pending")
    page = changelist(superuser, query).queryset[:50]

    explained = plan(page)

    assert index in explained
    assert sorts(explained) == []


@postgres_only
@pytest.mark.parametrize(
    "query",
    ["error_type=builtins.ValueError", "status__exact=failed&error_type=builtins.ValueError"],
    ids=["the error class", "and the status"],
)
def test_on_postgresql_a_page_of_one_error_class_is_read_in_order_from_its_index(superuser, query):
    # Many failures of a common class, a few of a rare one: walking the list's index to
    # the rare class's rows read most of the table.
    for _ in range(30):
        make_event("failed", "retrying", "succeeded")
    make_event("failed", error_type="builtins.ValueError")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messagio_delivery")
    cl = changelist(superuser, query)

    page, count = plan(cl.queryset[:50]), plan(cl.queryset.order_by()[:1001])

    assert "messagio_dl_error_newest" in page
    assert sorts(page) == []
    assert "messagio_dl_error_newest" in count


@postgres_only
def test_the_error_class_index_is_built_by_its_migration_and_kept_by_a_second_run():
    from messagio.migrations._indexes import index_state, swap_indexes

    migration = importlib.import_module("messagio.migrations.0008_deliveries_by_error_class")
    with connection.schema_editor(atomic=False) as editor:
        # Already there: nothing to build.
        swap_indexes("Delivery", [migration.INDEX], [])(django_apps, editor)
        state = index_state(editor, "messagio_delivery", "messagio_dl_error_newest")

    assert state == "valid"


@postgres_only
def test_on_postgresql_the_date_hierarchy_reads_its_ends_from_the_index(superuser, monkeypatch):
    monkeypatch.setattr(LargeTablePaginator, "cap", 0)  # past the cap: the table's ends
    make_event("succeeded", "pending")
    cl = changelist(superuser)

    with CaptureQueriesContext(connection) as captured:
        hierarchy.bounds(cl)

    explained = plan(captured.captured_queries[-1]["sql"])
    assert "messagio_dl_newest" in explained
    assert sorts(explained) == []


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


def test_the_error_class_filter_selects_failed_and_retrying_deliveries_only(admin_client):
    """A delivery running or pending again keeps its last failure's class until it has an
    outcome: it is not one of the class's failures (and not in the filter's index)."""
    event = make_event("failed", "retrying", "running", "pending", "succeeded")
    Delivery.objects.filter(event=event).update(error_type="builtins.ValueError")
    wanted = [str(event.deliveries.get(position=p).pk) for p in (0, 1)]

    response = admin_client.get(f"{DELIVERIES}?error_type=builtins.ValueError")

    assert sorted(listed(response)) == sorted(wanted)


def test_the_error_class_filter_and_the_status_filter_together(admin_client):
    event = make_event("failed", "retrying", error_type="builtins.ValueError")
    Delivery.objects.filter(event=event).update(error_type="builtins.ValueError")

    response = admin_client.get(f"{DELIVERIES}?status__exact=failed&error_type=builtins.ValueError")

    assert listed(response) == [str(event.deliveries.get(position=0).pk)]


def test_with_the_status_filter_on_failed_the_error_class_filter_adds_no_second_status(
    superuser,
):
    # PostgreSQL took status = 'failed' AND status IN ('failed', 'retrying') for independent
    # conditions, expected a few rows, and read all of a common class's failures through
    # another index to sort them (0.14 s for 31,685 rows at 4M deliveries, 0.1 ms without).
    cl = changelist(superuser, "status__exact=failed&error_type=builtins.ValueError")

    where = str(cl.queryset.query).split(" WHERE ")[1].split(" ORDER BY ")[0]

    assert where.count('"status"') == 1


def test_the_error_class_filter_keeps_its_statuses_beside_another_status(admin_client):
    event = make_event("succeeded", "failed")
    Delivery.objects.filter(event=event).update(error_type="builtins.ValueError")

    response = admin_client.get(
        f"{DELIVERIES}?status__exact=succeeded&error_type=builtins.ValueError"
    )

    assert listed(response) == []


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
    monkeypatch.setattr(LargeTablePaginator, "count_limit", 3)
    make_event("failed", "failed", "failed", "failed", "failed")

    response = admin_client.get(f"{DELIVERIES}?status__exact=failed")

    assert "more than 3 deliveries" in response.content.decode()
    assert len(listed(response)) == 5


@pytest.fixture
def a_page_each(monkeypatch):
    """Deliveries listed one a page, their count capped at 2: any filtered selection of
    more than 2 deliveries is past the cap, and its pages past 2 past the cap's pages."""
    monkeypatch.setattr(admin.site.get_model_admin(Delivery), "list_per_page", 1)
    monkeypatch.setattr(LargeTablePaginator, "cap", 2)


def newest_first(*events) -> list[str]:
    deliveries = Delivery.objects.filter(event__in=events).order_by("-started_at", "-pk")
    return [str(pk) for pk in deliveries.values_list("pk", flat=True)]


def test_a_filtered_list_can_be_paged_past_its_count_cap(admin_client, a_page_each):
    now = datetime.datetime.now(datetime.UTC)
    events = [make_event("failed", fired_at=now - datetime.timedelta(minutes=m)) for m in range(12)]
    order = newest_first(*events)

    response = admin_client.get(f"{DELIVERIES}?status__exact=failed&p=4")

    # It was "invalid" (page 4 of a count stopped at 3): back to the list, without filters.
    assert response.status_code == 200
    assert listed(response) == [order[3]]
    html = response.content.decode()
    assert 'href="?p=5&amp;status__exact=failed"' in html
    assert "more than 8 deliveries" in html  # (4 + PAGES_AHEAD) pages of one


def test_the_last_page_of_a_filtered_list_past_its_count_cap_is_reached(admin_client, a_page_each):
    now = datetime.datetime.now(datetime.UTC)
    events = [make_event("failed", fired_at=now - datetime.timedelta(minutes=m)) for m in range(7)]

    last = admin_client.get(f"{DELIVERIES}?status__exact=failed&p=7")

    assert listed(last) == newest_first(*events)[-1:]
    assert "7 deliveries" in last.content.decode()
    assert 'href="?p=8' not in last.content.decode()


def test_a_page_past_the_last_shows_the_last_with_the_filters_kept(admin_client, a_page_each):
    # A link kept from when the list was longer: it went back to the list without filters.
    now = datetime.datetime.now(datetime.UTC)
    events = [make_event("failed", fired_at=now - datetime.timedelta(minutes=m)) for m in range(7)]
    make_event("succeeded")

    response = admin_client.get(f"{DELIVERIES}?status__exact=failed&p=11")  # 4 past the last

    assert response.status_code == 200
    assert listed(response) == newest_first(*events)[-1:]
    assert '<span class="this-page">7</span>' in response.content.decode()


@pytest.mark.parametrize("page", ["12", "200000000000000000"], ids=["far-past-the-end", "huge"])
def test_a_page_far_past_the_last_is_an_invalid_one_not_a_count_of_everything(
    admin_client, a_page_each, page
):
    # Django's "invalid page": the list again; no count or OFFSET reaches for it (a LIMIT
    # past 64 bits was a 500).
    for _ in range(7):
        make_event("failed")

    response = admin_client.get(f"{DELIVERIES}?status__exact=failed&p={page}")

    assert response.status_code == 302
    assert response["Location"] == f"{DELIVERIES}?e=1"


def test_a_deep_page_costs_as_many_queries_as_the_first(admin_client, a_page_each):
    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(url).status_code == 200
        return len(captured.captured_queries)

    for _ in range(12):
        make_event("failed")
    admin_client.get(DELIVERIES)

    assert count(f"{DELIVERIES}?status__exact=failed&p=9") == count(
        f"{DELIVERIES}?status__exact=failed"
    )


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


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
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


def test_a_delivery_that_did_not_fail_is_not_replayed_without_confirmation(
    admin_client, failed_event
):
    done = failed_event.deliveries.get(position=0)
    back = f"/admin/messagio/event/{failed_event.pk}/change/"

    response = admin_client.post(f"{DELIVERIES}{done.pk}/replay/", {"next": back}, follow=True)

    assert response.redirect_chain == [(back, 302)]
    assert f"Delivery {done.pk} was not replayed: its status is succeeded, not failed." in (
        response.content.decode()
    )
    done.refresh_from_db()
    assert done.status == "succeeded"
    assert not Replay.objects.exists()


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_a_delivery_that_succeeded_is_replayed_when_confirmed(admin_client, failed_event):
    done = failed_event.deliveries.get(position=0)

    admin_client.post(f"{DELIVERIES}{done.pk}/replay/", {"confirm": "yes", "reason": "redo"})

    done.refresh_from_db()
    assert done.status == "pending"
    assert Replay.objects.get().reason == "redo"


def test_the_page_of_a_delivery_that_did_not_fail_asks_to_confirm_its_replay(
    admin_client, failed_event
):
    done = failed_event.deliveries.get(position=0)
    broken = failed_event.deliveries.get(position=2)

    succeeded_page = admin_client.get(delivery_url(done)).content.decode()
    failed_page = admin_client.get(delivery_url(broken)).content.decode()

    assert 'name="confirm" value="yes" required' in succeeded_page
    assert 'id="replay-delivery-form"' in failed_page
    assert 'name="confirm"' not in failed_page


def test_the_page_of_a_delivery_in_flight_offers_no_replay(admin_client):
    running = make_event("running").deliveries.get()

    html = admin_client.get(delivery_url(running)).content.decode()

    assert 'id="replay-delivery-form"' not in html
    assert "In flight: it can be replayed once it has an outcome." in html


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


def test_the_confirmation_page_posts_back_which_succeeded_it_warned_of(
    admin_client, failed_event, sent
):
    broken = failed_event.deliveries.get(position=2)
    done = failed_event.deliveries.get(position=0)

    html = admin_client.post(DELIVERIES, select(broken, done, index=0)).content.decode()

    assert f'<input type="hidden" name="shown_succeeded" value="{done.pk}">' in html


def test_a_confirmed_replay_asks_again_when_another_than_the_one_shown_succeeded_since(
    admin_client, failed_event, sent
):
    # The page named one succeeded delivery; meanwhile that one went back in flight (its
    # own replay) and the failed one succeeded: as many succeeded, not the same one.
    broken = failed_event.deliveries.get(position=2)
    done = failed_event.deliveries.get(position=0)
    Delivery.objects.filter(pk=done.pk).update(status="pending")
    Delivery.objects.filter(pk=broken.pk).update(status="succeeded")

    response = admin_client.post(
        DELIVERIES, select(broken, done, post="yes", reason="fixed", shown_succeeded=done.pk)
    )

    assert "Since you were last asked, 1 more of them succeeded" in response.content.decode()
    assert not Replay.objects.exists()
    assert sent == []


def test_a_confirmed_replay_of_failures_asks_again_when_one_succeeded_since(
    admin_client, failed_event, sent
):
    broken = failed_event.deliveries.get(position=2)
    admin_client.post(DELIVERIES, select(broken, index=0))  # the page: 1 failed delivery
    # Meanwhile someone else replays it, and it succeeds.
    Delivery.objects.filter(pk=broken.pk).update(status="succeeded")

    response = admin_client.post(
        DELIVERIES, select(broken, post="yes", reason="fixed", shown_succeeded="")
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "Since you were last asked, 1 more of them succeeded" in html
    assert f'<input type="hidden" name="shown_succeeded" value="{broken.pk}">' in html
    assert not Replay.objects.exists()
    assert sent == []


def test_a_replay_of_failures_leaves_out_one_that_succeeded_before_the_task_ran(
    admin_client, failed_event, sent, django_capture_on_commit_callbacks
):
    broken = failed_event.deliveries.get(position=2)
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(DELIVERIES, select(broken, post="yes", reason="fixed"))
    # Replayed from its event's page and succeeded, before a worker took the replay task.
    Delivery.objects.filter(pk=broken.pk).update(status="succeeded")

    tasks.replay.apply(args=sent[0])

    broken.refresh_from_db()
    assert broken.status == "succeeded"
    assert Replay.objects.get().queued == 0


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
    assert [args[:2] for args in sent] == [
        (record.pk, {"pk__in": [str(broken.pk)], "status": "failed"})
    ]
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
            # As the confirmation page says: 3 of them succeeded, and run again.
            select(
                *failed_event.deliveries.all(),
                post="yes",
                reason="fixed",
                shown_succeeded=",".join(
                    str(d.pk) for d in failed_event.deliveries.filter(status="succeeded")
                ),
            ),
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

    assert sent[0][1] == {"pk__in": [str(failed.pk)], "status": "failed"}
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
    monkeypatch.setattr(LargeTablePaginator, "count_limit", 2)
    make_event("failed", "failed", "failed", "failed")

    capped = admin_client.get(f"{DELIVERIES}?status__exact=failed").content.decode()
    counted = admin_client.get(f"{DELIVERIES}?status__exact=failed&listener={LISTENERS[0]}")

    assert "Select all (more than 2) deliveries" in capped
    assert "All (more than 2) selected" in capped
    assert "Select all 3" not in capped
    assert "(more than" not in counted.content.decode()


def test_a_confirmation_page_of_an_earlier_version_confirmed_failures_only(
    admin_client, failed_event, sent, django_capture_on_commit_callbacks
):
    # It posted how many succeeded ("0"), not which: no id of the selection.
    broken = failed_event.deliveries.get(position=2)
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            DELIVERIES, select(broken, post="yes", reason="fixed", shown_succeeded="0")
        )

    assert [args[1] for args in sent] == [{"pk__in": [str(broken.pk)], "status": "failed"}]
