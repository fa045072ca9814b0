"""An admin where django-celery-results is installed but its admin is not registered."""

from django.contrib import admin
from django.urls import path
from django_celery_results.models import TaskResult

site = admin.AdminSite(name="admin")
for model, model_admin in admin.site._registry.items():
    if model is not TaskResult:
        site.register(model, type(model_admin))

urlpatterns = [path("admin/", site.urls)]
