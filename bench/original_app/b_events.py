"""Side B, messagio 0.7: the same messagios and listeners as A's (bench/a_events.py)."""

from dataclasses import dataclass

import probe

from messagio import Messagio, listen_to_message  # 0.7, from bench/.venv-0.7

if Messagio.__module__ != "messagio.const":
    raise ImportError("side B must import messagio 0.7, not this repository's package")


@dataclass
class BenchFired(Messagio):
    key: str
    sent_at: float = 0.0
    seq: int = 0


@dataclass
class Fired1(BenchFired):
    """One listener."""


@dataclass
class Fired4(BenchFired):
    """Four listeners of equal priority."""


@dataclass
class Fired16(BenchFired):
    """Sixteen listeners of equal priority."""


TYPES = {1: Fired1, 4: Fired4, 16: Fired16}

LISTENERS = probe.make_listeners(__name__)
globals().update({listener.__name__: listener for listener in LISTENERS})
for _index, _listener in enumerate(LISTENERS):
    listen_to_message(*[t for n, t in TYPES.items() if _index < n])(_listener)
