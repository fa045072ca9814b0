"""Side A, messagio (this repository): the messagios the bench fires and their listeners.

Imported by A's driver and, when a payload is unpickled, by A's worker (``celery -A project``
started in the repository root), which finds the listeners by their import paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import probe
from messagio import Messagio, listen_to_message


@dataclass
class BenchFired(Messagio):
    """A small event: the probe key its listeners report to, and when it was fired."""

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


#: The messagio type with each number of listeners.
TYPES: dict[int, type[BenchFired]] = {1: Fired1, 4: Fired4, 16: Fired16}

LISTENERS = probe.make_listeners(__name__)
globals().update({listener.__name__: listener for listener in LISTENERS})
for _index, _listener in enumerate(LISTENERS):
    listen_to_message(*[t for n, t in TYPES.items() if _index < n])(_listener)
