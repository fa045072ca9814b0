"""The Replays screens: who replayed what and why, and how far each replay got."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import Http404, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from messagio.models import Attempt, Delivery, Replay
from messagio.replays import queued_so_far
from messagio_admin import display, permissions, queries
from messagio_admin.changelist import RecordAdmin

STATE_CLASSES = {
    Replay.State.RUNNING: "flight",
    Replay.State.FINISHED: "ok",
    Replay.State.STOPPED: "failed",
}


class ReplayAdmin(RecordAdmin):
    list_display = (
        "replay_display",
        "requested_at",
        "requested_by_display",
        "source",
        "description",
        "state_display",
        "progress_display",
        "reason_display",
    )
    list_display_links = ("replay_display",)
    list_filter = ("state", "source")
    ordering = ("-requested_at",)
    sortable_by = ("requested_at",)
    search_fields = ("reason", "description")
    fields = (
        "id",
        "state_display",
        "progress_display",
        "stopped_reason",
        "outcome_display",
        "requested_by_display",
        "requested_at",
        "source",
        "reason",
        "description",
        "snapshot_at",
        "canary",
        "rate",
        "max_failure_rate",
        "progress_at",
        "finished_at",
    )
    readonly_fields = fields

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False  # the audit trail of who replayed what, and why

    def has_view_permission(self, request: Any, obj: Any = None) -> bool:
        # Whoever may replay may watch the replays.
        return super().has_view_permission(request, obj) or permissions.can_replay(request.user)

    def has_stop_permission(self, request: Any) -> bool:
        """Whoever may replay may stop a replay."""
        return permissions.can_replay(request.user) and self.has_view_permission(request)

    @admin.display(description=gettext_lazy("replay"), ordering="-requested_at")
    def replay_display(self, replay: Replay) -> str:
        return f"#{replay.pk}"

    @admin.display(description=gettext_lazy("requested by"))
    def requested_by_display(self, replay: Replay) -> str:
        return replay.requested_by_shown or self.get_empty_value_display()

    @admin.display(description=gettext_lazy("state"))
    def state_display(self, replay: Replay) -> str:
        return display.badge(replay.get_state_display(), STATE_CLASSES.get(replay.state, "muted"))

    @admin.display(description=gettext_lazy("queued"))
    def progress_display(self, replay: Replay) -> str:
        percent = 100 * replay.queued / replay.total if replay.total else 100
        return format_html(
            '<span class="messagio-progress" title="{}%"><span style="width: {}%"></span></span>'
            " {} / {}",
            round(percent),
            round(min(percent, 100)),
            replay.queued,
            replay.total,
        )

    @admin.display(description=gettext_lazy("reason"))
    def reason_display(self, replay: Replay) -> str:
        return Truncator(replay.reason).chars(80)

    @admin.display(description=gettext_lazy("outcome of the replayed deliveries"))
    def outcome_display(self, replay: Replay) -> str:
        """From the attempts the replay ran (its index): a delivery keeps only the last
        replay that took it, so a replay's counts read from the deliveries went to zero
        once a later replay took them again. What is in flight is the deliveries' now."""
        outcome = Attempt.Outcome
        counts = (
            Attempt.objects.filter(replay=replay)
            .order_by()
            .aggregate(
                succeeded=Count("delivery", distinct=True, filter=Q(outcome=outcome.SUCCEEDED)),
                failed=Count(
                    "delivery",
                    distinct=True,
                    filter=Q(outcome__in=[outcome.FAILED, outcome.TIMEOUT]),
                ),
            )
        )
        counts["in_flight"] = Delivery.objects.filter(
            replay=replay, status__in=queries.IN_FLIGHT
        ).count()
        url = reverse("admin:messagio_delivery_changelist")
        link = f"{url}?{urlencode({'replay__id__exact': replay.pk})}"
        return format_html(
            '{} · {} · {} · <a href="{}">{}</a>',
            display.badge(_("%(count)d succeeded") % {"count": counts["succeeded"]}, "ok"),
            display.badge(_("%(count)d failed") % {"count": counts["failed"]}, "failed"),
            display.badge(_("%(count)d in flight") % {"count": counts["in_flight"]}, "flight"),
            link,
            _("see the deliveries"),
        )

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
            context["running"] = obj.state == Replay.State.RUNNING
            context["can_stop"] = context["running"] and self.has_stop_permission(request)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self) -> list[Any]:
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path(
                "<path:object_id>/stop/",
                self.admin_site.admin_view(self.stop_view),
                name=f"{info}_stop",
            ),
            *super().get_urls(),
        ]

    @method_decorator(require_POST)
    def stop_view(self, request: Any, object_id: str) -> Any:
        """Stop a running replay: it queues nothing more (``run_replay`` ends when its
        record is no longer running: between batches, and within a second while it waits
        for its rate or its canary); what it queued still runs."""
        if not self.has_stop_permission(request):
            raise PermissionDenied
        try:
            replay_id = int(unquote(object_id))
        except ValueError:
            replay_id = None
        record = Replay.objects.filter(pk=replay_id).first() if replay_id else None
        if record is None:
            raise Http404(_("No replay with the id %(id)s.") % {"id": object_id})
        stopped = Replay.objects.filter(pk=record.pk, state=Replay.State.RUNNING).update(
            state=Replay.State.STOPPED,
            stopped_reason=f"stopped from the admin by {request.user.get_username()}",
            finished_at=timezone.now(),
            # What its runs queued, counted or not yet (a worker lost mid-batch); the run
            # still at it counts nothing more, and ends.
            queued=queued_so_far(record),
            runner="",
        )
        if stopped:
            self.message_user(
                request,
                _(
                    "Replay #%(id)d stopped: it queues no more deliveries (after the batch it "
                    "is queuing, if any); those it queued already still run."
                )
                % {"id": record.pk},
                messages.SUCCESS,
            )
        else:
            record.refresh_from_db(fields=["state"])
            self.message_user(
                request,
                _("Replay #%(id)d had already ended: %(state)s.")
                % {"id": record.pk, "state": record.get_state_display()},
                messages.WARNING,
            )
        return HttpResponseRedirect(reverse("admin:messagio_replay_change", args=[record.pk]))
