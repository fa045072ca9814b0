"""The Failures page: failed deliveries grouped by listener, messagio type and error class,
and "replay this group" once the bug is fixed (a bulk replay on a worker)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from messagio.models import Delivery, Replay
from messagio_admin import permissions, queries
from messagio_admin.forms import GroupReplayForm
from messagio_admin.replaying import frozen_selection, not_sent, start_bulk_replay

logger = logging.getLogger("messagio_admin")


def describe_group(listener: str, messagio_type: str, error_type: str) -> str:
    return _("failed deliveries of %(listener)s for %(type)s with %(error)s") % {
        "listener": listener,
        "type": messagio_type,
        "error": error_type or _("no error class"),
    }


def failures_view(model_admin: Any, request: Any, bound: GroupReplayForm | None = None) -> Any:
    """The failure groups, most recently seen first; ``bound``: a group form with errors."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    groups, more = queries.failure_groups()
    can_replay = model_admin.has_replay_permission(request)
    changelist = reverse("admin:messagio_delivery_changelist")
    rows = []
    for index, group in enumerate(groups):
        key = {
            "listener": group.listener,
            "messagio_type": group.messagio_type,
            "error_type": group.error_type,
        }
        query = urlencode({"status__exact": Delivery.Status.FAILED, **key})
        form = GroupReplayForm(initial=key, auto_id=f"id_group{index}_%s")
        is_bound = bound is not None and all(
            bound.data.get(name, "") == value for name, value in key.items()
        )
        if bound is not None and is_bound:
            form = bound
            form.auto_id = f"id_group{index}_%s"
        rows.append(
            {
                "group": group,
                "form": form,
                "open": is_bound,
                "can_replay": can_replay
                and permissions.can_replay_type(request.user, group.messagio_type),
                "type_permission": permissions.type_permission(group.messagio_type),
                "deliveries_url": f"{changelist}?{query}",
            }
        )
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Failures"),
        "subtitle": None,
        "opts": opts,
        "app_label": opts.app_label,
        "rows": rows,
        "more": more,
        "limit": queries.FAILURE_GROUP_LIMIT,
        "can_replay": can_replay,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(
        request, "admin/messagio/delivery/failures.html", context, status=400 if bound else 200
    )


def replay_group_view(model_admin: Any, request: Any) -> Any:
    """Record a Replay of one failure group and send the replay task; show its progress."""
    if not model_admin.has_replay_permission(request):
        raise PermissionDenied
    back = reverse("admin:messagio_delivery_failures")
    form = GroupReplayForm(request.POST)
    if not form.is_valid():
        return failures_view(model_admin, request, bound=form)
    key = {name: form.cleaned_data[name] for name in ("listener", "messagio_type", "error_type")}
    if not permissions.can_replay_type(request.user, key["messagio_type"]):
        model_admin.message_user(
            request,
            _("You may not replay %(type)s: it needs the permission %(permission)s.")
            % {
                "type": key["messagio_type"],
                "permission": permissions.type_permission(key["messagio_type"]),
            },
            messages.ERROR,
        )
        return HttpResponseRedirect(back)
    delivery_filter = {"status": Delivery.Status.FAILED, **key}
    if not frozen_selection(delivery_filter, timezone.now()).exists():
        model_admin.message_user(
            request, _("This group has no failed delivery left to replay."), messages.WARNING
        )
        return HttpResponseRedirect(back)
    what = describe_group(**key)
    try:
        record = start_bulk_replay(
            delivery_filter, user=request.user, description=what, **form.options()
        )
    except Exception:
        logger.exception("messagio_admin: could not start the replay of %s", what)
        model_admin.message_user(
            request, _("The replay could not be started; the error is logged."), messages.ERROR
        )
        return HttpResponseRedirect(back)
    if record.state == Replay.State.STOPPED:
        model_admin.message_user(request, not_sent(record), messages.ERROR)
        return HttpResponseRedirect(back)
    model_admin.message_user(
        request,
        ngettext(
            "Replay #%(id)d started: %(count)d failed delivery goes to a worker.",
            "Replay #%(id)d started: %(count)d failed deliveries go to a worker.",
            record.total,
        )
        % {"id": record.pk, "count": record.total},
        messages.SUCCESS,
    )
    return HttpResponseRedirect(reverse("admin:messagio_replay_change", args=[record.pk]))
