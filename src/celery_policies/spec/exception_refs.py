"""Exception classes named in a policy file: finding every reference, importing, matching,
and the one name each class goes by.

Import happens only when asked (``check --app``/``--import`` and at worker start), so a file
can be validated where the application's code is not installed.
"""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Iterable, Iterator

from ..errors import DocPath
from .model import PolicyFile, PolicySettings

#: A builtin's name may also be written with this module prefix.
_BUILTINS_PREFIX = "builtins."


def exception_name(exc_type: type[BaseException]) -> str:
    """The name a policy file, a dead letter and Sentry use for an exception class:
    ``module.Qualname``, or the bare qualname for builtins (``ConnectionError``)."""
    if exc_type.__module__ == "builtins":
        return exc_type.__qualname__
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


def without_builtins_prefix(name: str) -> str:
    """A name as a policy file writes it, with ``builtins.`` dropped: ``builtins.KeyError``
    and ``KeyError`` are one class, which ``exception_name`` calls ``KeyError``."""
    return name.removeprefix(_BUILTINS_PREFIX)


def _spellings(exc_type: type[BaseException]) -> tuple[str, ...]:
    """The names a policy file may write for ``exc_type``: a builtin also as ``builtins.Name``."""
    name = exception_name(exc_type)
    return (name, _BUILTINS_PREFIX + name) if exc_type.__module__ == "builtins" else (name,)


def import_exception(dotted: str) -> type[BaseException]:
    """Return the exception class named by a dotted path or a builtin name.

    Raise ``ValueError`` saying why when it cannot be imported or is not an exception class.
    """
    module_name, _, attr = dotted.rpartition(".")
    try:
        if not module_name:
            found = getattr(builtins, attr)
        else:
            found = getattr(importlib.import_module(module_name), attr)
    except AttributeError:
        where = f"module {module_name!r}" if module_name else "builtins"
        raise ValueError(f"cannot import {dotted!r}: {where} has no {attr!r}") from None
    except ImportError as exc:
        raise ValueError(f"cannot import {dotted!r}: {exc}") from None
    except Exception as exc:
        raise ValueError(f"cannot import {dotted!r}: importing it raised "
                         f"{type(exc).__name__}: {exc}") from None
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ValueError(f"{dotted!r} is not an exception class")
    return found


def _settings(model: PolicyFile) -> Iterator[tuple[DocPath, PolicySettings]]:
    if model.defaults is not None:
        yield ("defaults",), model.defaults
    for index, policy in enumerate(model.policies):
        yield ("policies", index), policy


def exception_references(model: PolicyFile) -> Iterator[tuple[DocPath, str, bool]]:
    """Every exception path in the file: (document path, dotted name, written as a key)."""
    for base, settings in _settings(model):
        for key in ("autoretry_for", "dont_autoretry_for"):
            for i, name in enumerate(getattr(settings, key) or ()):
                yield (*base, key, i), name, False
        for name in settings.retry_per_exception or {}:
            yield (*base, "retry_per_exception", name), name, True
        for r, route in enumerate(settings.on_failure or ()):
            for i, name in enumerate(route.when or ()):
                yield (*base, "on_failure", r, "when", i), name, False


def mro_distance(exc_type: type[BaseException],
                 refs: Iterable[type[BaseException] | str]) -> int | None:
    """How far up ``exc_type``'s MRO the nearest of ``refs`` is (0: the class itself).

    A ref is a class, or a name that could not be imported, compared with each class's
    ``exception_name`` (a builtin's also with ``builtins.Name``). ``None`` when no ref is in
    the MRO.
    """
    classes = {r for r in refs if isinstance(r, type)}
    names = {r for r in refs if isinstance(r, str)}
    for distance, klass in enumerate(exc_type.__mro__):
        if klass in classes or (names and not names.isdisjoint(_spellings(klass))):
            return distance
    return None


def resolve_refs(names: Iterable[str]) -> tuple[type[BaseException] | str, ...]:
    """Import each name where possible; keep the name itself where not (see ``mro_distance``)."""
    out: list[type[BaseException] | str] = []
    for name in names:
        try:
            out.append(import_exception(name))
        except ValueError:
            out.append(name)
    return tuple(out)


def placeholder_exception(dotted: str) -> type[BaseException]:
    """A stand-in for an exception class that cannot be imported here: a direct subclass of
    ``Exception`` with the same module and name, so rules naming it still match."""
    module, _, name = dotted.rpartition(".")
    return type(name, (Exception,), {"__module__": module or "builtins", "__qualname__": name})


def builtin_exception(name: str) -> type[BaseException] | None:
    found = getattr(builtins, name, None) if "." not in name else None
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def names_only(names: Iterable[str]) -> tuple[type[BaseException] | str, ...]:
    """``resolve_refs`` without importing anything: builtin names become their classes, and
    dotted names stay text, matched by name (see ``mro_distance``)."""
    return tuple(builtin_exception(name) or name for name in names)
