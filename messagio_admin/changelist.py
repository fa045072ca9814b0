"""The base of the admins of recorded tables: read-only, and sized for millions of rows."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from django.contrib import admin
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.db.models import F, OrderBy, QuerySet

from messagio_admin.paginator import LargeTablePaginator


class LargeTableChangeList(ChangeList):
    """A changelist that reads only the columns it shows and lets its admin annotate the
    page shown with one query per page. (Its date hierarchy is messagio_admin.hierarchy's,
    rendered by the ``change_list.html`` templates of messagio's models.)"""

    def get_filters(self, request: Any) -> Any:
        self.check_date_hierarchy_year()
        try:
            return super().get_filters(request)
        except DisallowedModelAdminLookup as exc:
            # A lookup none of the app's filters or links makes (see RecordAdmin's
            # lookup_allowed): the list without filters, as for an unknown field.
            raise IncorrectLookupParameters(exc) from exc

    def check_date_hierarchy_year(self) -> None:
        """Refuse a period Django cannot compute (the list without filters, as for any bad
        lookup): it makes a date of the year, month and day given and adds a year, a month
        or a day to it; a month of 99999999999999999999 or the year 9999 (none after it)
        raised an OverflowError or ValueError it does not catch (a 500), as did the years 1
        and 9999, whose periods start or end out of range. Parts that are no number are
        Django's to refuse."""
        if not self.date_hierarchy:
            return
        parts = [self.params.get(f"{self.date_hierarchy}__{k}") for k in ("year", "month", "day")]
        if parts[0] is None:
            return
        try:
            year, month, day = (int(part) if part is not None else 1 for part in parts)
        except ValueError:
            return
        try:
            datetime.date(year, month, day)
        except (ValueError, OverflowError) as exc:
            raise IncorrectLookupParameters(f"no such date: {exc}") from exc
        if not datetime.MINYEAR < year < datetime.MAXYEAR:  # a period that ends, or starts, in it
            raise IncorrectLookupParameters(f"year out of range: {year}")

    def get_ordering_field(self, field_name: Any) -> Any:
        # Django hides the other columns' sort links but still sorts by any of them given
        # in ?o=: a full sort of millions of rows. Only what the admin lists as sortable.
        sortable = self.model_admin.sortable_by
        if sortable is not None and field_name not in sortable:
            return None
        return super().get_ordering_field(field_name)

    def order_of(self, name: str, *, descending: bool) -> Any:
        """How to order by the column ``name``: with its NULLs where the admin's ordering
        puts them (``F("started_at").desc(nulls_last=True)``), so that a sort by its header
        or the date hierarchy's ends read the same index; else as Django does."""
        for item in self.model_admin.ordering or ():
            if (
                isinstance(item, OrderBy)
                and isinstance(item.expression, F)
                and item.expression.name == name
                and (item.nulls_first or item.nulls_last)
            ):
                order = item.copy()
                if order.descending != descending:
                    order.reverse_ordering()
                return order
        return f"-{name}" if descending else name

    def get_ordering(self, request: Any, queryset: QuerySet) -> list[Any]:
        ordering = super().get_ordering(request, queryset)
        return [
            self.order_of(item.removeprefix("-"), descending=item.startswith("-"))
            if isinstance(item, str)
            else item
            for item in ordering
        ]

    def get_queryset(self, request: Any, exclude_parameters: Any = None) -> QuerySet:
        queryset = super().get_queryset(request, exclude_parameters)
        if self.model_admin.list_defer:
            queryset = queryset.defer(*self.model_admin.list_defer)
        return queryset

    def get_results(self, request: Any) -> None:
        super().get_results(request)
        # The page shown, when the one asked for was past the last (see the paginator's page).
        self.page_num = min(self.page_num, self.paginator.num_pages)
        self.result_list: Any = list(self.result_list)
        self.model_admin.annotate_page(request, self.result_list)

    @property
    def selection_notes(self) -> list[str]:
        """What the filters chosen say the list leaves out (``selection_note()``)."""
        notes = (getattr(spec, "selection_note", lambda: "")() for spec in self.filter_specs)
        return [note for note in notes if note]


class RecordAdmin(admin.ModelAdmin):
    """Records are read-only: no add, no change (viewing stays), delete one at a time with
    its permission (retention deletes in bulk: Django's "delete selected" over a million
    rows would build its confirmation page from all of them).

    No full ``COUNT(*)``: the paginator estimates or caps the count, and filters show no
    facet counts.
    """

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = LargeTablePaginator
    list_per_page = 50
    #: Columns not read for the changelist (big text the list does not show).
    list_defer: Sequence[str] = ()
    #: Query-string lookups the changelist takes besides those of its filters and its date
    #: hierarchy: the ones messagio_admin's own links build (see :meth:`lookup_allowed`).
    linked_lookups: Sequence[str] = ()

    class Media:
        css = {"all": ["messagio_admin/messagio_admin.css"]}

    def get_changelist(self, request: Any, **kwargs: Any) -> type[ChangeList]:
        return LargeTableChangeList

    def get_paginator(
        self,
        request: Any,
        queryset: Any,
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> Any:
        """The paginator, told the page asked for (read as the changelist reads it): its
        capped count reaches a few pages past that one."""
        paginator = super().get_paginator(
            request, queryset, per_page, orphans, allow_empty_first_page
        )
        try:
            page = int(request.GET.get(PAGE_VAR, 1))
        except ValueError:
            page = 1
        paginator.page_asked = max(page, 1)
        return paginator

    def lookup_allowed(self, lookup: str, value: Any, request: Any = None) -> bool:
        """Only the lookups of the list's filters, of its date hierarchy and of the app's
        own links. Django takes any field's from the query string: ``?payload=x`` failed
        with a 500, ``?traceback__icontains=...`` read the whole table."""
        return lookup in self.allowed_lookups(request)

    def allowed_lookups(self, request: Any) -> set[str]:
        """The query-string lookups :meth:`lookup_allowed` accepts."""
        allowed = set(self.linked_lookups)
        for item in self.get_list_filter(request):
            if isinstance(item, type) and issubclass(item, admin.SimpleListFilter):
                list_filter: Any = item
                allowed.add(list_filter.parameter_name)
            else:
                # A field name: the filter Django makes for a field with choices (every one
                # listed here) takes these two.
                name = item[0] if isinstance(item, (list, tuple)) else item
                allowed |= {f"{name}__exact", f"{name}__isnull"}
        if self.date_hierarchy:
            # As the hierarchy's links make them: a month within a year, a day within a
            # month. Django bounds a year's period by an index range; a month or a day
            # without it, it filters by EXTRACT(...) of every row.
            year, month, day = (f"{self.date_hierarchy}__{k}" for k in ("year", "month", "day"))
            given = request.GET if request is not None else {}
            allowed.add(year)
            if year in given:
                allowed.add(month)
                if month in given:
                    allowed.add(day)
        return allowed

    def annotate_page(self, request: Any, objects: list[Any]) -> None:
        """Attach what the list shows to the page's objects, in one query for the page."""

    def get_actions(self, request: Any) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False
