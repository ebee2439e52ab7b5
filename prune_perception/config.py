"""Dataclass configs loaded from YAML with strict checking: unknown keys and wrong types are errors.

One schema serves the CLI (``--config file.yaml`` plus ``--set section.key=value`` overrides)
and, later, the ROS node.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prune_perception.errors import ConfigError

T = TypeVar("T")
SCIENTIFIC_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")   # YAML 1.1 reads 1e-4 as a string


@dataclass
class DataConfig:
    """Where the training and validation images are (COCO json, COCO root or YOLO root)."""

    train: str = "runs/synth"
    val: str = "runs/synth"
    train_split: str = "train"
    val_split: str = "val"
    classes: list[str] | None = None


@dataclass
class ModelConfig:
    size: str = "nano"
    act: str = "relu"
    input_size: list[int] = field(default_factory=lambda: [224, 384])  # H, W


@dataclass
class AugmentSettings:
    """Training augmentation (see data/augment.py); probabilities, HSV gains and translate lie in 0..1."""

    flip_prob: float = 0.5
    hsv_h: float = 0.015  # hue, saturation and value each change by up to this fraction
    hsv_s: float = 0.5
    hsv_v: float = 0.4
    scale_min: float = 0.6  # random zoom in [scale_min, scale_max]
    scale_max: float = 1.4
    translate: float = 0.1  # fraction of the image size
    mosaic_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("flip_prob", "mosaic_prob", "hsv_h", "hsv_s", "hsv_v", "translate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must be in 0..1, got {getattr(self, name)}")
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"augment.scale_min and scale_max must satisfy 0 < scale_min <= scale_max, "
                              f"got {self.scale_min} and {self.scale_max}")


@dataclass
class OptimConfig:
    epochs: int = 20
    batch_size: int = 16
    optimizer: str = "adamw"          # adamw | sgd
    lr: float = 0.002
    weight_decay: float = 0.0005
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    lr_schedule: str = "cosine"       # cosine | plateau
    min_lr_ratio: float = 0.05
    ema: bool = True
    patience: int = 10                # early stop after this many evaluations without val mAP50 gain
    eval_interval: int = 1
    seed: int = 0
    time_limit_min: float | None = None


@dataclass
class SparsitySettings:
    """Sparsity regularisation added to the training loss (see training/regularization.py)."""

    type: str = "none"                 # none | l1 | l2 | group_lasso | bn_l1
    weight: float = 1e-4               # multiplies the summed penalty


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sparsity: SparsitySettings = field(default_factory=SparsitySettings)
    output: str = "runs/train"


@dataclass
class PruneSettings:
    """How to prune (see prune_perception/pruning/)."""

    method: str = "l1"                 # l1 | l2 | taylor | bn_scale | random; fixed_l1 (weight granularity only)
    granularity: str = "channel"       # channel (structured) | weight | kernel (unstructured masks, no speed-up)
    ratio: float = 0.5                 # fraction of channels removed
    global_pruning: bool = False       # one ranking across layers instead of the same ratio per layer
    max_layer_ratio: float = 0.9
    layer_ratios: dict[str, float] | None = None   # per-layer overrides by arch-spec layer name
    iterative_steps: int = 1           # reach `ratio` in N steps, fine-tuning after each
    round_to: int | None = None        # channel counts rounded down to multiples of this (1: off); null: per-layer
                                       # widths rounded to the nearest multiple of latency_device's vector block
    taylor_batches: int = 8            # batches of detection-loss gradients for `taylor`
    budget: float | None = None        # accuracy budget (mAP50 points): largest ratio whose drop stays within it
    budget_search: str = "steps"       # steps: budget_ratios ascending | descending | bisect: between 0 and `ratio`
    budget_ratios: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    budget_tolerance: float = 0.05     # bisect stops when the ratio interval is this narrow
    schedule: str = "oneshot"          # oneshot | iterative (iterative_steps >= 2) | elastic (pruning/elastic.py)
    elastic_hard_epochs: int = 1       # elastic: the last N fine-tune epochs train the hard-pruned network (0: none)
    latency_ms: float | None = None    # latency target (inference p50, ms) measured with ONNX Runtime; null = use ratio
    latency_device: str = "cpu"        # cpu | cuda: where latency is measured (target, budget ranking, alignment)
    latency_threads: int = 1           # ONNX Runtime intra-op threads while measuring (0: ORT's default; the node's)
    latency_runs: int = 50             # timed runs per candidate network (after warm-up); the final check uses >= 200
    latency_margin: float = 0.05       # the search aims at target x (1 - margin), headroom for measurement noise
    latency_val_images: int = 64       # val (+ as many train, for BatchNorm stats) images of the sensitivity estimate
    latency_budget_fractions: list[float] = field(default_factory=lambda: [1.0, 0.85, 0.7])  # with budget: targets
    latency_cache: str | None = None   # measured-latency cache (JSON); null = <output>/latency_cache.json


@dataclass
class DistillSettings:
    """Knowledge distillation from the dense checkpoint while fine-tuning (see training/distillation.py)."""

    enabled: bool | str = "auto"       # true | false | auto: on when pruning cuts >= auto_min_macs_cut of the MACs
    auto_min_macs_cut: float = 0.5     # share of the dense MACs removed from which `auto` distils
    mode: str = "logit"                # logit | feature | both
    weight: float = 1.0
    temperature: float = 1.0


def _finetune_defaults() -> OptimConfig:
    return OptimConfig(epochs=6, lr=0.001, warmup_epochs=0.0, patience=4)


@dataclass
class PruneConfig:
    checkpoint: str = "runs/train/best.pt"
    data: DataConfig = field(default_factory=DataConfig)
    prune: PruneSettings = field(default_factory=PruneSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    finetune: OptimConfig = field(default_factory=_finetune_defaults)   # epochs 0 = no fine-tuning
    distill: DistillSettings = field(default_factory=DistillSettings)
    output: str = "runs/prune"


@dataclass
class ExternalModelSettings:
    """A detector brought as an ONNX file and the unlabeled frames it is fine-tuned on (prune_perception/external/)."""

    model: str = ""                    # the ONNX detector to prune
    model_format: str = "auto"         # auto | native | yolox | yolov8 | raw (outputs matched element-wise)
    input_size: list[int] | None = None           # [H, W]; required when the model's H/W are dynamic
    input_color_order: str | None = None          # RGB | BGR: override the format's default
    input_scale: float | None = None              # pixel scale before mean/std, e.g. 1/255 or 1.0
    class_names: list[str] | None = None          # the model's classes in output order, when its ONNX names none
    keep_layers: list[str] = field(default_factory=list)   # module names never pruned (besides output layers)
    sensitivity: str | None = None     # `sensitivity --model` output of this model: per-group ratios at ratio's MACs
    images: list[str] = field(default_factory=list)        # image folders, video files, rosbag2 bags
    frame_stride: int = 1              # keep every N-th frame of each source
    max_frames: int = 1000             # frames read in all (split evenly over the sources)
    holdout_fraction: float = 0.2      # last share of each source's frames, held out to score agreement
    labeled_data: str | None = None    # optional COCO/YOLO set: its labeled mAP is reported as well
    labeled_split: str = "val"


@dataclass
class LabelFreeDistillSettings:
    """The distillation loss of label-free fine-tuning (prune_perception/external/label_free_loss.py)."""

    loss: str = "auto"                 # auto, or '+'-joined terms: output, pseudo, feature, raw
    pseudo_threshold: float = 0.35     # teacher class probability that makes a cell a pseudo-label positive
    temperature: float = 1.0           # output term: probabilities softened as sigmoid(logit(p) / T), KL x T^2
    taylor_input_noise: float = 0.05   # taylor importance: the student sees frames + this much noise (x input range)
    batchnorm: bool = True             # BatchNorm after the pruned convs, calibrated to the dense model (folded back)
    min_crop: float = 1.0              # zoom-in crops of >= this fraction of each side while fine-tuning (1: flips only)


def _external_prune_defaults() -> PruneSettings:
    return PruneSettings(round_to=8)


def _external_finetune_defaults() -> OptimConfig:
    # no weight average by default: at 12 epochs it scored 0.3 points lower (docs/external-models.md)
    return dataclasses.replace(_finetune_defaults(), ema=False)


@dataclass
class ExternalPruneConfig:
    external: ExternalModelSettings = field(default_factory=ExternalModelSettings)
    prune: PruneSettings = field(default_factory=_external_prune_defaults)
    finetune: OptimConfig = field(default_factory=_external_finetune_defaults)   # epochs 0 = no fine-tuning
    distill: LabelFreeDistillSettings = field(default_factory=LabelFreeDistillSettings)
    output: str = "runs/prune_external"


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Validate (and minimally coerce int -> float) a YAML value against a type annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(annotation)
        return {_check_value(k, key_type, f"{where} key"): _check_value(v, value_type, f"{where}.{k}")
                for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_check_value(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str) and SCIENTIFIC_FLOAT.fullmatch(value):
        return float(value)
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {annotation}")


def from_dict(cls: type[T], data: Any, where: str = "config", base: T | None = None) -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError.

    Keys not in the mapping keep their values in `base` (default: the class defaults). A section given in part
    starts from its field's own default, so a config's section defaults (``default_factory``) survive an
    override of one of its keys.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(fields))}")
    values = {}
    for key, value in data.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            values[key] = from_dict(hints[key], value, f"{where}.{key}", _base_value(base, fields[key]))
        else:
            values[key] = _check_value(value, hints[key], f"{where}.{key}")
    return cls(**values) if base is None else dataclasses.replace(base, **values)


def _base_value(base: Any, field_: dataclasses.Field) -> Any:
    """`field_`'s value in `base`, or its declared default (None when it has none)."""
    if base is not None:
        return getattr(base, field_.name)
    if field_.default_factory is not dataclasses.MISSING:
        return field_.default_factory()
    return None if field_.default is dataclasses.MISSING else field_.default


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.001' -> (['optim', 'lr'], 0.001) with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Read a YAML config (or the defaults when path is None) and apply dotted overrides."""
    data: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for override in overrides:
        keys, value = parse_override(override)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {key} is not a section")
        node[keys[-1]] = value
    return from_dict(cls, data, where)
