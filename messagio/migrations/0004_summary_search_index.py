"""Two indexes for the admin at scale (issue #4), neither of them in the model state.

- ``messagio_ev_summary_trgm`` (PostgreSQL only): a pg_trgm GIN index on
  ``UPPER(summary::text)``, the expression Django's ``summary__icontains`` compiles to, so the
  Events search by text of the payload summary reads the index, not every summary. pg_trgm is
  an extension: it is created if the database user may (it is "trusted" since PostgreSQL 13:
  the CREATE privilege on the database is enough); if not, the migration goes on without the
  index and the check messagio.W005 says how to add it.
- ``messagio_dl_in_flight``: the deliveries pending, running or retrying, by event (a partial
  index, so only the few rows in flight are in it), read by the admin's "in flight" filter.

Raw SQL, written by hand: Django's model indexes know neither operator classes on an expression
of a JSON field nor, on other databases, a way to skip them. The migration is not atomic, so
that PostgreSQL builds the indexes CONCURRENTLY: upgrading a big table does not lock its
writes. It is safe to run again after an interruption: an index a failed CONCURRENTLY build
left invalid is dropped and built again.
"""

import logging

from django.db import DatabaseError, migrations, transaction

logger = logging.getLogger("messagio")

TRIGRAM_INDEX = "messagio_ev_summary_trgm"
IN_FLIGHT_INDEX = "messagio_dl_in_flight"
IN_FLIGHT = "status IN ('pending', 'running', 'retrying')"
#: SQLSTATEs of "you may not" and "not installed on this server".
NOT_PERMITTED = {"42501", "0A000", "58P01"}


def trigram_extension(schema_editor):
    """Whether pg_trgm is installed, after trying to install it if it was not."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        if cursor.fetchone():
            return True
        try:
            with transaction.atomic(using=connection.alias):
                cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except DatabaseError as exc:
            cause = exc.__cause__
            if getattr(cause, "sqlstate", getattr(cause, "pgcode", None)) not in NOT_PERMITTED:
                raise
            logger.warning(
                "messagio: pg_trgm could not be created (%s); the admin's summary search "
                "goes without its index (see the check messagio.W005)",
                exc,
            )
            return False
    return True


def create_concurrently(schema_editor, name, definition):
    """``CREATE INDEX CONCURRENTLY name definition``, unless a valid index has that name."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [name])
        row = cursor.fetchone()
    if row and row[0]:
        return
    if row:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY {name} {definition}")


def create_indexes(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        if trigram_extension(schema_editor):
            create_concurrently(
                schema_editor,
                TRIGRAM_INDEX,
                "ON messagio_event USING gin (UPPER(summary::text) gin_trgm_ops)",
            )
        create_concurrently(
            schema_editor, IN_FLIGHT_INDEX, f"ON messagio_delivery (event_id) WHERE {IN_FLIGHT}"
        )
    elif connection.features.supports_partial_indexes:
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {IN_FLIGHT_INDEX} ON messagio_delivery (event_id)"
            f" WHERE {IN_FLIGHT}"
        )


def drop_indexes(apps, schema_editor):
    # pg_trgm stays: something else may use it.
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    for name in (TRIGRAM_INDEX, IN_FLIGHT_INDEX):
        schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messagio", "0003_admin_indexes"),
    ]

    operations = [
        migrations.RunPython(create_indexes, drop_indexes, elidable=False),
    ]
