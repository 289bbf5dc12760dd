"""celery-policies: control how Celery tasks retry, time out, acknowledge and fail from YAML.

The public API is what docs/runtime.md documents: ``install`` a policy file on an app, load
or parse a file, and the errors. Everything else is internal and may change in any release.
"""

from .errors import PolicyError, PolicyFileError, Problem
from .redelivery import RedeliveriesExhausted
from .spec.loader import Policies, load_policies, parse_policies
from .worker.install import install

__all__ = [
    "Policies",
    "PolicyError",
    "PolicyFileError",
    "Problem",
    "RedeliveriesExhausted",
    "install",
    "load_policies",
    "parse_policies",
]
