"""messagio_admin: browse fired events, replay failed deliveries, see the listener registry.

A Django app over messagio's records (``INSTALLED_APPS += ["messagio_admin"]``, after
``"messagio"``); messagio never imports it. Its screens, in the standard admin:

- ``admin/messagio/event/``: events, newest first, with the last 24 hours at the top;
  ``<id>/change/`` an event with its deliveries and their attempts; ``<id>/replay/`` and
  ``<id>/replay-failed/`` (POST) replay it through :func:`messagio.replay`.
- ``admin/messagio/delivery/``: deliveries and the "replay selected" action;
  ``<id>/change/`` one delivery and its attempts; ``<id>/replay/`` (POST) replays it (one
  that did not fail only when the form confirms it);
  ``failures/`` failed deliveries grouped, ``failures/replay/`` (POST) replays a group on a
  worker (the ``messagio.tasks.replay`` task); ``listeners/`` the listener registry.
- ``admin/messagio/replay/``: who replayed what and why, and how far it got;
  ``<id>/stop/`` (POST) stops a running one.

Replaying needs ``messagio.replay_delivery``, plus the permission
``MESSAGIO["REPLAY_PERMISSIONS"]`` names for a messagio type. Records are read-only.

Sized for millions of rows: no page counts a whole table, reads a payload, or runs a query
per row. On PostgreSQL three indexes keep every page fast: ``Delivery.started_at DESC NULLS
LAST`` (the Deliveries list, newest first and never started last, and its date hierarchy;
with ``status`` first, the list filtered by status), a partial index of failed
deliveries on ``(listener, messagio_type, error_type, finished_at)`` (the Failures page),
and a trigram index on the summary's text (searching it).
"""
