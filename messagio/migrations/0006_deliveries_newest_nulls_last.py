"""The Deliveries list's indexes in its order: newest start first, never started last.

The admin lists deliveries by ``started_at DESC NULLS LAST`` (pending deliveries have no
``started_at``). SQLite and MySQL put NULLs last in a descending order anyway, PostgreSQL
first: its indexes on ``-started_at`` and ``(status, started_at)`` did not serve that order,
and the list showed every pending delivery first. They are replaced by
:class:`messagio.models.NullsLastIndex` ones, built ``DESC NULLS LAST`` on PostgreSQL.

Not atomic, so that PostgreSQL builds the new indexes CONCURRENTLY (upgrading a big table
does not lock its writes), before it drops the old ones. Safe to run again after an
interruption: an index already there is kept, one a failed CONCURRENTLY build left invalid
is built again.
"""

from django.db import migrations, models

import messagio.models

NEW = [
    messagio.models.NullsLastIndex(fields=["-started_at"], name="messagio_dl_newest"),
    messagio.models.NullsLastIndex(
        fields=["status", "-started_at"], name="messagio_dl_status_newest"
    ),
]
OLD = [
    models.Index(fields=["-started_at"], name="messagio_dl_started"),
    models.Index(fields=["status", "started_at"], name="messagio_dl_status_started"),
]


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


def _swap(adding, dropping):
    def swap(apps, schema_editor):
        delivery = apps.get_model("messagio", "Delivery")
        options = {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}
        for index in adding:
            state = _state(schema_editor, index.name)
            if state == "invalid":
                schema_editor.remove_index(delivery, index, **options)
            if state != "valid":
                schema_editor.add_index(delivery, index, **options)
        for index in dropping:
            if _state(schema_editor, index.name) is not None:
                schema_editor.remove_index(delivery, index, **options)

    return swap


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messagio", "0005_fewer_index_writes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(_swap(NEW, OLD), _swap(OLD, NEW), elidable=False)
            ],
            state_operations=[
                *(migrations.RemoveIndex(model_name="delivery", name=index.name) for index in OLD),
                *(migrations.AddIndex(model_name="delivery", index=index) for index in NEW),
            ],
        ),
    ]
