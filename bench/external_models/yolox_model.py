"""YOLOX-nano from the upstream YOLOX package (0.3.0): trained briefly on a COCO-layout dataset, exported to ONNX.

Runs in the separate venv that make_models.sh builds, never in prune_perception's own environment.

Training: YOLOX's own experiment (``yolox-nano``), data pipeline (COCODataset + MosaicDetection +
TrainTransform, InfiniteSampler, YoloBatchSampler), model, SimOTA loss (the head in training mode),
parameter groups of ``Exp.get_optimizer`` (no decay on BatchNorm and biases), LR schedule
(``yoloxwarmcos``), EMA and the no-aug phase (mosaic off, L1 loss on) for the last epochs.
``yolox.core.Trainer`` is replaced by the loop below: it hard-codes CUDA (``torch.cuda.set_device``,
``.cuda()`` tensors, AMP scaler). One change to the recipe: AdamW at 2e-3 (``--lr``; the package's own
detector's recipe) instead of SGD at 0.01/64 per image, which is tuned for 300 epochs, not a few.

Export: as YOLOX's ``tools/export_onnx.py``: ``replace_module(nn.SiLU -> SiLU)``, the legacy
TorchScript exporter, opset 11, input ``images``, output ``output`` ``[1, A, 5+C]``;
``decode_in_inference`` off (the script's default and the released ONNX files) or on
(``--decode-in-inference``, boxes in input pixels). The script's optional onnx-simplifier pass is left
out (onnx-simplifier 0.4.10 has no wheel for this Python).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from yolox.data import COCODataset, DataLoader, InfiniteSampler, MosaicDetection, TrainTransform, YoloBatchSampler
from yolox.exp import get_exp
from yolox.models.network_blocks import SiLU
from yolox.utils import ModelEMA, replace_module


def make_exp(num_classes: int, input_hw: tuple[int, int], epochs: int, no_aug_epochs: int):
    exp = get_exp(None, "yolox-nano")
    exp.num_classes = num_classes
    exp.input_size = exp.test_size = input_hw
    exp.max_epoch, exp.no_aug_epochs, exp.warmup_epochs = epochs, no_aug_epochs, 1
    exp.data_num_workers = 0
    return exp


def train_loader(exp, data: Path, split: str, batch_size: int, seed: int):
    """Exp.get_data_loader's pipeline, with our layout (annotations/instances_<split>.json, images/<split>/...)."""
    dataset = COCODataset(data_dir=str(data), json_file=f"instances_{split}.json", name="images",
                          img_size=exp.input_size,
                          preproc=TrainTransform(max_labels=50, flip_prob=exp.flip_prob, hsv_prob=exp.hsv_prob))
    dataset = MosaicDetection(dataset, mosaic=True, img_size=exp.input_size,
                              preproc=TrainTransform(max_labels=120, flip_prob=exp.flip_prob, hsv_prob=exp.hsv_prob),
                              degrees=exp.degrees, translate=exp.translate, mosaic_scale=exp.mosaic_scale,
                              mixup_scale=exp.mixup_scale, shear=exp.shear, enable_mixup=exp.enable_mixup,
                              mosaic_prob=exp.mosaic_prob, mixup_prob=exp.mixup_prob)
    sampler = YoloBatchSampler(sampler=InfiniteSampler(len(dataset), seed=seed), batch_size=batch_size,
                               drop_last=False, mosaic=True)
    return DataLoader(dataset, num_workers=0, batch_sampler=sampler), len(dataset), dataset._dataset._classes


def train(exp, data: Path, batch_size: int, lr: float, seed: int, iters_per_epoch: int | None = None,
          checkpoint: Path | None = None) -> tuple[nn.Module, list[str], list[dict]]:
    """The EMA model after ``exp.max_epoch`` epochs of YOLOX training; class names; per-epoch losses.

    An epoch is ``iters_per_epoch`` batches (default: one pass over the images; the sampler is infinite).
    The EMA weights are saved to ``checkpoint`` after every epoch."""
    torch.manual_seed(seed)
    model = exp.get_model()
    model.train()
    loader, num_images, classes = train_loader(exp, data, "train", batch_size, seed)
    iters_per_epoch = iters_per_epoch or max(1, num_images // batch_size)
    groups = exp.get_optimizer(batch_size).param_groups
    optimizer = torch.optim.AdamW([{"params": g["params"], "weight_decay": g.get("weight_decay", 0.0)}
                                   for g in groups], lr=lr)
    scheduler = exp.get_lr_scheduler(lr, iters_per_epoch)
    ema = ModelEMA(model, 0.9998)
    batches = iter(loader)
    history, step, start = [], 0, time.perf_counter()
    for epoch in range(exp.max_epoch):
        if epoch == exp.max_epoch - exp.no_aug_epochs:  # Trainer.before_epoch: the no-aug phase
            loader.close_mosaic()
            model.head.use_l1 = True
            batches = iter(loader)
        totals = {}
        for _ in range(iters_per_epoch):
            images, targets, _, _ = next(batches)
            losses = model(images.float(), targets.float())
            optimizer.zero_grad()
            losses["total_loss"].backward()
            optimizer.step()
            ema.update(model)
            step += 1
            for group in optimizer.param_groups:
                group["lr"] = scheduler.update_lr(step)
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        history.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - start, 1),
                        **{k: round(v / iters_per_epoch, 4) for k, v in totals.items()}})
        print(json.dumps(history[-1]), flush=True)
        if checkpoint is not None:
            torch.save({"model": ema.ema.state_dict(), "epoch": epoch + 1, "classes": list(classes)}, checkpoint)
    return ema.ema, list(classes), history


def export_onnx(model: nn.Module, input_hw: tuple[int, int], path: Path, decode_in_inference: bool) -> None:
    """tools/export_onnx.py's steps (without onnx-simplifier)."""
    model = replace_module(model.eval(), nn.SiLU, SiLU)
    model.head.decode_in_inference = decode_in_inference
    torch.onnx.export(model, torch.randn(1, 3, *input_hw), str(path), input_names=["images"],
                      output_names=["output"], opset_version=11, dynamo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="COCO root (annotations/instances_train.json)")
    parser.add_argument("--output", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--input-size", type=int, nargs=2, default=(192, 320), metavar=("H", "W"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iters-per-epoch", type=int, default=25, help="batches per epoch (0: the whole split)")
    parser.add_argument("--no-aug-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decode-in-inference", action="store_true",
                        help="also write NAME_decoded.onnx with the boxes decoded to input pixels in the model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    input_hw = tuple(args.input_size)
    classes = json.loads((args.data / "annotations" / "instances_train.json").read_text())["categories"]
    exp = make_exp(len(classes), input_hw, args.epochs, args.no_aug_epochs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model, names, history = train(exp, args.data, args.batch_size, args.lr, args.seed, args.iters_per_epoch,
                                  checkpoint=args.output.with_suffix(".pth"))
    export_onnx(model, input_hw, args.output, decode_in_inference=False)
    if args.decode_in_inference:
        export_onnx(model, input_hw, args.output.with_name(args.output.stem + "_decoded.onnx"), True)
    args.output.with_suffix(".json").write_text(json.dumps(
        {"model": "yolox-nano (yolox 0.3.0)", "classes": names, "input_size": list(input_hw),
         "batch_size": args.batch_size, "lr": args.lr, "optimizer": "AdamW", "epochs": args.epochs,
         "iters_per_epoch": args.iters_per_epoch, "no_aug_epochs": args.no_aug_epochs,
         "history": history}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
