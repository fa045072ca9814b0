"""What a value may be: each check returns what the value should take, or None when it is
fine. Settings (system check E003), replay options and prune arguments share them, so a bad
value is named the same way wherever it is given."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], "str | None"]


def _or_none(expected: str, none: str) -> str:
    return expected + (f" (None: {none})" if none else "")


def flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "True or False"


def whole(minimum: int, *, what: str = "a whole number", none: str = "") -> Check:
    """An int (not a bool) of ``minimum`` or more; None too when ``none`` says what it means."""

    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, bool) and isinstance(value, int) and value >= minimum:
            return None
        return _or_none(f"{what}, {minimum} or more", none)

    return check


def amount(
    what: str, *, zero: bool = False, least: float = 0, none: str = "", most: float = math.inf
) -> Check:
    """A finite number above 0 (``zero``: 0 or more; ``least``: that or more), at most
    ``most``; None too when ``none`` says what it means."""

    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if (
            not isinstance(value, bool)
            and isinstance(value, (int, float))
            and (least <= value if least or zero else 0 < value)
            and value < math.inf
            and value <= most
        ):
            return None
        bounds = f"{least:g} or more" if least or zero else "more than 0"
        if most < math.inf:
            shown = f"{int(most):,}" if float(most).is_integer() else f"{most:,g}"
            bounds += f", at most {shown}"
        return _or_none(f"{what}, {bounds}", none)

    return check


#: The longest span a number of days or seconds may give: a cut-off further back than this
#: would fall before year 1 (Python's dates), a grace that long means "never".
DAYS_AT_MOST = 36_500
SECONDS_AT_MOST = DAYS_AT_MOST * 86_400


def share(*, none: str = "") -> Check:
    """A number from 0 to 1."""

    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1:
            return None
        return _or_none("a share from 0 to 1, e.g. 0.2 for 20%", none)

    return check


def one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else " or ".join(map(repr, choices))


def text(*, none: str = "") -> Check:
    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if isinstance(value, (str, bytes)) and value:
            return None
        return _or_none("a non-empty string", none)

    return check


def require(check: Check, value: Any, name: str) -> None:
    """Raise ValueError naming ``name``, what it takes and the value, unless it passes."""
    expected = check(value)
    if expected:
        raise ValueError(f"{name} takes {expected}, not {value!r}")
