"""Where the records are read: the database messagio writes them to."""

from dataclasses import dataclass

import pytest
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from messagio import MessageCenter, Messagio, replay
from messagio.models import Attempt, Delivery, Event
from messagio.relay import relay
from messagio.retention import prune_expired
from tests.routers import ReadsFromAReplica


@dataclass
class Counted(Messagio):
    number: int


def counts(event: Counted) -> int:
    return event.number


calls: list[int] = []


def fails_once(event: Counted) -> None:
    calls.append(event.number)
    if len(calls) == 1:
        raise ValueError("first time")


@pytest.mark.django_db(transaction=True, databases=["default", "records"])
@override_settings(CELERY_TASK_ALWAYS_EAGER=True, DATABASE_ROUTERS=[ReadsFromAReplica()])
def test_with_reads_routed_to_a_replica_the_records_are_read_where_they_are_written():
    # The replica ("records") cannot see the primary's rows: a claim that read there took
    # a group the worker had just written for a lost worker's.
    for listener in (counts, fails_once):
        MessageCenter.singleton().subscribe(Counted, listener)

    with CaptureQueriesContext(connections["records"]) as on_the_replica:
        fired = Counted(1).fire()  # eager: the worker's path runs here
        Counted(2).fire(sync=True)
        failed = Delivery.objects.get(event_id=fired.event_id, status="failed")
        replay(failed)
        relay()
        outcomes = sorted(Attempt.objects.values_list("delivery__listener", "number", "outcome"))
        prune_expired(succeeded_days=0, failed_days=0)

    assert on_the_replica.captured_queries == []
    assert [(listener.rsplit(".", 1)[1], n, o) for listener, n, o in outcomes] == [
        ("counts", 1, "succeeded"),
        ("counts", 1, "succeeded"),
        ("fails_once", 1, "failed"),
        ("fails_once", 1, "succeeded"),
        ("fails_once", 2, "succeeded"),
    ]
    assert not Event.objects.exists()  # all pruned: each was read and found finished


@pytest.mark.django_db(databases=["default", "records"])
def test_with_reads_routed_to_a_replica_raw_queries_read_where_the_records_are_written():
    from messagio_admin import queries

    Delivery.objects.create(
        event=Event.objects.create(messagio_type="a.B", payload=b"x"), listener="a.listener"
    )
    with override_settings(DATABASE_ROUTERS=[ReadsFromAReplica()]):
        assert (Event.objects.db, Delivery.objects.db) == ("default", "default")
        assert queries.distinct_values(Delivery, "listener") == ["a.listener"]
