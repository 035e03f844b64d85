"""The layers: svrl_core is a pure library (no Prefect, no DVC); flows and tasks import without cycles."""

import ast
import sys
from pathlib import Path

FORBIDDEN = {"prefect", "dvc", "prefect_dask"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_svrl_core_imports_neither_prefect_nor_dvc():
    files = list(Path("svrl_core").rglob("*.py"))
    assert len(files) > 20
    offenders = {str(f): imported_roots(f) & FORBIDDEN for f in files if imported_roots(f) & FORBIDDEN}
    assert offenders == {}


def test_bundle_runtime_needs_no_svrl_code():
    # tokenizers: only for OpenVLA-OFT bundles, whose instructions become Llama tokens; PIL: only for bundles
    # whose images take upstream LIBERO checkpoints' JPEG + lanczos3 path
    third_party = imported_roots(Path("svrl_core/export/runtime.py")) - set(sys.stdlib_module_names)
    assert third_party <= {"numpy", "torch", "tokenizers", "PIL"}


def project_imports(roots: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the modules under `roots` it imports anywhere (top level or inside a function)."""
    paths = {".".join(p.with_suffix("").parts).removesuffix(".__init__"): p for r in roots for p in Path(r).rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[module] = (names & paths.keys()) - {module}
    return graph


def test_flows_and_tasks_import_no_module_that_imports_them_back():
    graph = project_imports(("flows", "tasks"))
    assert {"flows.cli", "flows.pipeline", "flows.svrl"} <= graph.keys()
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(graph[module]):
            if imported in path:
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in done:
                visit(imported, path + [imported])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])
    assert cycles == []
