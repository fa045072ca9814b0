"""The demo Django project; ``celery -A project worker`` finds its Celery app here."""

from project.celery import app as celery_app

__all__ = ["celery_app"]
