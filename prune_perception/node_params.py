"""The detector node's parameters: one ROS-free spec for the node, the in-process runner and the JSON schema.

Every parameter has a type (from its default), a range or a list of choices, a description and
an update mode:

- ``live``: applied to the next frame (thresholds, limits);
- ``reload``: the model is loaded again with the new value and swapped in (``model_path`` etc.);
- ``next_load``: used the next time a model is loaded (``warmup_runs``);
- ``read_only``: fixed at start-up (topics, QoS, timers).

``config/detector.schema.json`` is generated from this module (``write_schema``); a test keeps
the shipped file, the shipped ``config/detector.yaml`` and this validation in agreement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import yaml

from prune_perception.errors import ConfigError
from prune_perception.runtime.image_msg import DEFAULT_MAX_PIXELS

UPDATE_MODES = ("live", "reload", "next_load", "read_only")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    update: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] | None = None
    """Allowed strings (for a string array: allowed items)."""
    allow_empty: bool = False
    """A string array may be empty."""

    @property
    def kind(self) -> str:
        """'bool', 'int', 'float', 'str' or 'str_list'."""
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        if isinstance(self.default, float):
            return "float"
        if isinstance(self.default, str):
            return "str"
        return "str_list"

    def constraint_text(self) -> str:
        """The range or choices in words (for ROS parameter descriptors and messages)."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.minimum is None and self.maximum is None:
            return ""
        low = "(-inf" if self.minimum is None else f"{'(' if self.exclusive_minimum else '['}{self.minimum}"
        high = "inf)" if self.maximum is None else f"{self.maximum}]"
        return f"in {low}, {high}"

    def validate(self, value: Any) -> Any:
        """The value, normalised (int -> float for float parameters); ConfigError naming the problem."""
        def fail(problem: str) -> ConfigError:
            return ConfigError(f"parameter '{self.name}': {problem}")

        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise fail(f"must be true or false, got {value!r}")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise fail(f"must be an integer, got {value!r}")
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, Real):
                raise fail(f"must be a number, got {value!r}")
            value = float(value)
            if value != value:
                raise fail("must be a number, got NaN")
        elif kind == "str":
            if not isinstance(value, str):
                raise fail(f"must be a string, got {value!r}")
        else:
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
                    isinstance(item, str) for item in value):
                raise fail(f"must be a list of strings, got {value!r}")
            if not value and not self.allow_empty:
                raise fail("must not be empty")
            value = list(value)
        if self.choices is not None:
            items = value if kind == "str_list" else [value]
            bad = [item for item in items if item not in self.choices]
            if bad:
                raise fail(f"{bad[0]!r} is not allowed ({self.constraint_text()})")
        if kind in ("int", "float"):
            below = self.minimum is not None and (value <= self.minimum if self.exclusive_minimum
                                                  else value < self.minimum)
            above = self.maximum is not None and value > self.maximum
            if below or above:
                raise fail(f"{value} is out of range ({self.constraint_text()})")
        return value


DETECTOR_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", "", "ONNX model file. Changing it at run time hot-swaps the model: the new one is "
              "validated, loaded and warmed up off the hot path, then swapped in between frames; on failure the "
              "old model keeps serving and the parameter reverts. Empty: no model (ERROR on /diagnostics).",
              "reload"),
    ParamSpec("model_format", "auto", "Output layout: auto (our metadata, else recognised from the output "
              "shapes), native, yolox or yolov8.", "reload", choices=("auto", "native", "yolox", "yolov8")),
    ParamSpec("providers", ["cuda", "cpu"], "ONNX Runtime execution providers in order of preference; the ones "
              "actually active are reported on /diagnostics. Aliases tensorrt, cuda, cpu or any ONNX Runtime "
              "provider name.", "reload"),
    ParamSpec("strict_provider", False, "Refuse to load a model unless the first preferred provider is active.",
              "reload"),
    ParamSpec("intra_op_threads", 1, "ONNX Runtime intra-op threads; inference runs sequentially (one operator "
              "at a time). Default 1: steady latency on a computer shared with other nodes (with more threads "
              "ONNX Runtime spreads each convolution over cores that camera drivers, DDS and other nodes also "
              "need, and the slowest thread sets the pace: p90 and p99 jump). Raise it only to the number of "
              "cores you can reserve for this node (e.g. a cpuset or taskset), and check the node's "
              "latency_inference_p90_over_p50 on /diagnostics or with bench/node_bench.py; 0: ONNX Runtime's "
              "default (a thread per physical core).", "reload", minimum=0, maximum=256),
    ParamSpec("warmup_runs", 3, "Inference runs on a blank input after each model load, before the model "
              "serves frames.", "next_load", minimum=0, maximum=1000),
    ParamSpec("score_threshold", 0.35, "Minimum detection score.", "live", minimum=0.0, maximum=1.0),
    ParamSpec("nms_threshold", 0.7, "IoU above which a lower-scoring box of the same class is suppressed.",
              "live", minimum=0.0, maximum=1.0, exclusive_minimum=True),
    ParamSpec("max_detections", 100, "Most detections published per image.", "live", minimum=1, maximum=10000),
    ParamSpec("class_agnostic_nms", False, "One NMS over all classes: a box suppresses overlapping boxes of any "
              "class (YOLOX's and many external pipelines' own post-processing). False: per class.", "live"),
    ParamSpec("max_image_pixels", DEFAULT_MAX_PIXELS, "Frames with more pixels are refused (counted as failed) "
              "before any copy or decode.", "live", minimum=1, maximum=2**31 - 1),
    ParamSpec("class_names", [], "Class names in the model's output order (class id = index), for models without "
              "our metadata; they win over labels_path, the model's metadata and the COCO-80 default of YOLOX/YOLOv8 "
              "layouts. Empty: not set.", "reload", allow_empty=True),
    ParamSpec("labels_path", "", "File with the class names: one per line, or a YAML/JSON list or id -> name "
              "mapping (also under a 'names' key). Used when class_names is empty. Empty: not set.", "reload"),
    ParamSpec("input_width", 0, "Network input width for models with a dynamic input size (0: the model's own).",
              "reload", minimum=0, maximum=16384),
    ParamSpec("input_height", 0, "Network input height for models with a dynamic input size (0: the model's "
              "own).", "reload", minimum=0, maximum=16384),
    ParamSpec("allowed_model_dirs", [], "Model swaps (and the first load) only from files inside these "
              "directories, symbolic links resolved; a refused swap keeps the running model and reports the "
              "reason on /diagnostics. Empty: any readable file.", "read_only", allow_empty=True),
    ParamSpec("model_manifest", "", "sha256sum-style manifest ('<sha256>  <file name>' per line): only models "
              "whose sha256 is listed load. Empty: no check.", "read_only"),
    ParamSpec("input_transport", "raw", "raw: subscribe to ~/in/image (sensor_msgs/Image); compressed: to "
              "~/in/image/compressed (sensor_msgs/CompressedImage, JPEG/PNG).", "read_only",
              choices=("raw", "compressed")),
    ParamSpec("qos_reliability", "best_effort", "Reliability of the image subscription (best_effort as camera "
              "drivers publish; reliable also receives from reliable-only publishers).", "read_only",
              choices=("best_effort", "reliable")),
    ParamSpec("qos_depth", 1, "History depth of the image subscription (the node only ever processes the "
              "newest frame).", "read_only", minimum=1, maximum=1000),
    ParamSpec("publish_debug_image", False, "Also publish ~/out/image: the input with boxes drawn (rgb8).",
              "read_only"),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages (and the window of the "
              "fps and failure counts in them).", "read_only", minimum=0.05, maximum=3600.0),
    ParamSpec("latency_warn_ms", 100.0, "WARN on /diagnostics when the p90 pipeline latency (publish time - "
              "header.stamp) of the last window exceeds this; 0 disables.", "live", minimum=0.0),
    ParamSpec("input_timeout", 2.0, "WARN on /diagnostics when no image arrived for this many seconds; 0 "
              "disables.", "live", minimum=0.0),
)
PARAMS_BY_NAME = {spec.name: spec for spec in DETECTOR_PARAMS}


def param_defaults(specs: tuple[ParamSpec, ...] = DETECTOR_PARAMS) -> dict[str, Any]:
    return {spec.name: (list(spec.default) if isinstance(spec.default, list) else spec.default) for spec in specs}


def validate_params(values: dict[str, Any], where: str = "detector parameters",
                    specs: tuple[ParamSpec, ...] = DETECTOR_PARAMS) -> dict[str, Any]:
    """Defaults completed by ``values`` (validated); ConfigError for an unknown name or a bad value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter names to values, got {type(values).__name__}")
    by_name = {spec.name: spec for spec in specs}
    unknown = sorted(str(name) for name in set(values) - set(by_name))  # YAML keys may be non-strings
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(by_name)})")
    result = param_defaults(specs)
    for name, value in values.items():
        try:
            result[name] = by_name[name].validate(value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return result


ROS_NODE_PARAMS = {"use_sim_time": bool, "start_type_description_service": bool, "qos_overrides": dict}
"""Parameters every rclpy node has (``ros2 param dump`` writes them): not detector parameters, but a
params file may hold them; ``use_sim_time`` is passed on to the node."""


def split_ros_node_params(values: dict[str, Any], where: str = "detector parameters") -> tuple[dict, dict]:
    """(detector parameters, ROS node parameters) of a params section; ConfigError for a badly typed ROS one."""
    ours, ros = {}, {}
    for name, value in values.items():
        if name in ROS_NODE_PARAMS:
            if not isinstance(value, ROS_NODE_PARAMS[name]):
                raise ConfigError(f"{where}: parameter '{name}' must be a {ROS_NODE_PARAMS[name].__name__}, "
                                  f"got {value!r}")
            ros[name] = value
        else:
            ours[name] = value
    return ours, ros


def read_params_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """A ROS 2 params file (``<node name or /**>: ros__parameters: {...}``) -> {node key: raw params}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the parameters file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a ROS 2 parameters file ('/**: {{ros__parameters: {{...}}}}')")
    nodes = {}
    for key, section in data.items():
        if not isinstance(section, dict) or set(section) != {"ros__parameters"} or not isinstance(
                section["ros__parameters"], dict):
            raise ConfigError(f"{path}: section '{key}' must hold exactly one 'ros__parameters' mapping")
        nodes[str(key)] = section["ros__parameters"]
    return nodes


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft-07) of a detector params file, generated from :data:`DETECTOR_PARAMS`."""
    properties = {}
    for spec in DETECTOR_PARAMS:
        prop: dict[str, Any] = {"description": spec.description, "default": spec.default}
        kind = spec.kind
        if kind == "str_list":
            prop.update(type="array", **({} if spec.allow_empty else {"minItems": 1}), items={"type": "string"})
            if spec.choices:
                prop["items"]["enum"] = list(spec.choices)
        else:
            prop["type"] = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}[kind]
            if spec.choices:
                prop["enum"] = list(spec.choices)
        if spec.minimum is not None:
            prop["exclusiveMinimum" if spec.exclusive_minimum else "minimum"] = spec.minimum
        if spec.maximum is not None:
            prop["maximum"] = spec.maximum
        prop["update"] = spec.update
        properties[spec.name] = prop
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Parameters of the prune_perception detector_node",
        "description": "A ROS 2 parameters file: <node name or /**>: ros__parameters: {...}. Generated from "
                       "prune_perception/node_params.py; 'update' says when a change takes effect.",
        "type": "object",
        "definitions": {"detector_node": {"type": "object", "properties": properties,
                                          "additionalProperties": False}},
        "minProperties": 1,
        "additionalProperties": {
            "type": "object",
            "properties": {"ros__parameters": {"$ref": "#/definitions/detector_node"}},
            "required": ["ros__parameters"],
            "additionalProperties": False,
        },
    }


def write_schema(path: str | Path) -> None:
    Path(path).write_text(json.dumps(json_schema(), indent=2) + "\n")
