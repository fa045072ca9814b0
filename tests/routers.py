"""A project's database router, for the tests of records kept in a database of their own."""


class RecordsElsewhere:
    """Keeps messagio's records in the ``records`` database (tests/settings.py)."""

    def db_for_write(self, model, **hints):
        return "records" if model._meta.app_label == "messagio" else None

    db_for_read = db_for_write
