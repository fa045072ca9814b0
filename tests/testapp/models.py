"""What the test listeners leave behind, so tests can see what a worker ran and in what order."""

from django.db import models


class Call(models.Model):
    token = models.CharField(max_length=64, db_index=True)
    listener = models.CharField(max_length=100)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.listener} ({self.token})"
