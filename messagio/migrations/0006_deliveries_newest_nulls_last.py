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
from messagio.migrations._indexes import swap_indexes

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


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messagio", "0005_fewer_index_writes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(
                    swap_indexes("Delivery", NEW, OLD),
                    swap_indexes("Delivery", OLD, NEW),
                    elidable=False,
                )
            ],
            state_operations=[
                *(migrations.RemoveIndex(model_name="delivery", name=index.name) for index in OLD),
                *(migrations.AddIndex(model_name="delivery", index=index) for index in NEW),
            ],
        ),
    ]
