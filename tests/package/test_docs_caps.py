"""docs/security.md's table of caps names where each cap is set: every name there exists.

A reader follows "where" to the code; after a restructuring moves a constant, the table must
move with it (the first one after LUKS2 became a package still named ``luks2_json``)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import imgcrypt

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = {"imgcrypt.glance.encrypt", "imgcrypt.glance.verify", "imgcrypt.glance.importtask",
            "imgcrypt.glance.middleware", "imgcrypt.glance.taskbase"}


def _modules() -> dict[str, ModuleType]:
    found = {}
    for info in pkgutil.walk_packages(imgcrypt.__path__, "imgcrypt."):
        if info.name == "imgcrypt.__main__":  # runs the command line
            continue
        try:
            found[info.name] = importlib.import_module(info.name)
        except ImportError:
            assert info.name in OPTIONAL, info.name  # only the Glance-side modules need TaskFlow
    return found


def _column(index: int) -> list[str]:
    """One column of the table's rows (what | cap | where | error), header left out."""
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Caps and their defaults", 1)[1].split("\n## ", 1)[0]
    table = section.strip().split("\n\n", 1)[0]  # the first table; another one follows
    rows = [line.strip("| ") for line in table.splitlines() if line.startswith("| ")][1:]
    cells = [row.split(" | ") for row in rows]
    assert len(cells) >= 25 and all(len(c) == 4 for c in cells)
    return [c[index] for c in cells]


def _owners(name: str, modules: dict[str, ModuleType]) -> list[object]:
    """What a dotted prefix names: a module (by its last components) or a class in one."""
    owners: list[object] = [m for full, m in modules.items()
                            if full == name or full.endswith("." + name)]
    for module in modules.values():
        candidate = getattr(module, name, None)
        if inspect.isclass(candidate):
            owners.append(candidate)
    return owners


def test_every_place_the_caps_table_names_exists() -> None:
    modules = _modules()
    missing = []
    for where in _column(2):
        owner: str | None = None
        for ref in re.findall(r"`([^`]+)`", where):
            if ref.endswith(".py"):
                if not (ROOT / "imgcrypt" / ref).exists():
                    missing.append(ref)
                continue
            prefix, _, attribute = ref.rpartition(".")
            prefix = prefix or owner or ""  # "`storage.MAX_PARTS`, `MAX_JOINED_LENGTH`"
            if attribute == "key_size" or " " in ref:  # a LUKS2 JSON field, not code
                continue
            if not any(hasattr(o, attribute) for o in _owners(prefix, modules)):
                missing.append(ref)
            owner = prefix
    assert missing == []


def test_every_error_the_caps_table_names_is_in_the_family() -> None:
    from imgcrypt import errors

    reasons = {member.name for fault in errors.Fault.__subclasses__() for member in fault}
    unknown = []
    for cell in _column(3):
        for ref in re.findall(r"`([A-Za-z_]+)`", cell):
            known = ref in reasons if ref.isupper() else isinstance(
                getattr(errors, ref, None), type)
            if not known:
                unknown.append(ref)
    assert unknown == []
