#!/usr/bin/env bash
# Two third-party detectors for the external-model benchmarks (issue 16), made outside prune_perception:
#   yolox_nano.onnx (+ yolox_nano_decoded.onnx)  upstream YOLOX 0.3.0 model code, its data pipeline and loss
#   yolov8n.onnx                                 Ultralytics' yolov8n.yaml, its trainer and ONNX exporter
# each trained briefly on the synthetic train split and scored on the val split by prune_perception's
# engine (`prune-perception eval`). YOLOX and Ultralytics (AGPL-3.0) live in a separate venv only: never
# in the package's environment, never imported by the package or its tests.
#
# Usage: bench/external_models/make_models.sh OUT_DIR [DATA_DIR]
#   DATA_DIR: a synthetic dataset (`prune-perception synth`); made in OUT_DIR/synth when not given.
# Environment: EXT_VENV (default OUT_DIR/extvenv), PKG_VENV (default <repo>/.venv, `make env`),
#   THREADS (torch threads, default 2), SYNTH_IMAGES (1000), YOLOX_SIZE / YOLOV8_SIZE ("H W", default
#   "192 320"), YOLOX_ARGS / YOLOV8_ARGS (more options of yolox_model.py / yolov8_model.py, e.g. a longer
#   run: YOLOX_ARGS="--epochs 10 --iters-per-epoch 0"; the defaults are a few CPU-minutes each).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [DATA_DIR]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
DATA=${2:-$OUT/synth}
EXT_VENV=${EXT_VENV:-$OUT/extvenv}
PKG_VENV=${PKG_VENV:-$ROOT/.venv}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

log() { echo "[make_models $(date +%H:%M:%S)] $*"; }

# 1. prune_perception's environment and the synthetic data (COCO layout; a YOLO copy for Ultralytics).
[ -x "$PKG_VENV/bin/prune-perception" ] || make -C "$ROOT" env VENV="$PKG_VENV"
if [ ! -f "$DATA/annotations/instances_train.json" ]; then
    log "synthetic dataset -> $DATA"
    "$PKG_VENV/bin/prune-perception" -q synth -o "$DATA" -n "${SYNTH_IMAGES:-1000}" --workers 1
fi
DATA=$(cd "$DATA" && pwd)
if [ ! -f "$OUT/yolo/data.yaml" ]; then
    log "YOLO layout of the dataset -> $OUT/yolo (hard links)"
    "$PKG_VENV/bin/python" - "$DATA" "$OUT/yolo" <<'EOF'
import sys
from prune_perception.data.dataset import load_dataset, write_yolo
for split in ("train", "val"):
    write_yolo(load_dataset(sys.argv[1], split), sys.argv[2], split)
EOF
fi

# 2. The separate venv: CPU torch (the only torch to use here), YOLOX and Ultralytics without their
#    dependency lists (those name torchvision, whose registry wheels need a CUDA torch, plus tools the
#    model code does not use), then only what the code imports.
if [ ! -f "$EXT_VENV/.complete" ]; then
    log "separate venv -> $EXT_VENV"
    python3.11 -m venv "$EXT_VENV"
    PIP=("$EXT_VENV/bin/python" -m pip install --disable-pip-version-check -q)
    "${PIP[@]}" torch==2.13.0
    "${PIP[@]}" setuptools wheel numpy opencv-python-headless loguru tabulate tqdm psutil pycocotools thop \
        pyyaml pillow matplotlib scipy requests polars ultralytics-thop onnx onnxslim onnxruntime
    # yolox is an sdist whose setup.py imports torch and compiles its COCO-eval C++ op against it.
    "${PIP[@]}" --no-build-isolation --no-deps yolox==0.3.0
    "${PIP[@]}" --no-deps ultralytics==8.4.190
    # torchvision stand-in (nms / batched_nms in plain torch): see torchvision_shim/torchvision/__init__.py
    "${PIP[@]}" --no-deps --no-build-isolation "$HERE/torchvision_shim"
    rm -rf "$HERE/torchvision_shim/build" "$HERE"/torchvision_shim/*.egg-info
    touch "$EXT_VENV/.complete"
fi

# 3. Train and export, each its own project's way (sizes: H W; the synthetic images are 640x360).
YOLOX_SIZE=${YOLOX_SIZE:-192 320}
YOLOV8_SIZE=${YOLOV8_SIZE:-192 320}
if [ ! -f "$OUT/yolox_nano.onnx" ]; then
    log "YOLOX-nano: train + export"
    # shellcheck disable=SC2086
    "$EXT_VENV/bin/python" "$HERE/yolox_model.py" --data "$DATA" --output "$OUT/yolox_nano.onnx" \
        --input-size $YOLOX_SIZE --threads "$THREADS" --decode-in-inference ${YOLOX_ARGS:-}
fi
if [ ! -f "$OUT/yolov8n.onnx" ]; then
    log "YOLOv8n: train + export"
    # shellcheck disable=SC2086
    "$EXT_VENV/bin/python" "$HERE/yolov8_model.py" --data "$OUT/yolo/data.yaml" --output "$OUT/yolov8n.onnx" \
        --work-dir "$OUT/ultralytics" --export-size $YOLOV8_SIZE ${YOLOV8_ARGS:-}
fi

# 4. mAP on the val split through prune_perception's engine (OUT/eval/LABEL/eval.json), and through each
#    project's own ONNX inference code scored by `eval --detections` (OUT/own/LABEL.json): the two agree
#    when the engine's pre- and post-processing match the project's.
GT="$DATA/annotations/instances_val.json"
CLASSES=$("$PKG_VENV/bin/python" -c "import json, sys; print('[' + ','.join(c['name'] for c in sorted(
    json.load(open(sys.argv[1]))['categories'], key=lambda c: c['id'])) + ']')" "$GT")
engine_eval() {  # LABEL NAME FORMAT [eval args...]
    local label=$1 name=$2 format=$3
    shift 3
    log "engine: eval $name.onnx --model-format $format $*"
    "$PKG_VENV/bin/prune-perception" -q eval "$OUT/$name.onnx" --data "$DATA" --split val \
        --model-format "$format" -o "$OUT/eval/$label" "$@"
}
own_eval() {  # LABEL NAME FORMAT H W [--class-agnostic]
    local label=$1 name=$2 format=$3 height=$4 width=$5
    shift 5
    log "own pipeline: $name.onnx ($format) $*"
    "$EXT_VENV/bin/python" "$HERE/own_pipeline_dets.py" --model "$OUT/$name.onnx" --format "$format" \
        --annotations "$GT" --images "$DATA/images" --input-size "$height" "$width" --output "$OUT/own/$label.json" "$@"
    "$PKG_VENV/bin/prune-perception" -q eval --detections "$OUT/own/$label.json" --annotations "$GT"
    # parity at a threshold low enough for a barely trained model to give boxes (YOLOX starts at 1e-4)
    "$EXT_VENV/bin/python" "$HERE/own_pipeline_dets.py" --model "$OUT/$name.onnx" --format "$format" \
        --annotations "$GT" --images "$DATA/images" --input-size "$height" "$width" --score 1e-6 \
        --output "$OUT/own/$label.parity.json" "$@"
    "$PKG_VENV/bin/python" "$HERE/engine_vs_own.py" --model "$OUT/$name.onnx" --format "$format" --score 1e-6 \
        --own "$OUT/own/$label.parity.json" --annotations "$GT" --images "$DATA/images" "$@" \
        | tee "$OUT/own/$label.cmp.json"
}
# YOLOX exports carry no class names: give the dataset's, in category-id order (YOLOX's own class order).
engine_eval yolox_nano yolox_nano yolox -p "class_names=$CLASSES"
engine_eval yolox_nano_agnostic yolox_nano yolox -p "class_names=$CLASSES" --class-agnostic-nms
engine_eval yolox_nano_decoded yolox_nano_decoded yolox -p "class_names=$CLASSES" -p yolox_decoded=true
engine_eval yolov8n yolov8n yolov8
engine_eval yolov8n_agnostic yolov8n yolov8 --class-agnostic-nms
# shellcheck disable=SC2086
own_eval yolox_nano yolox_nano yolox $YOLOX_SIZE
# shellcheck disable=SC2086
own_eval yolox_nano_agnostic yolox_nano yolox $YOLOX_SIZE --class-agnostic
# shellcheck disable=SC2086
own_eval yolov8n yolov8n yolov8 $YOLOV8_SIZE
# shellcheck disable=SC2086
own_eval yolov8n_agnostic yolov8n yolov8 $YOLOV8_SIZE --class-agnostic
log "done: $(ls "$OUT"/*.onnx | tr '\n' ' ')"
