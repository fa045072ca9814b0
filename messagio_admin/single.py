"""Replaying one delivery or one event from its page: a POST with CSRF, through messagio.replay."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseRedirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from messagio.records import db_alias
from messagio_admin import permissions
from messagio_admin.forms import ReplayReasonForm
from messagio_admin.replaying import replay_now

logger = logging.getLogger("messagio_admin")


def safe_next(request: Any, default: str) -> str:
    """The ``next`` field of the POST when it points into this site, else ``default``."""
    candidate = request.POST.get("next", "")
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return default


def replay_from_page(
    model_admin: Any,
    request: Any,
    target: Any,
    *,
    messagio_type: str,
    what: str,
    back: str,
) -> HttpResponseRedirect:
    """Replay ``target`` (a Delivery, an Event, or a queryset of events) for the user of
    ``request`` and go back to ``back`` with a message saying what happened."""
    if not model_admin.has_replay_permission(request):
        raise PermissionDenied
    back = safe_next(request, back)
    if not permissions.can_replay_type(request.user, messagio_type):
        return permissions.refuse_type(model_admin, request, messagio_type, back)
    form = ReplayReasonForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        record = replay_now(target, request.user, reason)
    except Exception:
        logger.exception("messagio_admin: could not replay %s", what)
        model_admin.message_user(
            request, _("The replay could not be started; the error is logged."), messages.ERROR
        )
        return HttpResponseRedirect(back)
    if record.state == record.State.STOPPED:
        model_admin.message_user(
            request,
            _("Replay #%(id)d stopped: %(reason)s")
            % {"id": record.pk, "reason": record.stopped_reason},
            messages.ERROR,
        )
        return HttpResponseRedirect(back)
    # A request run in a transaction (ATOMIC_REQUESTS): the replay runs as it commits.
    deferred = (
        record.state == record.State.RUNNING
        and transaction.get_connection(db_alias()).in_atomic_block
    )
    count = record.total if deferred else record.queued
    if not count:
        message = _("Replay #%(id)d: nothing to replay in %(what)s (deliveries in flight stay).")
    elif deferred:
        message = ngettext(
            "Replay #%(id)d: %(count)d delivery of %(what)s is queued as this request commits.",
            "Replay #%(id)d: %(count)d deliveries of %(what)s are queued as this request commits.",
            count,
        )
    else:
        message = ngettext(
            "Replay #%(id)d: %(count)d delivery of %(what)s queued.",
            "Replay #%(id)d: %(count)d deliveries of %(what)s queued.",
            count,
        )
    level = messages.SUCCESS if count else messages.WARNING
    model_admin.message_user(
        request, message % {"id": record.pk, "count": count, "what": what}, level
    )
    return HttpResponseRedirect(back)
