"""Print the import graph of the `tuner` package by floor: what imports what, and what runs uphill.

Each top-level module and subpackage of `core/tuner` is a node and sits on one floor (``FLOORS``, lowest
first). A link is any import of one node from another: module level, inside a function, or under
``TYPE_CHECKING`` (those are counted apart as "type-only"). A link to a higher floor is an upward
import; two nodes that import each other are a cycle.

    python scripts/layers.py            # the figures
    python scripts/layers.py --detail   # every upward link and cycle, with the files that make it

``tests/packaging/test_layers.py`` holds the tree to these figures.
"""

from __future__ import annotations

import argparse
import ast
import collections
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "core" / "tuner"

# Lowest first. A node may import from its own floor or any floor below.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "paths", "jsonfile", "durable", "loading", "config_args", "config_paths", "media", "progress"),
    ("types", "routing", "family_profile"),
    ("hookspecs", "config_keys", "config_checks", "plugin_discovery", "plugins", "config", "lora"),
    ("outputs", "distributed"),
    ("data", "cache"),
    ("validate",),
    ("train",),
    ("report",),
    ("commands", "sections", "demo", "setup", "serve", "config_docs", "cli"),
    ("testing",),
)

MAX_LINES = 400


@dataclass
class Graph:
    links: dict[tuple[str, str], set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    type_only: dict[tuple[str, str], bool] = field(default_factory=dict)
    long_modules: list[tuple[str, int]] = field(default_factory=list)

    def floor(self, node: str) -> int:
        for level, names in enumerate(FLOORS):
            if node in names:
                return level
        raise SystemExit(f"scripts/layers.py: `tuner.{node}` is on no floor; add it to FLOORS")

    @property
    def nodes(self) -> set[str]:
        return {n for link in self.links for n in link}

    def upward(self) -> list[tuple[str, str]]:
        return sorted(link for link in self.links if self.floor(link[1]) > self.floor(link[0]))

    def cycles(self) -> list[tuple[str, str]]:
        return sorted(link for link in self.links if link[0] < link[1] and link[::-1] in self.links)


def _node(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tuner" or len(parts) < 2 or parts[1] == "__main__":
        return None
    return parts[1] if ((ROOT / parts[1]).is_dir() or (ROOT / f"{parts[1]}.py").is_file()) else None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden: set[int] = set()
    for stmt in ast.walk(tree):
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            hidden.update(id(n) for part in stmt.body for n in ast.walk(part))
    return hidden


def _targets(stmt: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    if stmt.level:
        base = package.split(".")[: len(package.split(".")) - (stmt.level - 1)]
        module = ".".join(base + ([stmt.module] if stmt.module else []))
    else:
        module = stmt.module or ""
    return [module] + [f"{module}.{alias.name}" for alias in stmt.names]


def build(root: Path = ROOT) -> Graph:
    graph = Graph()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        source = _node(module)
        if source is None:
            continue
        text = path.read_text()
        if (lines := text.count("\n")) > MAX_LINES:
            graph.long_modules.append((module, lines))
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        tree = ast.parse(text)
        hidden = _type_checking_nodes(tree)
        for stmt in ast.walk(tree):
            if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                continue
            for target in {_node(t) for t in _targets(stmt, package)} - {None, source}:
                link = (source, str(target))
                graph.links[link].add(f"{module}:{stmt.lineno}")
                graph.type_only[link] = graph.type_only.get(link, True) and id(stmt) in hidden
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detail", action="store_true", help="list every upward link and cycle")
    args = parser.parse_args()
    graph = build()
    upward, cycles = graph.upward(), graph.cycles()
    runtime_cycles = [c for c in cycles if not (graph.type_only[c] or graph.type_only[c[::-1]])]
    print(f"nodes {len(graph.nodes)}  links {len(graph.links)}")
    print(f"upward links {len(upward)} (type-only {sum(graph.type_only[u] for u in upward)})")
    print(f"cycles {len(cycles)} (needing a runtime import both ways {len(runtime_cycles)})")
    print(f"modules over {MAX_LINES} lines {len(graph.long_modules)}")
    if args.detail:
        for a, b in upward:
            kind = " (type-only)" if graph.type_only[(a, b)] else ""
            print(f"  up  {a} -> {b}{kind}: {', '.join(sorted(graph.links[(a, b)]))}")
        for a, b in cycles:
            print(f"  cycle {a} <-> {b}")
        for module, lines in graph.long_modules:
            print(f"  long {module}: {lines}")


if __name__ == "__main__":
    main()
