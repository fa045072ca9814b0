"""A JSON-safe, size-capped view of a messagio's fields, for display and search.

The admin shows this and never unpickles a payload.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import math
import uuid
from typing import Any

#: Longest text kept for one field, and for the whole summary (in characters of JSON-ish text).
FIELD_LIMIT = 500
TOTAL_LIMIT = 8000


def _cap(text: str, limit: int = FIELD_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _model_label(value: Any) -> str | None:
    if isinstance(value, type):
        return None  # a model class, not an instance
    meta = getattr(value, "_meta", None)
    if meta is None or not hasattr(meta, "label") or not hasattr(value, "pk"):
        return None
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break a fire
        text = "?"
    return f'{meta.label}(pk={value.pk!r}) "{_cap(text, 120)}"'


def describe(value: Any) -> Any:
    """A JSON-safe rendering of one field value."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN or Infinity
    if isinstance(value, str):
        return _cap(value)
    if isinstance(value, (decimal.Decimal, uuid.UUID, datetime.date, datetime.time)):
        return str(value)
    label = _model_label(value)
    if label is not None:
        return label
    try:
        return _cap(repr(value))
    except Exception:  # noqa: BLE001
        return f"<{type(value).__name__}>"


def fields_of(messagio: Any) -> dict[str, Any]:
    """Dataclass fields in declaration order, else ``__dict__``."""
    if dataclasses.is_dataclass(messagio) and not isinstance(messagio, type):
        return {f.name: getattr(messagio, f.name, None) for f in dataclasses.fields(messagio)}
    return dict(getattr(messagio, "__dict__", None) or {})


def summarize(messagio: Any) -> dict[str, Any]:
    """``{"field": json-safe value, ...}``, capped; ``{"repr": ...}`` when there are no fields."""
    fields = fields_of(messagio)
    if not fields:
        return {"repr": describe(messagio)}
    summary: dict[str, Any] = {}
    used = 0
    for name, value in fields.items():
        rendered = describe(value)
        used += len(str(rendered)) + len(name)
        if used > TOTAL_LIMIT:
            summary["…"] = f"{len(fields) - len(summary)} more field(s) not shown"
            break
        summary[str(name)] = rendered
    return summary
