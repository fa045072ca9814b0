"""messagio's migrations on a big table: no index is built or dropped under a lock that
stops the table's writes (PostgreSQL: CONCURRENTLY, in migrations that are not atomic)."""

import io
import re

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader

pytestmark = pytest.mark.django_db

#: 0001 and 0002 create the tables: nothing to lock yet.
FIRST_ON_FILLED_TABLES = "0003"


def migrations_after_the_tables():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return sorted(
        name
        for app, name in loader.disk_migrations
        if app == "messagio" and name >= FIRST_ON_FILLED_TABLES
    )


def sql_of(name: str, backwards: bool) -> str:
    out = io.StringIO()
    call_command("sqlmigrate", "messagio", name, backwards=backwards, stdout=out)
    return out.getvalue()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="CONCURRENTLY is PostgreSQL's")
@pytest.mark.parametrize("backwards", [False, True], ids=["forwards", "backwards"])
@pytest.mark.parametrize("name", migrations_after_the_tables())
def test_a_migration_builds_and_drops_its_indexes_concurrently(name, backwards):
    statements = [
        line for line in sql_of(name, backwards).splitlines() if re.search(r"\bINDEX\b", line)
    ]

    assert [line for line in statements if "CONCURRENTLY" not in line] == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="CONCURRENTLY is PostgreSQL's")
def test_sqlmigrate_shows_what_a_migration_runs_on_a_database_without_it():
    # This database is migrated already: the statements are shown all the same.
    for name in ("0003", "0005", "0006", "0008"):
        assert "CREATE INDEX CONCURRENTLY" in sql_of(name, backwards=False)


def test_the_replays_username_column_has_a_database_default():
    # Processes still on the code before it (migrate runs first, they restart after) insert
    # rows without it: NOT NULL without a default in the database refused them.
    with connection.cursor() as cursor:
        columns = {
            column.name: column
            for column in connection.introspection.get_table_description(cursor, "messagio_replay")
        }

    assert columns["requested_by_name"].default is not None
