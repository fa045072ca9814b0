"""Messagio itself: firing it from synchronous and from async code."""

import asyncio
import functools
from dataclasses import dataclass

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation
from django.db import connections
from django.test import override_settings

from messagio import MessageCenter, Messagio
from messagio.models import Event
from messagio.testing import capture_messagios
from tests.integration.conftest import purge_queue

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Shipped(Messagio):
    parcel: str


ran: list[str] = []


def note(event: Shipped) -> str:
    ran.append(event.parcel)
    return event.parcel


@pytest.fixture(autouse=True)
def listening():
    ran.clear()
    MessageCenter.singleton().subscribe(Shipped, note)
    drop_queued()


def drop_queued(published: int = 0) -> int:
    """How many messages wait in messagio's queue, which this drops."""
    return purge_queue(settings.MESSAGIO_QUEUE, published)


def test_afire_records_and_publishes_from_async_code():
    report = async_to_sync(Shipped("p-1").afire)()

    event = Event.objects.get(pk=report.event_id)
    assert (event.state, event.messagio_type) == ("published", Shipped.get_name())
    assert drop_queued(published=1) == 1


def test_afire_sync_runs_the_listeners_here():
    report = async_to_sync(functools.partial(Shipped("p-2").afire, sync=True))()

    assert ran == ["p-2"]
    assert [o.result for o in report.outcomes] == ["p-2"]


def test_fire_from_async_code_is_refused_before_it_publishes():
    async def view() -> None:
        Shipped("p-3").fire()

    with pytest.raises(SynchronousOnlyOperation, match=r"A Shipped was fired from async code"):
        asyncio.run(view())

    assert not Event.objects.exists()
    assert drop_queued() == 0


def test_a_message_centers_send_from_async_code_is_refused_before_it_publishes():
    async def view() -> None:
        MessageCenter.singleton().send(Shipped("p-5"))

    with pytest.raises(SynchronousOnlyOperation, match=r"await Shipped\(\.\.\.\)\.afire\(\)"):
        asyncio.run(view())

    assert drop_queued() == 0


@override_settings(MESSAGIO={"RECORD": False})
def test_without_records_a_fire_from_async_code_publishes():
    async def view() -> None:
        Shipped("p-6").fire()

    asyncio.run(view())

    assert drop_queued(published=1) == 1


def test_a_capture_refuses_a_fire_from_async_code_as_the_real_fire_would():
    async def view() -> None:
        Shipped("p-7").fire()

    with capture_messagios() as fired:
        with pytest.raises(SynchronousOnlyOperation):
            asyncio.run(view())
        async_to_sync(Shipped("p-8").afire)()

    assert [m.parcel for m in fired] == ["p-8"]
    assert drop_queued() == 0


def test_fire_from_async_code_is_let_through_where_django_lets_the_database_be(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    async def notebook_cell() -> None:
        Shipped("p-4").fire()
        connections.close_all()  # the ones this async context opened (they are its own)

    asyncio.run(notebook_cell())

    assert Event.objects.get().state == "published"
    assert drop_queued(published=1) == 1
