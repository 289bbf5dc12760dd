"""``python -m celery_policies``: the ``celery-policies`` command."""

from .cli import main

main()
