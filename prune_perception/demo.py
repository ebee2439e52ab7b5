"""The README's main command: synthetic data -> train -> evaluate, each stage reused when finished."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prune_perception.config import TrainConfig, load_config, to_dict
from prune_perception.data.synth import SynthConfig, generate_dataset
from prune_perception.evaluation.evaluate import evaluate_model_file
from prune_perception.training.trainer import Trainer


def _stage(name: str) -> None:
    print(f"\n== {name} ==", flush=True)


def run_demo(output: Path, num_images: int = 1000, epochs: int | None = None, progress: bool = True) -> dict:
    """Run (or reuse) every stage under `output`; returns and prints the summary."""
    started = time.monotonic()
    output = output.resolve()
    data_dir, train_dir, eval_dir = output / "synth", output / "train", output / "eval"

    _stage("1/3 synthetic driving scenes")
    stats = generate_dataset(data_dir, SynthConfig(num_images=num_images), progress=progress)
    print(f"{data_dir}: {stats.get('num_images', num_images)} images")

    _stage("2/3 train")
    overrides = [f"data.train={data_dir}", f"data.val={data_dir}", f"output={train_dir}"]
    if epochs is not None:
        overrides.append(f"optim.epochs={epochs}")
    config = load_config(TrainConfig, None, overrides)  # defaults = config/train_synth.yaml
    done_marker = train_dir / "done.json"
    if done_marker.is_file() and json.loads(done_marker.read_text()).get("config") == to_dict(config):
        print(f"reusing {train_dir / 'best.pt'} (training finished earlier)")
    else:
        result = Trainer(config, progress=progress).fit(resume=True)
        done_marker.write_text(json.dumps({"config": to_dict(config), "best_epoch": result.best_epoch}))

    _stage("3/3 evaluate")
    result, written = evaluate_model_file(train_dir / "best.pt", str(data_dir), "val", eval_dir, progress=progress)
    summary = {"mAP50": round(result.map50, 4), "mAP50_95": round(result.map50_95, 4),
               "checkpoint": str(train_dir / "best.pt"), "report": str(eval_dir / "eval.md"),
               "history": str(train_dir / "history.json"), "plot": str(train_dir / "training.png"),
               "wall_time_s": round(time.monotonic() - started, 1)}
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nval mAP50 {result.map50:.3f}  mAP50-95 {result.map50_95:.3f}  ({summary['wall_time_s']} s this run)")
    for key in ("checkpoint", "report", "history", "plot"):
        print(f"{key:>10}: {summary[key]}")
    return summary
