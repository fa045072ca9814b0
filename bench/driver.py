"""The firing side of one library (A, B or C), driven by bench/run.py over stdin/stdout.

One long-lived process per side and broker, so every measurement runs warm and A, B and C
can be interleaved run by run. Requests and replies are JSON lines; anything the libraries
print goes to stderr (the driver's log). Standalone: each side's module calls :func:`serve`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

#: fire(listeners, key, sent_at, seq): fire one messagio whose type has ``listeners`` listeners.
Fire = Callable[[int, str, float, int], None]
#: Probe key for fires whose listeners' runs are not counted: under this run's prefix, so the
#: bench's clean-up removes it with the rest.
SCRATCH = os.environ.get("BENCH_PREFIX", "bench") + ":scratch"
#: Library code shown in profiles (pyinstrument hides library frames otherwise).
LIBRARIES = r".*site-packages/(messagio|celery|kombu|redis|amqp|django|psycopg)/.*"


def fire_rate(fire: Fire, listeners: int, seconds: float, warmup: int = 50) -> dict[str, Any]:
    """Fire as fast as possible for ``seconds`` (no worker runs): fires per second."""
    for i in range(warmup):
        fire(listeners, SCRATCH, 0.0, i)
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fire(listeners, SCRATCH, 0.0, count)
        count += 1
        if count % 8 == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    return {"fires": count, "seconds": elapsed, "rate": count / elapsed}


def fire_batch(fire: Fire, listeners: int, count: int, key: str) -> dict[str, Any]:
    """Fire ``count`` messagios back to back; the wall clock of the first and last fire."""
    t0 = time.time()
    for i in range(count):
        fire(listeners, key, 0.0, i)
    return {"t0": t0, "t1": time.time()}


def fire_paced(fire: Fire, listeners: int, count: int, rate: float, key: str) -> dict[str, Any]:
    """Fire ``count`` messagios at a steady ``rate`` per second, each stamped with its time."""
    t0 = time.time()
    late = 0
    for i in range(count):
        due = t0 + i / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)  # pacing the fires is the measurement, not a synchronisation
        else:
            late += 1
        fire(listeners, key, time.time(), i)
    t1 = time.time()
    return {"t0": t0, "t1": t1, "achieved_rate": count / (t1 - t0) * (count - 1) / count,
            "late": late}  # fmt: skip


def profile_fire(fire: Fire, listeners: int, seconds: float, path: str) -> dict[str, Any]:
    """Profile the fire path with pyinstrument (installed by bench/run.py) into ``path``."""
    from pyinstrument import Profiler

    for i in range(50):
        fire(listeners, SCRATCH, 0.0, i)
    profiler = Profiler(interval=0.0002)
    count = 0
    profiler.start()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        fire(listeners, SCRATCH, 0.0, count)
        count += 1
    profiler.stop()
    with open(path, "w") as out:
        out.write(profile_text(profiler))
    return {"path": path, "fires": count}


def profile_text(profiler: Any) -> str:
    """The call tree down into the libraries that matter here, frames under 2% left out."""
    return profiler.output_text(
        unicode=True,
        color=False,
        show_all=False,
        processor_options={"show_regex": LIBRARIES, "filter_threshold": 0.02},
    )


def serve(fire: Fire, extra: dict[str, Callable[..., Any]] | None = None) -> None:
    """Answer requests ``{"cmd": ..., "args": {...}}`` from stdin until it closes."""
    handlers: dict[str, Callable[..., Any]] = {
        "fire_rate": lambda **kw: fire_rate(fire, **kw),
        "fire_batch": lambda **kw: fire_batch(fire, **kw),
        "fire_paced": lambda **kw: fire_paced(fire, **kw),
        "profile_fire": lambda **kw: profile_fire(fire, **kw),
        "pid": lambda: {"pid": os.getpid()},
    }
    handlers.update(extra or {})
    channel = sys.stdout
    sys.stdout = sys.stderr  # keep the reply channel clean of anything a library prints
    channel.write(json.dumps({"ok": True, "result": "ready"}) + "\n")
    channel.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": True, "result": handlers[request["cmd"]](**request.get("args", {}))}
        except Exception:  # noqa: BLE001 - the runner reports it and stops
            reply = {"ok": False, "error": traceback.format_exc()}
        channel.write(json.dumps(reply) + "\n")
        channel.flush()
