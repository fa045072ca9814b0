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
from messagio.migrations._indexes import swap_indexes

INDEX = messagio.models.NullsLastIndex(
    fields=["error_type", "-started_at"],
    name="messagio_dl_error_newest",
    condition=models.Q(status__in=["failed", "retrying"]),
)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messagio", "0007_replay_stopped_label"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(
                    swap_indexes("Delivery", [INDEX], []),
                    swap_indexes("Delivery", [], [INDEX]),
                    elidable=False,
                )
            ],
            state_operations=[migrations.AddIndex(model_name="delivery", index=INDEX)],
        ),
    ]
