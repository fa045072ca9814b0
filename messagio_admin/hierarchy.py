"""A date hierarchy that costs two index lookups, not a scan of the table.

Django's date hierarchy finds the first and last date with ``MIN``/``MAX`` over the filtered
selection, then lists the years, months or days that have rows with
``SELECT DISTINCT date_trunc(...)``: over millions of rows, seconds. Here the first and the
last date are each one ``ORDER BY date LIMIT 1`` (PostgreSQL walks the date index from one
end and stops at the first row the filters keep; it does not do that for ``MIN``/``MAX`` once
a filter joins another table), and the periods listed are every period between them. The
price: a day without any row can be listed, and shows an empty list when chosen. During a
search, whose text filter no index serves, no hierarchy is shown at all.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.db.models import QuerySet
from django.utils import formats, timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

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


def periods_between(
    first: datetime.datetime, last: datetime.datetime, kind: str
) -> list[datetime.datetime]:
    """Every ``kind`` (year, month or day) from the one holding ``first`` to ``last``'s, in
    the current time zone."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}, not {kind!r}")
    if timezone.is_aware(first):
        first, last = timezone.localtime(first), timezone.localtime(last)
    current = _truncate(first, kind).replace(tzinfo=None)
    end = _truncate(last, kind).replace(tzinfo=None)
    periods = []
    while current <= end:
        periods.append(current)
        current = _next(current, kind)
    return periods


def span(queryset: QuerySet, field_name: str) -> tuple[Any, Any] | None:
    """The first and the last value of ``field_name`` in the selection, if it has any."""
    values = queryset.filter(**{f"{field_name}__isnull": False}).values_list(field_name, flat=True)
    first = values.order_by(field_name).first()
    if first is None:
        return None
    return first, values.order_by(f"-{field_name}").first()


def date_hierarchy(cl: Any) -> dict[str, Any]:
    """What Django's ``{% date_hierarchy %}`` shows, from :func:`span` and
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
    found = span(cl.queryset, field_name)
    if found is None:
        return {"show": False}
    first, last = (timezone.localtime(v) if timezone.is_aware(v) else v for v in found)
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
