"""The base of the admins of recorded tables: read-only, and sized for millions of rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet

from messagio_admin.paginator import LargeTablePaginator


class LargeTableChangeList(ChangeList):
    """A changelist that reads only the columns it shows and lets its admin annotate the
    page shown with one query per page. (Its date hierarchy is messagio_admin.hierarchy's,
    rendered by the ``change_list.html`` templates of messagio's models.)"""

    def get_ordering_field(self, field_name: Any) -> Any:
        # Django hides the other columns' sort links but still sorts by any of them given
        # in ?o=: a full sort of millions of rows. Only what the admin lists as sortable.
        sortable = self.model_admin.sortable_by
        if sortable is not None and field_name not in sortable:
            return None
        return super().get_ordering_field(field_name)

    def get_queryset(self, request: Any, exclude_parameters: Any = None) -> QuerySet:
        queryset = super().get_queryset(request, exclude_parameters)
        if self.model_admin.list_defer:
            queryset = queryset.defer(*self.model_admin.list_defer)
        return queryset

    def get_results(self, request: Any) -> None:
        super().get_results(request)
        self.result_list: Any = list(self.result_list)
        self.model_admin.annotate_page(request, self.result_list)


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

    class Media:
        css = {"all": ["messagio_admin/messagio_admin.css"]}

    def get_changelist(self, request: Any, **kwargs: Any) -> type[ChangeList]:
        return LargeTableChangeList

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
