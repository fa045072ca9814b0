"""Counting large tables without counting them: an estimated or capped count for changelists.

A ``COUNT(*)`` over millions of rows takes seconds on PostgreSQL, and the admin asks for one
on every changelist page. An unfiltered changelist gets the planner's estimate of the table
size instead; a filtered one counts at most :data:`COUNT_CAP` rows, or a few pages past the
page asked for when that is further, and says "more than": there is always a next page to
go to, and the count costs no more than reading the page itself (its OFFSET).
"""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils import formats
from django.utils.functional import cached_property

#: Filtered changelists count at most this many rows (one more, to know there are more)...
COUNT_CAP = 1000
#: ... or as many as fill this many pages past the page asked for, when that is more.
PAGES_AHEAD = 4
#: The deepest page a filtered count reaches for (500,000 rows at 50 a page): a page asked
#: for past it is "invalid", as Django has it, not a count of the whole selection.
DEEPEST_PAGE = 10_000


def estimated_row_count(queryset: QuerySet) -> int | None:
    """PostgreSQL's estimate of the number of rows of the queryset's table, if it has one.

    ``reltuples`` is kept up to date by autovacuum / ANALYZE; it is -1 (PostgreSQL 14+) or 0
    for a table never analyzed, and then there is no estimate.
    """
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
            [connection.ops.quote_name(queryset.model._meta.db_table)],
        )
        row = cursor.fetchone()
    if not row or row[0] is None or row[0] <= 0:
        return None
    return int(row[0])


def count_at_most(queryset: QuerySet, cap: int) -> int:
    """How many rows ``queryset`` selects, counting no further than ``cap + 1``: more than
    ``cap`` means "more than ``cap``", at the cost of reading ``cap + 1`` index entries."""
    return queryset.order_by()[: cap + 1].count()


def is_unfiltered(queryset: QuerySet) -> bool:
    """Whether the queryset selects every row of its table (ordering aside)."""
    query = queryset.query
    return not query.where and not query.distinct and not query.is_sliced


class LargeTablePaginator(Paginator):
    """A paginator whose ``count`` never scans a big table.

    ``count_is_estimate``: the count is PostgreSQL's estimate of an unfiltered table;
    ``count_is_capped``: a filtered selection has more than :attr:`count_limit` rows and
    only the first ``count_limit + 1`` were counted.
    """

    count_is_estimate = False
    count_is_capped = False
    cap = COUNT_CAP
    #: The page the changelist asked for (``ModelAdmin.get_paginator`` sets it): a filtered
    #: count reaches :data:`PAGES_AHEAD` pages past it.
    page_asked = 1

    @property
    def count_limit(self) -> int:
        """How many rows a filtered selection is counted up to: the cap, or up to
        :data:`PAGES_AHEAD` pages past the page asked for. Counted to the cap only, a
        selection of more rows had no page past the cap's: asked for, it was "invalid", and
        the admin went back to the list without its filters."""
        return max(self.cap, (min(self.page_asked, DEEPEST_PAGE) + PAGES_AHEAD) * self.per_page)

    @cached_property
    def count(self) -> int:
        object_list: Any = self.object_list
        if not isinstance(object_list, QuerySet):
            return len(object_list)
        if is_unfiltered(object_list):
            estimate = estimated_row_count(object_list)
            if estimate is not None and estimate > self.cap:
                self.count_is_estimate = True
                return estimate
        limit = self.count_limit
        counted = count_at_most(object_list, limit)
        if counted > limit:
            self.count_is_capped = True
        return counted

    def page(self, number: Any) -> Any:
        """Django's page; a few pages past the last page of an exactly counted selection,
        its last page. A link kept from when the list was longer (its failures replayed
        since) was "invalid", and the admin went back to the list without its filters.
        Further (a count that is an estimate or capped, or a page far past the end) is
        Django's "invalid" still: no OFFSET reaches the end of a big table."""
        exact = not (self.count_is_estimate or self.count_is_capped)
        if (
            isinstance(number, int)
            and exact
            and self.num_pages < number <= self.num_pages + PAGES_AHEAD
        ):
            number = self.num_pages
        return super().page(number)

    @property
    def count_display(self) -> str:
        """The count with thousands separators, e.g. "1,000,000"."""
        return formats.number_format(self.count, force_grouping=True)

    @property
    def count_limit_display(self) -> str:
        """What a capped count is "more than", with thousands separators."""
        return formats.number_format(self.count_limit, force_grouping=True)

    def get_elided_page_range(
        self, number: Any = 1, *, on_each_side: int = 3, on_ends: int = 2
    ) -> list[Any]:
        """Django's page links; under an estimated count, none past the cap's last page
        (or the current one): a deep page of a huge table costs an OFFSET scan of it. Under
        a capped count, an ellipsis after the last page counted: it is not the last page."""
        pages = list(
            super().get_elided_page_range(number, on_each_side=on_each_side, on_ends=on_ends)
        )
        if self.count_is_capped:
            return [*pages, self.ELLIPSIS]
        if not self.count_is_estimate:
            return pages
        last = max(int(number), self.cap // self.per_page)
        shown = [page for page in pages if page == self.ELLIPSIS or page <= last]
        while shown and shown[-1] == self.ELLIPSIS:
            shown.pop()
        return [*shown, self.ELLIPSIS] if shown[-1] < self.num_pages else shown
