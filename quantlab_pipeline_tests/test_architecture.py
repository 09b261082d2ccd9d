"""The shape of the house (docs/architecture.md), checked on the source itself.

The layers' rules are what keep a rule of the docs in one obvious file: the pure core imports
neither Dagster nor anything that touches files, databases or processes; the storage layer does
not import Dagster; no module imports from a layer above its own (`LAYERS`); nothing imports in
a circle; no module grows past a size one can read.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quantlab_pipeline"
MAX_LINES = 500

# Modules whose import means I/O (files, databases, processes, locks) or orchestration.
IO_MODULES = ("duckdb", "subprocess", "filelock", "pyarrow.parquet", "shutil", "tarfile", "tempfile", "glob")
DAGSTER = ("dagster", "dagster_duckdb")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at any depth of the file (lazy imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


# Lowest first; a module may import its own layer and those below, never one above
# (docs/architecture.md "Layers"). The warm server's transport (`warm.protocol`, `warm.client`)
# sits below the CLI, which asks it for run workers; the server itself, which runs CLI commands
# and run workers, sits above the CLI, with the console script and the package's Python API.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("quantlab_pipeline.core",),
    ("quantlab_pipeline.storage", "quantlab_pipeline.sources", "quantlab_pipeline.report"),
    ("quantlab_pipeline.orchestration", "quantlab_pipeline.definitions"),
    ("quantlab_pipeline.warm", "quantlab_pipeline.warm.protocol", "quantlab_pipeline.warm.client"),
    ("quantlab_pipeline.cli",),
    (
        "quantlab_pipeline.warm.server",
        "quantlab_pipeline.warm.prebuild",
        "quantlab_pipeline.__main__",
        "quantlab_pipeline",
    ),
)


def _layer(module: str) -> int:
    """The layer of the longest prefix in `LAYERS` that names `module` or a package above it."""
    matches = [
        (len(prefix), rank)
        for rank, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return max(matches)[1]


MODULES = _modules()
IMPORTS = {name: _imports(path, name) for name, path in MODULES.items()}


def _internal(name: str) -> set[str]:
    return {m for m in IMPORTS[name] if m in MODULES and m != name}


def _is(imported: str, prefixes: tuple[str, ...]) -> bool:
    return any(imported == p or imported.startswith(p + ".") for p in prefixes)


def test_the_import_graph_has_no_cycle():
    """Package `__init__` edges excluded only where Python itself adds them (a submodule's parent)."""
    graph = {name: {m for m in _internal(name) if not name.startswith(m + ".")} for name in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_module_imports_from_a_layer_above_its_own():
    """Imports of a module's own parent packages excepted: Python runs them first anyway."""
    upward = {
        f"{name} -> {imported}"
        for name in MODULES
        for imported in _internal(name)
        if not name.startswith(imported + ".") and _layer(imported) > _layer(name)
    }
    assert upward == set(), sorted(upward)


def test_the_layers_are_what_the_docs_describe():
    """A layer check that passed on a shuffled table would prove nothing: a few arrows by hand."""
    assert _layer("quantlab_pipeline.core.spec") < _layer("quantlab_pipeline.storage.run_dir")
    assert _layer("quantlab_pipeline.storage.run_dir") < _layer("quantlab_pipeline.orchestration.month_runner")
    assert _layer("quantlab_pipeline.orchestration.month_runner") < _layer("quantlab_pipeline.warm.client")
    assert _layer("quantlab_pipeline.warm.client") < _layer("quantlab_pipeline.cli.months")
    assert _layer("quantlab_pipeline.cli.months") < _layer("quantlab_pipeline.warm.server")
    assert _layer("quantlab_pipeline.warm.server") == _layer("quantlab_pipeline.__main__")


@pytest.mark.parametrize("layer", ["quantlab_pipeline.core", "quantlab_pipeline.storage", "quantlab_pipeline.sources"])
def test_core_storage_and_sources_never_import_dagster(layer):
    offenders = {
        name: sorted(m for m in IMPORTS[name] if _is(m, DAGSTER)) for name in MODULES if name.startswith(layer)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_core_does_no_io_and_reaches_no_outer_layer():
    outer = (
        "quantlab_pipeline.sources",
        "quantlab_pipeline.storage",
        "quantlab_pipeline.orchestration",
        "quantlab_pipeline.cli",
    )
    offenders = {
        name: sorted(m for m in IMPORTS[name] if _is(m, IO_MODULES) or _is(m, outer))
        for name in MODULES
        if name.startswith("quantlab_pipeline.core")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    opens = [
        name
        for name in MODULES
        if name.startswith("quantlab_pipeline.core")
        for node in ast.walk(ast.parse(MODULES[name].read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", ""))
        in {"open", "read_text", "read_bytes", "write_text", "write_bytes"}
    ]
    assert opens == []


def test_storage_does_not_reach_the_dagster_layer_or_the_cli():
    outer = ("quantlab_pipeline.orchestration", "quantlab_pipeline.cli")
    offenders = {
        name: sorted(m for m in IMPORTS[name] if _is(m, outer))
        for name in MODULES
        if name.startswith("quantlab_pipeline.storage")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_module_is_too_long_to_read():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_report_builds_figures_and_the_backtest_never_imports_it():
    """`report/` builds matplotlib figures and a page from frames: no renderer of its own (no Pillow),
    no file I/O, under `MAX_LINES` in all; only the `quantlab report` command imports it, so no
    backtest step draws (docs/reports.md)."""
    report = [name for name in MODULES if name.startswith("quantlab_pipeline.report")]
    assert sum(len(MODULES[name].read_text().splitlines()) for name in report) < MAX_LINES
    assert {n: m for n in report for m in IMPORTS[n] if _is(m, ("PIL", *IO_MODULES, *DAGSTER))} == {}
    importers = {n for n in MODULES for m in IMPORTS[n] if _is(m, ("quantlab_pipeline.report",)) and n not in report}
    assert importers == {"quantlab_pipeline.cli.report"}
