"""A project's database router, for the tests of records kept in a database of their own."""


class RecordsElsewhere:
    """Keeps messagio's records in the ``records`` database (tests/settings.py)."""

    def db_for_write(self, model, **hints):
        return "records" if model._meta.app_label == "messagio" else None

    db_for_read = db_for_write


class ReadsFromAReplica:
    """The primary/replica split of Django's multiple-databases documentation: every read
    from ``records`` (standing in for a replica), every write to ``default``."""

    def db_for_read(self, model, **hints):
        return "records"

    def db_for_write(self, model, **hints):
        return "default"

    def allow_relation(self, obj1, obj2, **hints):
        return True
