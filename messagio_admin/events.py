"""The Events screens: the changelist with the 24-hour overview, and each event's page with
its deliveries, their attempts, and the replay buttons."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_POST

from messagio.conf import get_setting
from messagio.models import Attempt, Delivery, Event, Replay
from messagio.recovery import may_be_lost, requeue_lost
from messagio_admin import display, permissions, queries
from messagio_admin.actions import replay_deliveries
from messagio_admin.changelist import RecordAdmin
from messagio_admin.filters import EventStatusFilter, EventTypeFilter
from messagio_admin.overview import chart
from messagio_admin.replaying import BULK_LIMIT
from messagio_admin.search import as_uuid, search_terms
from messagio_admin.single import replay_from_page


def publish_again_after() -> float:
    """Seconds what an event's messages carry must have waited for a worker before its page
    offers to publish it again: not while a message is simply on its way."""
    return float(get_setting("PUBLISH_AGAIN_AFTER"))


def succeeded_ids(deliveries: Any) -> list[str]:
    """The ids of the succeeded ones among ``deliveries``: a replay of their whole event runs
    their listeners again."""
    return sorted(str(d.pk) for d in deliveries if d.status == Delivery.Status.SUCCEEDED)


def unconfirmed_message(event: Event, count: int, *, asked: bool) -> str:
    """Why a replay of the whole ``event`` replayed nothing: ``count`` of its deliveries that
    succeeded were not confirmed; ``asked``: the page confirmed others (those it showed)."""
    if asked:
        template = ngettext(
            "Event %(id)s was not replayed: %(count)d more of its deliveries succeeded since "
            "its page was shown, and its listener would run again. Check the event and "
            "confirm again.",
            "Event %(id)s was not replayed: %(count)d more of its deliveries succeeded since "
            "its page was shown, and their listeners would run again. Check the event and "
            "confirm again.",
            count,
        )
    else:
        template = ngettext(
            "Event %(id)s was not replayed: %(count)d of its deliveries succeeded, and its "
            "listener would run again. To run it again anyway, confirm it on the event's page.",
            "Event %(id)s was not replayed: %(count)d of its deliveries succeeded, and their "
            "listeners would run again. To run them again anyway, confirm it on the event's "
            "page.",
            count,
        )
    return template % {"id": event.pk, "count": count}


class EventAdmin(RecordAdmin):
    list_display = (
        "type_display",
        "fired_at",
        "status_display",
        "listener_count",
        "origin",
        "summary_display",
    )
    list_display_links = ("type_display",)
    # No filter on origin: no index serves it, and a rare origin would scan the table.
    list_filter = (EventStatusFilter, EventTypeFilter)
    date_hierarchy = "fired_at"
    ordering = ("-fired_at",)
    # Only orderings an index serves.
    sortable_by = ("fired_at",)
    # The search box searches these; get_search_results says how, at scale.
    search_fields = ("=id", "messagio_type", "summary")
    search_help_text = gettext_lazy(
        "An event id, a messagio type (or part of it), or text of the payload summary."
    )
    actions = ["replay_failed_of_selected"]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "messagio_type",
                    "fired_at",
                    "origin",
                    "state",
                    "published_at",
                    "publish_error",
                    "listener_count",
                    "replay_of_display",
                )
            },
        ),
        (gettext_lazy("Payload summary"), {"fields": ("summary_display_table",)}),
    )
    readonly_fields = tuple(field for _, options in fieldsets for field in options["fields"])

    # --- Queries ---------------------------------------------------------------------------

    def get_queryset(self, request: Any) -> QuerySet:
        # The admin never unpickles a payload, and never needs to read one.
        return super().get_queryset(request).defer("payload")

    def annotate_page(self, request: Any, objects: list[Any]) -> None:
        counts = queries.delivery_counts(event.pk for event in objects)
        for event in objects:
            event.messagio_counts = counts.get(event.pk, queries.EventCounts())

    def get_search_results(
        self, request: Any, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Each term is an event id (exact, by primary key), or matches a messagio type (the
        types are found by walking their index, then selected through it) or the text of
        the payload summary."""
        types: list[str] | None = None
        for term in search_terms(search_term):
            event_id = as_uuid(term)
            if event_id is not None:
                queryset = queryset.filter(pk=event_id)
                continue
            if types is None:
                types = queries.distinct_values(Event, "messagio_type")
            matching = [t for t in types if term.lower() in t.lower()]
            condition = Q(summary__icontains=term)
            if matching:
                condition |= Q(messagio_type__in=matching)
            queryset = queryset.filter(condition)
        return queryset, False

    # --- Columns ---------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("type"))
    def type_display(self, event: Event) -> str:
        return display.short_type(event.messagio_type)

    @admin.display(description=gettext_lazy("status"))
    def status_display(self, event: Event) -> str:
        counts = getattr(event, "messagio_counts", None)
        if counts is None:  # not on a changelist page
            counts = queries.delivery_counts([event.pk]).get(event.pk, queries.EventCounts())
        return display.event_badge(event, counts)

    @admin.display(description=gettext_lazy("summary"))
    def summary_display(self, event: Event) -> str:
        return display.summary_preview(event.summary)

    @admin.display(description=gettext_lazy("payload summary"))
    def summary_display_table(self, event: Event) -> str:
        return display.summary_table(event.summary)

    @admin.display(description=gettext_lazy("replay of"))
    def replay_of_display(self, event: Event) -> str:
        if not event.replay_of_id:
            return "–"
        url = reverse("admin:messagio_event_change", args=[event.replay_of_id])
        return format_html('<a href="{}">{}</a>', url, event.replay_of_id)

    # --- The event's page ------------------------------------------------------------------

    def render_change_form(
        self,
        request: Any,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> Any:
        if obj is not None:
            context.update(self.event_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def event_context(self, request: Any, event: Event) -> dict[str, Any]:
        """The event's deliveries, their attempts, task results and replays: five queries."""
        deliveries = list(Delivery.objects.filter(event=event).order_by("position"))
        attempts = Attempt.objects.filter(delivery__in=[d.pk for d in deliveries]).order_by(
            "number"
        )
        history: dict[Any, list[Attempt]] = {}
        for attempt in attempts:
            history.setdefault(attempt.delivery_id, []).append(attempt)
        task_ids = [d.task_id for d in deliveries] + [
            a.task_id for items in history.values() for a in items
        ]
        results = display.task_results(task_ids)
        replay_ids = {d.replay_id for d in deliveries} | {
            a.replay_id for items in history.values() for a in items
        }
        replays = Replay.objects.in_bulk([pk for pk in replay_ids if pk])
        for delivery in deliveries:
            delivery.history_list = history.get(delivery.pk, [])
            delivery.task_result_id = results.get(delivery.task_id)
            delivery.last_replay = replays.get(delivery.replay_id)
            for attempt in delivery.history_list:
                attempt.task_result_id = results.get(attempt.task_id)
                attempt.replay_record = replays.get(attempt.replay_id)
        replayed_as = list(
            Event.objects.filter(replay_of=event)
            .order_by("-fired_at")
            .only("id", "fired_at", "messagio_type")[:50]
        )
        can_replay = self.has_replay_permission(request)
        succeeded = succeeded_ids(deliveries)
        # Listeners whose group no worker has started: their rows are written when one does.
        waiting = queries.waiting_for_worker(event, len(deliveries))
        can_view_deliveries = request.user.has_perm("messagio.view_delivery")
        return {
            # What they ran, returned and raised is the Deliveries screens' to show, as
            # Django's inlines follow their own model's view permission.
            "deliveries": deliveries if can_view_deliveries else [],
            "can_view_deliveries": can_view_deliveries,
            "delivery_count": len(deliveries),
            "waiting": waiting,
            "replayed_as": replayed_as,
            "can_replay": can_replay,
            "can_replay_type": can_replay
            and permissions.can_replay_type(request.user, event.messagio_type),
            "type_permission": permissions.type_permission(event.messagio_type),
            # Each delivery's own replay button posts to the Deliveries admin.
            "can_replay_deliveries": can_replay and can_view_deliveries,
            "has_failed": any(d.status == Delivery.Status.FAILED for d in deliveries),
            # What "replay whole event" would run again though it succeeded: to confirm.
            "succeeded": succeeded,
            "succeeded_ids": ",".join(succeeded),
            "in_flight": bool(waiting) or any(d.status in queries.IN_FLIGHT for d in deliveries),
            # What a broker that lost the message would leave: the page offers to publish it
            # again once it has waited a while and no worker holds the event's deliveries.
            "unstarted": (
                waiting + sum(d.status == Delivery.Status.PENDING for d in deliveries)
                if may_be_lost(event, deliveries, publish_again_after())
                else 0
            ),
            "show_task_results": display.can_see_task_results(request.user),
            "here": request.get_full_path(),
        }

    # --- Replays ---------------------------------------------------------------------------

    def has_replay_permission(self, request: Any) -> bool:
        return permissions.can_replay(request.user) and self.has_view_permission(request)

    def get_urls(self) -> list[Any]:
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path(
                "<path:object_id>/replay/",
                self.admin_site.admin_view(self.replay_view),
                name=f"{info}_replay",
            ),
            path(
                "<path:object_id>/replay-failed/",
                self.admin_site.admin_view(self.replay_failed_view),
                name=f"{info}_replay_failed",
            ),
            path(
                "<path:object_id>/publish-again/",
                self.admin_site.admin_view(self.publish_again_view),
                name=f"{info}_publish_again",
            ),
            *super().get_urls(),
        ]

    def _event_or_404(self, object_id: str) -> Event:
        event_id = as_uuid(unquote(object_id))
        # The payload is read by the replay itself, with the deliveries it publishes.
        event = Event.objects.defer("payload").filter(pk=event_id).first() if event_id else None
        if event is None:
            raise Http404(_("No event with the id %(id)s.") % {"id": object_id})
        return event

    @method_decorator(require_POST)
    def replay_view(self, request: Any, object_id: str) -> Any:
        """Replay every delivery of the event (those in flight are left alone); those that
        succeeded only when the form names each of them (``confirm``, the ids its page
        showed): a listener that charged or mailed would do it again, and one that succeeded
        since the page was shown was never confirmed."""
        if not self.has_replay_permission(request):
            raise PermissionDenied
        event = self._event_or_404(object_id)
        back = reverse("admin:messagio_event_change", args=[event.pk])
        succeeded = set(succeeded_ids(Delivery.objects.filter(event=event).only("id", "status")))
        shown = request.POST.get("confirm") or ""
        unconfirmed = succeeded - set(shown.split(","))
        if unconfirmed:
            self.message_user(
                request,
                unconfirmed_message(event, len(unconfirmed), asked=bool(shown)),
                messages.WARNING,
            )
            return HttpResponseRedirect(back)
        return replay_from_page(
            self,
            request,
            event,
            messagio_type=event.messagio_type,
            what=_("event %(id)s") % {"id": event.pk},
            back=back,
        )

    @method_decorator(require_POST)
    def replay_failed_view(self, request: Any, object_id: str) -> Any:
        """Replay the event's failed deliveries."""
        if not self.has_replay_permission(request):
            raise PermissionDenied
        event = self._event_or_404(object_id)
        return replay_from_page(
            self,
            request,
            Event.objects.filter(pk=event.pk),
            messagio_type=event.messagio_type,
            what=_("event %(id)s") % {"id": event.pk},
            back=reverse("admin:messagio_event_change", args=[event.pk]),
        )

    @method_decorator(require_POST)
    def publish_again_view(self, request: Any, object_id: str) -> Any:
        """Publish again what of the event waits for a worker, its message lost by the broker."""
        if not self.has_replay_permission(request):
            raise PermissionDenied
        event = self._event_or_404(object_id)
        back = reverse("admin:messagio_event_change", args=[event.pk])
        if not permissions.can_replay_type(request.user, event.messagio_type):
            return permissions.refuse_type(self, request, event.messagio_type, back)
        report = requeue_lost(publish_again_after(), events=Event.objects.filter(pk=event.pk))
        if report.error:
            self.message_user(
                request, _("Not published again: %(why)s.") % {"why": report.error}, messages.ERROR
            )
        elif report.skipped:
            self.message_user(
                request,
                _("Not published again: %(why)s.") % {"why": report.skipped[str(event.pk)]},
                messages.ERROR,
            )
        elif report.deliveries:
            self.message_user(
                request,
                ngettext(
                    "%(count)d delivery published again.",
                    "%(count)d deliveries published again.",
                    report.deliveries,
                )
                % {"count": report.deliveries},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                _(
                    "Nothing of this event has waited for a worker for over %(seconds)gs, with "
                    "none of its deliveries running."
                )
                % {"seconds": publish_again_after()},
            )
        return HttpResponseRedirect(back)

    @admin.action(
        description=gettext_lazy("Replay failed deliveries of selected events"),
        permissions=["replay"],
    )
    def replay_failed_of_selected(self, request: Any, queryset: QuerySet) -> Any:
        event_ids = list(queryset.order_by().values_list("pk", flat=True)[: BULK_LIMIT + 1])
        if len(event_ids) > BULK_LIMIT:
            self.message_user(
                request,
                _(
                    "More than %(limit)d events are selected. Replay a whole group from the "
                    "Failures page, or use the messagio_replay command."
                )
                % {"limit": BULK_LIMIT},
                messages.ERROR,
            )
            return None
        failed = Delivery.objects.failed().filter(event_id__in=event_ids)
        return replay_deliveries(
            self,
            request,
            failed,
            action="replay_failed_of_selected",
            what=ngettext(
                "failed deliveries of %(count)d selected event",
                "failed deliveries of %(count)d selected events",
                len(event_ids),
            )
            % {"count": len(event_ids)},
        )

    # --- The changelist --------------------------------------------------------------------

    def changelist_view(self, request: Any, extra_context: dict[str, Any] | None = None) -> Any:
        context = dict(extra_context or {})
        if request.method == "GET" and self.has_view_permission(request):
            summary = queries.overview()
            context["overview"] = summary
            context["overview_chart"] = chart(summary)
            context["waiting_scan"] = queries.WAITING_SCAN
            context["delivery_opts"] = Delivery._meta
            context["can_view_deliveries"] = request.user.has_perm("messagio.view_delivery")
        return super().changelist_view(request, context)
