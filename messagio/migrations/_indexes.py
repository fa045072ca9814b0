"""What messagio's migrations that build indexes on big tables share.

They are not atomic, so that PostgreSQL builds their indexes CONCURRENTLY (a big table is
not locked for writes while it is read), and safe to run again after an interruption: an
index already there is kept, one a failed CONCURRENTLY build left invalid is built again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def index_state(schema_editor: Any, table: str, name: str) -> str | None:
    """Whether index ``name`` on ``table`` is "valid", "invalid" (a CONCURRENTLY build that
    failed), or None: there is no such index."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [name]
            )
            row = cursor.fetchone()
            return None if row is None else ("valid" if row[0] else "invalid")
        found = connection.introspection.get_constraints(cursor, table)
    return "valid" if name in found else None


def swap_indexes(model_name: str, adding: list[Any], dropping: list[Any]) -> Callable[..., None]:
    """A RunPython function that builds ``adding`` (unless valid already), then drops
    ``dropping`` (those there), on ``model_name``: CONCURRENTLY on PostgreSQL."""

    def swap(apps: Any, schema_editor: Any) -> None:
        model = apps.get_model("messagio", model_name)
        table = model._meta.db_table
        options = {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}
        if schema_editor.collect_sql:
            # sqlmigrate: the statements a migration of a database without them runs, not
            # what this database (migrated already, maybe) would need.
            for index in adding:
                schema_editor.add_index(model, index, **options)
            for index in dropping:
                schema_editor.remove_index(model, index, **options)
            return
        for index in adding:
            state = index_state(schema_editor, table, index.name)
            if state == "invalid":
                schema_editor.remove_index(model, index, **options)
            if state != "valid":
                schema_editor.add_index(model, index, **options)
        for index in dropping:
            if index_state(schema_editor, table, index.name) is not None:
                schema_editor.remove_index(model, index, **options)

    return swap
