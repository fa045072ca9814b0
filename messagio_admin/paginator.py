"""Counting large tables without counting them: an estimated or capped count for changelists.

A ``COUNT(*)`` over millions of rows takes seconds on PostgreSQL, and the admin asks for one
on every changelist page. An unfiltered changelist gets the planner's estimate of the table
size instead; a filtered one counts at most :data:`COUNT_CAP` rows and says "more than".
"""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils import formats
from django.utils.functional import cached_property

#: Filtered changelists count at most this many rows (one more, to know there are more).
COUNT_CAP = 1000


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
    ``count_is_capped``: a filtered selection has more than :data:`COUNT_CAP` rows and only
    the first ``COUNT_CAP + 1`` were counted.
    """

    count_is_estimate = False
    count_is_capped = False
    cap = COUNT_CAP

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
        counted = count_at_most(object_list, self.cap)
        if counted > self.cap:
            self.count_is_capped = True
        return counted

    @property
    def count_display(self) -> str:
        """The count with thousands separators, e.g. "1,000,000"."""
        return formats.number_format(self.count, force_grouping=True)

    @property
    def cap_display(self) -> str:
        return formats.number_format(self.cap, force_grouping=True)

    def get_elided_page_range(
        self, number: Any = 1, *, on_each_side: int = 3, on_ends: int = 2
    ) -> list[Any]:
        """Django's page links; under an estimated count, none past the cap's last page
        (or the current one): a deep page of a huge table costs an OFFSET scan of it."""
        pages = list(
            super().get_elided_page_range(number, on_each_side=on_each_side, on_ends=on_ends)
        )
        if not self.count_is_estimate:
            return pages
        last = max(int(number), self.cap // self.per_page)
        shown = [page for page in pages if page == self.ELLIPSIS or page <= last]
        while shown and shown[-1] == self.ELLIPSIS:
            shown.pop()
        return [*shown, self.ELLIPSIS] if shown[-1] < self.num_pages else shown
