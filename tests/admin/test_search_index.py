"""The indexes of migration 0004 (the summary search's trigram index, the deliveries in flight)
and the check messagio.W005 that says when the search has to go without its index."""

import importlib
import uuid

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.db import connection
from django.test import RequestFactory

from messagio.checks import SEARCH_INDEX, check_search_index
from messagio.models import Event
from messagio_admin import queries

pytestmark = pytest.mark.django_db

migration = importlib.import_module("messagio.migrations.0004_summary_search_index")
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="pg_trgm and its index are PostgreSQL's"
)


def indexes(table: str) -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.get_constraints(cursor, table))


def explain(queryset) -> str:
    """The plan of ``queryset`` when PostgreSQL may not read a table whole: it uses an index
    whenever one serves the query (a test table is too small for it to choose one)."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    return queryset.explain()


def w005() -> list:
    return [m for m in check_search_index(databases=["default"]) if m.id == "messagio.W005"]


def test_the_migrations_leave_the_models_state_as_generated():
    call_command("makemigrations", "messagio", "--check", "--dry-run", verbosity=0)


def test_the_migration_indexes_the_deliveries_in_flight():
    assert migration.IN_FLIGHT_INDEX in indexes("messagio_delivery")


@pytest.mark.skipif(connection.vendor == "postgresql", reason="the SQLite half")
def test_on_sqlite_there_is_no_trigram_index_and_nothing_to_warn_about():
    assert SEARCH_INDEX not in indexes("messagio_event")
    assert check_search_index(databases=["default"]) == []


@postgres_only
def test_on_postgresql_the_summary_search_reads_its_trigram_index(superuser):
    request = RequestFactory().get("/admin/messagio/event/")
    request.user = superuser
    searched, _ = admin.site.get_model_admin(Event).get_search_results(
        request, Event.objects.all(), "cust-0420000@example.com"
    )

    # Unordered, as the changelist counts it (a page is ordered by date, and may walk that).
    assert SEARCH_INDEX in explain(searched.order_by())


@postgres_only
def test_on_postgresql_the_in_flight_ids_are_read_from_their_partial_index():
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_bitmapscan = off")

    plan = explain(
        queries.Delivery.objects.in_flight()
        .order_by("event_id")
        .values_list("event_id", flat=True)
        .distinct()[:10]
    )

    assert migration.IN_FLIGHT_INDEX in plan


@postgres_only
def test_with_its_index_the_summary_search_is_not_warned_about():
    assert SEARCH_INDEX in indexes("messagio_event")
    assert w005() == []


@postgres_only
def test_without_its_index_the_summary_search_is_warned_about_with_the_sql_to_add_it():
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX {SEARCH_INDEX}")

    (warning,) = w005()

    assert "every summary" in warning.msg
    assert (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm; CREATE INDEX CONCURRENTLY IF NOT EXISTS "
        "messagio_ev_summary_trgm ON messagio_event USING gin (UPPER(summary::text) "
        "gin_trgm_ops);"
    ) in warning.hint


@postgres_only
def test_before_the_migration_has_run_a_missing_index_is_not_warned_about():
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX {SEARCH_INDEX}")
        cursor.execute(
            "DELETE FROM django_migrations WHERE app = 'messagio'"
            " AND name = '0004_summary_search_index'"
        )

    assert w005() == []


@postgres_only
def test_a_user_who_may_not_create_pg_trgm_migrates_without_the_index_and_is_warned():
    role = f"messagio_no_create_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute("DROP EXTENSION pg_trgm CASCADE")  # and its index
        cursor.execute(f"CREATE ROLE {role}")
        cursor.execute(f"SET LOCAL ROLE {role}")
    with connection.schema_editor(atomic=False) as editor:
        created = migration.trigram_extension(editor)
    with connection.cursor() as cursor:
        cursor.execute("RESET ROLE")
        cursor.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'")
        (installed,) = cursor.fetchone()

    assert (created, installed) == (False, 0)
    assert [w.id for w in w005()] == ["messagio.W005"]
