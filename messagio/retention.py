"""Retention: how long records are kept, applied by the prune task and messagio_prune."""

from __future__ import annotations

import datetime
from collections.abc import Callable

from django.utils import timezone

from messagio.conf import get_setting
from messagio.validation import DAYS_AT_MOST, amount, require, whole

SUCCEEDED_DAYS = "the succeeded days (--succeeded-days, RETAIN_SUCCEEDED_DAYS)"
FAILED_DAYS = "the failed days (--failed-days, RETAIN_FAILED_DAYS)"


def cutoff(days: float | None) -> datetime.datetime | None:
    return None if days is None else timezone.now() - datetime.timedelta(days=float(days))


def check_retention(days: float | None, name: str) -> None:
    """Raise ValueError unless ``days`` is None (keep forever) or a number of days, 0 or more:
    a negative one would move the cut-off into the future and delete everything finished."""
    require(amount("a number of days", zero=True, none="keep", most=DAYS_AT_MOST), days, name)


#: How a refused batch size is named, from the command or the setting.
BATCH_SIZE_NAME = "the batch size (--batch-size, PRUNE_BATCH_SIZE)"


def check_batch_size(size: int, name: str) -> None:
    require(whole(1, what="a number of events"), size, name)


def count_expired(succeeded_days: float | None, failed_days: float | None) -> int:
    """How many events :func:`prune_expired` would delete with these days (None: keep)."""
    from messagio.models import Event

    check_retention(succeeded_days, SUCCEEDED_DAYS)
    check_retention(failed_days, FAILED_DAYS)
    selections = Event.objects.expired(cutoff(succeeded_days), cutoff(failed_days))
    return sum(selection.order_by().count() for selection in selections)


def prune_ended_replays(before: datetime.datetime | None, batch_size: int) -> int:
    """Delete the Replay records that ended before ``before`` and that no delivery or
    attempt names any more; how many.

    What a replay ran is kept as long as failures (RETAIN_FAILED_DAYS) and goes with its
    events: its record, the audit of who asked for it and why, goes once nothing it ran
    is left, and not before.
    """
    from django.db.models import Exists, OuterRef

    from messagio.models import Attempt, Delivery, Replay

    if before is None:
        return 0
    ended = Replay.objects.filter(
        state__in=[Replay.State.FINISHED, Replay.State.STOPPED], finished_at__lt=before
    ).exclude(
        Exists(Delivery.objects.filter(replay=OuterRef("pk")))
        | Exists(Attempt.objects.filter(replay=OuterRef("pk")))
    )
    deleted = 0
    while ids := list(ended.order_by("pk").values_list("pk", flat=True)[:batch_size]):
        # Selected again by the delete: a replay that named something meanwhile is kept.
        count, _ = ended.filter(pk__in=ids).delete()
        deleted += count
    return deleted


def prune_expired(
    succeeded_days: float | None = None,
    failed_days: float | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    use_settings: bool = True,
    replays_deleted: Callable[[int], None] | None = None,
) -> int:
    """Delete finished events older than the retention settings (or the given days), then
    the replay records left naming none of what is kept; how many events.

    A bad number of days or batch size raises ValueError before anything is deleted.
    ``replays_deleted`` is told how many replay records went.
    """
    from messagio.models import Event

    if use_settings:
        if succeeded_days is None:
            succeeded_days = get_setting("RETAIN_SUCCEEDED_DAYS")
        if failed_days is None:
            failed_days = get_setting("RETAIN_FAILED_DAYS")
    if batch_size is None:
        batch_size = get_setting("PRUNE_BATCH_SIZE")
    check_retention(succeeded_days, SUCCEEDED_DAYS)
    check_retention(failed_days, FAILED_DAYS)
    check_batch_size(batch_size, BATCH_SIZE_NAME)
    events = Event.objects.prune(
        succeeded_before=cutoff(succeeded_days),
        failed_before=cutoff(failed_days),
        batch_size=batch_size,
        progress=progress,
    )
    replays = prune_ended_replays(cutoff(failed_days), batch_size)
    if replays_deleted is not None:
        replays_deleted(replays)
    return events
