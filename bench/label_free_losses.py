"""Which label-free distillation loss recovers an imported detector best? One pruning run per loss.

Every run prunes the same ONNX model at the same ratio and fine-tunes it with the same budget on the
same unlabeled frames; only ``distill.loss`` differs. Prints JSON and a Markdown table: MACs, agreement
mAP50 with the dense model on held-out frames right after pruning and after fine-tuning, raw error.

    .venv/bin/python bench/label_free_losses.py --model det.onnx --images frames/ clip.mp4 \
        --ratio 0.3 --epochs 3 --losses raw,output,output+raw,output+pseudo,output+feature -o runs/bench_losses
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prune_perception.config import (ExternalModelSettings, ExternalPruneConfig, LabelFreeDistillSettings,
                                     OptimConfig, PruneSettings)
from prune_perception.errors import PrunePerceptionError
from prune_perception.external.pipeline import prune_external


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--model-format", default="auto")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--round-to", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.001, help="relative to each tensor's RMS")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--losses", default="raw,output,output+raw,output+pseudo,output+feature")
    parser.add_argument("--max-frames", type=int, default=1000, help="unlabeled frames read in all")
    parser.add_argument("--labeled-data", help="a labeled COCO/YOLO set: the pruned models' labeled mAP50 (val) too")
    parser.add_argument("-o", "--output", default="runs/bench_label_free_losses")
    args = parser.parse_args()
    rows = []
    try:
        for loss in args.losses.split(","):
            config = ExternalPruneConfig(
                external=ExternalModelSettings(model=args.model, images=args.images, model_format=args.model_format,
                                               max_frames=args.max_frames, labeled_data=args.labeled_data),
                prune=PruneSettings(ratio=args.ratio, round_to=args.round_to),
                finetune=OptimConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                     patience=args.epochs),
                distill=LabelFreeDistillSettings(loss=loss), output=str(Path(args.output) / loss))
            _, steps = prune_external(config, progress=False)
            dense, pruned = steps[0], steps[-1]
            rows.append({"loss": loss, "dense_macs": dense.macs, "macs": pruned.macs,
                         "agreement_mAP50_pruned": pruned.mAP50_pruned, "agreement_mAP50": pruned.mAP50,
                         "raw_error_pruned": pruned.raw_error_pruned, "raw_error": pruned.raw_error,
                         "labeled_mAP50_dense": dense.labeled_mAP50, "labeled_mAP50": pruned.labeled_mAP50})
    except PrunePerceptionError as exc:
        print(f"label_free_losses: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2))
    print("\n| loss | MACs (M) | agreement mAP50 pruned | agreement mAP50 fine-tuned | raw error pruned | raw error "
          "| labeled mAP50 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        cells = [f"{row[key]:.3f}" if row[key] is not None else "-"
                 for key in ("agreement_mAP50_pruned", "agreement_mAP50", "raw_error_pruned", "raw_error",
                             "labeled_mAP50")]
        print(f"| {row['loss']} | {row['dense_macs'] / 1e6:.2f} -> {row['macs'] / 1e6:.2f} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
