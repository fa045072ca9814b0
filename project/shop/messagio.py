"""The demo's messagios and listeners, found by messagio's autodiscovery."""

import logging
import random
from dataclasses import dataclass
from decimal import Decimal

from messagio import TASK_PRIORITY, Messagio, listen_to_message
from project.shop.models import Order

logger = logging.getLogger("project.shop")


@dataclass
class OrderPlaced(Messagio):
    order: Order
    total: Decimal


@dataclass
class PaymentFailed(Messagio):
    order_id: int
    reason: str


class StockLow(Messagio):
    """A plain class works too; a dataclass is simply shorter."""

    def __init__(self, sku: str, left: int):
        self.sku = sku
        self.left = left


@listen_to_message(OrderPlaced, priority=TASK_PRIORITY.HIGH)
def send_confirmation_email(event: OrderPlaced) -> str:
    Order.objects.filter(pk=event.order.pk).update(confirmation_sent=True)
    return f"mail sent to {event.order.customer_email}"


@listen_to_message(OrderPlaced)
def reserve_stock(event: OrderPlaced) -> None:
    Order.objects.filter(pk=event.order.pk).update(stock_reserved=True)


class AccountingUnavailableError(ConnectionError):
    """The (pretend) accounting service did not answer."""


@listen_to_message(
    OrderPlaced,
    PaymentFailed,
    autoretry_for=(AccountingUnavailableError,),
    max_retries=2,
    default_retry_delay=1,
)
def notify_accounting(event: OrderPlaced | PaymentFailed) -> None:
    # Fails now and then, so the demo shows retries and failures.
    if random.random() < 0.3:
        raise AccountingUnavailableError("accounting did not answer in time")
    logger.info("accounting notified of %s", type(event).__name__)


@listen_to_message(StockLow, priority=TASK_PRIORITY.LESS)
def reorder_stock(event: StockLow) -> None:
    logger.info("reordering %s (%d left)", event.sku, event.left)
