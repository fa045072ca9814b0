"""Figure 6: the admin at scale (issue 5, target of issue 4's "At scale").

Seeds a database of its own with 1,000,000 events and 4,000,000 deliveries (PostgreSQL
``COPY``), and a small one (2,000 events) of the same shape, then opens every admin screen
in each as a logged-in superuser with Django's test client: server time (the time of
``client.get``, median of 5 after a warm-up) and SQL queries (``CaptureQueriesContext``).
The target: every screen under 0.5 s at 1M events, with the same number of queries on the
small database as on the large one.

    python bench/run.py --figures 6                   the figure alone, into bench/RESULTS.md
    python -m bench.admin_at_scale [--events N] [--keep]  the figure alone, printed only

The databases (``messagio_bench_admin_<run>_large`` and ``_small``) are created, migrated
(``manage.py migrate`` in a subprocess), seeded, measured (in a subprocess: Django set up on
that database, never in the runner) and dropped at the end, whatever happens.

How the seed is fast: the tables are migrated as usual, then their indexes and constraints
are dropped, the rows streamed with ``COPY ... (FREEZE)`` in the transaction that truncated
the tables (no WAL-heavy index maintenance, rows frozen and all-visible, as autovacuum
leaves an old table), and the indexes and constraints put back from their own definitions
(``pg_get_indexdef`` / ``pg_get_constraintdef``), then ``ANALYZE``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")

#: The issue's volume, and the small database that shows the query counts do not grow.
EVENTS = 1_000_000
#: Small, but above the changelists' count cap (1,000 rows, messagio_admin.paginator), as
#: the large one is: below it, a changelist counts its rows exactly, one query more.
SMALL_EVENTS = 2_000
LISTENERS_PER_EVENT = 4
#: Server time limit of every screen, in seconds.
LIMIT = 0.5
REPEATS = 5
#: A screen whose warm-up request takes longer than this is timed only this many times.
FAR_OVER, FAR_OVER_REPEATS = 4 * LIMIT, 2
#: The span of fired_at: the last 30 days.
SPAN = datetime.timedelta(days=30)

# --- What the seed looks like ----------------------------------------------------------------

SHOP = "project.shop.messagio"
#: The demo project's registered listeners (so the registry page shows statistics for them),
#: then listeners that only the records know (the page's "orphans").
LISTENERS = {
    # id: (priority, autoretry_for, max_retries, retry_delay, failure rate, error classes,
    #      median duration in ms, result)
    f"{SHOP}.send_confirmation_email": (9, [], 0, 0.0, 0.02,
        ["smtplib.SMTPServerDisconnected", "builtins.TimeoutError"], 120.0,
        "'mail sent to customer'"),
    f"{SHOP}.reserve_stock": (5, [], 0, 0.0, 0.004,
        ["django.db.utils.OperationalError"], 15.0, "None"),
    f"{SHOP}.notify_accounting": (5, [f"{SHOP}:AccountingUnavailableError"], 2, 1.0, 0.09,
        [f"{SHOP}.AccountingUnavailableError"], 40.0, "None"),
    f"{SHOP}.reorder_stock": (1, [], 0, 0.0, 0.01, ["builtins.KeyError"], 25.0, "None"),
    "shop.search.index_document": (1, [], 0, 0.0, 0.005,
        ["elasticsearch.ConnectionTimeout"], 30.0, "None"),
    "shop.notifications.email_customer": (5, ["smtplib:SMTPException"], 3, 30.0, 0.05,
        ["smtplib.SMTPServerDisconnected", "smtplib.SMTPRecipientsRefused"], 150.0,
        "'queued'"),
    "shop.fraud.score_payment": (9, [], 0, 0.0, 0.01, ["builtins.ValueError"], 60.0, "0.07"),
    "shop.audit.log_event": (5, [], 0, 0.0, 0.001,
        ["django.db.utils.OperationalError"], 3.0, "None"),
    "shop.analytics.track": (1, [], 0, 0.0, 0.003, ["builtins.TimeoutError"], 8.0, "None"),
    "accounts.crm.sync_contact": (5, ["requests.exceptions:ConnectionError"], 2, 5.0, 0.04,
        ["requests.exceptions.ConnectionError", "requests.exceptions.HTTPError"], 90.0,
        "'synced'"),
    "billing.ledger.post_entry": (9, [], 0, 0.0, 0.002,
        ["django.db.utils.IntegrityError"], 12.0, "None"),
    "shop.webhooks.notify_partner": (5, ["requests.exceptions:ConnectionError"], 3, 10.0,
        0.08, ["requests.exceptions.ConnectionError", "requests.exceptions.ReadTimeout",
               "builtins.KeyError"], 200.0, "'202'"),
}  # fmt: skip
#: ``(messagio type, weight, its four listeners in subscription order, summary)``; the
#: summary gets the event's number ``n``.
TYPES: list[tuple[str, int, list[str], Callable[[int], str]]] = [
    (f"{SHOP}.OrderPlaced", 30,
     [f"{SHOP}.send_confirmation_email", f"{SHOP}.reserve_stock", f"{SHOP}.notify_accounting",
      "shop.search.index_document"],
     lambda n: f'{{"order": "shop.Order(pk={n}) \\\\"Order #{n} by cust-{n:07d}@example.com'
               f'\\\\"", "total": "{n % 500}.90"}}'),
    (f"{SHOP}.PaymentFailed", 4,
     [f"{SHOP}.notify_accounting", "shop.notifications.email_customer",
      "shop.fraud.score_payment", "shop.audit.log_event"],
     lambda n: f'{{"order_id": {n}, "reason": "card declined (code {n % 60})"}}'),
    (f"{SHOP}.StockLow", 3,
     [f"{SHOP}.reorder_stock", "shop.notifications.email_customer", "shop.audit.log_event",
      "shop.search.index_document"],
     lambda n: f'{{"sku": "SKU-{n % 9973:05d}", "left": {n % 7}}}'),
    ("shop.events.OrderShipped", 20,
     ["shop.notifications.email_customer", "shop.search.index_document", "shop.analytics.track",
      "shop.webhooks.notify_partner"],
     lambda n: f'{{"order_id": {n}, "carrier": "DHL", "tracking": "JD{n:012d}"}}'),
    ("shop.events.OrderCancelled", 3,
     [f"{SHOP}.notify_accounting", "shop.notifications.email_customer", "shop.audit.log_event",
      "shop.webhooks.notify_partner"],
     lambda n: f'{{"order_id": {n}, "by": "customer", "reason": "changed my mind"}}'),
    ("shop.events.RefundIssued", 2,
     ["billing.ledger.post_entry", "shop.notifications.email_customer", "shop.audit.log_event",
      "shop.analytics.track"],
     lambda n: f'{{"order_id": {n}, "amount": "{n % 300}.00", "currency": "EUR"}}'),
    ("accounts.events.UserSignedUp", 10,
     ["accounts.crm.sync_contact", "shop.notifications.email_customer", "shop.analytics.track",
      "shop.audit.log_event"],
     lambda n: f'{{"user": "auth.User(pk={n}) \\\\"user{n:07d}\\\\"", "plan": "free"}}'),
    ("accounts.events.PasswordResetRequested", 5,
     ["shop.notifications.email_customer", "shop.fraud.score_payment", "shop.audit.log_event",
      "shop.analytics.track"],
     lambda n: f'{{"user_id": {n}, "ip": "10.{n % 250}.{n % 199}.{n % 97}"}}'),
    ("billing.events.InvoicePaid", 15,
     ["billing.ledger.post_entry", "accounts.crm.sync_contact",
      "shop.notifications.email_customer", "shop.webhooks.notify_partner"],
     lambda n: f'{{"invoice": "INV-{n:08d}", "amount": "{n % 900}.00", "currency": "EUR"}}'),
    ("billing.events.SubscriptionRenewed", 8,
     ["billing.ledger.post_entry", "accounts.crm.sync_contact", "shop.analytics.track",
      "shop.audit.log_event"],
     lambda n: f'{{"subscription": {n}, "period": "monthly", "renewals": {n % 40}}}'),
]  # fmt: skip
WORKERS = [f"celery@worker-{i}" for i in range(1, 5)]

EVENT_COLUMNS = (
    "id, messagio_type, fired_at, payload, summary, origin, replay_of_id, state, "
    "published_at, claimed_at, publish_error, listener_count"
)
DELIVERY_COLUMNS = (
    "id, event_id, position, messagio_type, listener, import_path, priority, queue, "
    "autoretry_for, max_retries, retry_delay, time_limit, status, attempts, replay_id, "
    "started_at, finished_at, duration_ms, result, error_type, error, traceback, task_id, worker"
)
ATTEMPT_COLUMNS = (
    "delivery_id, number, outcome, replay_id, started_at, finished_at, duration_ms, result, "
    "error_type, error, traceback, task_id, worker"
)
REPLAY_COLUMNS = (
    "id, requested_by_id, requested_at, reason, source, description, state, snapshot_at, "
    "total, queued, canary, rate, max_failure_rate, stopped_reason, finished_at, runner, "
    "times_resent"
)
TABLES = ("messagio_event", "messagio_delivery", "messagio_attempt", "messagio_replay")


@dataclass
class Shape:
    """How many of each kind a database of ``events`` events gets."""

    events: int

    @property
    def in_flight(self) -> int:
        """The newest events, whose deliveries are pending, running or retrying."""
        return max(8, self.events // 4000)

    @property
    def unpublished(self) -> int:
        """Among those, the newest still ``recorded`` (not handed to the broker yet)."""
        return max(2, self.in_flight // 10)

    @property
    def replays(self) -> int:
        return max(4, self.events // 20_000)

    @property
    def search_event(self) -> int:
        """The event whose summary the text search looks for (one OrderPlaced, mid-table)."""
        return int(self.events * 0.42)


def log_to(stream: Any = sys.stdout) -> Callable[[str], None]:
    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=stream, flush=True)

    return log


# --- Databases ---------------------------------------------------------------------------------


def create_database(name: str, template: str | None = None) -> None:
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def django_env(database_url: str, tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=database_url,
        DJANGO_DEBUG="0",
        # The test client's host; DEBUG stays off, as in production.
        DJANGO_ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
        MESSAGIO_VAR_DIR=str(tmp / "var"),
        PYTHONUNBUFFERED="1",
    )
    return env


def migrate(database_url: str, tmp: Path) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"],
        cwd=ROOT, env=django_env(database_url, tmp), check=True,
    )  # fmt: skip


# --- Seeding -----------------------------------------------------------------------------------


class Clock:
    """Timestamps as COPY text, fast: one formatted minute per minute of the span, the
    seconds appended (``datetime.isoformat`` for 13 million values would take a while)."""

    def __init__(self, start: datetime.datetime, span: datetime.timedelta) -> None:
        self.start = start.replace(second=0, microsecond=0)
        minutes = int(span.total_seconds() // 60) + 24 * 60
        self.minutes = [
            (self.start + datetime.timedelta(minutes=m)).strftime("%Y-%m-%d %H:%M:")
            for m in range(minutes)
        ]

    def text(self, seconds: float) -> str:
        """``seconds`` after :attr:`start`, as timestamptz text."""
        return f"{self.minutes[int(seconds // 60)]}{seconds % 60:09.6f}+00"

    def offset(self, moment: datetime.datetime) -> float:
        return (moment - self.start).total_seconds()


def uuid_text(hexdigits: str) -> str:
    h = hexdigits
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def traceback_text(listener: str, error_type: str, message: str) -> str:
    """A plausible traceback, as COPY text (newlines escaped)."""
    module, _, function = listener.rpartition(".")
    path = module.replace(".", "/")
    lines = [
        "Traceback (most recent call last):",
        '  File "/app/messagio/execution.py", line 212, in run_listener',
        "    result = listener(messagio)",
        f'  File "/app/{path}.py", line 48, in {function}',
        "    response = client.send(payload, timeout=10)",
        '  File "/app/lib/client.py", line 131, in send',
        "    raise error",
        f"{error_type}: {message}",
    ]
    return "\\n".join(lines)


def summary_cost_check() -> None:
    """The summaries are JSON (checked once, on one event of each type)."""
    for _, _, _, summary in TYPES:
        json.loads(summary(1234567).replace("\\\\", "\\"))


@dataclass
class Seeded:
    events: int
    deliveries: int
    attempts: int
    replays: int
    failed: int
    in_flight: int
    seconds: dict[str, float]
    sizes: dict[str, int]
    search_text: str


def generate(shape: Shape, clock: Clock, now_offset: float, seed: int) -> Iterator[tuple[str, str]]:
    """``(table, chunk of COPY text)``: the events, then the deliveries (kept in step: the
    deliveries of a chunk of events follow it), attempts and replays are yielded last."""
    rng = random.Random(seed)
    n = shape.events
    span = SPAN.total_seconds()
    step = span / n
    first = now_offset - span
    weights = [w for _, w, _, _ in TYPES]
    picks = rng.choices(range(len(TYPES)), weights=weights, k=n)
    picks[shape.search_event] = 0  # an OrderPlaced: its summary has the customer's email
    replay_count = shape.replays
    # Replay r (1..R) was asked for at first + r * replay_step; the last one a day ago.
    replay_step = (span - 86_400) / replay_count
    replay_totals = [0] * (replay_count + 1)
    replay_groups: list[str] = [""] * (replay_count + 1)
    payload = "\\\\x" + rng.randbytes(160).hex()
    # Per type: its four listeners' constant columns (position .. time_limit) and options.
    specs = []
    for name, _, listeners, _ in TYPES:
        row = []
        for position, listener in enumerate(listeners):
            priority, retry_on, max_retries, delay, rate, errors, median, result = LISTENERS[
                listener
            ]
            module, _, function = listener.rpartition(".")
            constant = (
                f"{position}\t{name}\t{listener}\t{module}:{function}\t{priority}\tmessagio\t"
                f"{json.dumps(retry_on)}\t{max_retries}\t{delay}\t\\N"
            )
            row.append((constant, max_retries, delay, rate, errors, median, result, listener))
        specs.append(row)
    messages = {
        "smtplib.SMTPServerDisconnected": "Connection unexpectedly closed",
        "smtplib.SMTPRecipientsRefused": "{'x@example.com': (550, b'mailbox unavailable')}",
        "builtins.TimeoutError": "timed out after 10.0 s",
        "django.db.utils.OperationalError": "could not obtain lock on row in relation",
        f"{SHOP}.AccountingUnavailableError": "accounting did not answer in time",
        "builtins.KeyError": "'sku'",
        "elasticsearch.ConnectionTimeout": "ConnectionTimeout caused by ReadTimeoutError",
        "builtins.ValueError": "score out of range: 1.7",
        "requests.exceptions.ConnectionError": "Max retries exceeded with url: /hooks",
        "requests.exceptions.HTTPError": "502 Server Error: Bad Gateway",
        "requests.exceptions.ReadTimeout": "Read timed out. (read timeout=10)",
        "django.db.utils.IntegrityError": "duplicate key value violates unique constraint",
    }
    tracebacks = {
        (listener, error): traceback_text(listener, error, messages[error])
        for listener, options in LISTENERS.items()
        for error in options[5]
    }
    in_flight_from = n - shape.in_flight
    unpublished_from = n - shape.unpublished
    statuses_in_flight = ("pending", "running", "retrying", "pending")
    event_ids: list[str] = []
    attempts: list[str] = []
    chunk = 20_000
    for begin in range(0, n, chunk):
        end = min(n, begin + chunk)
        ids = rng.randbytes(16 * (end - begin)).hex()
        delivery_ids = rng.randbytes(16 * LISTENERS_PER_EVENT * (end - begin)).hex()
        event_lines = []
        delivery_lines = []
        for i in range(begin, end):
            k = i - begin
            eid = ids[32 * k : 32 * k + 32]
            event_ids.append(eid)
            t = first + (i + rng.random() * 0.9) * step
            fired = clock.text(t)
            type_index = picks[i]
            name, _, _, summary = TYPES[type_index]
            roll = rng.random()
            origin, state, replay_of = "fire", "published", "\\N"
            published = clock.text(t + 0.002)
            if i >= unpublished_from:
                state, published = "recorded", "\\N"
            elif roll < 0.01:
                origin, state = "sync", "inline"
            elif roll < 0.02:
                origin = "schedule"
            elif roll < 0.0205 and i > 1000:
                origin, replay_of = "replay", event_ids[rng.randrange(i - 1000)]
            event_lines.append(
                f"{eid}\t{name}\t{fired}\t{payload}\t{summary(i)}\t{origin}\t{replay_of}\t"
                f"{state}\t{published}\t\\N\t\t{LISTENERS_PER_EVENT}\n"
            )
            start = t + 0.005
            for position, spec in enumerate(specs[type_index]):
                constant, max_retries, delay, rate, errors, median, result, listener = spec
                d = 4 * k + position
                did = delivery_ids[32 * d : 32 * d + 32]
                task = uuid_text(rng.randbytes(16).hex())
                worker = WORKERS[(i + position) % 4]
                if i >= in_flight_from:
                    status = (
                        "pending" if state == "recorded" else statuses_in_flight[(i + position) % 4]
                    )
                    if status == "pending":
                        delivery_lines.append(
                            f"{did}\t{eid}\t{constant}\tpending\t0\t\\N\t\\N\t\\N\t\\N\t\t\t\t\t"
                            f"{task}\t\n"
                        )
                        continue
                    began = clock.text(start + position * 0.01)
                    delivery_lines.append(
                        f"{did}\t{eid}\t{constant}\t{status}\t1\t\\N\t{began}\t\\N\t\\N\t\t\t"
                        f"\t\t{task}\t{worker}\n"
                    )
                    continue
                duration = rng.expovariate(1 / median)
                began_s = start + position * 0.003
                ended_s = began_s + duration / 1000
                failed = rng.random() < rate
                if not failed and not (max_retries and rng.random() < rate):
                    delivery_lines.append(
                        f"{did}\t{eid}\t{constant}\tsucceeded\t1\t\\N\t{clock.text(began_s)}\t"
                        f"{clock.text(ended_s)}\t{duration:.3f}\t{result}\t\t\t\t{task}\t"
                        f"{worker}\n"
                    )
                    continue
                # Failed at least once: its attempts are recorded one by one.
                error = errors[i % len(errors)]
                message = messages[error]
                trace = tracebacks[(listener, error)]
                tries = max_retries + 1 if failed else rng.randint(2, max_retries + 1)
                attempt_start = began_s
                replay = "\\N"
                outcome_last = "failed" if failed else "succeeded"
                replay_index = int((t - first) // replay_step) + 1
                if failed and replay_index <= replay_count and rng.random() < 0.05:
                    # Replayed from the Failures page later, and succeeded then.
                    replay = str(replay_index)
                    replay_totals[replay_index] += 1
                    replay_groups[replay_index] = (
                        f"failed deliveries of {listener} for {name} with {error}"
                    )
                for number in range(1, tries + 1):
                    last = number == tries
                    attempt_end = attempt_start + duration / 1000
                    outcome = outcome_last if last else "retried"
                    attempts.append(
                        f"{did}\t{number}\t{outcome}\t\\N\t{clock.text(attempt_start)}\t"
                        f"{clock.text(attempt_end)}\t{duration:.3f}\t"
                        + (f"{result}\t\t\t\t" if outcome == "succeeded" else
                           f"\t{error}\t{message}\t{trace}\t")
                        + f"{task}\t{worker}\n"
                    )  # fmt: skip
                    if not last:
                        attempt_start = attempt_end + delay
                status, count = ("failed" if failed else "succeeded"), tries
                first_start = clock.text(began_s)
                if replay != "\\N":
                    replay_at = first + replay_index * replay_step + 1
                    count += 1
                    attempt_start, attempt_end = replay_at, replay_at + duration / 1000
                    attempts.append(
                        f"{did}\t{count}\tsucceeded\t{replay}\t{clock.text(attempt_start)}\t"
                        f"{clock.text(attempt_end)}\t{duration:.3f}\t{result}\t\t\t\t{task}\t"
                        f"{worker}\n"
                    )
                    status, first_start = "succeeded", clock.text(attempt_start)
                if status == "failed":
                    outcome_columns = f"\t{error}\t{message}\t{trace}"
                else:
                    outcome_columns = f"{result}\t\t\t"
                delivery_lines.append(
                    f"{did}\t{eid}\t{constant}\t{status}\t{count}\t{replay}\t{first_start}\t"
                    f"{clock.text(attempt_end)}\t{duration:.3f}\t{outcome_columns}\t{task}\t"
                    f"{worker}\n"
                )
        yield "messagio_event", "".join(event_lines)
        yield "messagio_delivery", "".join(delivery_lines)
    for begin in range(0, len(attempts), 50_000):
        yield "messagio_attempt", "".join(attempts[begin : begin + 50_000])
    replay_lines = []
    for r in range(1, replay_count + 1):
        at = first + r * replay_step
        total = replay_totals[r]
        replay_lines.append(
            f"{r}\t\\N\t{clock.text(at)}\tfixed in release 2026.{r}\t"
            f"{'admin' if r % 3 else 'command'}\t{replay_groups[r] or 'nothing left'}\t"
            f"finished\t{clock.text(at)}\t{total}\t{total}\t\\N\t\\N\t\\N\t\t"
            f"{clock.text(at + 5)}\t\t0\n"
        )
    yield "messagio_replay", "".join(replay_lines)


def seed(database_url: str, events: int, log: Callable[[str], None], seed_value: int = 6) -> Seeded:
    """Fill the migrated database at ``database_url`` with ``events`` events (4 deliveries
    each), their attempts where a delivery failed at least once, and a few replays."""
    import psycopg

    summary_cost_check()
    shape = Shape(events)
    seconds: dict[str, float] = {}
    now = datetime.datetime.now(datetime.UTC)
    clock = Clock(now - SPAN - datetime.timedelta(minutes=1), SPAN + datetime.timedelta(hours=1))
    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute("SET maintenance_work_mem = '512MB'")
        db.execute("SET max_parallel_maintenance_workers = 2")
        tables = ", ".join(f"'{t}'::regclass" for t in TABLES)
        constraints = db.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype"
            f" FROM pg_constraint WHERE (conrelid IN ({tables}) OR confrelid IN ({tables}))"
            " AND contype IN ('p', 'u', 'f')"
            " ORDER BY CASE contype WHEN 'f' THEN 0 ELSE 1 END"
        ).fetchall()
        owned = {name for _, name, _, _ in constraints}
        indexes = db.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
            f" WHERE indrelid IN ({tables})"
        ).fetchall()
        indexes = [(name, sql) for name, sql in indexes if name not in owned]
        began = time.perf_counter()
        with db.transaction():
            for table, name, _, _ in constraints:
                db.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for name, _ in indexes:
                db.execute(f"DROP INDEX {name}")
            db.execute(f"TRUNCATE {', '.join(TABLES)}")
            columns = {
                "messagio_event": EVENT_COLUMNS,
                "messagio_delivery": DELIVERY_COLUMNS,
                "messagio_attempt": ATTEMPT_COLUMNS,
                "messagio_replay": REPLAY_COLUMNS,
            }
            cursor = db.cursor()
            # The rows are made in a thread while this one streams the previous chunk:
            # the server parses rows while Python formats the next ones.
            for table, text in threaded(generate(shape, clock, clock.offset(now), seed_value)):
                with cursor.copy(f"COPY {table} ({columns[table]}) FROM STDIN (FREEZE)") as copy:
                    copy.write(text)
        seconds["copy"] = time.perf_counter() - began
        log(f"  copied in {seconds['copy']:.1f} s; rebuilding indexes and constraints")
        began = time.perf_counter()
        for _, sql in indexes:
            db.execute(sql)
        for table, name, definition, _ in reversed(constraints):
            db.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        db.execute(
            "SELECT setval(pg_get_serial_sequence('messagio_replay', 'id'),"
            " (SELECT coalesce(max(id), 1) FROM messagio_replay))"
        )
        seconds["indexes"] = time.perf_counter() - began
        began = time.perf_counter()
        db.execute("ANALYZE " + ", ".join(TABLES))
        seconds["analyze"] = time.perf_counter() - began
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        failed = db.execute(
            "SELECT count(*) FROM messagio_delivery WHERE status = 'failed'"
        ).fetchone()[0]
        in_flight = db.execute(
            "SELECT count(*) FROM messagio_delivery"
            " WHERE status IN ('pending', 'running', 'retrying')"
        ).fetchone()[0]
        sizes = {
            t: db.execute("SELECT pg_total_relation_size(%s::regclass)", [t]).fetchone()[0]
            for t in TABLES
        }
    return Seeded(
        events=counts["messagio_event"],
        deliveries=counts["messagio_delivery"],
        attempts=counts["messagio_attempt"],
        replays=counts["messagio_replay"],
        failed=failed,
        in_flight=in_flight,
        seconds=seconds,
        sizes=sizes,
        search_text=f"cust-{shape.search_event:07d}@example.com",
    )


def threaded(items: Iterator[Any], ahead: int = 3) -> Iterator[Any]:
    """Run the generator ``items`` in a thread, up to ``ahead`` items in advance."""
    done = object()
    queue: Queue[Any] = Queue(maxsize=ahead)
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for item in items:
                queue.put(item)
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer
            failure.append(exc)
        finally:
            queue.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    while (item := queue.get()) is not done:
        yield item
    thread.join()
    if failure:
        raise failure[0]


# --- Measuring (in a subprocess with Django set up on the seeded database) ---------------------

#: ``(key, what the screen is, URL)``; the URL's ``{fields}`` are filled from :func:`targets`.
SCREENS = [
    ("events", "Events (with the 24-hour overview)", "/admin/messagio/event/"),
    ("events_type", "Events, type filter (OrderPlaced, 30% of events)",
     "/admin/messagio/event/?messagio_type={type}"),
    ("events_failed", "Events, status filter: has failures",
     "/admin/messagio/event/?status=failed"),
    ("events_ok", "Events, status filter: all ok", "/admin/messagio/event/?status=ok"),
    ("events_in_flight", "Events, status filter: in flight",
     "/admin/messagio/event/?status=in_flight"),
    ("events_unpublished", "Events, status filter: never published",
     "/admin/messagio/event/?status=unpublished"),
    ("events_waiting", "Events, status filter: waiting for a worker (the overview's link)",
     "/admin/messagio/event/?status=waiting"),
    ("events_search_text", "Events, search: one customer's email (text of 1 summary)",
     "/admin/messagio/event/?q={search}"),
    ("events_search_type", "Events, search: a type name (OrderShipped)",
     "/admin/messagio/event/?q=OrderShipped"),
    ("events_search_id", "Events, search: an event id", "/admin/messagio/event/?q={event}"),
    ("event", "An event's page (failed delivery, with retries)",
     "/admin/messagio/event/{event}/change/"),
    ("deliveries", "Deliveries", "/admin/messagio/delivery/"),
    ("deliveries_failed", "Deliveries, status=failed",
     "/admin/messagio/delivery/?status__exact=failed"),
    ("deliveries_pending", "Deliveries, status=pending (never started: NULLs last)",
     "/admin/messagio/delivery/?status__exact=pending"),
    ("deliveries_failed_deep", "Deliveries, status=failed, page 40 (past the count cap; "
     "the last page where there are fewer)",
     "/admin/messagio/delivery/?status__exact=failed&p={deep_page}"),
    ("deliveries_error_rare", "Deliveries, error class filter: a rare class (IntegrityError)",
     "/admin/messagio/delivery/?error_type=django.db.utils.IntegrityError"),
    ("deliveries_error_failed", "Deliveries, status=failed and a common error class "
     "(requests ConnectionError)",
     "/admin/messagio/delivery/?status__exact=failed&error_type=requests.exceptions.ConnectionError"),
    ("deliveries_search_error", "Deliveries, search: part of an error class (Accounting)",
     "/admin/messagio/delivery/?q=Accounting"),
    ("deliveries_search_none", "Deliveries, search: a term that matches nothing",
     "/admin/messagio/delivery/?q=NoSuchThing"),
    ("delivery", "A delivery's page (failed, with retries)",
     "/admin/messagio/delivery/{delivery}/change/"),
    ("failures", "Failures", "/admin/messagio/delivery/failures/"),
    ("failure_group", "A failure group's replay page (the target delivery's group)",
     "/admin/messagio/delivery/failures/group/?{group}"),
    ("listeners", "Listener registry", "/admin/messagio/delivery/listeners/"),
    ("replays", "Replays", "/admin/messagio/replay/"),
]  # fmt: skip


def targets(search: str) -> dict[str, str]:
    """What the URLs point at, chosen by the same rule in every database: the newest
    failed delivery that was retried and not replayed, its event and its failure group."""
    from urllib.parse import quote, urlencode

    from django.contrib import admin

    from messagio.models import Delivery
    from messagio_admin.paginator import PAGES_AHEAD

    delivery, event, listener, messagio_type, error_type = (
        Delivery.objects.filter(status="failed", attempts__gte=2, replay__isnull=True)
        .order_by("-started_at")
        .values_list("pk", "event_id", "listener", "messagio_type", "error_type")
        .first()
    )
    # Page 40, or where there are fewer pages, a page past the last that a kept link
    # reaches (the list shows its last page).
    per_page = admin.site._registry[Delivery].list_per_page
    failed = Delivery.objects.filter(status="failed")[: 40 * per_page].count()
    pages = -(-failed // per_page)
    return {
        "deep_page": str(40 if pages >= 40 else pages + PAGES_AHEAD),
        "type": quote(f"{SHOP}.OrderPlaced"),
        "search": quote(search),
        "event": str(event),
        "delivery": str(delivery),
        "group": urlencode(
            {"listener": listener, "messagio_type": messagio_type, "error_type": error_type}
        ),
    }


def explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def profile(request: Callable[[], Any]) -> str | None:
    """A pyinstrument profile of one request, as text (None without pyinstrument)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    from bench.driver import profile_text

    profiler = Profiler(interval=0.0005)
    profiler.start()
    request()
    profiler.stop()
    return below(profile_text(profiler), "ClientHandler._get_response")


def below(text: str, frame: str) -> str:
    """The profile's header, then its call tree from ``frame`` down (the test client and
    the middlewares above it left out)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if frame in line), None)
    if start is None:
        return text
    header = [line for line in lines[:start] if "─" not in line]

    def depth(line: str) -> int:
        return len(line) - len(line.lstrip(" │├└─"))

    column, top = lines[start].index("─") - 1, depth(lines[start])
    tree = [lines[start][column:]]
    for line in lines[start + 1 :]:
        if depth(line) <= top:
            break  # the end of the frame's subtree
        tree.append(line[column:])
    return "\n".join([*header, *tree]) + "\n"


def measure_inside(search: str, repeats: int, explain_all: bool) -> dict[str, Any]:
    """Every screen: a warm-up request, ``repeats`` timed requests, then one whose queries
    are captured. A screen whose warm-up took over :data:`FAR_OVER` seconds is timed
    :data:`FAR_OVER_REPEATS` times and its warm-up's queries are the ones shown (so that a
    screen of 10 s does not take the figure past 10 minutes)."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user = User.objects.create_superuser("bench-admin", "bench@example.com", None)
    client = Client()
    client.force_login(user)
    fields = targets(search)
    screens: dict[str, Any] = {}

    def get(url: str) -> Any:
        response = client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
        return response

    for key, title, template in SCREENS:
        url = template.format(**fields)
        began = time.perf_counter()
        with CaptureQueriesContext(connection) as warm:
            get(url)
        # Copied now: the next request's request_started signal empties connection.queries.
        warm_queries = list(warm.captured_queries)
        far_over = time.perf_counter() - began > FAR_OVER
        runs = []
        for _ in range(FAR_OVER_REPEATS if far_over else repeats):
            began = time.perf_counter()
            response = get(url)
            runs.append(time.perf_counter() - began)
        if far_over:
            captured = warm_queries
        else:
            with CaptureQueriesContext(connection) as context:
                get(url)
            captured = list(context.captured_queries)
        queries = [(float(q["time"]), q["sql"]) for q in captured]
        slowest = sorted(queries, key=lambda q: -q[0])
        median = statistics.median(runs)
        entry: dict[str, Any] = {
            "title": title,
            "url": url,
            "seconds": median,
            "runs": runs,
            "queries": len(captured),
            "queries_warm_up": len(warm_queries),
            "sql_seconds": sum(t for t, _ in queries),
            "slowest_query": {"seconds": slowest[0][0], "sql": slowest[0][1]} if slowest else None,
            "bytes": len(response.content),
        }
        if median >= LIMIT or explain_all:
            # What the slow screen waits on: the plans of its slowest queries (over 50 ms).
            entry["explain"] = [
                {"seconds": t, "sql": sql, "plan": explain(sql)}
                for t, sql in slowest[: 1 if far_over else 2]
                if t >= 0.05 or explain_all
            ]
        if median >= LIMIT and entry["sql_seconds"] < median / 2:
            # Not the database: where the Python time goes.
            entry["profile"] = profile(lambda url=url: get(url))
        screens[key] = entry
    return {"screens": screens, "targets": fields}


def measure(database_url: str, tmp: Path, search: str, repeats: int, label: str) -> dict:
    """:func:`measure_inside`, in a subprocess whose Django uses ``database_url``."""
    output = tmp / f"admin-{label}.json"
    log_path = tmp / f"admin-{label}.log"
    with open(log_path, "wb") as log_file:
        done = subprocess.run(
            [sys.executable, "-m", "bench.admin_at_scale", "--measure", str(output),
             "--search", search, "--repeats", str(repeats)],
            cwd=ROOT, env=django_env(database_url, tmp), stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"measuring the {label} database failed:\n{log_path.read_text()[-4000:]}"
        )
    return json.loads(output.read_text())


# --- The figure --------------------------------------------------------------------------------


def figure(
    run_id: str,
    tmp: Path,
    log: Callable[[str], None],
    events: int = EVENTS,
    small_events: int = SMALL_EVENTS,
    repeats: int = REPEATS,
    keep: bool = False,
    profiles: Path | None = None,
) -> dict[str, Any]:
    """Seed, measure, drop; the figures of every screen, as run.py's report takes them.
    The profiles of slow screens whose time is not SQL are written to ``profiles/``
    (``admin-<screen>.txt``) when it is given."""
    import psycopg

    began = time.time()
    large, small = f"messagio_bench_admin_{run_id}_large", f"messagio_bench_admin_{run_id}_small"
    result: dict[str, Any] = {"events": events, "small_events": small_events, "repeats": repeats}
    try:
        log(f"fig 6: creating and migrating {large}")
        create_database(large)
        migrate(f"{POSTGRES}/{large}", tmp)
        create_database(small, template=large)
        seeded = {}
        for name, count in ((small, small_events), (large, events)):
            log(f"fig 6: seeding {name}: {count:,} events, {count * 4:,} deliveries")
            step = time.time()
            s = seed(f"{POSTGRES}/{name}", count, log)
            seeded[name] = s
            log(
                f"fig 6: seeded in {time.time() - step:.0f} s: {s.events:,} events, "
                f"{s.deliveries:,} deliveries ({s.failed / s.deliveries:.1%} failed, "
                f"{s.in_flight:,} in flight), {s.attempts:,} attempts, {s.replays} replays; "
                f"{sum(s.sizes.values()) / 2**20:,.0f} MiB"
            )
        result["seed"] = {
            "seconds": time.time() - began,
            **{label: vars(seeded[name]) for label, name in (("large", large), ("small", small))},
        }
        with psycopg.connect(f"{POSTGRES}/{large}") as db:
            result["postgres"] = db.execute("SHOW server_version").fetchone()[0]
        measured = {}
        for label, name in (("small", small), ("large", large)):
            log(f"fig 6: measuring every screen on the {label} database")
            step = time.time()
            measured[label] = measure(
                f"{POSTGRES}/{name}", tmp, seeded[name].search_text, repeats, label
            )
            log(f"fig 6: {label} measured in {time.time() - step:.0f} s")
        screens = {}
        for key, entry in measured["large"]["screens"].items():
            small_entry = measured["small"]["screens"][key]
            screens[key] = {
                **entry,
                "queries_small": small_entry["queries"],
                "seconds_small": small_entry["seconds"],
            }
        result["screens"] = screens
        for key, entry in screens.items():
            text = entry.pop("profile", None)
            if text and profiles is not None:
                profiles.mkdir(exist_ok=True)
                path = profiles / f"admin-{key}.txt"
                path.write_text(text)
                entry["profile_path"] = str(path.relative_to(ROOT))
    finally:
        if keep:
            log(f"fig 6: kept {large} and {small} (--keep): drop them when done")
        else:
            for name in (small, large):
                drop_database(name)
    result["seconds"] = time.time() - began
    for line in table_lines(result):
        log(line)
    return result


def screen_verdicts(result: dict[str, Any]) -> dict[str, list[str]]:
    """Screens over the time limit, and screens whose query count differs with size."""
    screens = result.get("screens", {})
    return {
        "slow": [k for k, s in screens.items() if s["seconds"] >= LIMIT],
        "growing": [k for k, s in screens.items() if s["queries"] != s["queries_small"]],
    }


def verdict(result: dict[str, Any]) -> tuple[str, str]:
    """The "admin" target's verdict and what it rests on."""
    if not result.get("screens"):
        return "NOT RUN", "figure 6 not selected in this run"
    found = screen_verdicts(result)
    screens = result["screens"]
    slowest = max(screens, key=lambda k: screens[k]["seconds"])
    detail = (
        f"{len(screens)} screens at {result['events']:,} events: slowest {slowest} "
        f"{screens[slowest]['seconds']:.3f} s"
    )
    if found["slow"]:
        detail += "; over 0.5 s: " + ", ".join(
            f"{k} {screens[k]['seconds']:.2f} s" for k in found["slow"]
        )
    if found["growing"]:
        detail += "; query count grows: " + ", ".join(
            f"{k} {screens[k]['queries_small']} → {screens[k]['queries']}" for k in found["growing"]
        )
    else:
        detail += (
            f"; query counts equal at {result['small_events']:,} and {result['events']:,} events"
        )
    return ("FALL SHORT" if found["slow"] or found["growing"] else "PASS"), detail


def table_lines(result: dict[str, Any]) -> list[str]:
    """The figure's table (Markdown), one row per screen."""
    screens = result["screens"]
    large, small = f"{result['events']:,}", f"{result['small_events']:,}"
    lines = [
        f"| screen | server time at {large} events (median of {result['repeats']}; min–max) "
        f"| at {small} | SQL queries at {large} | at {small} | SQL time | slowest query |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in screens.values():
        mark = " ⚠" if s["seconds"] >= LIMIT else ""
        same = "" if s["queries"] == s["queries_small"] else " ⚠"
        slowest = s["slowest_query"]["seconds"] if s["slowest_query"] else 0.0
        lines.append(
            f"| {s['title']} | **{s['seconds'] * 1000:.0f} ms**{mark} "
            f"({min(s['runs']) * 1000:.0f}–{max(s['runs']) * 1000:.0f}"
            + ("" if len(s["runs"]) == result["repeats"] else f"; {len(s['runs'])} runs")
            + ") | "
            f"{s['seconds_small'] * 1000:.0f} ms | {s['queries']}{same} | {s['queries_small']} | "
            f"{s['sql_seconds'] * 1000:.0f} ms | {slowest * 1000:.0f} ms |"
        )
    return lines


def method_lines(result: dict[str, Any]) -> list[str]:
    """What was seeded and how it was measured (Markdown list items)."""
    seed_info = result["seed"]
    large, small = seed_info["large"], seed_info["small"]
    errors = {e for options in LISTENERS.values() for e in options[5]}
    size = sum(large["sizes"].values())
    return [
        f"- data: {large['events']:,} events ({len(TYPES)} messagio types, fired over the "
        f"last 30 days, the newest {Shape(result['events']).in_flight} still in flight), "
        f"{large['deliveries']:,} deliveries ({len(LISTENERS)} listeners, 4 per event; "
        f"{large['failed'] / large['deliveries']:.1%} failed with {len(errors)} error "
        f"classes, {large['in_flight']:,} pending, running or retrying), {large['attempts']:,} "
        f"attempts (every try of each delivery that failed at least once), "
        f"{large['replays']} replays; {size / 2**30:.2f} GiB on disk with indexes",
        f"- seeded with `COPY ... (FREEZE)` into the migrated tables, their indexes and "
        f"constraints dropped and rebuilt: COPY {large['seconds']['copy']:.0f} s, indexes and "
        f"constraints {large['seconds']['indexes']:.0f} s, ANALYZE "
        f"{large['seconds']['analyze']:.0f} s",
        "- each screen opened by a superuser with Django's test client (`DEBUG` off), in a "
        "process of its own: server time = the time of `client.get`, median of "
        f"{result['repeats']} after a warm-up request; SQL queries = `CaptureQueriesContext` "
        "of one request (the session and user lookups included); SQL time = the sum of its "
        f"queries' times; a screen whose warm-up took over {FAR_OVER:g} s is timed "
        f"{FAR_OVER_REPEATS} times, not {result['repeats']} (the figure stays under 10 minutes)",
        f"- the same screens on a database of {small['events']:,} events of the same shape "
        f"({small['deliveries']:,} deliveries, {small['failed']} failed): the query count "
        "must be the same",
    ]


def notes_lines(result: dict[str, Any]) -> list[str]:
    """The plans of the slow screens' slowest queries."""
    found = screen_verdicts(result)
    screens = result["screens"]
    lines: list[str] = []
    for key in found["growing"]:
        s = screens[key]
        lines += [
            "",
            f"Query count of **{s['title']}** differs with the size: {s['queries_small']} "
            f"queries at {result['small_events']:,} events, {s['queries']} at "
            f"{result['events']:,}.",
        ]
    for key in found["slow"]:
        s = screens[key]
        lines += [
            "",
            f"### {s['title']}: {s['seconds'] * 1000:.0f} ms (`{s['url']}`)",
            "",
            f"{s['queries']} queries, {s['sql_seconds'] * 1000:.0f} ms of SQL."
            + (" Most of the time is not SQL: the view and its template (and, on a loaded "
               "machine, waiting for a core); a pyinstrument profile of one request: "
               f"[{Path(s['profile_path']).name}]({Path(s['profile_path']).relative_to('bench')})."
               if s.get("profile_path") else "")
            + (" Its slowest queries, `EXPLAIN (ANALYZE, BUFFERS)`:" if s.get("explain") else
               " No query over 50 ms."),
        ]  # fmt: skip
        for plan in s.get("explain", []):
            lines += [
                "",
                f"{plan['seconds'] * 1000:.0f} ms:",
                "",
                "```sql",
                plan["sql"],
                "```",
                "",
                "```",
                plan["plan"],
                "```",
            ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--small-events", type=int, default=SMALL_EVENTS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases (to investigate; drop by hand)"
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--search", help=argparse.SUPPRESS)
    parser.add_argument("--explain-all", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        # In the subprocess: Django set up on the database of DATABASE_URL.
        result = measure_inside(args.search, args.repeats, args.explain_all)
        args.measure.write_text(json.dumps(result, indent=1, default=str))
        return 0
    import uuid

    tmp = Path(tempfile.mkdtemp(prefix="messagio-bench-admin-"))
    result = figure(
        uuid.uuid4().hex[:8], tmp, log_to(), args.events, args.small_events, args.repeats, args.keep
    )
    print(*verdict(result), sep=": ")
    shutil.rmtree(tmp, ignore_errors=True)  # kept (path in the error) when a step failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
