"""A stand-in ``torchvision`` for onnx2torch when the real one is absent or cannot be imported.

onnx2torch imports ``torchvision`` at import time only for two converters: ``NonMaxSuppression``
(``torchvision.ops.nms`` / ``box_convert``) and ``RoiAlign`` (``torchvision.ops.roi_align``). The
registry's torchvision wheels link ``libtorch_cuda``, which the CPU torch this package pins does not
ship (DESIGN §9), so installing it breaks ``import torchvision``. Detector exports rarely contain
those two ops (NMS runs after the model here), so :func:`ensure_torchvision_importable` registers a
minimal module in ``sys.modules`` *only* when the real torchvision cannot be imported; its three
functions raise :class:`ModelLoadError` naming the op. :func:`ops_needing_torchvision` lets the
importer refuse such models up front, naming the op and its nodes, before conversion starts.
"""

from __future__ import annotations

import importlib
import sys
import types

from prune_perception.errors import ModelLoadError

TORCHVISION_OPS = {"NonMaxSuppression": ("nms", "box_convert"), "RoiAlign": ("roi_align",)}
"""ONNX op -> the torchvision.ops functions onnx2torch's converter for it calls."""
STUB_MARKER = "__prune_perception_stub__"


def _stub_function(op_type: str, function: str):
    def unavailable(*args, **kwargs):
        raise ModelLoadError(f"ONNX op {op_type} needs torchvision (torchvision.ops.{function}), which is not "
                             "importable here; remove the op from the exported model (run NMS/RoIAlign after it)")

    unavailable.__name__ = function
    return unavailable


def _build_stub() -> types.ModuleType:
    package = types.ModuleType("torchvision", "prune_perception stand-in: torchvision is not importable here")
    ops = types.ModuleType("torchvision.ops")
    for op_type, functions in TORCHVISION_OPS.items():
        for function in functions:
            setattr(ops, function, _stub_function(op_type, function))
    package.ops = ops
    package.__version__ = "0.0+prune_perception_stub"
    setattr(package, STUB_MARKER, True)
    return package


def torchvision_is_stub() -> bool:
    """True when ``torchvision`` in sys.modules is this module's stand-in."""
    return getattr(sys.modules.get("torchvision"), STUB_MARKER, False)


def ensure_torchvision_importable() -> bool:
    """Import the real torchvision, or register the stand-in if it is absent/broken; True when the stand-in is used."""
    if "torchvision" in sys.modules:
        return torchvision_is_stub()
    try:
        importlib.import_module("torchvision")
        return False
    except Exception:  # absent (ImportError) or built for another torch (OSError/RuntimeError from its C++ ops)
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
    stub = _build_stub()
    sys.modules["torchvision"] = stub
    sys.modules["torchvision.ops"] = stub.ops
    return True


def ops_needing_torchvision(op_types: set[str]) -> set[str]:
    """The ops of ``op_types`` the converter cannot run without a real torchvision (empty when it is real)."""
    return set(op_types) & set(TORCHVISION_OPS) if torchvision_is_stub() else set()
