"""Side A's driver: fires messagio (this repository) with full recording, as configured by
project/settings.py from the environment. Run as ``python -m bench.side_a`` in the repo root.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.a_events import TYPES  # noqa: E402
from bench.driver import SCRATCH, profile_text, serve  # noqa: E402

TABLES = ("messagio_event", "messagio_delivery", "messagio_attempt")
#: Transaction control is not a statement of messagio's: the count ignores it.
CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")


def fire(listeners: int, key: str, sent_at: float, seq: int) -> None:
    TYPES[listeners](key=key, sent_at=sent_at, seq=seq).fire()


@contextmanager
def published_envelopes() -> Iterator[list[dict[str, Any]]]:
    """Keep a copy of every task envelope published meanwhile, as the worker would get it.

    A fire outside a transaction leaves its Deliveries to the worker, so what the worker's
    task does is measured by running these envelopes here (``deliver.apply``).
    """
    from messagio import records
    from messagio.dispatch import compacted
    from messagio.seals import sealed

    published: list[dict[str, Any]] = []
    original = records.publish_all

    def publish_all(envelope_list: list[dict[str, Any]]) -> list[str]:
        # As publish() sends them.
        published.extend(sealed(compacted(envelope)) for envelope in envelope_list)
        return original(envelope_list)

    records.publish_all = publish_all
    try:
        yield published
    finally:
        records.publish_all = original


def reset() -> dict[str, Any]:
    """Empty messagio's tables (the bench's own database), so every run starts alike."""
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(TABLES)}")
    return {}


def succeeded() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM messagio_delivery GROUP BY status")
        counts = dict(cursor.fetchall())
    return {"succeeded": counts.get("succeeded", 0), "total": sum(counts.values())}


def _statements(captured: list[dict[str, Any]]) -> list[str]:
    return [q["sql"] for q in captured if not q["sql"].lstrip().upper().startswith(CONTROL)]


def statements(listeners: list[int]) -> dict[str, Any]:
    """SQL statements of one fire, outside and inside a transaction, and of one delivery."""
    from messagio.tasks import deliver

    fire(4, SCRATCH, 0.0, 0)  # connection opened, caches warm
    result: dict[str, Any] = {}
    for n in listeners:
        with CaptureQueriesContext(connection) as outside, published_envelopes() as published:
            fire(n, SCRATCH, 0.0, 1)
        with CaptureQueriesContext(connection) as inside:
            with transaction.atomic():
                fire(n, SCRATCH, 0.0, 2)
                in_block = len(_statements(inside.captured_queries))
        (envelope,) = published
        with CaptureQueriesContext(connection) as delivering:
            deliver.apply(args=(envelope,))
        result[str(n)] = {
            "outside": _statements(outside.captured_queries),
            "inside": len(_statements(inside.captured_queries)),
            "inside_before_commit": in_block,
            "per_delivery": len(_statements(delivering.captured_queries)) / n,
            "delivery_statements": _statements(delivering.captured_queries)[:8],
        }
    return result


def _sizes() -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
    with connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0) FROM {table} t")
            rows, tuple_bytes = cursor.fetchone()
            cursor.execute(
                "SELECT pg_total_relation_size(%s), pg_relation_size(%s), pg_indexes_size(%s)",
                [table, table, table],
            )
            total, heap, indexes = cursor.fetchone()
            cursor.execute(
                "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relname = %s",
                [table],
            )
            inserted, updated, hot = cursor.fetchone()
            sizes[table] = {
                "rows": rows, "tuple_bytes": int(tuple_bytes), "total_bytes": total,
                "heap_bytes": heap, "index_bytes": indexes, "inserted": inserted,
                "updated": updated, "hot_updated": hot,
            }  # fmt: skip
    return sizes


def recording(count: int, listeners: int = 4) -> dict[str, Any]:
    """Rows and bytes written by ``count`` fires, then by running all their deliveries.

    The deliveries run here, through the worker's own task function (``deliver.apply``), so
    no other process writes meanwhile and the sizes belong to these deliveries alone.
    """
    from messagio.tasks import deliver

    reset()
    time.sleep(0.6)  # statistics are flushed at most once a second
    before = _sizes()
    with published_envelopes() as published:
        for i in range(count):
            fire(listeners, SCRATCH, 0.0, i)
    time.sleep(0.6)
    fired = _sizes()
    started = time.perf_counter()
    for envelope in published:
        deliver.apply(args=(envelope,))
    seconds = time.perf_counter() - started
    time.sleep(0.6)
    delivered = _sizes()
    return {
        "before": before,
        "fired": fired,
        "delivered": delivered,
        "fires": count,
        "deliveries": count * listeners,
        "deliver_seconds": seconds,
    }


def profile_deliver(count: int, path: str, listeners: int = 4) -> dict[str, Any]:
    """Profile what a worker does per group (``deliver``), run here with pyinstrument."""
    from pyinstrument import Profiler

    from messagio.tasks import deliver

    reset()
    with published_envelopes() as groups:
        for i in range(count):
            fire(listeners, SCRATCH, 0.0, i)
    profiler = Profiler(interval=0.0002)
    profiler.start()
    for envelope in groups:
        deliver.apply(args=(envelope,))
    profiler.stop()
    with open(path, "w") as out:
        out.write(profile_text(profiler))
    return {"path": path, "groups": len(groups)}


class _Stopwatch:
    """Microseconds per item of each timed block."""

    def __init__(self, items: int) -> None:
        self.items = items
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.stages[name] = (time.perf_counter() - start) / self.items * 1e6


def _fire_stages(listeners: int, count: int) -> dict[str, float]:
    from messagio import records
    from messagio.conf import get_setting
    from messagio.payload import encode
    from messagio.registry import registry

    reset()
    cls = TYPES[listeners]
    subscriptions = registry.subscriptions_for(cls)
    events = [cls(key=SCRATCH, seq=i) for i in range(count)]
    max_bytes = get_setting("MAX_PAYLOAD_BYTES")
    watch = _Stopwatch(count)
    with watch.stage("encode (pickle + HMAC)"):
        payloads = [encode(e, max_bytes) for e in events]
    with watch.stage("build_records (Event + Delivery objects)"):
        built = [
            records.build_records(e, p, subscriptions, origin="fire")
            for e, p in zip(events, payloads, strict=True)
        ]
    with watch.stage("envelopes"):
        groups = [records.envelopes(*b, deliveries_recorded=False) for b in built]
    with watch.stage("publish (kept producer)"):
        for group in groups:
            records.publish_all(group)
    with watch.stage("save_records (the published Event: execute + commit)"):
        for event, _ in built:
            event.state = "published"
            records.save_records(event, [])
    reset()
    with watch.stage("whole fire()"):
        for i in range(count):
            cls(key=SCRATCH, seq=i).fire()
    return watch.stages


def breakdown(listeners: list[int], count: int = 500, rounds_of: int = 5) -> dict[str, Any]:
    """Microseconds per fire spent in each stage of ``MessageCenter.send``, run stage by stage.

    Uses messagio's internal functions (records.py, payload.py). Also the cost here of a
    bare round trip and of a bare commit.
    """
    result: dict[str, Any] = {}
    watch = _Stopwatch(count)
    fire(1, SCRATCH, 0.0, 0)  # connection open
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit (x int)")
        with watch.stage("round trip (SELECT 1)"):
            for _ in range(count):
                cursor.execute("SELECT 1")
        with watch.stage("commit (1-row INSERT, autocommit)"):
            for _ in range(count):
                cursor.execute("INSERT INTO bench_commit VALUES (1)")
        cursor.execute("DROP TABLE bench_commit")
    result.update(watch.stages)
    for n in listeners:
        # The fastest of several rounds: the least disturbed by other work on the machine.
        rounds = [_fire_stages(n, count // rounds_of) for _ in range(rounds_of)]
        result[str(n)] = {stage: min(r[stage] for r in rounds) for stage in rounds[0]}
    reset()
    return result


if __name__ == "__main__":
    serve(
        fire,
        {
            "reset": reset,
            "succeeded": succeeded,
            "statements": statements,
            "recording": recording,
            "profile_deliver": profile_deliver,
            "breakdown": breakdown,
        },
    )
