"""messagio.testing: capture fired messagios in tests instead of running their listeners."""

import threading
from dataclasses import dataclass

import pytest
from django.db import transaction
from django.test import override_settings

from messagio import InProcessMessageCenter, MessageCenter, Messagio, PayloadError
from messagio.center import get_message_center
from messagio.models import Event
from messagio.testing import CapturingMessageCenter, FiredMessagios, capture_messagios


@dataclass
class OrderPlaced(Messagio):
    order_id: int
    total: str = "0"


@dataclass
class OrderPlacedTwice(OrderPlaced):
    pass


@dataclass
class Cancelled(Messagio):
    order_id: int
    extra: object = None


ran: list[str] = []


@pytest.fixture(autouse=True)
def clear_ran():
    ran.clear()


def remember(messagio) -> None:
    ran.append(type(messagio).__name__)


def test_capturing_keeps_the_fired_messagios_in_order():
    with capture_messagios() as fired:
        first, second = OrderPlaced(1), Cancelled(1)
        first.fire()
        second.fire()

    assert list(fired) == [first, second]
    assert len(fired) == 2


def test_capturing_keeps_what_was_fired_not_what_the_object_became():
    # A real fire pickles the messagio there and then; like mail.outbox, a copy is kept.
    with capture_messagios() as fired:
        order = OrderPlaced(1)
        order.fire()
        order.order_id = 2

    fired.assert_fired(OrderPlaced, order_id=1)
    assert fired[0] is not order


@pytest.mark.django_db
@pytest.mark.parametrize("center", [MessageCenter, InProcessMessageCenter])
@pytest.mark.parametrize("sync", [False, True])
def test_capturing_takes_what_a_center_is_sent_directly(center, sync):
    MessageCenter.singleton().subscribe(OrderPlaced, remember)

    with capture_messagios() as fired:
        center.singleton().send(OrderPlaced(3), sync=sync)

    fired.assert_fired(OrderPlaced, order_id=3)
    assert ran == []
    assert not Event.objects.exists()


def test_capturing_runs_no_listener():
    MessageCenter.singleton().subscribe(OrderPlaced, remember)

    with capture_messagios():
        OrderPlaced(1).fire()
        OrderPlaced(2).fire(sync=True)

    assert ran == []


def test_capturing_installs_its_center_only_inside_the_block():
    with capture_messagios():
        assert isinstance(get_message_center(), CapturingMessageCenter)
    assert type(get_message_center()) is MessageCenter


def test_a_nested_capture_takes_the_fires_of_its_block_only():
    with capture_messagios() as outer:
        OrderPlaced(1).fire()
        with capture_messagios() as inner:
            OrderPlaced(2).fire()
        OrderPlaced(3).fire()

    assert [m.order_id for m in outer] == [1, 3]
    assert [m.order_id for m in inner] == [2]


def test_capturing_reports_the_fire():
    with capture_messagios():
        report = OrderPlaced(1).fire(sync=True)

    assert report.messagio_type == "tests.test_testing.OrderPlaced"
    assert report.sync is True


def test_assert_fired_returns_the_matches_of_the_type_and_fields():
    with capture_messagios() as fired:
        OrderPlaced(1, total="10").fire()
        OrderPlaced(2, total="10").fire()
        Cancelled(1).fire()

    matches = fired.assert_fired(OrderPlaced, total="10")

    assert [m.order_id for m in matches] == [1, 2]
    assert [m.order_id for m in fired.assert_fired(OrderPlaced, order_id=2)] == [2]


def test_assert_fired_checks_the_count():
    with capture_messagios() as fired:
        OrderPlaced(1).fire()
        OrderPlaced(1).fire()

    fired.assert_fired(OrderPlaced, 2, order_id=1)
    with pytest.raises(AssertionError, match=r"to be fired 1 time\(s\); found 2"):
        fired.assert_fired(OrderPlaced, 1, order_id=1)


def test_assert_fired_fails_when_a_field_differs():
    with capture_messagios() as fired:
        OrderPlaced(1).fire()

    with pytest.raises(AssertionError, match=r"Expected OrderPlaced\(order_id=2\) to be fired"):
        fired.assert_fired(OrderPlaced, order_id=2)


def test_assert_fired_does_not_match_a_subclass():
    with capture_messagios() as fired:
        OrderPlacedTwice(1).fire()

    with pytest.raises(AssertionError):
        fired.assert_fired(OrderPlaced)


def test_assert_fired_failure_lists_what_was_fired():
    with capture_messagios() as fired:
        OrderPlaced(7, total="12.50").fire()
        Cancelled(8).fire()

    with pytest.raises(AssertionError) as error:
        fired.assert_fired(OrderPlaced, order_id=99)

    message = str(error.value)
    assert "found 0" in message
    assert "Fired: OrderPlaced(order_id=7, total='12.50'), Cancelled(order_id=8" in message


def test_assert_fired_failure_says_when_nothing_was_fired():
    with capture_messagios() as fired:
        pass

    with pytest.raises(AssertionError, match="Fired: nothing"):
        fired.assert_fired(OrderPlaced)


def test_assert_not_fired_passes_when_no_such_messagio_was_fired():
    with capture_messagios() as fired:
        OrderPlaced(1).fire()

    fired.assert_not_fired(Cancelled)
    fired.assert_not_fired(OrderPlaced, order_id=2)


def test_assert_not_fired_fails_when_one_was():
    with capture_messagios() as fired:
        OrderPlaced(1).fire()

    with pytest.raises(
        AssertionError,
        match=r"Expected no OrderPlaced\(order_id=1\); found 1: "
        r"OrderPlaced\(order_id=1, total='0'\)",
    ):
        fired.assert_not_fired(OrderPlaced, order_id=1)


def test_clear_forgets_what_was_captured():
    with capture_messagios() as fired:
        OrderPlaced(1).fire()
        fired.clear()
        OrderPlaced(2).fire()

    assert [m.order_id for m in fired] == [2]


def test_the_pytest_fixture_captures_fires(messagio_fired):
    MessageCenter.singleton().subscribe(OrderPlaced, remember)

    OrderPlaced(5).fire()

    assert isinstance(messagio_fired, FiredMessagios)
    messagio_fired.assert_fired(OrderPlaced, 1, order_id=5)
    assert ran == []


def test_an_unpicklable_messagio_still_raises_payload_error_while_capturing():
    with capture_messagios() as fired:
        with pytest.raises(PayloadError, match="'extra'"):
            Cancelled(1, extra=threading.Lock()).fire()

    assert len(fired) == 0


def test_sending_something_that_is_not_a_messagio_is_a_type_error_while_capturing():
    with capture_messagios():
        with pytest.raises(TypeError, match="Only Messagio instances"):
            get_message_center().send("hello")


@pytest.mark.django_db
def test_nothing_is_recorded_while_capturing():
    MessageCenter.singleton().subscribe(OrderPlaced, remember)

    with capture_messagios():
        OrderPlaced(1).fire()
        OrderPlaced(2).fire(sync=True)

    assert Event.objects.count() == 0


def test_an_oversized_messagio_still_raises_payload_error_while_capturing():
    with override_settings(MESSAGIO={"MAX_PAYLOAD_BYTES": 100}), capture_messagios():
        with pytest.raises(PayloadError, match="MAX_PAYLOAD_BYTES"):
            OrderPlaced(1, total="9" * 1000).fire()


def test_an_unknown_fire_option_is_refused_while_capturing():
    with capture_messagios():
        with pytest.raises(TypeError, match="Unknown fire\\(\\) options"):
            OrderPlaced(1).fire(priorty=9)


@override_settings(MESSAGIO={"MESSAGE_CENTER": "messagio.InProcessMessageCenter"})
def test_raise_errors_is_taken_while_capturing_as_the_in_process_center_takes_it():
    with capture_messagios() as fired:
        OrderPlaced(1).fire(raise_errors=True)
        OrderPlaced(2).fire(sync=True, raise_errors=True)

    assert [m.order_id for m in fired] == [1, 2]


# --- Fields and counts ---------------------------------------------------------------------


@dataclass
class StockLow(Messagio):
    sku: str
    count: int


def test_a_misspelt_field_is_an_error_not_a_silent_pass():
    with capture_messagios() as fired:
        OrderPlaced(1).fire()

    with pytest.raises(TypeError, match="OrderPlaced has no field 'ordr_id'"):
        fired.assert_not_fired(OrderPlaced, ordr_id=1)
    with pytest.raises(TypeError, match=r"give the number second: assert_fired\(OrderPlaced, 2"):
        fired.assert_fired(OrderPlaced, count=1)


def test_a_field_named_count_is_matched_as_a_field():
    with capture_messagios() as fired:
        StockLow("a", count=3).fire()
        StockLow("b", count=3).fire()

    assert len(fired.assert_fired(StockLow, 2, count=3)) == 2
    fired.assert_not_fired(StockLow, count=99)


def test_a_count_of_zero_points_to_assert_not_fired():
    with capture_messagios() as fired:
        pass

    with pytest.raises(ValueError, match="assert_not_fired"):
        fired.assert_fired(OrderPlaced, 0)


class Plain(Messagio):
    def __init__(self, name: str) -> None:
        self.name = name


def test_a_failure_shows_a_plain_class_by_its_attributes_and_at_most_twenty():
    with capture_messagios() as fired:
        for number in range(25):
            Plain(f"n{number}").fire()

    with pytest.raises(AssertionError) as error:
        fired.assert_fired(OrderPlaced)

    assert "Plain(name='n0'), Plain(name='n1')" in str(error.value)
    assert str(error.value).endswith("Plain(name='n19') and 5 more")


# --- Transactions ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_fire_in_a_block_that_rolls_back_is_forgotten():
    with capture_messagios() as fired:
        OrderPlaced(1).fire()
        with pytest.raises(RuntimeError), transaction.atomic():
            OrderPlaced(2).fire()
            raise RuntimeError("the order failed")
        with transaction.atomic():
            OrderPlaced(3).fire()

    assert [m.order_id for m in fired] == [1, 3]
    fired.assert_not_fired(OrderPlaced, order_id=2)


@pytest.mark.django_db(transaction=True)
def test_a_fire_in_a_committed_transaction_stays_and_one_rolled_back_whole_goes():
    with capture_messagios() as fired:
        with transaction.atomic():
            OrderPlaced(1).fire()
        with pytest.raises(RuntimeError), transaction.atomic():
            OrderPlaced(2).fire()
            raise RuntimeError("the order failed")

    assert [m.order_id for m in fired] == [1]


@pytest.mark.django_db
def test_capturing_takes_what_a_custom_center_runs_through_send_sync():
    MessageCenter.singleton().subscribe(OrderPlaced, remember)

    with capture_messagios() as fired:
        MessageCenter.singleton().send_sync(OrderPlaced(4))

    fired.assert_fired(OrderPlaced, order_id=4)
    assert ran == []
    assert not Event.objects.exists()


def test_capturing_refuses_what_the_celery_centers_fire_refuses():
    # Outside a capture, MessageCenter's fire() takes no raise_errors: a test must not pass
    # on code that fails in production.
    with capture_messagios(), pytest.raises(TypeError, match="Unknown fire\\(\\) options"):
        OrderPlaced(5).fire(raise_errors=True)
    with pytest.raises(TypeError, match="Unknown fire\\(\\) options"):
        OrderPlaced(5).fire(raise_errors=True)

    with capture_messagios() as fired:
        OrderPlaced(6).fire(sync=True, raise_errors=True)
    fired.assert_fired(OrderPlaced, order_id=6)
