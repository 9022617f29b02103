"""Imports flow one way (docs/architecture.md): configs, _atomic, _ext < ops < data < nn, eval
< models < trainer < the command lines; no package imports a higher one, none forms a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import mmfast

ROOT = Path(mmfast.__file__).resolve().parent
COMMANDS = {"train", "recommend", "evaluate", "pretrain", "tune"}
RANK = {"configs": 0, "_atomic": 0, "_C": -1, "_ext": 0, "_info": 0.5, "ops": 1, "data": 2, "nn": 3,
        "eval": 3, "models": 4, "trainer": 5, **{c: 6 for c in COMMANDS}, "": 7}


def _unit(module: str) -> str:
    """The layer a module belongs to: its first component under mmfast ('' = mmfast itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _edges() -> list[tuple[str, str, str]]:
    """(importing module, imported mmfast module, file) for every import, lazy ones included."""
    out = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                target = node.module
                if node.module == "mmfast":  # from mmfast import ops
                    target = names[1] if len(names) == 2 else node.module
                    for n in names[1:]:
                        out.append((module, n, str(path)))
                    continue
                out.append((module, target, str(path)))
            elif isinstance(node, ast.Import):
                out.extend((module, a.name, str(path)) for a in node.names)
    return [(a, b, f) for a, b, f in out if b == "mmfast" or b.startswith("mmfast.")]


def test_every_module_has_a_layer():
    units = {_unit(a) for a, _, _ in _edges()}
    assert units <= set(RANK), units - set(RANK)


def test_no_import_runs_upward():
    bad = []
    for a, b, f in _edges():
        ua, ub = _unit(a), _unit(b)
        if ua == ub:
            continue
        if ub == "" and ua != "":
            bad.append(f"{a} -> {b} ({f}): the package root is the top")
        elif RANK[ub] >= RANK[ua] and not (ua in COMMANDS and ub in COMMANDS):
            bad.append(f"{a} -> {b} ({f})")
    assert not bad, "imports that run upward or sideways:\n" + "\n".join(bad)


def test_no_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    modules = {a for a, _, _ in _edges()}
    for a, b, _ in _edges():
        while b not in modules and "." in b:  # from mmfast.ops.csr import x -> mmfast.ops.csr
            b = b.rsplit(".", 1)[0]
        if b != a and b in modules and not b.endswith(("__init__",)):
            graph.setdefault(a, set()).add(b)
    # A package's __init__ re-exports its modules: edges into a package mean "into its modules",
    # so package __init__ nodes are kept but a module importing its own package is skipped.
    for a in list(graph):
        graph[a] = {b for b in graph[a] if not a.startswith(b + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_optional_dependencies_stay_optional():
    """Every model registers and every command's parser builds without the extras' packages
    (SciPy for PGL's SVD, Ray and Optuna for sweeps): they are imported where they are used."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ('scipy', 'ray', 'optuna'): sys.modules[name] = None\n"
            "import mmfast.models, mmfast.train, mmfast.evaluate, mmfast.recommend\n"
            "assert 'PGL' in mmfast.models.available() and 'ItemKNNCBF' in mmfast.models.available()\n"
            "mmfast.train.build_parser()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
