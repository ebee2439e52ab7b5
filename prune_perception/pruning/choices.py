"""The names the `prune:` settings accept, one table each. Torch-free: the CLI builds its choices from them."""

IMPORTANCE_CRITERIA = ("l1", "l2", "taylor", "bn_scale", "random")
GRADIENT_FREE_CRITERIA = tuple(m for m in IMPORTANCE_CRITERIA if m != "taylor")   # taylor needs loss gradients
SCHEDULES = ("oneshot", "iterative", "elastic")
GRANULARITIES = ("channel", "weight", "kernel")
BUDGET_SEARCHES = ("steps", "bisect")
LATENCY_DEVICES = ("cpu", "cuda")
