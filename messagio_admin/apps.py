"""Django app configuration of messagio's admin screens."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MessagioAdminConfig(AppConfig):
    name = "messagio_admin"
    label = "messagio_admin"
    verbose_name = _("Messagio admin")
