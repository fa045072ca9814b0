"""Who may replay what: ``messagio.replay_delivery``, plus a permission per messagio type.

``settings.MESSAGIO["REPLAY_PERMISSIONS"]`` maps a messagio type (its dotted path) to a further
permission needed to replay its deliveries, e.g. ``{"shop.events.PaymentFailed":
"shop.replay_payments"}``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpResponseRedirect
from django.utils.translation import gettext as _

from messagio.conf import get_setting

#: The permission every replay needs (defined on messagio.models.Replay).
REPLAY_PERMISSION = "messagio.replay_delivery"


def can_replay(user: Any) -> bool:
    """Whether ``user`` may replay at all."""
    return bool(user.is_active and user.has_perm(REPLAY_PERMISSION))


def type_permission(messagio_type: str) -> str | None:
    """The further permission replaying ``messagio_type`` needs, if any."""
    return (get_setting("REPLAY_PERMISSIONS") or {}).get(messagio_type)


def can_replay_type(user: Any, messagio_type: str) -> bool:
    """Whether ``user`` may replay deliveries of ``messagio_type``."""
    if not can_replay(user):
        return False
    permission = type_permission(messagio_type)
    return permission is None or user.has_perm(permission)


def forbidden_types(user: Any) -> set[str]:
    """The messagio types whose further replay permission ``user`` lacks."""
    return {
        messagio_type
        for messagio_type, permission in (get_setting("REPLAY_PERMISSIONS") or {}).items()
        if not user.has_perm(permission)
    }


def refuse_type(model_admin: Any, request: Any, messagio_type: str, back: str) -> Any:
    """Go back to ``back`` saying which permission replaying ``messagio_type`` needs."""
    model_admin.message_user(
        request,
        _("You may not replay %(type)s: it needs the permission %(permission)s.")
        % {"type": messagio_type, "permission": type_permission(messagio_type)},
        messages.ERROR,
    )
    return HttpResponseRedirect(back)
