"""The 24-hour overview: an events-per-hour chart as server-rendered SVG, no JavaScript."""

from __future__ import annotations

from dataclasses import dataclass

from django.utils import formats
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from messagio_admin.queries import Overview

#: Size of the chart's drawing area, in SVG units (it scales to the page's width).
WIDTH, HEIGHT, LABELS = 720, 120, 16
BAR_GAP = 2


@dataclass
class Bar:
    x: float
    width: float
    y: float
    height: float
    failed_y: float
    failed_height: float
    title: str
    label: str


@dataclass
class Chart:
    width: int
    height: int
    total_height: int
    bars: list[Bar]
    peak: int


def chart(overview: Overview) -> Chart:
    """Bars of events per hour, the failed deliveries of each hour drawn over them."""
    hours = overview.hours
    peak = max([bar.events for bar in hours] + [bar.failed for bar in hours] + [1])
    slot = WIDTH / max(len(hours), 1)
    bars = []
    for index, hour in enumerate(hours):
        height = HEIGHT * hour.events / peak
        failed_height = HEIGHT * min(hour.failed, peak) / peak
        title = _("%(hour)s: %(events)s, %(failed)s") % {
            "hour": formats.date_format(hour.hour, "DATETIME_FORMAT"),
            "events": ngettext("%(n)d event", "%(n)d events", hour.events) % {"n": hour.events},
            "failed": ngettext("%(n)d failed delivery", "%(n)d failed deliveries", hour.failed)
            % {"n": hour.failed},
        }
        bars.append(
            Bar(
                x=round(index * slot + BAR_GAP / 2, 1),
                width=round(slot - BAR_GAP, 1),
                y=round(HEIGHT - height, 1),
                height=round(height, 1),
                failed_y=round(HEIGHT - failed_height, 1),
                failed_height=round(failed_height, 1),
                title=title,
                label=hour.hour.strftime("%H:00") if index % 4 == 0 else "",
            )
        )
    return Chart(width=WIDTH, height=HEIGHT, total_height=HEIGHT + LABELS, bars=bars, peak=peak)
