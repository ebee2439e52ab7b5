"""DESIGN §1 rules: the vehicle side (runtime/, bags/, ros/) never imports torch; only ros/ imports rclpy."""

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prune_perception"


def _modules(sub: str) -> list[str]:
    return sorted(f"prune_perception.{sub}.{p.stem}" for p in (PACKAGE / sub).glob("*.py") if p.stem != "__init__")


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
    others += ["prune_perception.node_params", "prune_perception.config", "prune_perception.cli"]
    loaded = _imported_after(others)
    assert "rclpy" not in loaded, "a module outside prune_perception/ros imports rclpy"


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
