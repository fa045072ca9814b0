"""Fire a few sample messagios, and replay one, so every screen of the demo has something."""

from decimal import Decimal

from django.core.management.base import BaseCommand

import messagio
from messagio.models import Event, Replay
from project.shop.messagio import OrderPlaced, PaymentFailed, StockLow
from project.shop.models import Order


class Command(BaseCommand):
    help = "Create a few orders, fire the demo's messagios for them, and replay one."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=5)

    def handle(self, *args, count: int, **options):
        for n in range(count):
            order = Order.objects.create(
                customer_email=f"customer{n}@example.com", total=Decimal("19.90") * (n + 1)
            )
            OrderPlaced(order, order.total).fire()
            if n % 2:
                PaymentFailed(order.pk, "card declined").fire()
        StockLow("SKU-42", 3).fire()
        self.stdout.write(self.style.SUCCESS(f"Fired messagios for {count} orders."))
        # The Replays screen stays empty until someone replays: one replay, of a stock alert
        # run here and now (so that it has finished), sent to the worker like any other.
        report = StockLow("SKU-7", 1).fire(sync=True)
        event = Event.objects.filter(pk=report.event_id).first()
        if event is None:
            return  # MESSAGIO["RECORD"] is off: nothing to replay
        record = messagio.replay(
            event,
            reason="demo: a first replay, to show on the Replays screen",
            source=Replay.Source.COMMAND,
        )
        self.stdout.write(
            self.style.SUCCESS(f"Replayed the stock alert {event.pk} as replay #{record.pk}.")
        )
