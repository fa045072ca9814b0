"""Retention: how long records are kept, applied by the prune task and messagio_prune."""

from __future__ import annotations

import datetime
from collections.abc import Callable

from django.utils import timezone

from messagio.conf import get_setting


def cutoff(days: float | None) -> datetime.datetime | None:
    return None if days is None else timezone.now() - datetime.timedelta(days=float(days))


def prune_expired(
    succeeded_days: float | None = None,
    failed_days: float | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    use_settings: bool = True,
) -> int:
    """Delete finished events older than the retention settings (or the given days)."""
    from messagio.models import Event

    if use_settings:
        if succeeded_days is None:
            succeeded_days = get_setting("RETAIN_SUCCEEDED_DAYS")
        if failed_days is None:
            failed_days = get_setting("RETAIN_FAILED_DAYS")
    return Event.objects.prune(
        succeeded_before=cutoff(succeeded_days),
        failed_before=cutoff(failed_days),
        batch_size=batch_size or int(get_setting("PRUNE_BATCH_SIZE")),
        progress=progress,
    )
