"""Record ids that sort by time (UUID version 7, RFC 9562).

Events and Deliveries are written in the order they are fired. With random (version 4) ids,
each insert lands on a random page of the primary key's index, and of every index led by
``event_id``: once those indexes outgrow the database's cache, every fire reads pages from
disk. Ids that begin with the time land next to the ones written just before.
"""

from __future__ import annotations

import os
import time
import uuid

_VERSION = 0x7 << 76
_VARIANT = 0x2 << 62
_VERSION_AND_VARIANT_BITS = (0xF << 76) | (0x3 << 62)


def time_ordered_uuid() -> uuid.UUID:
    """A version 7 UUID: 48 bits of Unix time in milliseconds, then 74 random bits."""
    milliseconds = time.time_ns() // 1_000_000
    value = (milliseconds & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    return uuid.UUID(int=(value & ~_VERSION_AND_VARIANT_BITS) | _VERSION | _VARIANT)
