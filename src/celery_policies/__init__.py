"""celery-policies: control how Celery tasks retry, time out, acknowledge and fail from YAML."""

from .backoff import RetrySettings
from .errors import PolicyError, PolicyFileError, Problem
from .loader import Policies, load_policies, parse_policies
from .matching import Matcher, ResolvedPolicy, Setting, Source
from .model import FailureRoute, Policy, PolicyFile, PolicySettings
from .redelivery import RedeliveriesExhausted
from .runtime import Runtime, TaskPolicy, install

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
    "RedeliveriesExhausted",
    "ResolvedPolicy",
    "RetrySettings",
    "Runtime",
    "Setting",
    "Source",
    "TaskPolicy",
    "install",
    "load_policies",
    "parse_policies",
]
