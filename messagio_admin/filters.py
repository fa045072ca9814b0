"""Changelist filters whose choices cost an index walk, never a DISTINCT over a big table."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

from messagio.models import Delivery, Event
from messagio_admin import queries
from messagio_admin.display import short_name

#: Failed deliveries read to list the error classes of the error filter.
RECENT_FAILURES = 1000


class _ValuesFilter(admin.SimpleListFilter):
    """Filter on one column's value; the choices are the values found, plus the chosen one."""

    field_name = ""

    def values(self, request: Any, model_admin: Any) -> list[str]:
        raise NotImplementedError

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        values = set(self.values(request, model_admin))
        if self.value():
            values.add(self.value())
        return [(value, short_name(value)) for value in sorted(values, key=short_name)]

    def queryset(self, request: Any, queryset: QuerySet) -> QuerySet | None:
        if self.value() is None:
            return None
        return queryset.filter(**{self.field_name: self.value()})


class EventTypeFilter(_ValuesFilter):
    title = _("messagio type")
    parameter_name = "messagio_type"
    field_name = "messagio_type"

    def values(self, request: Any, model_admin: Any) -> list[str]:
        return queries.distinct_values(Event, "messagio_type")


class EventStatusFilter(admin.SimpleListFilter):
    """How an event's deliveries went."""

    title = _("status")
    parameter_name = "status"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("failed", _("has failures")),
            ("ok", _("all ok")),
            ("in_flight", _("in flight")),
            ("waiting", _("waiting for a worker")),
            ("unpublished", _("never published")),
        ]

    def queryset(self, request: Any, queryset: QuerySet) -> QuerySet | None:
        selections = {
            "failed": queries.with_failures,
            "ok": queries.all_ok,
            "in_flight": queries.in_flight,
            "waiting": queries.waiting_for_a_worker,
            "unpublished": queries.never_published,
        }
        selection = selections.get(self.value() or "")
        return selection(queryset) if selection else None


class DeliveryTypeFilter(_ValuesFilter):
    title = _("messagio type")
    parameter_name = "messagio_type"
    field_name = "messagio_type"

    def values(self, request: Any, model_admin: Any) -> list[str]:
        return queries.distinct_values(Delivery, "messagio_type")


class ListenerFilter(_ValuesFilter):
    title = _("listener")
    parameter_name = "listener"
    field_name = "listener"

    def values(self, request: Any, model_admin: Any) -> list[str]:
        return queries.distinct_values(Delivery, "listener")


class ErrorClassFilter(_ValuesFilter):
    """Error classes of the most recent failures (no index leads with ``error_type``)."""

    title = _("error class")
    parameter_name = "error_type"
    field_name = "error_type"

    def values(self, request: Any, model_admin: Any) -> list[str]:
        recent = (
            Delivery.objects.failed()
            .exclude(error_type="")
            .order_by("-started_at")
            .values_list("error_type", flat=True)[:RECENT_FAILURES]
        )
        return list(set(recent))
