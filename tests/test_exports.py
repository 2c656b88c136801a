"""The public API is what ``__all__`` says, and the layers import only downwards.

The layers, in the order a token crosses them (each may import only the ones above it in this
list, and a package's private modules only from inside that package)::

    pipeline                                   the core: events, errors, channels, stages, runner
    pipeline.text  pipeline.wire               pure text; wire formats
    pipeline.producers  pipeline.stores  pipeline.client
    pipeline.testing  sinks                    the test kit; terminal and file sinks
    sinks.server  sinks.batch                  the ASGI app; batch document generation
    sinks.cli                                  the command line, which wires them all
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import pipeline
import sinks

ROOT = Path(__file__).resolve().parent.parent

LAYERS: dict[str, int] = {
    "pipeline": 0,
    "pipeline.text": 1,
    "pipeline.wire": 1,
    "pipeline.producers": 2,
    "pipeline.stores": 2,
    "pipeline.client": 2,
    "pipeline.testing": 3,
    "sinks": 3,
    "sinks.server": 4,
    "sinks.batch": 4,
    "sinks.cli": 5,
}

# Modules without a leading underscore that are not packages: public on purpose.
PUBLIC_MODULES = {"pipeline.packaging", "sinks.terminal", "sinks.files"}


def _all_packages() -> list[str]:
    names = []
    for top in (pipeline, sinks):
        names.append(top.__name__)
        for info in pkgutil.walk_packages(top.__path__, top.__name__ + "."):
            if info.ispkg:
                names.append(info.name)
    return names


PACKAGES = _all_packages()


def _source_modules() -> dict[str, Path]:
    """Every module of the two packages: dotted name -> file."""
    modules = {}
    for top in ("pipeline", "sinks"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _source_modules()


def _package_of(module: str) -> str:
    """The package a module belongs to (a package belongs to itself)."""
    if module in MODULES and MODULES[module].name == "__init__.py":
        return module
    return module.rpartition(".")[0]


def _layer(module: str) -> tuple[str, int]:
    best = max(
        (name for name in LAYERS if module == name or module.startswith(name + ".")), key=len
    )
    return best, LAYERS[best]


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative ones resolved; ``from P import N``
    counts as importing ``P.N`` when that is a module, else ``P``, and a private name ``_N``
    counts as the private module ``P._N`` (another package's private names are as private)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _package_of(module)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                private_name = alias.name.startswith("_")
                found.append((node.lineno, sub if sub in MODULES or private_name else target))
    return [(line, name) for line, name in found if name.split(".")[0] in ("pipeline", "sinks")]


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        assert _layer(module)[1] >= 0, module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_never_into_another_package_private_module(module: str) -> None:
    own_package = _package_of(module)
    own_layer_name, own_layer = _layer(module)
    problems = []
    for line, target in _imports(module, MODULES[module]):
        target_layer_name, target_layer = _layer(target)
        where = f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
        if target_layer_name != own_layer_name and target_layer >= own_layer:
            problems.append(f"{where}: {own_layer_name} may not import {target_layer_name}")
        private = [p for p in target.split(".") if p.startswith("_")]
        # A private name's owner is the module it is imported from.
        owner = target if target in MODULES else target.rpartition(".")[0]
        if private and _package_of(owner) != own_package:
            problems.append(f"{where}: a private module of another package")
    assert not problems, "\n".join(problems)


def test_the_layer_test_sees_a_violation(tmp_path: Path) -> None:
    # The check above must be able to fail: a core module importing a sink, and a server module
    # importing the core's private module, are both reported.
    assert _layer("pipeline._events") == ("pipeline", 0)
    assert _layer("sinks.server._app") == ("sinks.server", 4)
    core = tmp_path / "core.py"
    core.write_text(
        "from sinks import TerminalSink\nfrom pipeline._events import Done\n"
        "from sinks.files import _secret\n"
    )
    found = _imports("pipeline._fake", core)
    assert found == [(1, "sinks"), (2, "pipeline._events"), (3, "sinks.files._secret")]
    assert _layer("sinks")[1] > _layer("pipeline._fake")[1]


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


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_carry_their_public_module(name: str) -> None:
    module = importlib.import_module(name)
    for n in module.__all__:
        obj = getattr(module, n)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if obj.__module__.split(".")[0] not in ("pipeline", "sinks"):
                continue  # a foreign name re-exported
            assert not any(p.startswith("_") for p in obj.__module__.split(".")), (n, obj)
            assert getattr(importlib.import_module(obj.__module__), n) is obj


def test_private_modules_only_behind_init() -> None:
    for module, path in MODULES.items():
        if path.name == "__init__.py" or module in PUBLIC_MODULES:
            continue
        assert module.rpartition(".")[2].startswith("_"), module
