"""`python -m dspark_hf.import_graph`: the package's import graph, one module per line with what it imports from the
package (function-level imports included), most basic first; exits 1 if any import cycle exists between plain
modules (package `__init__` files, which re-export, aside)."""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (`from . import x` counts as importing module x)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    """Plain module -> the plain package modules it imports."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    plain = {name for name, path in files.items() if path.name != "__init__.py"}
    return {name: imports_of(files[name], plain) - {name} for name in sorted(plain)}


def main() -> int:
    graph = import_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        print(f"import cycle: {' -> '.join(err.args[1])}", file=sys.stderr)
        return 1
    for name in order:
        deps = ", ".join(sorted(d.removeprefix("dspark_hf.") for d in graph[name]))
        print(f"{name.removeprefix('dspark_hf.'):28} <- {deps or '(nothing of the package)'}")
    print(f"{len(graph)} modules, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
