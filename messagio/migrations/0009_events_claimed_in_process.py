"""An index of the in-process runs going on: the relay finds those that never ended.

A sync fire (or the in-process center) records its event ``inline`` and claims it
(``claimed_at``) until its run ends. A run that never ended (its process died, a database
error stopped it, the on_commit that was to start it never ran) leaves pending deliveries
that no message carries; the relay publishes them to a worker once the claim is older than
``STUCK_TIMEOUT``. The partial index holds only the claimed inline events: a handful.
The runs recorded before it that left deliveries pending are claimed from their fire.

Not atomic, so that PostgreSQL builds it CONCURRENTLY (the events table is not locked for
writes while it is read). Safe to run again after an interruption: an index already there
is kept, one a failed CONCURRENTLY build left invalid is built again.
"""

from django.db import migrations, models

from messagio.migrations._indexes import swap_indexes

INDEX = models.Index(
    fields=["claimed_at"],
    name="messagio_ev_inline_claimed",
    condition=models.Q(state="inline", claimed_at__isnull=False),
)


def claim_unfinished_runs(apps, schema_editor):
    """Claim the in-process runs recorded before this migration that left deliveries
    pending (nothing claimed them then): the relay publishes those as it does the others'."""
    event, delivery = apps.get_model("messagio", "Event"), apps.get_model("messagio", "Delivery")
    db = schema_editor.connection.alias
    pending = delivery.objects.using(db).filter(status="pending").values("event_id")
    event.objects.using(db).filter(state="inline", claimed_at__isnull=True, pk__in=pending).update(
        claimed_at=models.F("fired_at")
    )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messagio", "0008_deliveries_by_error_class"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(
                    swap_indexes("Event", [INDEX], []),
                    swap_indexes("Event", [], [INDEX]),
                    elidable=False,
                )
            ],
            state_operations=[migrations.AddIndex(model_name="event", index=INDEX)],
        ),
        migrations.RunPython(claim_unfinished_runs, migrations.RunPython.noop, elidable=True),
    ]
