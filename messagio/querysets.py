"""Queries on the records, kept on their querysets."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connections, models, router, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone


def plan_without_jit(alias: str) -> None:
    """For the rest of the current transaction, PostgreSQL plans without JIT compilation,
    which for messagio's scans of a window of the records costs more than running them."""
    connection = connections[alias]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")


class RecordsManager(models.Manager):
    """Reads the records from the database messagio writes them to, whatever the project's
    router says for reads: what messagio reads decides what it writes next (a claim, a
    requeue, a prune), and a replica behind the primary, or one that cannot see the
    transaction a row was just written in, would have it act on what is no longer so.
    ``.using()`` and ``db_manager()`` still choose."""

    @property
    def db(self) -> str:
        """Where the records are read, raw SQL included (the admin's queries)."""
        return self._db or router.db_for_write(self.model, **self._hints)

    def get_queryset(self) -> models.QuerySet:
        queryset = super().get_queryset()
        if self._db is None:
            queryset = queryset.using(self.db)
        return queryset


class EventQuerySet(models.QuerySet):
    def unpublished(
        self,
        grace: datetime.timedelta,
        claim_timeout: datetime.timedelta,
        hold_refused: bool = True,
    ):
        """Events the relay should publish: recorded past ``grace`` (with ``hold_refused``,
        one the broker refused alone only ``claim_timeout`` after that), or claimed by a
        publisher that did not finish within ``claim_timeout``."""
        now = timezone.now()
        recorded = models.Q(state="recorded", fired_at__lt=now - grace)
        if hold_refused:
            recorded &= models.Q(claimed_at__isnull=True) | models.Q(
                claimed_at__lt=now - claim_timeout
            )
        return self.filter(
            recorded | models.Q(state="publishing", claimed_at__lt=now - claim_timeout)
        )

    def with_written(self):
        """Each event with ``written``, its number of Delivery rows: fewer than its
        ``listener_count`` while a worker has yet to write a group's rows (a fire published
        outside a transaction leaves them to it). Counted per event, by its index."""
        from messagio.models import Delivery

        written = (
            Delivery.objects.filter(event=models.OuterRef("pk"))
            .order_by()
            .values("event")
            .annotate(n=models.Count("*"))
            .values("n")
        )
        return self.alias(written=Coalesce(models.Subquery(written), 0))

    def every_delivery_written(self):
        """Events with a Delivery row for each listener: none waits for a worker to write
        its group's rows."""
        return self.with_written().filter(written__gte=models.F("listener_count"))

    def expired(
        self, succeeded_before: datetime.datetime | None, failed_before: datetime.datetime | None
    ) -> list[models.QuerySet]:
        """The finished events older than the cut-offs, one queryset per cut-off given.

        An event is pruned with ``failed_before`` when one of its deliveries failed or was
        run again by a replay (which may have mended a failure), else with
        ``succeeded_before``; its age counts from its last finished delivery, so a replay
        restarts it. Events still in flight are kept, and so are those with deliveries no
        worker has written yet (fewer rows than ``listener_count``).
        """
        from messagio.models import Delivery

        in_flight = Delivery.objects.filter(
            event=models.OuterRef("pk"), status__in=["pending", "running", "retrying"]
        )
        # A failure is final until a replay runs it again: what a replay ran may have
        # mended one, and its failed attempts are kept as long as failures. One EXISTS
        # with the OR inside: PostgreSQL looks up each event's rows (an anti-join for the
        # succeeded, a semi-join for the failed), where an OR of two EXISTS had it hash every
        # failed event's id for each batch (~0.15 s at 1,000,000 events, twice a batch).
        failed_or_replayed = Delivery.objects.filter(event=models.OuterRef("pk")).filter(
            models.Q(status="failed") | models.Q(replay__isnull=False)
        )
        had_failure = models.Exists(failed_or_replayed)
        finished = (
            self.exclude(models.Exists(in_flight))
            .exclude(state__in=["recorded", "publishing"])
            .every_delivery_written()
        )
        selections = []
        if succeeded_before is not None:
            selections.append(_older_than(finished.exclude(had_failure), succeeded_before))
        if failed_before is not None:
            selections.append(_older_than(finished.filter(had_failure), failed_before))
        return selections

    def prune(
        self,
        succeeded_before: datetime.datetime | None,
        failed_before: datetime.datetime | None,
        batch_size: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete, in batches, the :meth:`expired` events and their records; return how many."""
        from messagio.models import Delivery

        alias = router.db_for_write(self.model)
        selections = self.using(alias).expired(succeeded_before, failed_before)
        deleted = 0
        postgresql = connections[alias].vendor == "postgresql"

        def first_of(window: models.QuerySet) -> list[tuple[datetime.datetime, Any]]:
            return list(window.values_list("fired_at", "pk")[:batch_size])

        def delete_still_expired(selection: models.QuerySet, ids: list[Any]) -> int:
            """Delete those of ``ids`` the selection still holds, read again in the batch's
            transaction (an event a replay took meanwhile is kept)."""
            ids = list(selection.filter(pk__in=ids).order_by().values_list("pk", flat=True))
            # Django's delete collects the rows it deletes: only their keys, not the payloads
            # and tracebacks of a whole batch. Its cascade deletes the attempts by their
            # deliveries' keys (a join to the deliveries had PostgreSQL read every attempt,
            # ~0.4 s a batch at 1,000,000 events).
            Delivery.objects.using(alias).filter(event_id__in=ids).only("pk").delete()
            removed = self.model.objects.using(alias).filter(pk__in=ids).only("pk").delete()
            return removed[1].get(self.model._meta.label, 0)

        # Without USE_TZ, PostgreSQL gives a fired_at as a local time, which in the hour a
        # clock goes back names two moments: sent back, it may move the place an hour on.
        keeps_its_place = settings.USE_TZ or not postgresql
        for selection in selections:
            passed: tuple[datetime.datetime, Any] | None = None
            while True:
                # Oldest first, each batch from where the last one ended: the events it kept
                # (a failure kept longer, one still in flight) are read once, not again for
                # every batch. One pass: an event passed that becomes prunable waits for the
                # next prune.
                window = selection.order_by("fired_at", "pk")
                if passed is not None and keeps_its_place:
                    window = window.filter(fired_at__gte=passed[0]).exclude(
                        fired_at=passed[0], pk__lte=passed[1]
                    )
                # A batch goes whole or not at all.
                if postgresql:
                    with transaction.atomic(using=alias):
                        plan_without_jit(alias)  # compiling costs more than running (~0.15 s)
                        batch = first_of(window)
                        ids = [pk for _, pk in batch]
                        if ids:
                            # What a replay or a worker would change is locked, then
                            # selected again: a delivery a replay took meanwhile keeps its
                            # event.
                            locked = Delivery.objects.using(alias).select_for_update()
                            list(locked.filter(event_id__in=ids).order_by("pk").values_list("pk"))
                            deleted += delete_still_expired(selection, ids)
                else:
                    # SQLite has no row locks: the batch is selected first, then selected
                    # again among its ids in the transaction that deletes it (one writer at
                    # a time), so an event a replay took meanwhile is kept.
                    batch = first_of(window)
                    ids = [pk for _, pk in batch]
                    if ids:
                        with transaction.atomic(using=alias):
                            deleted += delete_still_expired(selection, ids)
                if not ids:
                    break
                passed = batch[-1]
                if progress:
                    progress(deleted)
        return deleted


def _older_than(events: models.QuerySet, cutoff: datetime.datetime) -> models.QuerySet:
    """Events fired before ``cutoff`` none of whose deliveries finished since."""
    from messagio.models import Delivery

    recent = Delivery.objects.filter(event=models.OuterRef("pk"), finished_at__gte=cutoff)
    return events.filter(fired_at__lt=cutoff).exclude(models.Exists(recent))


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
