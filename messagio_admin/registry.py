"""The Listener registry page: the subscriptions of this process, with 24-hour statistics,
the listeners the records know but the registry does not ("orphans"), and the messagio types
nobody listens to."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from messagio.dispatch import effective_priority, effective_queue, listener_spec
from messagio.message import Messagio
from messagio.models import Delivery, Event
from messagio.registry import registry
from messagio_admin import queries

#: The window of the statistics.
WINDOW = datetime.timedelta(hours=24)


@dataclass
class ListenerRow:
    listener_id: str
    position: int = 0
    priority: int | None = None
    queue: str | None = None
    retry: str = ""
    import_path: str | None = None
    last_run: datetime.datetime | None = None
    stats: queries.ListenerStats = field(default_factory=queries.ListenerStats)


@dataclass
class TypeRow:
    name: str
    listeners: list[ListenerRow]


def known_messagio_types() -> list[type[Messagio]]:
    """Every Messagio subclass imported in this process that code can import by name."""
    seen: set[type[Messagio]] = set()
    pending = list(Messagio.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
    return sorted(
        (cls for cls in seen if "<locals>" not in cls.__qualname__), key=lambda c: c.get_name()
    )


def retry_policy(spec: dict[str, Any]) -> str:
    if not spec["autoretry_for"]:
        return ""
    names = ", ".join(path.rsplit(":", 1)[-1] for path in spec["autoretry_for"])
    return _("on %(errors)s: up to %(retries)d retries, %(delay)g s apart") % {
        "errors": names,
        "retries": spec["max_retries"],
        "delay": spec["retry_delay"],
    }


def registry_context(now: datetime.datetime | None = None) -> dict[str, Any]:
    """What the page shows: three or four statements, whatever the size of the records."""
    now = now or timezone.now()
    types = []
    registered: set[str] = set()
    for messagio_type in sorted(registry.messagio_types(), key=lambda t: t.get_name()):
        rows = []
        for position, subscription in enumerate(registry.subscriptions_for(messagio_type)):
            spec = listener_spec(subscription)
            registered.add(subscription.listener_id)
            rows.append(
                ListenerRow(
                    listener_id=subscription.listener_id,
                    position=position + 1,
                    priority=effective_priority(subscription),
                    queue=effective_queue(subscription),
                    retry=retry_policy(spec),
                    import_path=subscription.import_path,
                )
            )
        types.append(TypeRow(messagio_type.get_name(), rows))
    recorded = queries.distinct_values(Delivery, "listener")
    orphan_ids = sorted(set(recorded) - registered)
    everyone = registered | set(recorded)
    last_runs = queries.last_finished(everyone)
    # Under each type, a listener of several types shows its runs of that type.
    by_type = queries.listener_stats(everyone, now - WINDOW)
    for type_row in types:
        for row in type_row.listeners:
            row.last_run = last_runs.get(row.listener_id)
            row.stats = by_type.get((row.listener_id, type_row.name), queries.ListenerStats())
    per_listener: dict[str, list[queries.ListenerStats]] = {}
    for (listener_id, _type), entry in by_type.items():
        per_listener.setdefault(listener_id, []).append(entry)
    orphans = [
        ListenerRow(
            listener_id=listener_id,
            last_run=last_runs.get(listener_id),
            stats=_over_types(per_listener.get(listener_id, [])),
        )
        for listener_id in orphan_ids
    ]
    listened = {t.get_name() for t in registry.messagio_types()}
    known = [cls.get_name() for cls in known_messagio_types()]
    unheard = [name for name in known if name not in listened]
    unknown_recorded = sorted(set(queries.distinct_values(Event, "messagio_type")) - set(known))
    return {
        "types": types,
        "orphans": orphans,
        "unheard": unheard,
        "unknown_recorded": unknown_recorded,
        "since": now - WINDOW,
    }


def _over_types(per_type: list[queries.ListenerStats]) -> queries.ListenerStats:
    """A listener's stats over all its types: runs and failures add up; durations only
    when it ran for one type (percentiles do not add up)."""
    if len(per_type) == 1:
        return per_type[0]
    return queries.ListenerStats(
        runs=sum(s.runs for s in per_type), failures=sum(s.failures for s in per_type)
    )


def registry_view(model_admin: Any, request: Any) -> Any:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        **registry_context(),
        "title": _("Listener registry"),
        "subtitle": None,
        "opts": opts,
        "app_label": opts.app_label,
        "deliveries_url": reverse("admin:messagio_delivery_changelist"),
        "events_url": reverse("admin:messagio_event_changelist"),
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/messagio/delivery/listeners.html", context)
