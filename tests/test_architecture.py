"""The package's shape, checked by parsing it (issue 12).

* Backend names: outside ``pvepstore/backends/`` no code compares a registered backend name.
  The rule, precisely: a string constant equal to a registered name must not be an operand of a
  comparison (``==``, ``!=``, ``in``, ``not in``, also inside a literal tuple/list/set on either
  side) or a ``case`` pattern; and no dict display may have only backend names as keys, no set
  display only backend names as members (a table keyed by backend: ``{"a": x, "b": y}[name]``).
  Docstrings, messages, defaults, assignments and JSON documents with a field that happens to be
  called like a backend (``{"ivshmem": ..., "efi": ...}``) are data and allowed: they name
  things, they do not choose behaviour by a backend's name.
* No import cycle in ``pvepstore/``: every import counts, also those inside functions, except
  those under ``if TYPE_CHECKING:`` (never run).
* No module over 400 lines (:data:`LONG` lists the exceptions still being split).
"""

from __future__ import annotations

import ast
from pathlib import Path

from pvepstore.backends import registry

PACKAGE = Path(__file__).resolve().parents[1] / "pvepstore"
MAX_LINES = 400
LONG: dict[str, str] = {}  # "pvepstore/x.py": "why it is still long"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                full = base + (f".{node.module}" if node.module else "")
            else:
                full = node.module or ""
            for alias in node.names:
                if f"{full}.{alias.name}" in modules:
                    found.add(f"{full}.{alias.name}")
                elif full in modules:
                    found.add(full)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def import_cycles() -> list[list[str]]:
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
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

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return cycles


def test_no_import_cycle():
    assert import_cycles() == []


def _names_in(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [v for elt in node.elts for v in _names_in(elt)]
    return []


def backend_name_uses(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every forbidden use of a backend name in ``source`` (see the module doc)."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        operands: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, (ast.Dict, ast.Set)):
            members = [k for k in (node.keys if isinstance(node, ast.Dict) else node.elts) if k is not None]
            if members and all(v in names for m in members for v in _names_in(m) or [None]):
                operands = members
        elif isinstance(node, ast.MatchValue):
            operands = [node.value]
        for op in operands:
            hits += [(getattr(op, "lineno", 0), v) for v in _names_in(op) if v in names]
    return hits


def test_no_backend_name_compared_outside_backends():
    names = set(registry.names())
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "backends":
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{line}: {name!r}"
                  for line, name in backend_name_uses(path.read_text(), names)]
    assert found == []


def test_the_name_rule_catches_what_it_says():
    names = {"pstore_blk", "ivshmem"}
    bad = ('x == "ivshmem"', 'x in ("pstore_blk", "y")', '{"ivshmem": 1, "pstore_blk": 2}', '{"pstore_blk"}',
           'match x:\n    case "ivshmem": pass', '"pstore_blk" != y')
    for code in bad:
        assert backend_name_uses(code, names), code
    fine = ('"""docs about pstore_blk"""', 'x = "ivshmem"', 'f(backend="pstore_blk")', 'x == other',
            '{"ivshmem": 1, "efi": 2}', '{"ramoops", "pstore_blk"}')
    for code in fine:
        assert not backend_name_uses(code, names), code


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {p: n for p, n in long.items() if n > MAX_LINES and p not in LONG}
    assert over == {}
    assert set(LONG) <= set(long), "an exception for a module that is gone"
