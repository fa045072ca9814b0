"""The demo's sample command leaves something on every admin screen, the Replays one too."""

import io

import pytest
from django.core.management import call_command

from messagio.models import Delivery, Event, Replay

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_the_demo_samples_record_one_replay_of_a_finished_stock_alert(admin_client):
    out = io.StringIO()

    call_command("shop_fire_samples", count=2, stdout=out)

    record = Replay.objects.get()
    assert f"as replay #{record.pk}." in out.getvalue()
    replayed = Event.objects.get(pk=Delivery.objects.get(replay=record).event_id)
    assert (record.source, record.total) == ("command", 1)
    assert replayed.messagio_type == "project.shop.messagio.StockLow"
    assert replayed.origin == Event.Origin.SYNC
    html = admin_client.get("/admin/messagio/replay/").content.decode()
    assert "demo: a first replay, to show on the Replays screen" in html
