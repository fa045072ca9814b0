"""The date hierarchy's periods, listed from the first and the last date alone."""

import datetime

import pytest
from django.utils import timezone

from messagio_admin.hierarchy import periods_between

UTC = datetime.UTC


def at(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


def test_every_day_between_the_first_and_the_last_is_listed():
    days = periods_between(at(2024, 2, 27, 23), at(2024, 3, 2, 1), "day")

    assert [(d.month, d.day) for d in days] == [(2, 27), (2, 28), (2, 29), (3, 1), (3, 2)]


def test_every_month_between_the_first_and_the_last_is_listed_across_a_new_year():
    months = periods_between(at(2023, 11, 5), at(2024, 2, 1), "month")

    assert [(m.year, m.month) for m in months] == [(2023, 11), (2023, 12), (2024, 1), (2024, 2)]


def test_every_year_between_the_first_and_the_last_is_listed():
    years = periods_between(at(2021, 6, 1), at(2024, 1, 1), "year")

    assert [y.year for y in years] == [2021, 2022, 2023, 2024]


def test_periods_are_in_the_current_time_zone():
    with timezone.override("Asia/Tokyo"):
        days = periods_between(at(2024, 3, 10, 20), at(2024, 3, 10, 20), "day")

    assert [(d.month, d.day) for d in days] == [(3, 11)]


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        periods_between(at(2024, 1, 1), at(2024, 1, 2), "week")
