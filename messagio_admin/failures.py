"""The Failures page: failed deliveries grouped by listener, messagio type and error class,
and "replay this group" once the bug is fixed (a bulk replay on a worker), from the group's
own page."""

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


#: The fields that name a group (hidden in its replay form, in the query of its page).
GROUP_KEY = ("listener", "messagio_type", "error_type")
#: The group page's hidden field: the ids of the running replays of the group it warned of.
WARNED = "warned"


def running_replays(key: dict[str, str]) -> list[Replay]:
    """The replays of the group named by ``key`` still running, found by the description
    they were recorded with (a Replay does not keep its selection), newest first."""
    what = describe_group(**key)[:500]
    return list(
        Replay.objects.filter(state=Replay.State.RUNNING, description=what).order_by(
            "-requested_at"
        )[:10]
    )


def failures_view(model_admin: Any, request: Any) -> Any:
    """The failure groups, most recently seen first, each with a link to its replay page
    (one form there, not one per group here: 100 forms took most of this page's time)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    groups, more = queries.failure_groups()
    can_replay = model_admin.has_replay_permission(request)
    changelist = reverse("admin:messagio_delivery_changelist")
    group_page = reverse("admin:messagio_delivery_failure_group")
    rows = []
    for group in groups:
        key = {name: getattr(group, name) for name in GROUP_KEY}
        query = urlencode({"status__exact": Delivery.Status.FAILED, **key})
        rows.append(
            {
                "group": group,
                "can_replay": can_replay
                and permissions.can_replay_type(request.user, group.messagio_type),
                "type_permission": permissions.type_permission(group.messagio_type),
                "deliveries_url": f"{changelist}?{query}",
                "replay_url": f"{group_page}?{urlencode(key)}",
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
    return TemplateResponse(request, "admin/messagio/delivery/failures.html", context)


def group_view(
    model_admin: Any, request: Any, bound: GroupReplayForm | None = None, status: int = 400
) -> Any:
    """One failure group and the form that replays it (reason, canary, rate, threshold),
    warning of a replay of it still running; ``bound``: that form posted, not started
    (answered with ``status``)."""
    if not model_admin.has_replay_permission(request):
        raise PermissionDenied
    back = reverse("admin:messagio_delivery_failures")
    data = bound.data if bound is not None else request.GET
    key = {name: data.get(name, "") for name in GROUP_KEY}
    if not (key["listener"] and key["messagio_type"]):
        model_admin.message_user(
            request, _("Choose a group to replay on the Failures page."), messages.WARNING
        )
        return HttpResponseRedirect(back)
    if not permissions.can_replay_type(request.user, key["messagio_type"]):
        return permissions.refuse_type(model_admin, request, key["messagio_type"], back)
    group = queries.failure_group(**key)
    if group is None and bound is None:
        model_admin.message_user(
            request, _("This group has no failed delivery left to replay."), messages.WARNING
        )
        return HttpResponseRedirect(back)
    opts = model_admin.model._meta
    query = urlencode({"status__exact": Delivery.Status.FAILED, **key})
    running = running_replays(key)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Replay a failure group"),
        "subtitle": None,
        "opts": opts,
        "app_label": opts.app_label,
        "group": group,
        "key": key,
        "form": bound or GroupReplayForm(initial=key),
        "deliveries_url": f"{reverse('admin:messagio_delivery_changelist')}?{query}",
        "running": running,
        # Posted back: a replay of the group started since is warned of before another.
        "warned_name": WARNED,
        "warned": ",".join(str(record.pk) for record in running),
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(
        request,
        "admin/messagio/delivery/failure_group.html",
        context,
        status=status if bound is not None else 200,
    )


def replay_group_view(model_admin: Any, request: Any) -> Any:
    """Record a Replay of one failure group and send the replay task; show its progress."""
    if not model_admin.has_replay_permission(request):
        raise PermissionDenied
    back = reverse("admin:messagio_delivery_failures")
    form = GroupReplayForm(request.POST)
    if not form.is_valid():
        return group_view(model_admin, request, bound=form)
    key = {name: form.cleaned_data[name] for name in GROUP_KEY}
    if not permissions.can_replay_type(request.user, key["messagio_type"]):
        return permissions.refuse_type(model_admin, request, key["messagio_type"], back)
    warned = set(request.POST.get(WARNED, "").split(","))
    if any(str(record.pk) not in warned for record in running_replays(key)):
        # Started since the page was shown (by someone else, or a second click): the page
        # again, with its warning, before a second replay of the same failures.
        return group_view(model_admin, request, bound=form, status=409)
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
