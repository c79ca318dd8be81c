"""The package graph of tinyfaces-trt, read from the imports, and the rules it must keep.

    python tools/import_graph.py            # print violations (exit 1 if any) and the graph
    python tools/import_graph.py --write    # also rewrite the graph in docs/DESIGN.md

Every ``import`` / ``from ... import`` in the project's Python files counts, lazy ones inside
functions included. Modules are grouped into packages (the nodes of the picture); the rules:

- ``core`` imports nothing else of ours, and of third-party modules only numpy, tqdm and filelock;
- ``kernels`` imports only ``core``;
- ``runtime`` imports ``core``, and ``kernels`` only through the declared seam
  ``runtime/backends/cuda_stages.py``; never ``export``, the app layer, or torch;
- ``export`` imports only ``core``;
- the app layer (``tinyfaces_trt/``) may import every layer; no layer imports it;
- no cycle between packages.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "tinyfaces_trt"
#: top-level folder -> import name (the app layer is the package's own folder)
FOLDERS = {"core": "core", "kernels": "kernels", "runtime": "runtime", "export": "export",
           PACKAGE: ""}
FOLDER_OF = {(name or "app"): folder for folder, name in FOLDERS.items()}
LAYERS = ("core", "kernels", "runtime", "export", "app")
ALLOWED = {
    "core": set(),
    "kernels": {"core"},
    "runtime": {"core", "kernels"},
    "export": {"core"},
    "app": {"core", "kernels", "runtime", "export", "app"},
}
#: (importing module, imported layer) pairs allowed beyond ALLOWED's layer rule... or narrowing it
SEAMS = {("runtime", "kernels"): {f"{PACKAGE}.runtime.backends.cuda_stages"}}
FORBIDDEN_THIRD_PARTY = {"runtime": {"torch", "torchvision"}, "core": {"torch", "torchvision"},
                         "kernels": {"torch", "torchvision"}}
#: The only third-party modules a layer may import at all (beyond the standard library).
THIRD_PARTY_ONLY = {"core": {"numpy", "tqdm", "filelock"}}
BEGIN, END = "<!-- import-graph:begin -->", "<!-- import-graph:end -->"


def module_name(path: Path, root: Path) -> str | None:
    """``runtime/backends/cuda_stages.py`` -> ``tinyfaces_trt.runtime.backends.cuda_stages``."""
    rel = path.relative_to(root)
    folder = rel.parts[0]
    if folder not in FOLDERS:
        return None
    parts = [PACKAGE] + ([FOLDERS[folder]] if FOLDERS[folder] else []) + list(rel.parts[1:])
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer of one of our modules: ``tinyfaces_trt.runtime.x`` -> ``runtime``."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != "app":
        return parts[1]
    return "app"


def node_of(module: str) -> str:
    """The picture's node: a layer, split into its subpackages (``runtime.backends``,
    ``app.parity``) so that the graph shows them. A layer's ``__init__`` is its public-API
    facade (re-exports), the node ``<layer>.api``."""
    layer = layer_of(module)
    parts = module.split(".")
    rest = parts[2:] if layer != "app" else parts[1:]
    if not rest:
        return f"{layer}.api"
    folder = ROOT / FOLDER_OF[layer] / rest[0]  # a subpackage, not a build output (kernels/build/)
    sub = rest[0] if len(rest) > 1 or any(folder.glob("*.py")) else ""
    return f"{layer}.{sub}" if sub else layer


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    found = []
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(target)
            # "from pkg import sub" may import a submodule
            found += [f"{target}.{alias.name}" for alias in node.names]
    return found


def collect(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules it imports (ours by full name, third-party by top-level name)."""
    ours: dict[str, Path] = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            name = module_name(path, root)
            if name:
                ours[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in ours.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for target in _imports(tree, name, path.name == "__init__.py"):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                # keep the longest prefix that is one of our modules
                parts = target.split(".")
                while parts and ".".join(parts) not in ours:
                    parts.pop()
                if parts and ".".join(parts) != PACKAGE:
                    targets.add(".".join(parts))
            elif target:
                targets.add(target.split(".")[0])
        targets.discard(name)
        graph[name] = targets
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule, and every cycle between packages."""
    problems = []
    for module, targets in sorted(graph.items()):
        layer = layer_of(module)
        for target in sorted(targets):
            if target.startswith(PACKAGE + "."):
                other = layer_of(target)
                if other == layer:
                    continue
                if other not in ALLOWED[layer]:
                    problems.append(f"{module} imports {target}: {layer} may not import {other}")
                seam = SEAMS.get((layer, other))
                if seam is not None and module not in seam:
                    problems.append(f"{module} imports {target}: {layer} reaches {other} only "
                                    f"through {', '.join(sorted(seam))}")
            elif target in FORBIDDEN_THIRD_PARTY.get(layer, ()):
                problems.append(f"{module} imports {target}: {layer} never imports {target}")
            elif (layer in THIRD_PARTY_ONLY and target not in sys.stdlib_module_names
                  and target not in THIRD_PARTY_ONLY[layer]):
                problems.append(f"{module} imports {target}: {layer} imports only the standard "
                                f"library and {', '.join(sorted(THIRD_PARTY_ONLY[layer]))}")
    problems += [f"import cycle between packages: {' -> '.join(c)}" for c in cycles(package_graph(graph))]
    return problems


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """node -> nodes it imports (our modules only; self-edges dropped)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        src = node_of(module)
        edges[src]
        for target in targets:
            if target.startswith(PACKAGE + "."):
                dst = node_of(target)
                if dst != src:
                    edges[src].add(dst)
    return dict(edges)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected component with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def mermaid(edges: dict[str, set[str]]) -> str:
    """The package graph as a Mermaid flowchart (GitHub renders it as a picture)."""
    lines = ["```mermaid", "flowchart BT"]
    for layer in LAYERS:
        nodes = sorted(n for n in edges if n.split(".")[0] == layer)
        if not nodes:
            continue
        lines.append(f"  subgraph {layer}")
        lines += [f"    {n.replace('.', '_')}[{n}]" for n in nodes]
        lines.append("  end")
    for src in sorted(edges):
        for dst in sorted(edges[src]):
            lines.append(f"  {src.replace('.', '_')} --> {dst.replace('.', '_')}")
    lines.append("```")
    return "\n".join(lines)


def design_section(root: Path = ROOT) -> str:
    """The generated text that docs/DESIGN.md holds between its import-graph markers."""
    graph = collect(root)
    return (f"{BEGIN}\n<!-- generated by `python tools/import_graph.py --write`; "
            f"tests/test_architecture.py checks it is current -->\n"
            f"{mermaid(package_graph(graph))}\n{END}")


def write_design(root: Path = ROOT) -> bool:
    """Rewrites the section in docs/DESIGN.md; True when it changed."""
    path = root / "docs" / "DESIGN.md"
    text = path.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + design_section(root) + text[end:]
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the graph in docs/DESIGN.md")
    args = parser.parse_args(argv)
    graph = collect()
    problems = violations(graph)
    print(mermaid(package_graph(graph)))
    for problem in problems:
        print(f"violation: {problem}", file=sys.stderr)
    if args.write and write_design():
        print("docs/DESIGN.md updated", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
