"""Seals on task messages: a worker acts only on what messagio itself published.

Workers accept JSON, so decoding a message runs no code; but a message's contents name
listeners to import and call, deliveries to write and replays to run. Every messagio task
message carries an HMAC of its contents, keyed like payloads (``SIGNING_KEY`` or
``SECRET_KEY``, with their fallbacks) under a salt of its own, and a worker drops a message
whose seal does not match before it writes or imports anything.

A group's envelope has two: one over everything but the payload (the frame: which
deliveries, which listeners) and one over the whole. A message whose frame is messagio's but
whose payload is not (altered, or taken from another message) fails its deliveries with
"payload signature mismatch", unread.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Literal

#: The envelope key that holds the seals: ``"<frame>:<whole>"``, hex HMAC-SHA256.
SEAL = "seal"
_SALT = "messagio.task"


def _canonical(value: Any) -> bytes:
    # The same bytes before and after a JSON (or pickle) trip through the broker.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes, key: str | bytes) -> str:
    from django.utils.crypto import salted_hmac

    return salted_hmac(_SALT, data, secret=key, algorithm="sha256").hexdigest()


def _matches(data: bytes, seal: Any) -> bool:
    from messagio.payload import signing_keys

    if not isinstance(seal, str):
        return False
    return any(hmac.compare_digest(seal, _digest(data, key)) for key in signing_keys())


def seal_of(value: Any) -> str:
    """The seal of JSON-able ``value`` (a task's arguments)."""
    from messagio.payload import signing_keys

    return _digest(_canonical(value), signing_keys()[0])


def is_sealed(value: Any, seal: Any) -> bool:
    """Whether ``seal`` is :func:`seal_of` ``value`` under the signing key or a fallback."""
    return _matches(_canonical(value), seal)


def _parts(envelope: dict[str, Any]) -> tuple[bytes, bytes]:
    frame = {k: v for k, v in envelope.items() if k not in (SEAL, "payload")}
    framed = _canonical(frame)
    return framed, framed + b"\0" + str(envelope.get("payload")).encode()


def sealed(envelope: dict[str, Any]) -> dict[str, Any]:
    """A copy of a group's ``envelope`` with its seals."""
    from messagio.payload import signing_keys

    key = signing_keys()[0]
    frame, whole = _parts(envelope)
    return {**envelope, SEAL: f"{_digest(frame, key)}:{_digest(whole, key)}"}


def check(envelope: dict[str, Any]) -> Literal["sealed", "payload", "forged"]:
    """``sealed``: all of it is messagio's; ``payload``: its frame is, its payload is not;
    ``forged``: its frame is not (or it has no seal)."""
    if not isinstance(envelope, dict):
        return "forged"
    seals = envelope.get(SEAL)
    if not isinstance(seals, str) or seals.count(":") != 1:
        return "forged"
    frame_seal, whole_seal = seals.split(":")
    frame, whole = _parts(envelope)
    if not _matches(frame, frame_seal):
        return "forged"
    return "sealed" if _matches(whole, whole_seal) else "payload"
