"""celery-policies: control how Celery tasks retry, time out, acknowledge and fail from YAML."""

from .errors import PolicyError, PolicyFileError, Problem
from .redelivery import RedeliveriesExhausted
from .spec.backoff import RetrySettings
from .spec.loader import Policies, load_policies, parse_policies
from .spec.matching import Matcher, ResolvedPolicy, Setting, Source
from .spec.model import FailureRoute, Policy, PolicyFile, PolicySettings
from .worker.runtime import Runtime, TaskPolicy, install

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
