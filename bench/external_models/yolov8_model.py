"""YOLOv8n from Ultralytics' model yaml: trained briefly on a YOLO-layout dataset with Ultralytics' own trainer,
exported with Ultralytics' own ONNX exporter.

Runs in the separate venv that make_models.sh builds (Ultralytics is AGPL-3.0: never a dependency of
prune_perception or its tests). No pretrained weights: the network is built from ``yolov8n.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="YOLO data.yaml (train + val splits)")
    parser.add_argument("--output", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--work-dir", type=Path, required=True, help="Ultralytics run folder and settings")
    parser.add_argument("--imgsz", type=int, default=320, help="square training size")
    parser.add_argument("--export-size", type=int, nargs=2, default=(192, 320), metavar=("H", "W"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--close-mosaic", type=int, default=2)
    parser.add_argument("--warmup-epochs", type=float, default=0.0,
                        help="Ultralytics warms up for at least 100 batches unless this is 0: longer than a short run")
    parser.add_argument("--fraction", type=float, default=0.25, help="fraction of the train split used (Ultralytics' "
                                                                    "'fraction': a short run on a shared CPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opset", type=int, default=13,
                        help="ONNX opset of the export (onnx2torch has no Split-18 or Resize-18 converter: 17 at most)")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.work_dir / "settings"))

    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update(sync=False)  # no usage analytics
    model = YOLO("yolov8n.yaml", task="detect")
    model.train(data=str(args.data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch_size,
                fraction=args.fraction, workers=0, device="cpu", amp=False, plots=False, val=False, seed=args.seed,
                close_mosaic=args.close_mosaic, warmup_epochs=args.warmup_epochs, project=str(args.work_dir), name="train", exist_ok=True, verbose=False)
    exported = Path(model.export(format="onnx", imgsz=list(args.export_size), dynamic=False, device="cpu",
                                 opset=args.opset))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, args.output)
    results = args.work_dir / "train" / "results.csv"
    args.output.with_suffix(".json").write_text(json.dumps(
        {"model": "yolov8n.yaml (ultralytics)", "imgsz": args.imgsz, "export_size": list(args.export_size),
         "batch_size": args.batch_size, "fraction": args.fraction, "epochs": args.epochs,
         "close_mosaic": args.close_mosaic, "warmup_epochs": args.warmup_epochs,
         "results_csv": results.read_text() if results.is_file() else None}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
