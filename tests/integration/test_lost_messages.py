"""A broker that loses queued messages (a Redis restarted without persistence): what waited
for a worker is published again on request, and runs once."""

import logging
import uuid
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import transaction

from messagio import records
from messagio.models import Attempt, Delivery, Event
from messagio.records import publish_all
from messagio.seals import sealed
from messagio.tasks import deliver
from tests.integration.conftest import purge_queue
from tests.polling import wait_for
from tests.testapp.messagio import SlowPair
from tests.testapp.models import Call

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def relay_lost_after(seconds: str, *options: str) -> str:
    out = StringIO()
    call_command("messagio_relay", "--lost-after", seconds, *options, stdout=out)
    return out.getvalue()


def test_what_waited_for_a_lost_message_is_published_again_and_runs_once(
    start_worker, monkeypatch, caplog
):
    originals: list[dict] = []

    def keep_a_copy(envelope_list: list[dict]) -> list[str]:
        originals.extend(envelope_list)
        return publish_all(envelope_list)

    monkeypatch.setattr(records, "publish_all", keep_a_copy)
    token = uuid.uuid4().hex
    Call.objects.create(token=token, listener="release")  # the slow listener returns at once
    unstarted = SlowPair(token).fire()  # only its Event: a worker writes its Deliveries
    with transaction.atomic():
        pending = SlowPair(token).fire()  # its Event and pending Deliveries, published on commit
    monkeypatch.undo()
    assert not Delivery.objects.filter(event_id=unstarted.event_id).exists()
    assert Delivery.objects.filter(event_id=pending.event_id, status="pending").count() == 2
    purge_queue(settings.TEST_CRASH_QUEUE, published=2)  # lost: no worker consumes it yet

    assert "Published again 0 delivery(ies) of 0 event(s)" in relay_lost_after("3600")
    assert not Delivery.objects.filter(event_id=unstarted.event_id).exists()
    # In batches of one event: the command goes on until nothing is left.
    assert "Published again 4 delivery(ies) of 2 event(s)" in relay_lost_after(
        "0", "--batch-size", "1"
    )
    # Published again just now: not again at once.
    assert "Published again 0 delivery(ies)" in relay_lost_after("60")

    worker = start_worker([settings.TEST_CRASH_QUEUE], concurrency=1)
    events = (unstarted.event_id, pending.event_id)
    wait_for(
        lambda: Delivery.objects.filter(event_id__in=events, status="succeeded").count() == 4,
        what="the four deliveries to succeed",
    )
    worker.stop()
    for delivery in Delivery.objects.filter(event_id__in=events):
        assert [a.outcome for a in delivery.history.all()] == ["succeeded"], delivery
    assert Call.objects.filter(token=token, listener="slow-finished").count() == 2
    assert Call.objects.filter(token=token, listener="after-slow").count() == 2

    # The lost messages turn up after all: they find their deliveries finished, or rows
    # written again under other ids, and run nothing.
    assert len(originals) == 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="messagio"):
        for envelope in originals:
            deliver.apply(args=(sealed(envelope),))
    # Said once per delivery, as a warning: an expected sequel of --lost-after, not an error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    rewritten = [r for r in caplog.records if "written again under other ids" in r.getMessage()]
    assert len(rewritten) == 2
    assert Call.objects.filter(token=token, listener="after-slow").count() == 2
    assert Call.objects.filter(token=token, listener="slow-finished").count() == 2
    assert Delivery.objects.filter(event_id__in=events).count() == 4
    assert Attempt.objects.filter(delivery__event_id__in=events).count() == 4


def test_an_event_whose_listeners_changed_since_it_was_fired_is_reported_not_guessed():
    token = uuid.uuid4().hex
    report = SlowPair(token).fire()
    purge_queue(settings.TEST_CRASH_QUEUE, published=1)
    Event.objects.filter(pk=report.event_id).update(listener_count=3)
    err = StringIO()
    call_command("messagio_relay", "--lost-after", "0", stdout=StringIO(), stderr=err)
    assert f"Event {report.event_id} not published again" in err.getvalue()
    assert "has 2 listener(s) now and had 3 when it was fired" in err.getvalue()
    assert not Delivery.objects.filter(event_id=report.event_id).exists()
