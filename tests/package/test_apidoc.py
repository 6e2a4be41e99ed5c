"""The API reference (docs/api, Sphinx autodoc) builds with warnings as errors and documents
every public name: the ``imgcrypt`` package's ``__all__``, and every public name of each module
the reference lists, read from its built objects inventory (``objects.inv``)."""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from sphinx.util.inventory import InventoryFile

import imgcrypt

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "docs" / "api"
SPHINX_BUILD = Path(sys.executable).parent / "sphinx-build"

# `.. autosummary::` entries (one module a line) and the module they are relative to.
_ENTRY = re.compile(r"^   ([A-Za-z_][\w.]*)\s*$")
_AUTOMODULE = re.compile(r"^\.\. automodule:: ([\w.]+)")


def listed_modules() -> list[str]:
    """The modules the reference's pages list, as full names."""
    names: list[str] = []
    for page in sorted(SOURCE.glob("*.rst")):
        current = None
        in_summary = False
        for line in page.read_text().splitlines():
            if m := _AUTOMODULE.match(line):
                current = m.group(1)
            if line.startswith(".. autosummary::"):
                in_summary = True
            elif in_summary and (m := _ENTRY.match(line)):
                name = m.group(1)
                names.append(f"{current}.{name}" if current and
                             not name.startswith("imgcrypt.") else name)
            elif in_summary and line and not line.startswith(" "):
                in_summary = False
    return names


def public_names(module: ModuleType) -> list[str]:
    """``__all__``, or else the classes and functions the module defines without a leading _."""
    declared = getattr(module, "__all__", None)
    if declared is not None:
        return [str(name) for name in declared]
    return sorted(name for name, value in vars(module).items()
                  if not name.startswith("_") and (inspect.isclass(value)
                                                   or inspect.isfunction(value))
                  and getattr(value, "__module__", None) == module.__name__)


def canonical(owner: str, name: str) -> set[str]:
    """Names under which ``owner.name`` may be documented: as itself, where it is defined, or
    (a value re-exported under the same name, such as a type alias) in another listed module."""
    names = {f"{owner}.{name}"}
    value = getattr(importlib.import_module(owner), name)
    if (inspect.isclass(value) or inspect.isfunction(value)) and hasattr(value, "__qualname__"):
        names.add(f"{value.__module__}.{value.__qualname__}")
    for other in listed_modules():
        if getattr(importlib.import_module(other), name, None) is value:
            names.add(f"{other}.{name}")
    return names


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Build the reference as `make apidoc` does (warnings are errors), from a copy of the
    sources so that the generated pages stay out of the checkout."""
    work = tmp_path_factory.mktemp("apidoc")
    source = work / "source"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("generated"))
    assert SPHINX_BUILD.exists(), f"{SPHINX_BUILD} is missing: pip install -e '.[dev]'"
    proc = subprocess.run([str(SPHINX_BUILD), "-W", "--keep-going", "-n", "-q", "-b", "html",
                           "-c", str(SOURCE), str(source), str(work / "html")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    with open(work / "html" / "objects.inv", "rb") as f:
        data = InventoryFile.load(f, "", lambda base, uri: uri)
    return {name for kind, objects in data.items() if kind.startswith("py:")
            for name in objects}


def test_every_public_name_of_the_package_is_documented(inventory: set[str]) -> None:
    missing = [name for name in imgcrypt.__all__
               if not canonical("imgcrypt", name) & inventory]
    assert not missing, f"imgcrypt.__all__ names missing from the API reference: {missing}"


def test_every_public_name_of_each_listed_module_is_documented(inventory: set[str]) -> None:
    modules = listed_modules()
    assert "imgcrypt.errors" in modules and "imgcrypt.signing.verify" in modules
    missing = []
    for module_name in modules:
        assert module_name in inventory, f"{module_name} is listed but has no page"
        module = importlib.import_module(module_name)
        missing += [f"{module_name}.{name}" for name in public_names(module)
                    if not canonical(module_name, name) & inventory]
    assert not missing, f"public names missing from the API reference: {missing}"


def test_every_module_of_the_package_exports_is_listed() -> None:
    """A module the package's public names come from has a page of its own."""
    modules = set(listed_modules())
    for name in imgcrypt.__all__:
        value = getattr(imgcrypt, name)
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("imgcrypt."):
            assert home in modules or home.rsplit(".", 1)[0] in modules, (name, home)
