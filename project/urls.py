from django.contrib import admin
from django.urls import path

from messagio import autodiscover_listeners

# Harmless next to the app's own autodiscovery: it runs once.
autodiscover_listeners()

urlpatterns = [
    path("admin/", admin.site.urls),
]
