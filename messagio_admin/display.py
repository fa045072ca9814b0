"""How records are shown: badges, short names, durations, summaries. All output is escaped:
payload summaries, results and errors are untrusted text."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from messagio.models import Delivery, Event
from messagio_admin.queries import EventCounts, waiting_for_worker

#: CSS class of each delivery status badge (colours in messagio_admin.css).
STATUS_CLASSES: dict[str, str] = {
    "succeeded": "ok",
    "failed": "failed",
    "pending": "flight",
    "running": "flight",
    "retrying": "flight",
}


def short_name(dotted: str) -> str:
    """``"shop.events.OrderPlaced"`` -> ``"OrderPlaced"`` (also after a ``module:`` path)."""
    return dotted.rsplit(".", 1)[-1].rsplit(":", 1)[-1]


def short_type(dotted: str) -> SafeString:
    """The last part of a dotted path, with the whole path on hover."""
    return format_html('<span title="{}">{}</span>', dotted, short_name(dotted))


def dotted(path: str) -> SafeString:
    """A dotted path that may wrap after each dot (``<wbr>``), and anywhere if it must."""
    parts = format_html_join(SafeString(".<wbr>"), "{}", ((part,) for part in path.split(".")))
    return format_html('<span class="messagio-dotted">{}</span>', parts)


def badge(text: str, css: str) -> SafeString:
    return format_html('<span class="messagio-badge messagio-{}">{}</span>', css, text)


def status_badge(status: str) -> SafeString:
    label = Delivery.Status(status).label if status in Delivery.Status.values else status
    return badge(str(label), STATUS_CLASSES.get(status, "muted"))


def event_badge(event: Event, counts: EventCounts) -> SafeString:
    """``"3/4 ok, 1 failed"``: how an event's deliveries stand.

    A published event's listeners whose Delivery rows no worker has written yet count too,
    as ``"N waiting for a worker"`` (see :func:`messagio_admin.queries.waiting_for_worker`).
    """
    if event.state in (Event.State.RECORDED, Event.State.PUBLISHING) and not counts.failed:
        return badge(_("not published yet"), "flight")
    waiting = waiting_for_worker(event, counts.total)
    total = counts.total + waiting
    if not total:
        if event.listener_count:
            return badge(_("no delivery recorded"), "muted")
        return badge(_("no listeners"), "muted")
    parts = [_("%(ok)d/%(total)d ok") % {"ok": counts.succeeded, "total": total}]
    if counts.failed:
        parts.append(_("%(count)d failed") % {"count": counts.failed})
    if counts.in_flight:
        parts.append(_("%(count)d in flight") % {"count": counts.in_flight})
    if waiting:
        parts.append(_("%(count)d waiting for a worker") % {"count": waiting})
    css = "failed" if counts.failed else "flight" if counts.in_flight or waiting else "ok"
    return badge(", ".join(parts), css)


def duration(ms: float | None) -> str:
    if ms is None:
        return "–"
    if ms < 1000:
        return _("%(ms).1f ms") % {"ms": ms}
    return _("%(s).2f s") % {"s": ms / 1000}


def percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"


def summary_table(summary: Any) -> SafeString:
    """The payload summary as a two-column table, every key and value escaped."""
    if not isinstance(summary, dict) or not summary:
        return format_html('<span class="quiet">{}</span>', _("(empty)"))
    rows = format_html_join(
        "",
        '<tr><th scope="row">{}</th><td><code>{}</code></td></tr>',
        ((key, _text(value)) for key, value in summary.items()),
    )
    return format_html('<table class="messagio-summary">{}</table>', rows)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def summary_preview(summary: Any, limit: int = 80) -> str:
    """``key=value, key=value`` cut to ``limit`` characters (escaped where shown)."""
    if not isinstance(summary, dict):
        return ""
    text = ", ".join(f"{key}={value}" for key, value in summary.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def admin_url(viewname: str, *args: Any) -> str | None:
    try:
        return reverse(viewname, args=args)
    except NoReverseMatch:
        return None


def can_see_task_results(user: Any) -> bool:
    """Whether to link tasks to their django-celery-results page: the user may view them,
    and the page exists (the app's admin may be unregistered)."""
    return user.has_perm("django_celery_results.view_taskresult") and bool(
        admin_url("admin:django_celery_results_taskresult_changelist")
    )


def task_results(task_ids: Iterable[str]) -> dict[str, int]:
    """``{task id: TaskResult pk}`` for the ids that have a django-celery-results row."""
    ids = {task_id for task_id in task_ids if task_id}
    if not ids or not apps.is_installed("django_celery_results"):
        return {}
    from django_celery_results.models import TaskResult

    return dict(TaskResult.objects.filter(task_id__in=ids).values_list("task_id", "pk"))


def traceback_details(traceback: str) -> SafeString:
    if not traceback:
        return format_html("{}", "")
    return format_html(
        '<details class="messagio-traceback"><summary>{}</summary><pre>{}</pre></details>',
        _("Traceback"),
        traceback,
    )
