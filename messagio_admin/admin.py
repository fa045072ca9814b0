"""Registers messagio's records with the admin site: Events, Deliveries (with their attempts,
the Failures and Listener registry pages) and Replays."""

from django.contrib import admin

from messagio.models import Delivery, Event, Replay
from messagio_admin.deliveries import DeliveryAdmin
from messagio_admin.events import EventAdmin
from messagio_admin.replays import ReplayAdmin

admin.site.register(Event, EventAdmin)
admin.site.register(Delivery, DeliveryAdmin)
admin.site.register(Replay, ReplayAdmin)

# The index links to the dashboards that are not a model's list (Failures, Listener registry).
# A template of an app after django.contrib.admin in INSTALLED_APPS cannot override
# admin/index.html, so the site is pointed at one that extends it, unless the project chose
# its own.
if admin.site.index_template is None:
    admin.site.index_template = "admin/messagio/index.html"
