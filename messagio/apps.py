"""Django app configuration: autodiscovery at start-up and the system checks."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MessagioConfig(AppConfig):
    name = "messagio"
    verbose_name = _("Messagio")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from django.db.models.signals import post_migrate, pre_delete

        from messagio import checks  # noqa: F401 - registers the system checks
        from messagio.schedules import ensure_periodic_tasks

        post_migrate.connect(ensure_periodic_tasks, sender=self, dispatch_uid="messagio.schedules")
        from messagio.replays import forget_deleted_requester

        pre_delete.connect(
            forget_deleted_requester,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="messagio.replays.requester",
        )

        from celery.signals import worker_ready

        from messagio.recovery import on_worker_ready

        worker_ready.connect(on_worker_ready, dispatch_uid="messagio.recovery")
        from messagio.conf import get_setting
        from messagio.discovery import autodiscover_listeners

        # Workers never import urls.py, where the README calls autodiscover_listeners().
        if get_setting("AUTODISCOVER"):
            autodiscover_listeners()
