"""The names the `prune:` settings accept, one table each. Torch-free: the CLI builds its choices from them."""

IMPORTANCE_CRITERIA = ("l1", "l2", "taylor", "bn_scale", "random")
GRADIENT_FREE_CRITERIA = tuple(m for m in IMPORTANCE_CRITERIA if m != "taylor")   # taylor needs loss gradients
SCHEDULES = ("oneshot", "iterative", "elastic")
GRANULARITIES = ("channel", "weight", "kernel")
BUDGET_SEARCHES = ("steps", "descending", "bisect")
LISTED_BUDGET_SEARCHES = ("steps", "descending")   # over prune.budget_ratios: their candidates can fan out
LATENCY_DEVICES = ("cpu", "cuda")
RAW_OUTPUT_FORMAT = "raw"   # imported detectors whose outputs we cannot decode: matched element-wise
IMPORTED_MODEL_FORMATS = ("auto", "native", "yolox", "yolov8", RAW_OUTPUT_FORMAT)   # runtime's MODEL_FORMATS + raw
