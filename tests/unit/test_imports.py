"""guard's import graph: no module or package imports in a cycle, and the stores import only what
sits below them. Read from the source with ast (every import counts, also those inside a function
or under TYPE_CHECKING: a cycle hidden there is still a cycle)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import guard

ROOT = Path(guard.__file__).parent
# what the stores may import: they sit below everything but the data they store
BELOW_STORES = ("guard.stores", "guard.domain", "guard.errors", "guard.canonical", "guard.hashchain", "guard.log")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(name: str, path: Path) -> Iterable[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def module_graph() -> dict[str, set[str]]:
    """module -> the guard modules it imports (`from guard.x import y` names guard.x.y if it is one)."""
    modules = _modules()

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = {resolve(t) for t in _imported(name, path) if t == "guard" or t.startswith("guard.")}
        graph[name] = {d for d in deps if d is not None and d != name}
    return graph


def package_graph(modules: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """The same graph one level down: guard.identity.mtls counts as guard.identity, guard.app as itself."""

    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {top(m): set() for m in modules}
    for name, deps in modules.items():
        graph[top(name)] |= {top(d) for d in deps if top(d) != top(name)}
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_and_passes_a_tree() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    graph = module_graph()
    assert "guard.routes.tools" in graph["guard.app"]  # `from guard.routes import tools` is seen
    assert "guard.hashchain" in graph["guard.stores.memory"]


def test_no_module_imports_in_a_cycle() -> None:
    assert cycles(module_graph()) == []


def test_no_package_imports_in_a_cycle() -> None:
    assert cycles(package_graph(module_graph())) == []


def test_the_stores_import_only_what_sits_below_them() -> None:
    upward = {
        (name, dep)
        for name, deps in module_graph().items() if name.startswith("guard.stores")
        for dep in deps if not dep.startswith(BELOW_STORES)
    }
    assert upward == set()


def test_the_aiohttp_request_stays_in_the_routes() -> None:
    """identity/, policy/ and stages/ take what a request says (headers, its transport, a
    ToolCall), never the aiohttp request itself: the routes read it (guard.routes.call)."""
    reaching = sorted(
        str(path.relative_to(ROOT.parent))
        for package in ("identity", "policy", "stages")
        for path in (ROOT / package).rglob("*.py")
        if any(name in path.read_text(encoding="utf-8") for name in ("web.Request", "web.BaseRequest", "BaseRequest"))
    )
    assert reaching == []
