"""A tiny shop for the demo: orders and what listeners did with them."""

from django.db import models


class Order(models.Model):
    customer_email = models.EmailField()
    total = models.DecimalField(max_digits=10, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)
    confirmation_sent = models.BooleanField(default=False)
    stock_reserved = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"Order #{self.pk} for {self.customer_email}"
