"""The one-way house: the library packages import each other in one direction only.

``reconstruct`` imports neither ``envs`` nor ``agents``; ``envs`` does not import ``agents``; no
library package imports the programs (``train``, ``evaluate``, ``experiment``, ...), nor the
``studies`` and ``benchmarks`` folders; and no two library modules import each other in a circle.
Inside ``envs`` the rooms are layered too: ``envs.data`` imports no other room,
``envs.instruments`` only ``envs.data``, ``envs.acquisition`` not the live loop
(``envs.live``), which may import them all. Every import
counts, also one inside a function, so a broken arrow cannot hide from this test by being lazy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("reconstruct", "envs", "agents")
PROGRAMS = (
    "train", "evaluate", "experiment", "serve", "train_distributed", "studies", "benchmarks"
)
#: What each library package (or room of one) must never import; a module follows the most
#: specific entry its name starts with.
FORBIDDEN = {
    "reconstruct": {"envs", "agents", *PROGRAMS},
    "envs": {"agents", *PROGRAMS},
    "envs.data": {"envs.instruments", "envs.acquisition", "envs.live", "agents", *PROGRAMS},
    "envs.instruments": {"envs.acquisition", "envs.live", "agents", *PROGRAMS},
    "envs.acquisition": {"envs.live", "agents", *PROGRAMS},
    "envs.live": {"agents", *PROGRAMS},
    "agents": set(PROGRAMS),
}


def forbidden_for(module: str) -> set[str]:
    """What ``module`` must never import: the most specific entry of :data:`FORBIDDEN`."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if (key := ".".join(parts[:n])) in FORBIDDEN:
            return FORBIDDEN[key]
    return set()


def is_forbidden(target: str, forbidden: set[str]) -> bool:
    """Whether ``target`` is one of ``forbidden`` or inside one of them."""
    return any(target == name or target.startswith(name + ".") for name in forbidden)


def module_name(path: Path, root: Path = ROOT) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def imported_names(source: str, module: str) -> set[str]:
    """Every module named by an import in ``source`` (absolute names; relative ones resolved
    against ``module``), with ``from X import Y`` giving both ``X`` and ``X.Y``."""
    names: set[str] = set()
    package = module.rsplit(".", 1)[0] if "." in module else module
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: max(len(package.split(".")) - node.level + 1, 0)]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def library_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Library module -> every module name it imports."""
    graph = {}
    for package in LIBRARY:
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(path, root)
            graph[name] = imported_names(path.read_text(), name)
    return graph


def broken_arrows(graph: dict[str, set[str]]) -> list[str]:
    """``"MODULE imports TARGET"`` for every forbidden import (``X.name`` from ``from X import
    name`` is reported as ``X``)."""
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if is_forbidden(target, forbidden_for(module))
        and not (
            target.rpartition(".")[0] in targets
            and is_forbidden(target.rpartition(".")[0], forbidden_for(module))
        )
    )


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one library module (Tarjan's algorithm)."""
    edges = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def test_library_imports_flow_one_way():
    assert broken_arrows(library_imports()) == []


def test_library_has_no_import_cycle():
    assert import_cycles(library_imports()) == []


@pytest.mark.parametrize(
    ("files", "broken", "cycles"),
    [
        ({"reconstruct/a.py": "def f():\n    from envs.data.twin import make_twin\n"},
         ["reconstruct.a imports envs.data.twin"], []),
        ({"envs/a.py": "import agents.policy\n"}, ["envs.a imports agents.policy"], []),
        ({"agents/a.py": "def f():\n    import train\n"}, ["agents.a imports train"], []),
        ({"agents/a.py": "from studies import paired\n"}, ["agents.a imports studies"], []),
        ({"envs/a.py": "from envs import b\n", "envs/b.py": "def f():\n    import envs.a\n"},
         [], [["envs.a", "envs.b"]]),
        ({"envs/a.py": "from . import b\n", "envs/b.py": "from .a import x\n"},
         [], [["envs.a", "envs.b"]]),
        ({"envs/a.py": "from envs import b\n", "envs/b.py": "import numpy\n"}, [], []),
        ({"envs/data/a.py": "from envs.instruments.cost import CostModel\n"},
         ["envs.data.a imports envs.instruments.cost"], []),
        ({"envs/acquisition/a.py": "def f():\n    from envs.live import loop\n"},
         ["envs.acquisition.a imports envs.live"], []),
        ({"envs/live/a.py": "from envs.acquisition import env\n"}, [], []),
    ],
)
def test_the_check_sees_each_kind_of_broken_arrow(tmp_path, files, broken, cycles):
    """The checks above would fail on a lazy import, a relative import or a two-module cycle."""
    for package in LIBRARY:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, source in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    graph = library_imports(tmp_path)
    assert broken_arrows(graph) == broken
    assert import_cycles(graph) == cycles
