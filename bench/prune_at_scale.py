"""The prune at scale: its batches against a bare delete of the same rows, in one run.

Seeds a PostgreSQL database as figure 6 does (``admin_at_scale.seed``: 1,000,000 events by
default, fired over the last 30 days), then, each on a fresh copy of it:

- **bare**: the events the prune would delete first, deleted by their keys in batches of
  ``--batch-size`` (their attempts, deliveries, then the events, one transaction a batch):
  what deleting those rows costs with no selection, no locks and no checks;
- **prune**: ``Event.objects.prune`` (succeeded events older than ``--succeeded-days``,
  failed ones older than 90 days, as ``messagio_prune`` runs it), for as many batches.

Prints the median seconds per batch of each and their ratio. Not part of ``run.py``: run it
when the prune's queries change, ``python -m bench.prune_at_scale [--events N]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.admin_at_scale import (
    POSTGRES,
    ROOT,
    create_database,
    django_env,
    drop_database,
    log_to,
    migrate,
    seed,
)

EVENTS = 1_000_000
BATCHES = 100
BATCH_SIZE = 1000
SUCCEEDED_DAYS = 7.0
FAILED_DAYS = 90.0


def measure_inside(side: str, batches: int, batch_size: int, succeeded_days: float) -> list[float]:
    """In the subprocess (Django set up on DATABASE_URL): seconds per batch of ``side``."""
    import django

    django.setup()
    from django.db import connection, transaction

    from messagio.models import Event
    from messagio.retention import cutoff

    times: list[float] = []
    if side == "prune":

        class EnoughError(Exception):
            pass

        last = time.perf_counter()

        def progress(_deleted: int) -> None:
            nonlocal last
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if len(times) >= batches:
                raise EnoughError

        try:
            Event.objects.prune(
                succeeded_before=cutoff(succeeded_days),
                failed_before=cutoff(FAILED_DAYS),
                batch_size=batch_size,
                progress=progress,
            )
        except EnoughError:
            pass
        return times
    (selection, *_) = Event.objects.expired(cutoff(succeeded_days), cutoff(FAILED_DAYS))
    ids = [
        str(pk)
        for pk in selection.order_by("fired_at", "pk").values_list("pk", flat=True)[
            : batches * batch_size
        ]
    ]
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        began = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM messagio_attempt WHERE delivery_id IN"
                " (SELECT id FROM messagio_delivery WHERE event_id = ANY(%s::uuid[]))",
                [batch],
            )
            cursor.execute(
                "DELETE FROM messagio_delivery WHERE event_id = ANY(%s::uuid[])", [batch]
            )
            cursor.execute(
                "UPDATE messagio_event SET replay_of_id = NULL"
                " WHERE replay_of_id = ANY(%s::uuid[])",
                [batch],
            )
            cursor.execute("DELETE FROM messagio_event WHERE id = ANY(%s::uuid[])", [batch])
        times.append(time.perf_counter() - began)
    return times


def measure(database_url: str, tmp: Path, side: str, args: argparse.Namespace) -> list[float]:
    output = tmp / f"prune-{side}.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.prune_at_scale", "--measure", side, "--output", str(output),
         "--batches", str(args.batches), "--batch-size", str(args.batch_size),
         "--succeeded-days", str(args.succeeded_days)],
        cwd=ROOT, env=django_env(database_url, tmp), capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"measuring {side} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return json.loads(output.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--batches", type=int, default=BATCHES)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--succeeded-days", type=float, default=SUCCEEDED_DAYS)
    parser.add_argument("--measure", choices=["bare", "prune"], help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        times = measure_inside(args.measure, args.batches, args.batch_size, args.succeeded_days)
        args.output.write_text(json.dumps(times))
        return 0
    log = log_to()
    run = uuid.uuid4().hex[:8]
    template, copy = f"messagio_bench_prune_{run}", f"messagio_bench_prune_{run}_run"
    tmp = Path(tempfile.mkdtemp(prefix="messagio-bench-prune-"))
    medians: dict[str, Any] = {}
    try:
        create_database(template)
        migrate(f"{POSTGRES}/{template}", tmp)
        log(f"seeding {args.events:,} events")
        seeded = seed(f"{POSTGRES}/{template}", args.events, log)
        log(f"  {seeded.events:,} events, {seeded.deliveries:,} deliveries")
        for side in ("bare", "prune"):
            drop_database(copy)
            create_database(copy, template=template)
            times = measure(f"{POSTGRES}/{copy}", tmp, side, args)
            medians[side] = statistics.median(times)
            log(
                f"{side}: {len(times)} batches of {args.batch_size}, median"
                f" {medians[side]:.3f} s (min {min(times):.3f}, max {max(times):.3f})"
            )
        print(f"prune / bare delete, per batch: x{medians['prune'] / medians['bare']:.2f}")
    finally:
        drop_database(copy)
        drop_database(template)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
