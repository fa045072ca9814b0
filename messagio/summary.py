"""A JSON-safe, size-capped view of a messagio's fields, for display and search.

The admin shows this and never unpickles a payload.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import math
import reprlib
import uuid
from typing import Any

#: Longest text kept for one field, and for the whole summary (in characters of JSON-ish text).
FIELD_LIMIT = 500
TOTAL_LIMIT = 8000


def storable(text: str) -> str:
    """``text`` as PostgreSQL stores it, in text and jsonb columns: no NUL character, no lone
    surrogate (either makes the write fail: a fire's record, a listener's outcome)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _cap(text: str, limit: int = FIELD_LIMIT) -> str:
    return storable(text if len(text) <= limit else text[: limit - 1] + "…")


def _model_label(value: Any, with_text: bool = True) -> str | None:
    if isinstance(value, type):
        return None  # a model class, not an instance
    meta = getattr(value, "_meta", None)
    if meta is None or not hasattr(meta, "label") or not hasattr(value, "pk"):
        return None
    label = f"{meta.label}(pk={value.pk!r})"
    if not with_text:
        return label
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break a fire
        text = "?"
    return f'{label} "{_cap(text, 120)}"'


class _BoundedRepr(reprlib.Repr):
    """``repr`` that stops early: a list of a thousand long strings is not rendered whole
    to be cut afterwards, and model instances inside a container are shown by label and
    pk (their ``__str__`` may query the database)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxdeque = 50
        self.maxdict = self.maxset = self.maxfrozenset = 50
        self.maxstring = self.maxother = FIELD_LIMIT
        self.maxlong = 60

    def repr1(self, x: Any, level: int) -> str:
        # reprlib picks its method by the type's name: subclasses and bytes would otherwise
        # be rendered whole by repr() and cut afterwards.
        if isinstance(x, (bytes, bytearray)):
            return repr(x[: self.maxstring]) + ("…" if len(x) > self.maxstring else "")
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            if level <= 0:
                return f"{type(x).__name__}(...)"
            shown = [
                f"{f.name}={self.repr1(getattr(x, f.name, None), level - 1)}"
                for f in dataclasses.fields(x)[: self.maxlist]
            ]
            return f"{type(x).__name__}({', '.join(shown)})"
        methods: tuple[tuple[type, Any], ...] = (
            (dict, self.repr_dict),
            (list, self.repr_list),
            (tuple, self.repr_tuple),
            (set, self.repr_set),
            (frozenset, self.repr_frozenset),
        )
        for base, method in methods:
            if isinstance(x, base) and type(x) is not base:
                return f"{type(x).__name__}({method(x, level)})"
        return super().repr1(x, level)

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than Python will convert
            return f"<int of {x.bit_length()} bits>"

    def repr_instance(self, x: Any, level: int) -> str:
        label = _model_label(x, with_text=False)
        if label is not None:
            return label
        try:
            text = repr(x)
        except Exception:  # noqa: BLE001 - shown by its type's name
            return f"<{type(x).__name__}>"
        return _cap(text, self.maxother)


_bounded_repr = _BoundedRepr().repr


def describe(value: Any) -> Any:
    """A JSON-safe rendering of one field value; never raises."""
    try:
        return _describe(value)
    except Exception:  # noqa: BLE001 - a field that cannot be shown must not break a fire
        return f"<{type(value).__name__}>"


def _describe(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Beyond what JSON readers hold exactly (and what Python turns into digits): text.
        return value if abs(value) < 2**53 else _cap(_bounded_repr(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN or Infinity
    if isinstance(value, str):
        return _cap(value)
    if isinstance(value, (decimal.Decimal, uuid.UUID, datetime.date, datetime.time)):
        return _cap(str(value))
    label = _model_label(value)
    if label is not None:
        return label
    return _cap(_bounded_repr(value))


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
        summary[_cap(str(name), 120)] = rendered
    return summary
