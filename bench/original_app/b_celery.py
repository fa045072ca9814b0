"""Side B's Celery app, set up as messagio 0.7's README asks: Celery configured from Django.

Its worker is ``celery -A original_app.b_celery worker``, run from ``bench/``.
"""

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "original_app.b_settings")
django.setup()

app = Celery("original")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()  # finds messagio.tasks.message_runner (0.7)
