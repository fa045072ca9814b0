"""Queries on the records, kept on their querysets."""

from __future__ import annotations

import datetime
from collections.abc import Callable

from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone


class EventQuerySet(models.QuerySet):
    def unpublished(self, grace: datetime.timedelta, claim_timeout: datetime.timedelta):
        """Events the relay should publish: recorded past ``grace``, or claimed by a publisher
        that did not finish within ``claim_timeout``."""
        now = timezone.now()
        return self.filter(
            models.Q(state="recorded", fired_at__lt=now - grace)
            | models.Q(state="publishing", claimed_at__lt=now - claim_timeout)
        )

    def every_delivery_written(self):
        """Events with a Delivery row for each listener: none waits for a worker to write
        its group's rows (a fire published outside a transaction leaves them to it)."""
        from messagio.models import Delivery

        written = (
            Delivery.objects.filter(event=models.OuterRef("pk"))
            .order_by()
            .values("event")
            .annotate(n=models.Count("*"))
            .values("n")
        )
        return self.alias(written=Coalesce(models.Subquery(written), 0)).filter(
            written__gte=models.F("listener_count")
        )

    def prune(
        self,
        succeeded_before: datetime.datetime | None,
        failed_before: datetime.datetime | None,
        batch_size: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete, in batches, finished events older than the cut-offs; return how many.

        An event is pruned with ``succeeded_before`` when every delivery succeeded, with
        ``failed_before`` when one failed; events still in flight are kept, and so are those
        with deliveries no worker has written yet (fewer rows than ``listener_count``).
        """
        from messagio.models import Attempt, Delivery

        in_flight = Delivery.objects.filter(
            event=models.OuterRef("pk"), status__in=["pending", "running", "retrying"]
        )
        failed = Delivery.objects.filter(event=models.OuterRef("pk"), status="failed")
        finished = (
            self.exclude(models.Exists(in_flight))
            .exclude(state__in=["recorded", "publishing"])
            .every_delivery_written()
        )
        selections = []
        if succeeded_before is not None:
            selections.append(
                finished.filter(fired_at__lt=succeeded_before).exclude(models.Exists(failed))
            )
        if failed_before is not None:
            selections.append(
                finished.filter(fired_at__lt=failed_before).filter(models.Exists(failed))
            )
        deleted = 0
        for selection in selections:
            while True:
                ids = list(selection.order_by().values_list("pk", flat=True)[:batch_size])
                if not ids:
                    break
                Attempt.objects.filter(delivery__event_id__in=ids).delete()
                Delivery.objects.filter(event_id__in=ids).delete()
                deleted += (
                    self.model.objects.filter(pk__in=ids).delete()[1].get(self.model._meta.label, 0)
                )
                if progress:
                    progress(deleted)
        return deleted


class DeliveryQuerySet(models.QuerySet):
    def failed(self):
        return self.filter(status="failed")

    def succeeded(self):
        return self.filter(status="succeeded")

    def in_flight(self):
        return self.filter(status__in=["pending", "running", "retrying"])

    def stuck(self, timeout: datetime.timedelta):
        """Deliveries ``running`` for longer than ``timeout``: their worker is presumed dead."""
        return self.filter(status="running", started_at__lt=timezone.now() - timeout)
