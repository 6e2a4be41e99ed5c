#!/usr/bin/env python3
"""Import cycles inside a package, read from the source (nothing is imported).

``.venv/bin/python scripts/import_cycles.py [imgcrypt.luks]`` prints the package's import
edges that take part in a cycle, each marked ``top`` (module level), ``lazy`` (inside a
function) or ``typing`` (under ``if TYPE_CHECKING``), then one line per cycle; exit status 1
when there is a cycle. Every kind counts: a lazy import that closes a cycle is a cycle put off
until run time, and a typing-only one still ties the two modules together.

Importing ``pkg.mod`` from outside ``pkg`` runs ``pkg/__init__.py`` first, so that is an edge
to ``pkg`` as well; a module inside ``pkg`` importing its siblings is not (the package is
already being initialised, which is the usual shape of a package).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

Edges = dict[str, dict[str, str]]  # importer -> {imported: kind}


def _modules(package: str, root: Path) -> dict[str, Path]:
    base = root.joinpath(*package.split("."))
    found: dict[str, Path] = {}
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, str]]:
    """(imported name, kind) for every import statement, with relative ones resolved."""
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = kind
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "lazy" if kind == "top" else kind
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_one(stmt, "typing")
                for stmt in child.orelse:
                    visit_one(stmt, kind)
                continue
            visit_one(child, inner)

    def visit_one(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, kind) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                origin = ".".join([*anchor, origin] if origin else anchor)
            # "from pkg import name" imports pkg, and pkg.name when that is a module.
            found.append((origin, kind))
            found.extend((f"{origin}.{alias.name}", kind) for alias in node.names)
        visit(node, kind)

    visit(tree, "top")
    return found


def import_edges(package: str, root: Path = ROOT) -> Edges:
    """Edges between the modules of ``package`` (found below ``root``), with their kind."""
    modules = _modules(package, root)
    edges: Edges = {name: {} for name in modules}
    rank = {"top": 0, "lazy": 1, "typing": 2}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for imported, kind in _imports(tree, name, path.name == "__init__.py"):
            # The target and each package enclosing it; but the importer's own packages are
            # already being initialised when it runs, so they are no edge.
            parts = imported.split(".")
            targets = [".".join(parts[:cut]) for cut in range(1, len(parts) + 1)]
            for target in targets:
                if target not in modules or target == name or name.startswith(target + "."):
                    continue
                old = edges[name].get(target)
                if old is None or rank[kind] < rank[old]:
                    edges[name][target] = kind
    return edges


def cycles(edges: Edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(found)


def main(argv: list[str]) -> int:
    package = argv[1] if len(argv) > 1 else "imgcrypt.luks"
    edges = import_edges(package)
    found = cycles(edges)
    for component in found:
        members = set(component)
        for importer in component:
            for imported, kind in sorted(edges[importer].items()):
                if imported in members:
                    print(f"  {importer} -> {imported} ({kind})")
        print("cycle: " + ", ".join(component))
    count = sum(len(e) for e in edges.values())
    print(f"{package}: {len(edges)} modules, {count} import edges, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
