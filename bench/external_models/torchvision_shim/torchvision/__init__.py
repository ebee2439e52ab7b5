"""Import shim for YOLOX and Ultralytics in make_models.sh's venv, NOT torchvision.

The registry's torchvision wheels link libtorch_cuda, which the CPU torch 2.13.0 wheel lacks, so
torchvision cannot be imported next to it. YOLOX and Ultralytics import it at module level but, for
building, training and exporting a detector, use only ``torchvision.ops.nms`` / ``batched_nms``
(during validation and prediction). Those two are implemented here in plain torch; anything else
raises ImportError / AttributeError as if it were missing.
"""

__version__ = "0.28.0+nmsshim"

from . import ops  # noqa: E402,F401
