"""The public API is what __all__ says, and every public name is exported."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pipeline
import sinks

PACKAGES = [
    "pipeline",
    "pipeline.text",
    "pipeline.wire",
    "pipeline.producers",
    "pipeline.stores",
    "pipeline.client",
    "pipeline.testing",
    "pipeline.testing.emulator",
    "sinks",
    "sinks.server",
    "sinks.cli",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_complete_and_sorted(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    # Resolve every exported name first: a lazily loaded one (module ``__getattr__``, PEP 562)
    # is in the module's namespace only once accessed.
    for n in module.__all__:
        assert getattr(module, n) is not None
    public = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_") and not inspect.ismodule(obj) and n != "annotations"
    }
    assert public == exported
    assert exported <= set(dir(module))


def test_private_modules_only_behind_init() -> None:
    for info in pkgutil.iter_modules(pipeline.__path__):
        assert info.name.startswith("_") or info.name in {
            "text",
            "wire",
            "client",
            "stores",
            "testing",
            "producers",
        }, info.name
    for info in pkgutil.iter_modules(sinks.__path__):
        assert info.name.startswith("_") or info.name in {
            "files",
            "terminal",
            "server",
            "cli",
        }, info.name


def test_pipeline_never_imports_sinks() -> None:
    import pathlib

    root = pathlib.Path(pipeline.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "from sinks" not in text, path
        assert "import sinks" not in text, path
