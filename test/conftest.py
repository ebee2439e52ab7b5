"""Shared pytest setup.

Order matters: the environment below is set at import time, before any test module imports
rclpy, so every ROS process of the test run keeps DDS traffic on loopback (docs/design.md §9)
and uses its own domain id (prune_perception/ros_env.py). `make test` sets the same variables;
a domain id or Fast DDS profile it (or the caller) set is kept.
"""

import os

import pytest

from prune_perception.ros_env import loopback_environment

# --- environment (must run before anything imports rclpy) -----------------------------------
os.environ.update(loopback_environment())


# --- markers ------------------------------------------------------------------------------
def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes more than a few seconds (builds, training); CI runs them too")


# --- no silent skips -----------------------------------------------------------------------
# With PRUNE_STRICT_SKIPS=1 (`make test`, hence CI) a skipped test or module fails the run, unless its reason is
# a genuine property of the machine listed here: everything the README set-up installs must be there.
ALLOWED_SKIP_REASONS = (
    "a CUDA provider is present",   # test_latency_budget: the CPU-only error path cannot be shown on a GPU machine
)
_SKIPPED: list[tuple[str, str]] = []


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")


def _record_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report):   # module-level skips (pytest.importorskip at import time)
    _record_skip(report)


def pytest_runtest_logreport(report):
    _record_skip(report)


def unexpected_skips() -> list[tuple[str, str]]:
    return [(node, reason) for node, reason in _SKIPPED
            if not any(allowed in reason for allowed in ALLOWED_SKIP_REASONS)]


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("PRUNE_STRICT_SKIPS") == "1" and unexpected_skips() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = unexpected_skips()
    if skipped and os.environ.get("PRUNE_STRICT_SKIPS") == "1":
        terminalreporter.section("unexpected skips (PRUNE_STRICT_SKIPS=1: they fail the run)", red=True)
        for node, reason in skipped:
            terminalreporter.write_line(f"{node}: {reason}")


# --- fixtures -----------------------------------------------------------------------------
# (shared fixtures go below this line)
@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A small synthetic driving dataset (COCO layout), generated once per test run."""
    from prune_perception.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("tiny_synth")
    generate_dataset(root, SynthConfig(num_images=40, width=320, height=192, val_fraction=0.25, seed=3, workers=1),
                     progress=False)
    return root


@pytest.fixture(scope="session")
def make_random_checkpoint(tiny_synth, tmp_path_factory):
    """input (H, W) -> a random-init nano detector for ``tiny_synth``'s classes saved at that input size."""
    import torch

    from prune_perception.data.dataset import load_dataset
    from prune_perception.models.arch import default_arch
    from prune_perception.models.checkpoint import save_checkpoint
    from prune_perception.models.detector import Detector

    def make(input_hw: tuple[int, int]):
        torch.manual_seed(0)
        classes = load_dataset(str(tiny_synth), "train").classes
        path = tmp_path_factory.mktemp("random_dense") / "dense.pt"
        save_checkpoint(path, Detector(default_arch("nano", len(classes))).eval(), classes, input_hw)
        return path
    return make


@pytest.fixture(scope="session")
def random_checkpoint(make_random_checkpoint):
    """A random-init nano detector at 96x160 (where mAP is not the point)."""
    return make_random_checkpoint((96, 160))


@pytest.fixture(scope="session")
def tiny_train_config(tiny_synth, tmp_path_factory):
    """A TrainConfig small enough to run a few epochs in seconds."""
    from prune_perception.config import TrainConfig, load_config

    output = tmp_path_factory.mktemp("tiny_train")
    return load_config(TrainConfig, None, [
        f"data.train={tiny_synth}", f"data.val={tiny_synth}", f"output={output}",
        "model.input_size=[128, 192]", "optim.epochs=4", "optim.batch_size=8", "optim.warmup_epochs=0.5",
        "optim.lr=0.004"])


@pytest.fixture(scope="session")
def tiny_onnx_model(tiny_train_config, tmp_path_factory):
    """A really trained tiny detector (4 epochs on ``tiny_synth``), exported to ONNX (fixed batch 1)."""
    import dataclasses

    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.training.trainer import Trainer

    root = tmp_path_factory.mktemp("tiny_onnx")
    config = dataclasses.replace(tiny_train_config, output=str(root / "train"))
    checkpoint = Trainer(config, progress=False).fit().best_checkpoint
    path = root / "tiny.onnx"
    export_onnx(checkpoint, path)
    return path
