"""refmeta's imports point one way (docs/architecture.md, "Layout and its one dependency direction").

The imports are read from the source with ``ast`` (every ``import`` statement, those inside
functions too), nothing is imported.  ``from P import m`` counts as an import of the package P
as well as of m: it reads m from P's namespace, which is only partly there while P's
``__init__`` is still running.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALGORITHMS = ("maml", "reptile", "protonet", "matching", "snail", "metanet")
# The layers of the architecture page's diagram, lowest first:
#   device, contract ← checks ← nn ← data ← door ← the six algorithms ← cases ← read ← cli, demos
#   nn ← fast ← demos, benchmarks
LAYER = {"device": 0, "contract": 0, "checks": 1, "nn": 2, "fast": 3, "data": 3, "door": 4,
         **{name: 5 for name in ALGORITHMS}, "cases": 6, "read": 7, "cli": 8, "demos": 8}


def modules(root):
    """{dotted name: path} of every module of the package at ``root``/refmeta, and of demos/
    (installed as refmeta.demos)."""
    found = {}
    for path in sorted((root / "refmeta").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((root / "demos").glob("*.py")) if (root / "demos").is_dir() else ():
        name = "refmeta.demos" if path.stem == "__init__" else f"refmeta.demos.{path.stem}"
        found[name] = path
    return found


def imports(found):
    """{module: set of the modules of ``found`` it imports} (module docstring)."""
    edges = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges[name] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges[name] |= {alias.name for alias in node.names if alias.name in found}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:                               # from . import x, from .a import b
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                edges[name] |= {base} & set(found)
                edges[name] |= {f"{base}.{alias.name}" for alias in node.names} & set(found)
        edges[name].discard(name)
    return edges


def cycles(edges):
    """The groups of modules that import one another, round a cycle (Tarjan's components)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer(name):
    parts = name.split(".")
    return LAYER.get(parts[1]) if len(parts) > 1 else None


def test_no_modules_import_each_other():
    assert cycles(imports(modules(ROOT))) == []


def test_imports_point_down_the_architecture_pages_layers():
    upward = [f"{name} imports {other}" for name, targets in sorted(imports(modules(ROOT)).items())
              for other in sorted(targets)
              if layer(name) is not None and layer(other) is not None and layer(other) > layer(name)]
    assert upward == []


def test_no_algorithm_imports_another_but_matching_protonet():
    """Matching Networks reuse ProtoNet's distances and embedding, the one exception named there."""
    edges = imports(modules(ROOT))
    algorithm = lambda name: name[len("refmeta."):] if name[len("refmeta."):] in ALGORITHMS else None
    across = {(algorithm(name), algorithm(other)) for name in edges for other in edges[name]
              if algorithm(name) and algorithm(other)}
    assert across == {("matching", "protonet")}


def test_a_package_and_its_submodule_importing_each_other_is_a_cycle(tmp_path):
    """The mistake these tests guard against, as refmeta.read made it: the package imports its
    submodule, which takes a sibling from the package's namespace (``from P import sibling``)."""
    read = tmp_path / "refmeta" / "read"
    read.mkdir(parents=True)
    (tmp_path / "refmeta" / "__init__.py").write_text("")
    (read / "__init__.py").write_text("from refmeta.read import trace\n")
    (read / "docstring.py").write_text("")
    (read / "trace.py").write_text("from refmeta.read import docstring\n")
    assert cycles(imports(modules(tmp_path))) == [["refmeta.read", "refmeta.read.trace"]]
    (read / "trace.py").write_text("from refmeta.read.docstring import citations\n")   # the fix
    assert cycles(imports(modules(tmp_path))) == []
