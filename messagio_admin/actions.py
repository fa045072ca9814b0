"""The "replay selected" admin actions: a confirmation page asking why, then the replay task."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from messagio.models import Delivery, Replay
from messagio_admin import permissions
from messagio_admin.forms import ReplayOptionsForm
from messagio_admin.replaying import BULK_LIMIT, IN_FLIGHT, not_sent, start_bulk_replay

logger = logging.getLogger("messagio_admin")

#: The confirmation page's hidden field: the succeeded deliveries it said would run again.
SHOWN_SUCCEEDED = "shown_succeeded"


def shown_succeeded(data: Any) -> set[str] | None:
    """The ids of the succeeded deliveries the confirmation page posted in ``data`` said
    would run again; None when ``data`` is not that page's. A page that does not say (one
    of an earlier version) confirmed failures only."""
    if not data.get("post"):
        return None
    return {pk for pk in (data.get(SHOWN_SUCCEEDED) or "").split(",") if pk}


def replay_deliveries(
    model_admin: Any, request: Any, deliveries: QuerySet, *, action: str, what: str
) -> TemplateResponse | None:
    """Replay ``deliveries`` (finished ones, of types the user may replay) after a
    confirmation page. ``what`` describes the selection for the page and the Replay record.

    At most :data:`BULK_LIMIT` deliveries go by id; a larger selection is refused with a
    pointer to the Failures page, which replays a whole group without listing it.

    The statuses are read again when the page is posted: if one has succeeded that it did
    not name (someone else replayed it meanwhile), it is shown again, saying so. When it
    named none, only those still failed are replayed, up to when the task reads them.
    """
    rows = list(
        deliveries.order_by().values_list("pk", "messagio_type", "status")[: BULK_LIMIT + 1]
    )
    if len(rows) > BULK_LIMIT:
        model_admin.message_user(
            request,
            _(
                "More than %(limit)d deliveries are selected. Replay a whole group from the "
                "Failures page, or use the messagio_replay command."
            )
            % {"limit": BULK_LIMIT},
            messages.ERROR,
        )
        return None
    forbidden = permissions.forbidden_types(request.user)
    in_flight = [pk for pk, _type, status in rows if status in IN_FLIGHT]
    refused = [
        (pk, messagio_type)
        for pk, messagio_type, status in rows
        if messagio_type in forbidden and status not in IN_FLIGHT
    ]
    refused_types = sorted({messagio_type for _pk, messagio_type in refused})
    chosen = [
        str(pk)
        for pk, messagio_type, status in rows
        if status not in IN_FLIGHT and messagio_type not in forbidden
    ]
    succeeded_ids = sorted(
        str(pk)
        for pk, messagio_type, status in rows
        if status == Delivery.Status.SUCCEEDED and messagio_type not in forbidden
    )
    succeeded = len(succeeded_ids)
    notes = []
    if succeeded:
        # Selected on purpose or swept in with a filter: a listener that charged or mailed
        # would do it again. Said before the replay starts, not after.
        notes.append(
            ngettext(
                "%(count)d of them succeeded: its listener runs again.",
                "%(count)d of them succeeded: their listeners run again.",
                succeeded,
            )
            % {"count": succeeded}
        )
    if in_flight:
        notes.append(
            ngettext(
                "%(count)d delivery is still in flight and is left alone.",
                "%(count)d deliveries are still in flight and are left alone.",
                len(in_flight),
            )
            % {"count": len(in_flight)}
        )
    if refused:
        notes.append(
            ngettext(
                "%(count)d delivery is skipped: you may not replay %(types)s.",
                "%(count)d deliveries are skipped: you may not replay %(types)s.",
                len(refused),
            )
            % {"count": len(refused), "types": ", ".join(refused_types)}
        )
    if not chosen:
        for note in notes:
            model_admin.message_user(request, note, messages.WARNING)
        model_admin.message_user(request, _("Nothing to replay."), messages.WARNING)
        return None

    confirmed = shown_succeeded(request.POST)
    if confirmed is not None:
        # Only ids of the selection count (a page of an earlier version posted a count).
        confirmed &= {str(pk) for pk, _type, _status in rows}
    form = ReplayOptionsForm(request.POST if confirmed is not None else None)
    unconfirmed = set(succeeded_ids) - confirmed if confirmed is not None else set()
    if unconfirmed:
        notes.insert(
            0,
            ngettext(
                "Since you were last asked, %(count)d more of them succeeded (its listener "
                "would run again): nothing was replayed, check the selection again.",
                "Since you were last asked, %(count)d more of them succeeded (their listeners "
                "would run again): nothing was replayed, check the selection again.",
                len(unconfirmed),
            )
            % {"count": len(unconfirmed)},
        )
    elif form.is_valid():
        delivery_filter: dict[str, Any] = {"pk__in": chosen}
        if not confirmed:
            # Failures were confirmed: not one that succeeds before the task reads it.
            delivery_filter["status"] = Delivery.Status.FAILED
        try:
            record = start_bulk_replay(
                delivery_filter,
                user=request.user,
                description=what,
                **form.options(),
            )
        except Exception:
            logger.exception("messagio_admin: could not start the replay of %s", what)
            model_admin.message_user(
                request, _("The replay could not be started; the error is logged."), messages.ERROR
            )
            return None
        if record.state == Replay.State.STOPPED:
            model_admin.message_user(request, not_sent(record), messages.ERROR)
            return None
        for note in notes:
            model_admin.message_user(request, note, messages.WARNING)
        model_admin.message_user(
            request,
            ngettext(
                "Replay #%(id)d started: %(count)d delivery goes to a worker.",
                "Replay #%(id)d started: %(count)d deliveries go to a worker.",
                record.total,
            )
            % {"id": record.pk, "count": record.total},
            messages.SUCCESS,
        )
        return None

    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Replay %(what)s") % {"what": what},
        "subtitle": None,
        "opts": opts,
        "app_label": opts.app_label,
        "form": form,
        "what": what,
        "count": len(chosen),
        "notes": notes,
        "shown_succeeded": ",".join(succeeded_ids),
        "shown_succeeded_name": SHOWN_SUCCEEDED,
        "action": action,
        "select_across": request.POST.get("select_across", "0"),
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "delivery_opts": Delivery._meta,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/messagio/replay_selected_confirmation.html", context)
