"""A date hierarchy that costs one statement, never a scan of the table.

Django's date hierarchy finds the first and last date with ``MIN``/``MAX`` over the filtered
selection, then lists the years, months or days that have rows with
``SELECT DISTINCT date_trunc(...)``: over millions of rows, seconds. Here the periods listed
are every period between a first and a last date, read in one statement (:func:`bounds`):

- a selection the changelist counted exactly, at most ``COUNT_CAP`` rows: its own dates (the
  rows the count found, read again);
- a larger one: the first and the last date of the whole table within the chosen year or
  month, each an ``ORDER BY date LIMIT 1`` at one end of the date index. Not the selection's:
  PostgreSQL would walk the index from that end to the first row the filters keep, through
  the whole table when they keep only recent rows (the "in flight" filter: 11 s at 1,000,000
  events).

The price: a period without any row of the selection can be listed, and shows an empty list
when chosen. During a search, whose text filter no index serves, no hierarchy is shown at all.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.db.models import Subquery
from django.utils import formats, timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

from messagio_admin.paginator import COUNT_CAP

_KINDS = ("year", "month", "day")


def _truncate(value: datetime.datetime, kind: str) -> datetime.datetime:
    if kind == "year":
        return value.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if kind == "month":
        return value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def _next(value: datetime.datetime, kind: str) -> datetime.datetime:
    if kind == "year":
        return value.replace(year=value.year + 1)
    if kind == "month":
        if value.month == 12:
            return value.replace(year=value.year + 1, month=1)
        return value.replace(month=value.month + 1)
    return value + datetime.timedelta(days=1)


def in_current_zone(value: datetime.datetime) -> datetime.datetime:
    """``value`` in the current time zone; without USE_TZ it is local already (naive)."""
    return timezone.localtime(value) if timezone.is_aware(value) else value


def periods_between(
    first: datetime.datetime, last: datetime.datetime, kind: str
) -> list[datetime.datetime]:
    """Every ``kind`` (year, month or day) from the one holding ``first`` to ``last``'s, in
    the current time zone."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}, not {kind!r}")
    first, last = in_current_zone(first), in_current_zone(last)
    current = _truncate(first, kind).replace(tzinfo=None)
    end = _truncate(last, kind).replace(tzinfo=None)
    periods = []
    while current <= end:
        periods.append(current)
        current = _next(current, kind)
    return periods


def _chosen_period(year: str, month: str | None) -> tuple[datetime.datetime, datetime.datetime]:
    """The start and the end of the year or month chosen, as the changelist filters them."""
    start = datetime.datetime(int(year), int(month or 1), 1)
    end = _next(start, "month" if month else "year")
    if settings.USE_TZ:
        start, end = timezone.make_aware(start), timezone.make_aware(end)
    return start, end


def bounds(cl: Any, year: str | None = None, month: str | None = None) -> tuple[Any, Any] | None:
    """The first and the last date to list periods between (see the module's docstring), or
    None when no row has one; ``year`` and ``month``: the period chosen."""
    field_name = cl.date_hierarchy
    paginator = getattr(cl, "paginator", None)
    counted = paginator is not None and not (
        getattr(paginator, "count_is_estimate", False)
        or getattr(paginator, "count_is_capped", False)
    )
    if counted and cl.result_count <= getattr(paginator, "cap", COUNT_CAP):
        dates = [
            value
            for value in cl.queryset.order_by().values_list(field_name, flat=True)
            if value is not None
        ]
        return (min(dates), max(dates)) if dates else None
    table = cl.root_queryset.order_by()
    if year:
        start, end = _chosen_period(year, month)
        table = table.filter(**{f"{field_name}__gte": start, f"{field_name}__lt": end})
    dates = table.filter(**{f"{field_name}__isnull": False}).values(field_name)
    # With the NULLs where the list's ordering (and its index) has them: PostgreSQL reads an
    # index for ORDER BY ... LIMIT 1 only in the NULLs order it was built in, even though
    # no row read here is NULL.
    order_of = getattr(cl, "order_of", None)
    first, last = (
        (order_of(field_name, descending=False), order_of(field_name, descending=True))
        if order_of
        else (field_name, f"-{field_name}")
    )
    # Both ends in one statement: two subqueries, in the one row of any row of the period
    # (none when the period has none).
    ends = list(
        table.annotate(
            first_date=Subquery(dates.order_by(first)[:1]),
            last_date=Subquery(dates.order_by(last)[:1]),
        ).values_list("first_date", "last_date")[:1]
    )
    # No row with a date at all (deliveries no worker has started): both ends are NULL.
    return ends[0] if ends and ends[0][0] is not None else None


def date_hierarchy(cl: Any) -> dict[str, Any]:
    """What Django's ``{% date_hierarchy %}`` shows, from :func:`bounds` and
    :func:`periods_between`: the same links, the same template."""
    field_name = cl.date_hierarchy
    if cl.query:
        return {"show": False}
    year_field, month_field, day_field = (f"{field_name}__{k}" for k in _KINDS)
    year_lookup = cl.params.get(year_field)
    month_lookup = cl.params.get(month_field)
    day_lookup = cl.params.get(day_field)

    def link(filters: dict[str, Any]) -> str:
        return cl.get_query_string(filters, [f"{field_name}__"])

    if year_lookup and month_lookup and day_lookup:
        day = datetime.date(int(year_lookup), int(month_lookup), int(day_lookup))
        return {
            "show": True,
            "back": {
                "link": link({year_field: year_lookup, month_field: month_lookup}),
                "title": capfirst(formats.date_format(day, "YEAR_MONTH_FORMAT")),
            },
            "choices": [{"title": capfirst(formats.date_format(day, "MONTH_DAY_FORMAT"))}],
        }
    found = bounds(cl, year_lookup, month_lookup)
    if found is None:
        return {"show": False}
    first, last = (in_current_zone(v) for v in found)
    if not year_lookup and first.year == last.year:
        year_lookup = str(first.year)
        if first.month == last.month:
            month_lookup = str(first.month)
    if year_lookup and month_lookup:
        return {
            "show": True,
            "back": {"link": link({year_field: year_lookup}), "title": str(year_lookup)},
            "choices": [
                {
                    "link": link(
                        {year_field: year_lookup, month_field: month_lookup, day_field: day.day}
                    ),
                    "title": capfirst(formats.date_format(day, "MONTH_DAY_FORMAT")),
                }
                for day in periods_between(first, last, "day")
            ],
        }
    if year_lookup:
        return {
            "show": True,
            "back": {"link": link({}), "title": _("All dates")},
            "choices": [
                {
                    "link": link({year_field: year_lookup, month_field: month.month}),
                    "title": capfirst(formats.date_format(month, "YEAR_MONTH_FORMAT")),
                }
                for month in periods_between(first, last, "month")
            ],
        }
    return {
        "show": True,
        "back": None,
        "choices": [
            {"link": link({year_field: str(year.year)}), "title": str(year.year)}
            for year in periods_between(first, last, "year")
        ],
    }
