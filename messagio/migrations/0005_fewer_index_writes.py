"""Fewer index writes per fire and per status change (issue #3, speed).

Every index of a table is written on each insert and, as status and times change, on each
update. This drops the foreign-key indexes that another index already serves (Delivery.event
and Attempt.delivery, led by the same column in (event, position) and (delivery, number)) and
replaces those of the replay columns, NULL on almost every row, with partial ones. One
partial index is added: the events with a failed delivery, for the admin's "has failures".
New ids are time-ordered UUIDs (messagio.ids), so inserts land next to each other in the
indexes instead of on random pages; the ids already written stay as they are.

The foreign keys stay as they are: only their indexes go, by name, so that upgrading does
not validate the constraints again on a big table. Not atomic, so that PostgreSQL builds and
drops the indexes CONCURRENTLY (the new ones first): upgrading, or going back, locks no
table for the length of a build. Safe to run again after an interruption (see _indexes).
"""

import django.db.models.deletion
from django.db import migrations, models

import messagio.ids
from messagio.migrations._indexes import index_state, swap_indexes

#: The partial indexes this adds, by model.
PARTIAL = {
    "Attempt": [
        models.Index(
            condition=models.Q(("replay__isnull", False)),
            fields=["replay"],
            name="messagio_at_replay",
        )
    ],
    "Delivery": [
        models.Index(
            condition=models.Q(("replay__isnull", False)),
            fields=["replay"],
            name="messagio_dl_replay",
        ),
        models.Index(
            condition=models.Q(("status", "failed")),
            fields=["event"],
            name="messagio_dl_failed_events",
        ),
    ],
    "Event": [
        models.Index(
            condition=models.Q(("replay_of__isnull", False)),
            fields=["replay_of"],
            name="messagio_ev_replay_of",
        )
    ],
}

#: The FK indexes Django made in 0001: name -> (table, column).
REDUNDANT = {
    "messagio_attempt_delivery_id_0a3cd068": ("messagio_attempt", "delivery_id"),
    "messagio_attempt_replay_id_9788036c": ("messagio_attempt", "replay_id"),
    "messagio_delivery_event_id_365a3e3b": ("messagio_delivery", "event_id"),
    "messagio_delivery_replay_id_a23c07ec": ("messagio_delivery", "replay_id"),
    "messagio_event_replay_of_id_946372aa": ("messagio_event", "replay_of_id"),
}


def _concurrently(schema_editor):
    return " CONCURRENTLY" if schema_editor.connection.vendor == "postgresql" else ""


def drop_redundant(apps, schema_editor):
    if schema_editor.connection.vendor not in ("postgresql", "sqlite"):
        return  # MySQL's foreign keys need an index of their own; keep them there
    how = _concurrently(schema_editor)
    for name in REDUNDANT:
        schema_editor.execute(f"DROP INDEX{how} IF EXISTS {schema_editor.quote_name(name)}")


def restore_redundant(apps, schema_editor):
    if schema_editor.connection.vendor not in ("postgresql", "sqlite"):
        return
    quote, how = schema_editor.quote_name, _concurrently(schema_editor)
    for name, (table, column) in REDUNDANT.items():
        state = None if schema_editor.collect_sql else index_state(schema_editor, table, name)
        if state == "invalid":  # a failed CONCURRENTLY build: built again
            schema_editor.execute(f"DROP INDEX{how} IF EXISTS {quote(name)}")
        if state != "valid":
            schema_editor.execute(
                f"CREATE INDEX{how} IF NOT EXISTS {quote(name)} ON {quote(table)} ({quote(column)})"
            )


def add_partial(apps, schema_editor):
    for model_name, indexes in PARTIAL.items():
        swap_indexes(model_name, indexes, [])(apps, schema_editor)


def remove_partial(apps, schema_editor):
    for model_name, indexes in PARTIAL.items():
        swap_indexes(model_name, [], indexes)(apps, schema_editor)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messagio", "0004_summary_search_index"),
    ]

    operations = [
        # A default lives in Python only: state only, so that SQLite does not rebuild the
        # tables (which would drop the indexes 0004 made by hand).
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="delivery",
                    name="id",
                    field=models.UUIDField(
                        default=messagio.ids.time_ordered_uuid,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                migrations.AlterField(
                    model_name="event",
                    name="id",
                    field=models.UUIDField(
                        default=messagio.ids.time_ordered_uuid,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
            ],
        ),
        # Built before the redundant indexes are dropped, so queries always have one.
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(add_partial, remove_partial, elidable=False),
            ],
            state_operations=[
                migrations.AddIndex(model_name=model_name.lower(), index=index)
                for model_name, indexes in PARTIAL.items()
                for index in indexes
            ],
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop_redundant, restore_redundant)],
            state_operations=[
                migrations.AlterField(
                    model_name="attempt",
                    name="delivery",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="history",
                        to="messagio.delivery",
                        verbose_name="delivery",
                    ),
                ),
                migrations.AlterField(
                    model_name="attempt",
                    name="replay",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="attempts",
                        to="messagio.replay",
                    ),
                ),
                migrations.AlterField(
                    model_name="delivery",
                    name="event",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="deliveries",
                        to="messagio.event",
                        verbose_name="event",
                    ),
                ),
                migrations.AlterField(
                    model_name="delivery",
                    name="replay",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="deliveries",
                        to="messagio.replay",
                        verbose_name="last replay",
                    ),
                ),
                migrations.AlterField(
                    model_name="event",
                    name="replay_of",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="replays",
                        to="messagio.event",
                        verbose_name="replay of",
                    ),
                ),
            ],
        ),
    ]
