"""Property-based: any payload is either recorded and delivered equal, or refused at fire time.

Never a stuck or half-written record. Runs through the in-process center, which records
and delivers through the same signed pickle and records as a worker.
"""

import datetime
import decimal
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messagio import MessageCenter, Messagio, PayloadError
from messagio.models import Event
from tests.testapp.models import Call

pytestmark = pytest.mark.django_db(transaction=True)

IN_PROCESS = {"MESSAGE_CENTER": "messagio.center.InProcessMessageCenter"}


@dataclass
class Anything(Messagio):
    value: Any


received: list[Anything] = []


def keep(messagio: Anything) -> None:
    received.append(messagio)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.dates()
    | st.datetimes(timezones=st.just(datetime.UTC))
    | st.decimals(allow_nan=False)
    | st.uuids()
)
payloads = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
unpicklable = st.sampled_from([lambda: 1, (x for x in ()), threading.Lock()])


def fire_and_check(value: Any, refused: bool = False) -> None:
    """Fire; then a complete record with an equal delivery, or (``refused``) a refusal
    naming the class and nothing recorded."""
    received.clear()
    Event.objects.all().delete()
    try:
        Anything(value).fire()
    except PayloadError as error:
        assert refused, f"refused: {error}"
        assert "tests.test_payload_properties.Anything" in str(error)
        assert not Event.objects.exists()
        assert received == []
        return
    assert not refused, "fired, not refused"
    event = Event.objects.get()
    assert list(event.deliveries.values_list("status", flat=True)) == ["succeeded"]
    assert event.deliveries.get().history.count() == 1
    assert received == [Anything(value)]


@pytest.fixture
def in_process(isolated_registry):
    received.clear()
    MessageCenter.singleton().subscribe(Anything, keep)
    with override_settings(MESSAGIO=IN_PROCESS):
        yield


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=payloads)
def test_any_picklable_payload_is_recorded_and_delivered_equal(in_process, value):
    fire_and_check(value)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=st.lists(payloads, max_size=3), bad=unpicklable)
def test_a_payload_holding_something_unpicklable_is_refused_and_nothing_recorded(
    in_process, value, bad
):
    fire_and_check([*value, bad], refused=True)
    assert not Event.objects.exists()


def test_a_cycle_travels_as_a_cycle(in_process):
    cycle: list[Any] = ["head"]
    cycle.append(cycle)
    Anything(cycle).fire()
    (got,) = received
    assert got.value[1] is got.value


def test_a_model_instance_travels_equal(in_process):
    call = Call.objects.create(token="t", listener="l")
    fire_and_check({"call": call, "amount": decimal.Decimal("9.99"), "id": uuid.uuid4()})


def test_a_large_string_under_the_limit_travels_and_over_it_is_refused(in_process):
    fire_and_check("x" * 400_000)
    with pytest.raises(PayloadError, match="MAX_PAYLOAD_BYTES"):
        Anything("x" * 600_000).fire()
    assert Event.objects.count() == 1  # only the first
