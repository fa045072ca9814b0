"""The Deliveries list filtered by error class, read from an index in its order.

The admin's error class filter selects ``error_type = X`` among failed and retrying
deliveries, newest start first. No index led with ``error_type``: for a rare class,
PostgreSQL walked the list's ``started_at`` index through most of the table, for the page,
its capped count and its date hierarchy alike. The partial index added holds only the
deliveries whose error class is their own (failed, retrying), in the list's order
(:class:`messagio.models.NullsLastIndex`).

Not atomic, so that PostgreSQL builds it CONCURRENTLY (upgrading a big table does not lock
its writes). Safe to run again after an interruption: an index already there is kept, one a
failed CONCURRENTLY build left invalid is built again.
"""

from django.db import migrations, models

import messagio.models

INDEX = messagio.models.NullsLastIndex(
    fields=["error_type", "-started_at"],
    name="messagio_dl_error_newest",
    condition=models.Q(status__in=["failed", "retrying"]),
)


def _state(schema_editor, name):
    """Whether index ``name`` is "valid", "invalid" (a CONCURRENTLY build that failed), or
    None: there is no such index."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [name]
            )
            row = cursor.fetchone()
            return None if row is None else ("valid" if row[0] else "invalid")
        found = connection.introspection.get_constraints(cursor, "messagio_delivery")
    return "valid" if name in found else None


def _options(schema_editor):
    return {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}


def add(apps, schema_editor):
    delivery = apps.get_model("messagio", "Delivery")
    state = _state(schema_editor, INDEX.name)
    if state == "invalid":
        schema_editor.remove_index(delivery, INDEX, **_options(schema_editor))
    if state != "valid":
        schema_editor.add_index(delivery, INDEX, **_options(schema_editor))


def remove(apps, schema_editor):
    delivery = apps.get_model("messagio", "Delivery")
    if _state(schema_editor, INDEX.name) is not None:
        schema_editor.remove_index(delivery, INDEX, **_options(schema_editor))


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messagio", "0007_replay_stopped_label"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(add, remove, elidable=False)],
            state_operations=[migrations.AddIndex(model_name="delivery", index=INDEX)],
        ),
    ]
