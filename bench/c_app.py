"""Side C, raw Celery: one trivial task, published once per listener with pickle.

The same listeners and broker settings as A and B, and no library in between. Its worker is
``celery -A bench.c_app worker``, started in the repository root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from celery import Celery

from bench import probe
from bench.celery_options import celery_settings

app = Celery("bench_raw", set_as_current=False)
app.conf.update(celery_settings(os.environ["CELERY_BROKER_URL"], os.environ["BENCH_QUEUE"]))


@dataclass
class BenchFired:
    """The same fields as A's and B's messagios, in a plain class."""

    key: str
    sent_at: float = 0.0
    seq: int = 0


LISTENERS = probe.make_listeners(__name__)
globals().update({listener.__name__: listener for listener in LISTENERS})


@app.task(name="bench.raw.run_listener", ignore_result=True)
def run_listener(index: int, event: Any) -> None:
    LISTENERS[index](event)


def fire(listeners: int, key: str, sent_at: float, seq: int) -> None:
    """What a user of raw Celery writes: one ``apply_async`` per listener."""
    event = BenchFired(key=key, sent_at=sent_at, seq=seq)
    for index in range(listeners):
        run_listener.apply_async(args=(index, event), serializer="pickle")
