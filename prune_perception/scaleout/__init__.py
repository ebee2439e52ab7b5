"""Fan-out of independent evaluations on Dask (`dask.distributed`): sensitivity points, accuracy-budget
candidates, one bag per task. See :mod:`prune_perception.scaleout.runner` and docs/scale-out.md."""
