"""A Django project whose Celery app reads its settings from Django, as Celery's Django guide
shows, and names its policy file there (``CELERY_POLICIES_FILE``) without importing the
plugin. ``celery -A tests.support.djproj worker`` runs it."""

from .celery import app

__all__ = ["app"]
