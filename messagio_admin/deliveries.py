"""The Deliveries screens: the changelist with its "replay selected" action, each delivery's
page with its attempts, and the URLs of the Failures and Listener registry pages."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import F, Q, QuerySet
from django.http import Http404, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_GET, require_POST

from messagio.models import Attempt, Delivery, Event, Replay
from messagio_admin import display, failures, permissions, queries, registry
from messagio_admin.actions import replay_deliveries
from messagio_admin.changelist import RecordAdmin
from messagio_admin.filters import DeliveryTypeFilter, ErrorClassFilter, ListenerFilter
from messagio_admin.search import as_uuid, search_terms
from messagio_admin.single import replay_from_page, safe_next


class DeliveryAdmin(RecordAdmin):
    list_display = (
        "listener_display",
        "type_display",
        "status_display",
        "attempts",
        "error_type_display",
        "started_at",
        "finished_at",
        "duration_display",
        "event_display",
    )
    list_display_links = ("listener_display",)
    list_filter = ("status", ListenerFilter, DeliveryTypeFilter, ErrorClassFilter)
    date_hierarchy = "started_at"
    # Newest first, and the deliveries no worker has started (pending, no started_at) last:
    # PostgreSQL would put them first. The indexes on started_at are built in this order
    # (messagio.models.NullsLastIndex); a sort by the column's header keeps it.
    ordering = (F("started_at").desc(nulls_last=True),)
    sortable_by = ("started_at",)
    search_fields = ("=id", "=event__id", "listener", "error_type")
    search_help_text = gettext_lazy(
        "A delivery or event id, or part of a listener id or of an error class."
    )
    list_defer = ("result", "error", "traceback", "autoretry_for", "import_path")
    # The overview's and the Listener registry's links, and a replay's "see the deliveries".
    linked_lookups = ("started_at__gte", "finished_at__gte", "replay__id__exact")
    actions = ["replay_selected"]

    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "event_display",
                    "position",
                    "messagio_type",
                    "listener",
                    "status_display",
                    "attempts",
                    "started_at",
                    "finished_at",
                    "duration_display",
                    "worker",
                    "task_display",
                    "replay_display",
                )
            },
        ),
        (
            gettext_lazy("Outcome"),
            {"fields": ("result", "error_type", "error", "traceback_display")},
        ),
        (
            gettext_lazy("Options at fire time"),
            {
                "fields": (
                    "import_path",
                    "priority",
                    "queue",
                    "autoretry_for",
                    "max_retries",
                    "retry_delay",
                )
            },
        ),
    )
    readonly_fields = (
        *(field for _, options in fieldsets for field in options["fields"]),
        "task_id",
    )

    def get_fieldsets(self, request: Any, obj: Any = None) -> Any:
        if display.can_see_task_results(request.user):
            return self.fieldsets
        # The task id as text: a link to a TaskResult this user may not view would 403.
        return tuple(
            (name, {**options, "fields": tuple(
                "task_id" if field == "task_display" else field for field in options["fields"]
            )})
            for name, options in self.fieldsets
        )  # fmt: skip

    def delete_view(self, request: Any, object_id: str, extra_context: Any = None) -> Any:
        # One delivery gone from its event reads as a listener still waiting for a worker,
        # which "publish again" would run a second time. An event goes whole, with its
        # deliveries (which is why the permission itself stays).
        raise PermissionDenied

    def change_view(
        self, request: Any, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        extra_context = {**(extra_context or {}), "show_delete": False}
        return super().change_view(request, object_id, form_url, extra_context)

    # --- Queries ---------------------------------------------------------------------------

    def get_search_results(
        self, request: Any, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Each term is a delivery or event id (exact, through their indexes) or part of a
        listener id or of an error class: matched against the distinct listeners and error
        classes (read from their indexes), then selected through them. A substring match on
        the rows themselves would read every delivery for a rare term."""
        listeners: list[str] | None = None
        errors: list[str] = []
        for term in search_terms(search_term):
            term_id = as_uuid(term)
            if term_id is not None:
                queryset = queryset.filter(Q(pk=term_id) | Q(event_id=term_id))
                continue
            if listeners is None:
                listeners = queries.distinct_values(Delivery, "listener")
                errors = queries.error_classes()
            lowered = term.lower()
            condition = Q(pk__in=[])  # matches nothing, unless a listener or error does
            matching = [name for name in listeners if lowered in name.lower()]
            if matching:
                condition |= Q(listener__in=matching)
            matching = [name for name in errors if lowered in name.lower()]
            if matching:
                failed = [Delivery.Status.FAILED, Delivery.Status.RETRYING]
                condition |= Q(status__in=failed, error_type__in=matching)
            queryset = queryset.filter(condition)
        return queryset, False

    # --- Columns ---------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("listener"))
    def listener_display(self, delivery: Delivery) -> str:
        return display.short_type(delivery.listener)

    @admin.display(description=gettext_lazy("messagio type"))
    def type_display(self, delivery: Delivery) -> str:
        return display.short_type(delivery.messagio_type)

    @admin.display(description=gettext_lazy("status"))
    def status_display(self, delivery: Delivery) -> str:
        return display.status_badge(delivery.status)

    @admin.display(description=gettext_lazy("error class"))
    def error_type_display(self, delivery: Delivery) -> str:
        return display.short_type(delivery.error_type) if delivery.error_type else ""

    @admin.display(description=gettext_lazy("duration"))
    def duration_display(self, delivery: Delivery) -> str:
        return display.duration(delivery.duration_ms)

    @admin.display(description=gettext_lazy("event"))
    def event_display(self, delivery: Delivery) -> str:
        url = reverse("admin:messagio_event_change", args=[delivery.event_id])
        return format_html('<a href="{}">{}</a>', url, str(delivery.event_id)[:8])

    @admin.display(description=gettext_lazy("Celery task"))
    def task_display(self, delivery: Delivery) -> str:
        if not delivery.task_id:
            return "–"
        result_id = display.task_results([delivery.task_id]).get(delivery.task_id)
        url = result_id and display.admin_url(
            "admin:django_celery_results_taskresult_change", result_id
        )
        if url:
            return format_html('<a href="{}">{}</a>', url, delivery.task_id)
        return delivery.task_id

    @admin.display(description=gettext_lazy("last replay"))
    def replay_display(self, delivery: Delivery) -> str:
        if not delivery.replay_id:
            return "–"
        url = reverse("admin:messagio_replay_change", args=[delivery.replay_id])
        return format_html('<a href="{}">#{}</a>', url, delivery.replay_id)

    @admin.display(description=gettext_lazy("traceback"))
    def traceback_display(self, delivery: Delivery) -> str:
        return display.traceback_details(delivery.traceback) or "–"

    # --- The delivery's page ---------------------------------------------------------------

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
            attempts = list(Attempt.objects.filter(delivery=obj).order_by("number"))
            results = display.task_results(a.task_id for a in attempts)
            replays = Replay.objects.in_bulk({a.replay_id for a in attempts if a.replay_id})
            for attempt in attempts:
                attempt.task_result_id = results.get(attempt.task_id)
                attempt.replay_record = replays.get(attempt.replay_id)
            # The payload is the Events screens' to show (their view permission).
            can_view_event = request.user.has_perm("messagio.view_event")
            event = (
                Event.objects.filter(pk=obj.event_id).only("id", "summary").first()
                if can_view_event
                else None
            )
            can_replay = self.has_replay_permission(request)
            context.update(
                {
                    "attempts": attempts,
                    "event_summary": display.summary_table(event.summary) if event else "",
                    "can_view_event": can_view_event,
                    "can_replay": can_replay,
                    "can_replay_type": can_replay
                    and permissions.can_replay_type(request.user, obj.messagio_type),
                    "type_permission": permissions.type_permission(obj.messagio_type),
                    "in_flight": obj.status in queries.IN_FLIGHT,
                    "failed": obj.status == Delivery.Status.FAILED,
                    "show_task_results": display.can_see_task_results(request.user),
                }
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- Replays and the other screens -----------------------------------------------------

    def has_replay_permission(self, request: Any) -> bool:
        return permissions.can_replay(request.user) and self.has_view_permission(request)

    def get_urls(self) -> list[Any]:
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("failures/", wrap(self.failures_view), name=f"{info}_failures"),
            path("failures/group/", wrap(self.failure_group_view), name=f"{info}_failure_group"),
            path(
                "failures/replay/",
                wrap(self.replay_group_view),
                name=f"{info}_replay_group",
            ),
            path("listeners/", wrap(self.registry_view), name=f"{info}_listeners"),
            path("<path:object_id>/replay/", wrap(self.replay_view), name=f"{info}_replay"),
            *super().get_urls(),
        ]

    def failures_view(self, request: Any) -> Any:
        return failures.failures_view(self, request)

    @method_decorator(require_GET)
    def failure_group_view(self, request: Any) -> Any:
        return failures.group_view(self, request)

    @method_decorator(require_POST)
    def replay_group_view(self, request: Any) -> Any:
        return failures.replay_group_view(self, request)

    def registry_view(self, request: Any) -> Any:
        return registry.registry_view(self, request)

    @method_decorator(require_POST)
    def replay_view(self, request: Any, object_id: str) -> Any:
        """Replay this one delivery if it failed; whatever its outcome (unless it is in
        flight) only when the form says so (``confirm``): a button posted after someone
        else fixed it, or on the wrong row, would run a listener that succeeded again."""
        if not self.has_replay_permission(request):
            raise PermissionDenied
        delivery_id = as_uuid(unquote(object_id))
        delivery = Delivery.objects.filter(pk=delivery_id).first() if delivery_id else None
        if delivery is None:
            raise Http404(_("No delivery with the id %(id)s.") % {"id": object_id})
        back = reverse("admin:messagio_delivery_change", args=[delivery.pk])
        if delivery.status != Delivery.Status.FAILED and not request.POST.get("confirm"):
            self.message_user(
                request,
                _(
                    "Delivery %(id)s was not replayed: its status is %(status)s, not failed. "
                    "To run its listener again anyway, confirm it on the delivery's page."
                )
                % {"id": delivery.pk, "status": delivery.get_status_display()},
                messages.WARNING,
            )
            return HttpResponseRedirect(safe_next(request, back))
        return replay_from_page(
            self,
            request,
            delivery,
            messagio_type=delivery.messagio_type,
            what=_("delivery %(id)s") % {"id": delivery.pk},
            back=back,
        )

    @admin.action(description=gettext_lazy("Replay selected deliveries"), permissions=["replay"])
    def replay_selected(self, request: Any, queryset: QuerySet) -> Any:
        count = len(request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME))
        if request.POST.get("select_across") == "1":
            what = _("the deliveries of the selection")
        else:
            what = ngettext(
                "%(count)d selected delivery", "%(count)d selected deliveries", count
            ) % {"count": count}
        return replay_deliveries(self, request, queryset, action="replay_selected", what=what)
