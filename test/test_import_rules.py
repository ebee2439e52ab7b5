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
