"""docs/design.md §1 rules: the vehicle side (runtime/, bags/, ros/) never imports torch; only ros/ imports rclpy."""

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prune_perception"


def _modules(sub: str) -> list[str]:
    """Every module of prune_perception/<sub>/, subpackages included."""
    return sorted(".".join(("prune_perception",) + p.relative_to(PACKAGE).with_suffix("").parts)
                  for p in (PACKAGE / sub).rglob("*.py") if p.stem != "__init__")


def _imported_after(modules: list[str]) -> set[str]:
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.mark.parametrize("sub", ["runtime", "ros", "bags"])
def test_vehicle_side_never_imports_torch(sub):
    modules = _modules(sub)
    if not modules:
        pytest.skip(f"prune_perception/{sub}/ has no modules yet")
    loaded = _imported_after(modules + ["prune_perception.node_params"])
    offenders = sorted(m for m in loaded if m == "torch" or m.startswith(("torch.", "torch_pruning",
                                                                          "prune_perception.training",
                                                                          "prune_perception.pruning",
                                                                          "prune_perception.models")))
    assert not offenders, f"importing prune_perception.{sub} pulls in {offenders[:5]}"


def test_only_ros_imports_rclpy():
    others = [m for sub in ("runtime", "data", "evaluation", "export") for m in _modules(sub)]
    others += ["prune_perception.node_params", "prune_perception.config", "prune_perception.cli",
               "prune_perception.ros_env"]
    loaded = _imported_after(others)
    assert "rclpy" not in loaded, "a module outside prune_perception/ros imports rclpy"


# ------------------------------------------------------------------ the import graph
def _import_graph() -> dict[str, dict[str, set[str]]]:
    """module -> {imported prune_perception module -> names taken from it}, from every import statement (lazy too)."""
    import ast

    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph: dict[str, dict[str, set[str]]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        edges.setdefault(alias.name, set())
            elif isinstance(node, ast.ImportFrom) and node.module in modules and node.level == 0:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    if child in modules:          # `from package import submodule`
                        edges.setdefault(child, set())
                    else:
                        edges.setdefault(node.module, set()).add(alias.name)
    return graph


def test_no_import_cycle():
    graph = _import_graph()
    state: dict[str, int] = {}       # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, {})):
            if target == module or state.get(target) == 2:
                continue
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        state[module] = 2
        return None

    assert len(graph) > 50
    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_private_name_of_another():
    offenders = [f"{module} imports {name} from {target}" for module, edges in _import_graph().items()
                 for target, names in edges.items() if target != module
                 for name in names if name.startswith("_") and not name.startswith("__")]
    assert not offenders, offenders


def test_external_model_code_stays_out_of_the_package_and_its_tests():
    """YOLOX and Ultralytics (AGPL-3.0) only make test models, in bench/external_models' own venv."""
    import ast

    root = PACKAGE.parent
    offenders = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(root / "test").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {name}" for name in names
                          if name.split(".")[0] in ("yolox", "ultralytics")]
    assert not offenders, offenders
    for spec in ("setup.py", "package.xml", "scripts/setup_env.sh"):
        text = (root / spec).read_text().lower()
        assert "yolox" not in text and "ultralytics" not in text, f"{spec} names an external model package"
