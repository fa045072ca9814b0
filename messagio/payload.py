"""Messagio payloads: pickled, size-checked and signed, so that only our own bytes are unpickled."""

from __future__ import annotations

import dataclasses
import hmac
import pickle
from typing import Any

from messagio.exceptions import PayloadError, PayloadSignatureError
from messagio.message import Messagio

#: Marks a signed payload and the version of its layout: MAGIC + HMAC-SHA256 + pickle.
MAGIC = b"mgo1"
_DIGEST_SIZE = 32
_SALT = "messagio.payload"


def _fields(messagio: Messagio) -> dict[str, Any]:
    if dataclasses.is_dataclass(messagio):
        return {f.name: getattr(messagio, f.name, None) for f in dataclasses.fields(messagio)}
    return dict(getattr(messagio, "__dict__", {}))


def _unpicklable_field(messagio: Messagio) -> tuple[str, Any, Exception] | None:
    for name, value in _fields(messagio).items():
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - any failure names the field
            return name, value, exc
    return None


def dumps(messagio: Messagio, max_bytes: int | None = None) -> bytes:
    """Pickle ``messagio`` or raise :class:`PayloadError` naming the class and the field."""
    name = type(messagio).get_name() if isinstance(messagio, Messagio) else repr(type(messagio))
    try:
        data = pickle.dumps(messagio, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        culprit = _unpicklable_field(messagio)
        if culprit:
            field, value, field_exc = culprit
            raise PayloadError(
                f"Cannot fire {name}: its field {field!r} holds a {type(value).__name__} that "
                f"cannot be pickled ({field_exc}). Messagios travel to workers as pickle: keep "
                "data in fields (ids, strings, numbers, model instances), not live objects such "
                "as lambdas, open files, locks or connections."
            ) from exc
        raise PayloadError(
            f"Cannot fire {name}: it cannot be pickled ({exc}). Messagios travel to workers as "
            "pickle: make the class importable at module level and keep its fields picklable."
        ) from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadError(
            f"Cannot fire {name}: its pickled payload is {len(data)} bytes, over "
            f"MESSAGIO['MAX_PAYLOAD_BYTES'] = {max_bytes}. Carry ids instead of large data, "
            "or raise the setting."
        )
    return data


def signing_keys() -> list[str | bytes]:
    """The key that signs (first) and every key still accepted when verifying."""
    from django.conf import settings

    from messagio.conf import get_setting

    key = get_setting("SIGNING_KEY")
    former = get_setting("SIGNING_KEY_FALLBACKS")
    if key:
        return [key, *former]
    # Back to SECRET_KEY from a SIGNING_KEY of its own: the former one is still accepted.
    return [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", []), *former]


def _digest(data: bytes, key: str | bytes) -> bytes:
    from django.utils.crypto import salted_hmac

    return salted_hmac(_SALT, data, secret=key, algorithm="sha256").digest()


def sign(data: bytes) -> bytes:
    """Prefix pickled ``data`` with its HMAC, keyed from the signing key or SECRET_KEY."""
    return MAGIC + _digest(data, signing_keys()[0]) + data


def unsign(blob: bytes) -> bytes:
    """Return the pickled data of a signed payload, or raise :class:`PayloadSignatureError`."""
    blob = bytes(blob)
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _DIGEST_SIZE:
        raise PayloadSignatureError(
            "payload signature mismatch: the payload is not signed by messagio; "
            "it was not unpickled"
        )
    digest = blob[len(MAGIC) : len(MAGIC) + _DIGEST_SIZE]
    data = blob[len(MAGIC) + _DIGEST_SIZE :]
    for key in signing_keys():
        if hmac.compare_digest(digest, _digest(data, key)):
            return data
    raise PayloadSignatureError(
        "payload signature mismatch: the payload was altered or signed with another key "
        "(check SECRET_KEY / MESSAGIO['SIGNING_KEY'] match between web and workers); "
        "it was not unpickled"
    )


def encode(messagio: Messagio, max_bytes: int | None = None) -> bytes:
    """Pickle and sign ``messagio``: the bytes that travel and are stored."""
    return sign(dumps(messagio, max_bytes))


def decode(blob: bytes) -> Messagio:
    """Verify and unpickle a payload made by :func:`encode`; never unpickles unsigned bytes."""
    return pickle.loads(unsign(blob))  # noqa: S301 - verified HMAC above
