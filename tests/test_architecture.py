"""The package's layering rules, checked on the source: no import cycle between files, and no
private (``_name``) import from another subpackage."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "faceclip"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in SRC.rglob("*.py"):
        name = ".".join(("faceclip",) + p.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, name: str):
    """(module, imported names, line) of every ``faceclip`` import of module ``name`` at ``path``
    (relative imports resolved), the bodies of ``if TYPE_CHECKING:`` excluded."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    stack = [ast.parse(path.read_text())]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                stack += child.orelse and [ast.Module(body=child.orelse, type_ignores=[])]
                continue
            if isinstance(child, ast.ImportFrom) and child.level:
                base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                module = f"{base}.{child.module}" if child.module else base
                out.append((module, [a.name for a in child.names], child.lineno))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("faceclip"):
                out.append((child.module, [a.name for a in child.names], child.lineno))
            elif isinstance(child, ast.Import):
                out += [(a.name, [], child.lineno) for a in child.names if a.name.startswith("faceclip")]
            stack.append(child)
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_no_import_cycle_between_files():
    """Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``: those count as
    edges too (except the importer's own packages, which are already running)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        own = set(_ancestors(name))
        deps = set()
        for module, names, _ in _imports(path, name):
            for n in names or [None]:
                target = f"{module}.{n}" if n and f"{module}.{n}" in mods else module
                for t in [*_ancestors(target), target]:
                    # the root package is left out: its __init__ imports lazily (in __getattr__)
                    if t in mods and t != name and t not in own and t != "faceclip":
                        deps.add(t)
        graph[name] = deps
    # Tarjan's strongly connected components: any component of 2+ modules is a cycle
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_import_from_another_subpackage():
    bad = []
    for name, path in _modules().items():
        for module, names, line in _imports(path, name):
            if _package(module) == _package(name):
                continue
            bad += [f"{path.relative_to(REPO)}:{line} imports {module}.{n}" for n in names if n.startswith("_")
                    and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def _declared_layers() -> list[set[str]]:
    """The layers stated in ``faceclip/__init__.py``'s docstring, lowest first: the first block
    of indented lines after the word ``Layers``, each ``a, b, c  (comment)``."""
    doc = ast.get_docstring(ast.parse((SRC / "__init__.py").read_text()))
    layers = []
    for line in doc.split("Layers", 1)[1].splitlines():
        if line.startswith("    ") and line.strip():
            layers.append({n.strip() for n in line.split("(")[0].split(",") if n.strip()})
        elif layers:
            break
    return layers


def test_imports_follow_the_declared_layers():
    """Every subpackage (or top-level module) is in exactly one declared layer, and imports only
    from its own subpackage, from lower layers, or (the top layer, the applications) from other
    applications. ``if TYPE_CHECKING:`` imports do not count; the root package's lazy
    ``__version__`` is a leaf."""
    layers = _declared_layers()
    assert len(layers) >= 5, layers
    rank = {}
    for i, layer in enumerate(layers):
        for n in layer:
            assert n not in rank, f"{n} declared in two layers"
            rank[n] = i
    mods = _modules()
    undeclared = sorted({_package(m) for m in mods if _package(m) and _package(m) not in rank})
    assert not undeclared, f"not in any layer of faceclip/__init__.py's docstring: {undeclared}"
    top = len(layers) - 1
    bad = []
    for name, path in mods.items():
        me = _package(name)
        if not me:
            continue
        for module, _, line in _imports(path, name):
            other = _package(module)
            if not other or other == me:
                continue
            if rank[other] < rank[me] or (rank[me] == top and rank[other] == top):
                continue
            bad.append(f"{path.relative_to(REPO)}:{line}: {me} (layer {rank[me]}) imports {module} (layer {rank[other]})")
    assert not bad, "\n".join(bad)
