"""Template tags of messagio's admin screens."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils.translation import gettext as _

from messagio_admin import display, hierarchy

register = template.Library()


@register.inclusion_tag("admin/messagio/includes/links.html", takes_context=True)
def messagio_admin_links(context: dict[str, Any]) -> dict[str, Any]:
    """Links to the messagio screens that are not a model's changelist, for the admin index."""
    request = context.get("request")
    user = getattr(request, "user", None)
    links = []
    if user is not None and user.is_active and user.is_staff:
        if user.has_perm("messagio.view_event"):
            links.append(
                (_("Events and overview"), reverse("admin:messagio_event_changelist"), "events")
            )
        if user.has_perm("messagio.view_delivery"):
            links.append((_("Failures"), reverse("admin:messagio_delivery_failures"), "failures"))
            links.append(
                (
                    _("Listener registry"),
                    reverse("admin:messagio_delivery_listeners"),
                    "listeners",
                )
            )
    return {"links": links}


@register.inclusion_tag("admin/date_hierarchy.html")
def messagio_date_hierarchy(cl: Any) -> dict[str, Any]:
    """Django's date hierarchy, without its scans of the table (see messagio_admin.hierarchy)."""
    return hierarchy.date_hierarchy(cl)


@register.filter
def short_name(dotted: str) -> str:
    """``"shop.events.OrderPlaced"`` -> ``"OrderPlaced"``."""
    return display.short_name(dotted or "")


@register.filter
def dotted(path: str) -> str:
    """A dotted path that wraps after its dots rather than widen the page."""
    return display.dotted(path or "")


@register.filter
def status_badge(status: str) -> str:
    """A delivery status as a coloured badge."""
    return display.status_badge(status)


@register.filter
def duration(ms: float | None) -> str:
    """Milliseconds as ``"12.3 ms"`` or ``"1.20 s"``."""
    return display.duration(ms)


@register.filter
def percent(rate: float | None) -> str:
    """A share as ``"12.5%"``."""
    return display.percent(rate)
