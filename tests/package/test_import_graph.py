"""imgcrypt.luks has no import cycle, counting lazy and typing-only imports too.

The graph is read from the source by scripts/import_cycles.py (which prints it); a cycle put
off with a function-level import is still a cycle.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _walker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_cycles",
                                                  ROOT / "scripts" / "import_cycles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imgcrypt_luks_has_no_import_cycle() -> None:
    walker = _walker()
    edges = walker.import_edges("imgcrypt.luks")
    # The walker sees the package: its modules and the edges everyone knows are there.
    assert {"imgcrypt.luks.luks1.header", "imgcrypt.luks.luks2.header",
            "imgcrypt.luks.luks2"} <= set(edges)
    assert edges["imgcrypt.luks.container"]["imgcrypt.luks.luks2.header"] == "lazy"
    assert walker.cycles(edges) == []


def test_the_crypto_layer_knows_no_format_and_no_edge() -> None:
    """imgcrypt.crypto is the bottom layer: it imports only itself and the error family."""
    walker = _walker()
    edges = walker.import_edges("imgcrypt")
    crypto = {name: targets for name, targets in edges.items()
              if name.startswith("imgcrypt.crypto")}
    assert {"imgcrypt.crypto.kdf", "imgcrypt.crypto.sectors",
            "imgcrypt.crypto.backend"} <= set(crypto)
    assert crypto["imgcrypt.crypto.kdf"]["imgcrypt.crypto.cost"] == "top"
    reached = {target for targets in crypto.values() for target in targets}
    assert {t for t in reached if not t.startswith("imgcrypt.crypto")} <= {"imgcrypt.errors",
                                                                           "imgcrypt"}


def test_imgcrypt_has_no_import_cycle() -> None:
    """The whole package, CLI, hooks and edges included: every layer imports only downward."""
    walker = _walker()
    edges = walker.import_edges("imgcrypt")
    assert {"imgcrypt.cli.encrypt", "imgcrypt.qemu.luks", "imgcrypt.glance.verify"} <= set(edges)
    assert walker.cycles(edges) == []


def test_the_walker_finds_lazy_typing_and_package_cycles(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg import b\n",
        "b.py": "from pkg.a import f\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n",
        "d.py": "from . import c\n",
        "e.py": "import pkg.sub.x\n",
        "sub/__init__.py": "from pkg.sub import x\n",
        "sub/x.py": "from pkg import e\nfrom pkg.sub import y\n",
        "sub/y.py": "from .x import *\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    walker = _walker()
    edges = walker.import_edges("pkg", tmp_path)
    assert edges["pkg.a"] == {"pkg.b": "lazy"}
    assert edges["pkg.c"] == {"pkg.d": "typing"}
    assert edges["pkg.e"] == {"pkg.sub": "top", "pkg.sub.x": "top"}
    assert walker.cycles(edges) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"],
                                    ["pkg.e", "pkg.sub", "pkg.sub.x", "pkg.sub.y"]]
