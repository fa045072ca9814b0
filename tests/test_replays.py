"""What a bulk replay publishes when its selection changes under it (the broker captured;
tests/integration/test_records.py runs replays against real workers)."""

import datetime

import pytest
from django.utils import timezone

from messagio import replays
from messagio.models import Delivery, Event
from messagio.replays import replay
from tests.testapp.messagio import Ping

pytestmark = pytest.mark.django_db

PING = Ping.get_name()


def failed_event() -> Event:
    at = timezone.now() - datetime.timedelta(hours=1)
    event = Event.objects.create(
        messagio_type=PING, fired_at=at, published_at=at, state="published", payload=b"x",
        listener_count=2,
    )  # fmt: skip
    for position in range(2):
        Delivery.objects.create(
            event=event, position=position, messagio_type=PING, listener=f"l{position}",
            priority=position, status="failed", attempts=1, started_at=at, finished_at=at,
        )  # fmt: skip
    return event


def test_a_delivery_run_by_someone_else_before_its_turn_is_left_alone(monkeypatch):
    event = failed_event()
    first, second = event.deliveries.order_by("-priority")  # published in that order
    sent: list[str] = []

    def publish_all(envelope_list):
        sent.extend(spec["delivery"] for e in envelope_list for spec in e["listeners"])
        # Meanwhile another replay runs the second delivery and it succeeds.
        Delivery.objects.filter(pk=second.pk).update(status="succeeded", finished_at=timezone.now())
        return ["task"]

    monkeypatch.setattr(replays, "publish_all", publish_all)

    record = replay(Delivery.objects.filter(event=event))

    assert sent == [str(first.pk)]
    assert Delivery.objects.get(pk=first.pk).replay == record
    assert Delivery.objects.get(pk=second.pk).replay is None
    assert (record.total, record.queued) == (2, 1)
