"""The public API is what __all__ says, and every public name is exported."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pipeline
import sinks

PACKAGES = ["pipeline", "pipeline.producers", "pipeline.stores", "sinks"]


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
            "cli",
            "client",
            "stores",
            "testing",
            "producers",
            "emulator",
        }, info.name
    for info in pkgutil.iter_modules(sinks.__path__):
        assert info.name.startswith("_") or info.name in {
            "files",
            "terminal",
            "sse",
            "ndjson",
            "http",
            "websocket",
        }, info.name


def test_pipeline_never_imports_sinks() -> None:
    import pathlib

    root = pathlib.Path(pipeline.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "cli.py":  # the one place that wires both
            continue
        text = path.read_text()
        assert "from sinks" not in text, path
        assert "import sinks" not in text, path
