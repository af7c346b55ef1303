"""Structure rules (issue #12): one-way imports, a ROS-free core, CLIs in one place, short functions.

Static checks over the source with ``ast``: they read every import (module level and inside functions, and
``importlib.import_module`` calls with a literal name), so a hidden back-import counts.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "tscm_ros"
MAX_FUNCTION_LINES = 80
SCRIPT_FOLDERS = ("benchmarks", "scripts")  # outside the package, same length limit


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _imported_names(path: Path, module: str, modules: frozenset[str] = frozenset()) -> set[str]:
    """Every module name this file imports, resolved to absolute names (relative imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from pkg import name``: the submodule pkg.name when there is one, else pkg itself
            names.update(
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                for alias in node.names
            )
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def import_graph() -> nx.DiGraph:
    """Edges module -> imported package module (only modules of this package)."""
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module, path in modules.items():
        for name in _imported_names(path, module, frozenset(modules)):
            if name in modules and name != module:
                graph.add_edge(module, name)
    return graph


def test_import_graph_has_no_cycles():
    graph = import_graph()
    cycles = [
        sorted(component) for component in nx.strongly_connected_components(graph) if len(component) > 1
    ]
    assert not cycles, f"import cycles: {cycles}"


def test_only_the_ros_layer_imports_rclpy():
    offenders = [
        module
        for module, path in _modules().items()
        if not module.startswith("tscm_ros.ros")
        and any(name.split(".")[0] == "rclpy" for name in _imported_names(path, module))
    ]
    assert not offenders


def test_only_cli_modules_import_argparse():
    offenders = [
        module
        for module, path in _modules().items()
        if not module.startswith("tscm_ros.cli") and "argparse" in _imported_names(path, module)
    ]
    assert not offenders


def _checked_sources() -> dict[str, Path]:
    """The package's modules, then the benchmark and script files (named by their path in the repository)."""
    sources = dict(_modules())
    for folder in SCRIPT_FOLDERS:
        for path in sorted((PACKAGE_ROOT.parent / folder).rglob("*.py")):
            sources[path.relative_to(PACKAGE_ROOT.parent).as_posix()] = path
    return sources


def test_no_function_is_longer_than_the_limit():
    long_functions = []
    for module, path in _checked_sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name}: {length} lines")
    assert not long_functions


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from . import b", {"pkg.b"}),
        ("from . import CONSTANT", {"pkg"}),
        ("import pkg.c", {"pkg.c"}),
        ("def f():\n    from .b import g", {"pkg.b"}),
        ("import importlib\nimportlib.import_module('pkg.c')", {"pkg.c"}),
    ],
)
def test_imports_are_resolved(tmp_path, source, expected):
    """The checker sees relative, absolute, hidden and importlib imports (so the rules above can fail)."""
    package = tmp_path / "pkg"
    package.mkdir()
    module = package / "a.py"
    module.write_text(source + "\n")
    assert expected <= _imported_names(module, "pkg.a", frozenset({"pkg", "pkg.a", "pkg.b", "pkg.c"}))


ARCHITECTURE = PACKAGE_ROOT.parent / "docs" / "ARCHITECTURE.md"


def _unit(module: str) -> str:
    """The layer unit of a module: the module or package directly under ``tscm_ros``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def unit_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for importer, imported in import_graph().edges:
        if _unit(importer) != _unit(imported):
            edges.setdefault(_unit(importer), set()).add(_unit(imported))
    return edges


def documented_layers() -> dict[str, int]:
    """unit -> layer number, from the layer table of docs/ARCHITECTURE.md."""
    layers: dict[str, int] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            for unit in re.findall(r"`([a-z_]+)`", cells[1]):
                assert unit not in layers, f"{unit} is in two layers"
                layers[unit] = int(cells[0])
    return layers


def test_every_unit_has_one_documented_layer():
    units = {_unit(module) for module in _modules()} - {"tscm_ros"}
    assert set(documented_layers()) == units


def test_imports_only_go_down_the_documented_layers():
    layers = documented_layers()
    upward = [
        f"{importer} (layer {layers[importer]}) -> {imported} (layer {layers[imported]})"
        for importer, targets in unit_edges().items()
        if importer in layers
        for imported in targets
        if imported in layers and layers[imported] > layers[importer]
    ]
    assert not upward


def test_documented_import_list_matches_the_code():
    text = ARCHITECTURE.read_text()
    block = text.split("```text\n", 1)[1].split("```", 1)[0]
    documented = {
        line.split("->")[0].strip(): set(line.split("->")[1].split())
        for line in block.splitlines()
        if "->" in line
    }
    code = unit_edges()
    listing = "\n".join(f"    {unit} -> {' '.join(sorted(code[unit]))}" for unit in sorted(code))
    assert documented == code, f"paste into docs/ARCHITECTURE.md:\n{listing}"


def test_every_package_import_names_an_existing_module():
    """A moved module leaves no import behind (one hidden inside a function fails only when it runs)."""
    modules = _modules()
    dangling = [
        f"{module}: {name}"
        for module, path in modules.items()
        for name in _imported_names(path, module, frozenset(modules))
        if name.split(".")[0] == "tscm_ros" and name not in modules
    ]
    assert not dangling
