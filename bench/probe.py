"""What every side's trivial listener does: tell the bench that it ran, and when.

Standalone (stdlib and redis only), so A's and C's workers import it as ``bench.probe`` and
B's, from the 0.7 virtualenv, as ``probe``. The same single Redis command runs for every
delivery on every side, so it costs each of them the same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:  # made lazily, in each worker child after the fork
        import redis

        _client = redis.Redis.from_url(os.environ["BENCH_PROBE_URL"])
    return _client


def hit(key: str, sent_at: float) -> None:
    """Count one listener run under ``key``; with ``sent_at``, push its fire-to-start latency."""
    started = time.time()
    if sent_at:
        _redis().rpush(key, f"{started - sent_at:.6f}")
    else:
        _redis().incr(key)


def make_listeners(module: str, count: int = 16) -> list[Callable[[Any], None]]:
    """``count`` distinct, importable, trivial listeners named ``listener_00`` ... in ``module``.

    Each must be bound into the module's globals under its name, so pickle and messagio's
    import paths find it there.
    """

    def make(index: int) -> Callable[[Any], None]:
        def listener(event: Any) -> None:
            hit(event.key, event.sent_at)

        listener.__name__ = listener.__qualname__ = f"listener_{index:02d}"
        listener.__module__ = module
        return listener

    return [make(i) for i in range(count)]
