"""celery-policies: control how Celery tasks retry, time out, acknowledge and fail from YAML."""

from .backoff import RetrySettings
from .errors import PolicyError, PolicyFileError, Problem
from .loader import Policies, load_policies, parse_policies
from .matching import Matcher, ResolvedPolicy, Setting, Source
from .model import FailureRoute, Policy, PolicyFile, PolicySettings

__all__ = [
    "FailureRoute",
    "Matcher",
    "Policies",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "PolicyFileError",
    "PolicySettings",
    "Problem",
    "ResolvedPolicy",
    "RetrySettings",
    "Setting",
    "Source",
    "load_policies",
    "parse_policies",
]
