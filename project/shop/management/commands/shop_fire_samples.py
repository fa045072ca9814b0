"""Fire a few sample messagios, so the demo has something to show."""

from decimal import Decimal

from django.core.management.base import BaseCommand

from project.shop.messagio import OrderPlaced, PaymentFailed, StockLow
from project.shop.models import Order


class Command(BaseCommand):
    help = "Create a few orders and fire the demo's messagios for them."

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
