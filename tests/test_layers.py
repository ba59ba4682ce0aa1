"""The package's import graph: no circles, and no arrow pointing up (DESIGN.md's layers).

Imports inside functions count as much as those at the top: a lazy import still ties two modules.
"""
import ast
from pathlib import Path

import mmdlm

ROOT = Path(mmdlm.__file__).parent
# Lower floors never import higher ones; a module may import its own floor and the floors below.
FLOORS = [
    ("mmdlm", "mmdlm.provenance", "mmdlm.io", "mmdlm.config", "mmdlm.placeholders", "mmdlm.images", "mmdlm.cards"),
    ("mmdlm.diffusion",),
    ("mmdlm.text", "mmdlm.multimodal"),
    ("mmdlm.schedulers",),
    ("mmdlm.pipelines",),
    ("mmdlm.data", "mmdlm.eval", "mmdlm.training"),
    ("mmdlm.commands", "mmdlm.demo"),
    ("mmdlm.cli", "mmdlm.__main__"),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("mmdlm", *path.relative_to(ROOT).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The mmdlm modules `name` imports (the deepest known module of each import)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def floor(name: str) -> int:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    assert best is not None, f"{name} sits on no floor: add it to FLOORS"
    return best[0]


def graph() -> dict[str, set[str]]:
    known = modules()
    # a package's __init__ re-exports its modules; importing the package is importing them
    return {name: {t for t in imports(name, path, known) if not name.startswith(t + ".")}
            for name, path in known.items()}


def test_no_arrow_points_up():
    up = [f"{a} -> {b}" for a, targets in graph().items() for b in targets if floor(b) > floor(a)]
    assert not up, "imports from a higher floor:\n" + "\n".join(sorted(up))


def test_no_import_circles():
    edges = {a: {b for b in bs if not b.endswith("__init__")} for a, bs in graph().items()}
    circles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)
