"""The load bench's messagios and listeners (bench/load.py).

Imported by the firing processes (``python -m bench.load_fire``) and by every worker, which
``bench/load.py`` starts with ``-I bench.load_events`` so the subscriptions exist in the
worker's main process before its pool forks.

``Load1`` has one listener, ``Load2`` two, ... ``Load{MAX_LISTENERS}``; each listener's side
effect is one row in ``bench_load_effect`` (a table ``bench/load.py`` creates in its own
database, no migration), so the bench can count lost and duplicated runs per (token, listener).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from messagio import Messagio, listen_to_message

MAX_LISTENERS = 4
EFFECT_TABLE = "bench_load_effect"
EFFECT_DDL = (
    f"CREATE TABLE {EFFECT_TABLE} (id bigserial PRIMARY KEY, token text NOT NULL, "
    "listener smallint NOT NULL, pid integer NOT NULL)"
)  # no unique constraint: a duplicated run must show up as a second row


@dataclass
class LoadPing(Messagio):
    """One fire of the load bench: ``token`` is ``<firing process>-<sequence number>``."""

    token: str


@dataclass
class Load1(LoadPing):
    """One listener."""


@dataclass
class Load2(LoadPing):
    """Two listeners."""


@dataclass
class Load3(LoadPing):
    """Three listeners."""


@dataclass
class Load4(LoadPing):
    """Four listeners."""


#: The messagio type with each number of listeners.
TYPES: dict[int, type[LoadPing]] = {1: Load1, 2: Load2, 3: Load3, 4: Load4}


def record_effect(token: str, listener: int) -> None:
    """The listener's side effect: one row, in the worker's Django connection (autocommit)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {EFFECT_TABLE} (token, listener, pid) VALUES (%s, %s, %s)",
            [token, listener, os.getpid()],
        )


def _make(index: int) -> Callable[[Any], None]:
    def listener(event: LoadPing) -> None:
        record_effect(event.token, index)

    listener.__name__ = listener.__qualname__ = f"count_{index}"
    listener.__module__ = __name__
    return listener


for _index in range(MAX_LISTENERS):
    _listener = _make(_index)
    globals()[_listener.__name__] = _listener  # importable by its path, like any listener
    listen_to_message(*[t for n, t in TYPES.items() if _index < n])(_listener)


# --- Readiness: the bench waits for a file per worker, not for a log line ------------------


def _announce_ready(sender: Any = None, **kwargs: Any) -> None:
    folder = os.environ.get("BENCH_LOAD_READY_DIR")
    if folder:
        (Path(folder) / f"{os.getpid()}.ready").touch()


try:
    from celery.signals import worker_ready
except ImportError:  # pragma: no cover - celery is a requirement of messagio
    pass
else:
    worker_ready.connect(_announce_ready, dispatch_uid="bench.load_events.ready", weak=False)
