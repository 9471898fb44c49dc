"""The package's shape: no module imports one that (directly or not) imports it back, top-level or lazy."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "higgs_train"


def _graph() -> dict[str, set[str]]:
    graph = {}
    for file in PACKAGE.rglob("*.py"):
        name = ".".join(file.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("higgs_train"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("higgs_train"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                found.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_module_imports_itself_back():
    assert _cycles(_graph()) == []


def test_every_run_folder_name_is_defined_in_one_map():
    from higgs_train import run_folder

    names = {v for k, v in vars(run_folder).items() if k.isupper() and isinstance(v, str)}
    elsewhere = []
    for file in PACKAGE.rglob("*.py"):
        if file.name == "run_folder.py":
            continue
        for node in ast.parse(file.read_text()).body:  # module constants spelling a run-folder name again
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in names:
                elsewhere.append(f"{file.relative_to(PACKAGE)}: {ast.unparse(node)}")
    assert not elsewhere, elsewhere
