"""Detector node parameters (node_params.py): specs, validation, shipped YAML and generated JSON schema agree."""

import json
import math
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from prune_perception.errors import ConfigError
from prune_perception.node_params import (DETECTOR_PARAMS, PARAMS_BY_NAME, UPDATE_MODES, ParamSpec, json_schema,
                                          param_defaults, read_params_file, validate_params, write_schema)

ROOT = Path(__file__).resolve().parents[1]
YAML_PATH = ROOT / "config" / "detector.yaml"
SCHEMA_PATH = ROOT / "config" / "detector.schema.json"
REGENERATE = ("python -c \"from prune_perception.node_params import write_schema; "
              "write_schema('config/detector.schema.json')\"")


@pytest.fixture(scope="module")
def validator():
    """A draft-07 validator of the shipped schema file."""
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def params_file(params):
    """The document of a ROS 2 params file holding ``params`` for every node."""
    return {"/**": {"ros__parameters": params}}


def test_shipped_schema_is_generated_from_the_specs(tmp_path):
    generated = tmp_path / "detector.schema.json"
    write_schema(generated)
    assert SCHEMA_PATH.read_text() == generated.read_text(), (
        f"{SCHEMA_PATH.relative_to(ROOT)} is out of date with node_params.py; regenerate it from the repository "
        f"root with: {REGENERATE}")
    assert json.loads(generated.read_text()) == json_schema()


def test_shipped_yaml_validates_against_the_shipped_schema(validator):
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(
        yaml.safe_load(YAML_PATH.read_text()))]
    assert not errors, f"{YAML_PATH.name} does not match {SCHEMA_PATH.name}: {errors}"


def test_shipped_yaml_holds_every_default_in_spec_order():
    """config/detector.yaml is the reference of the defaults: every parameter, in DETECTOR_PARAMS order."""
    nodes = read_params_file(YAML_PATH)
    assert list(nodes) == ["/**"]
    params = nodes["/**"]
    assert list(params) == [spec.name for spec in DETECTOR_PARAMS]
    assert params == param_defaults()
    assert validate_params(params) == param_defaults()


def _comments_before_each_key(text):
    """{key: its comment lines joined by spaces} of the ros__parameters block."""
    comments, pending = {}, []
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("    # "):
            pending.append(stripped[2:])
        elif line.startswith("    ") and not stripped.startswith("#"):
            comments[stripped.split(":", 1)[0]] = " ".join(pending)
            pending = []
    return comments


def test_shipped_yaml_documents_each_key_with_its_spec():
    """Each key's comment is its description, its constraint (if any) and its update mode."""
    comments = _comments_before_each_key(YAML_PATH.read_text())
    for spec in DETECTOR_PARAMS:
        constraint = f" ({spec.constraint_text()})" if spec.constraint_text() else ""
        assert comments[spec.name] == f"{spec.description}{constraint} [{spec.update}]", spec.name


def test_every_spec_is_consistent():
    """Known update mode, default of a supported kind that passes its own validation, names unique."""
    assert len(PARAMS_BY_NAME) == len(DETECTOR_PARAMS)
    for spec in DETECTOR_PARAMS:
        assert spec.update in UPDATE_MODES, spec.name
        assert spec.kind in ("bool", "int", "float", "str", "str_list"), spec.name
        assert spec.validate(spec.default) == spec.default, spec.name


BAD_VALUES = [
    ("score_threshold", "high", r"parameter 'score_threshold': must be a number, got 'high'"),
    ("score_threshold", True, r"parameter 'score_threshold': must be a number, got True"),
    ("score_threshold", -0.01, r"parameter 'score_threshold': -0.01 is out of range \(in \[0.0, 1.0\]\)"),
    ("score_threshold", 1.5, r"parameter 'score_threshold': 1.5 is out of range \(in \[0.0, 1.0\]\)"),
    ("nms_threshold", 0.0, r"parameter 'nms_threshold': 0.0 is out of range \(in \(0.0, 1.0\]\)"),
    ("nms_threshold", 0, r"parameter 'nms_threshold': 0.0 is out of range \(in \(0.0, 1.0\]\)"),
    ("nms_threshold", -0.5, r"parameter 'nms_threshold': -0.5 is out of range"),
    ("warmup_runs", 2.5, r"parameter 'warmup_runs': must be an integer, got 2.5"),
    ("warmup_runs", "3", r"parameter 'warmup_runs': must be an integer, got '3'"),
    ("warmup_runs", False, r"parameter 'warmup_runs': must be an integer, got False"),
    ("warmup_runs", 1001, r"parameter 'warmup_runs': 1001 is out of range \(in \[0, 1000\]\)"),
    ("max_detections", 0, r"parameter 'max_detections': 0 is out of range \(in \[1, 10000\]\)"),
    ("max_image_pixels", 2**31, r"parameter 'max_image_pixels': 2147483648 is out of range"),
    ("intra_op_threads", -1, r"parameter 'intra_op_threads': -1 is out of range \(in \[0, 256\]\)"),
    ("diagnostics_period", 0.01, r"parameter 'diagnostics_period': 0.01 is out of range \(in \[0.05, 3600.0\]\)"),
    ("latency_warn_ms", -1.0, r"parameter 'latency_warn_ms': -1.0 is out of range \(in \[0.0, inf\)\)"),
    ("strict_provider", 1, r"parameter 'strict_provider': must be true or false, got 1"),
    ("strict_provider", "true", r"parameter 'strict_provider': must be true or false, got 'true'"),
    ("model_path", None, r"parameter 'model_path': must be a string, got None"),
    ("model_path", 5, r"parameter 'model_path': must be a string, got 5"),
    ("model_format", "yolov5",
     r"parameter 'model_format': 'yolov5' is not allowed \(one of: auto, native, yolox, yolov8\)"),
    ("input_transport", "RAW", r"parameter 'input_transport': 'RAW' is not allowed \(one of: raw, compressed\)"),
    ("qos_reliability", "", r"parameter 'qos_reliability': '' is not allowed"),
    ("providers", [], r"parameter 'providers': must not be empty"),
    ("providers", "cpu", r"parameter 'providers': must be a list of strings, got 'cpu'"),
    ("providers", ["cpu", 1], r"parameter 'providers': must be a list of strings, got \['cpu', 1\]"),
    ("detection_threshold", 0.5, r"unknown parameter\(s\) detection_threshold \(known: model_path, model_format"),
]


@pytest.mark.parametrize("name, value, message", BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_bad_value_is_rejected_by_both_schema_and_validation(validator, name, value, message):
    assert not validator.is_valid(params_file({name: value})), f"the schema accepts {name}={value!r}"
    with pytest.raises(ConfigError, match=r"^detector parameters: " + message):
        validate_params({name: value})


GOOD_VALUES = [
    ("score_threshold", 0.0, 0.0), ("score_threshold", 1.0, 1.0), ("score_threshold", 0, 0.0),
    ("score_threshold", 1, 1.0), ("nms_threshold", 1e-6, 1e-6), ("nms_threshold", 1, 1.0),
    ("warmup_runs", 0, 0), ("warmup_runs", 1000, 1000), ("max_detections", 1, 1), ("max_detections", 10000, 10000),
    ("intra_op_threads", 256, 256), ("max_image_pixels", 2**31 - 1, 2**31 - 1), ("qos_depth", 1000, 1000),
    ("diagnostics_period", 0.05, 0.05), ("diagnostics_period", 3600, 3600.0), ("latency_warn_ms", 0, 0.0),
    ("latency_warn_ms", 1e9, 1e9), ("input_timeout", 0.0, 0.0), ("strict_provider", True, True),
    ("publish_debug_image", True, True), ("model_path", "/models/m.onnx", "/models/m.onnx"),
    ("model_format", "yolov8", "yolov8"), ("input_transport", "compressed", "compressed"),
    ("qos_reliability", "reliable", "reliable"), ("providers", ["tensorrt"], ["tensorrt"]),
    ("providers", ("CPUExecutionProvider",), ["CPUExecutionProvider"]),
]


@pytest.mark.parametrize("name, value, normalised", GOOD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in GOOD_VALUES])
def test_edge_value_is_accepted_by_both_schema_and_validation(validator, name, value, normalised):
    """Bounds are inclusive (but nms_threshold's minimum), ints are fine for float parameters (made floats)."""
    as_json = list(value) if isinstance(value, tuple) else value
    errors = [e.message for e in validator.iter_errors(params_file({name: as_json}))]
    assert not errors, f"the schema refuses {name}={value!r}: {errors}"
    result = validate_params({name: value})
    assert result[name] == normalised and type(result[name]) is type(normalised)
    assert {k: v for k, v in result.items() if k != name} == {k: v for k, v in param_defaults().items() if k != name}


@pytest.mark.parametrize("name, value, message", [
    ("score_threshold", math.nan, r"parameter 'score_threshold': must be a number, got NaN"),
    # A YAML `3.0` is a double: ROS refuses it for an integer parameter (JSON Schema cannot tell 3.0 from 3).
    ("warmup_runs", 3.0, r"parameter 'warmup_runs': must be an integer, got 3.0"),
])
def test_validation_refuses_values_json_cannot_express(name, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_params({name: value})


def test_validate_params_completes_defaults_without_sharing_them():
    result = validate_params({"score_threshold": 0.5}, where="node 'det'")
    assert result == {**param_defaults(), "score_threshold": 0.5}
    result["providers"].append("tensorrt")
    assert PARAMS_BY_NAME["providers"].default == ["cuda", "cpu"] and param_defaults()["providers"] == ["cuda", "cpu"]


@pytest.mark.parametrize("values, message", [
    (["score_threshold"], r"^node 'det': expected a mapping of parameter names to values, got list$"),
    ({"score": 1, "thresh": 2}, r"^node 'det': unknown parameter\(s\) score, thresh \(known: model_path, "),
    ({1: 2, "foo": 3}, r"^node 'det': unknown parameter\(s\) 1, foo \(known: "),  # YAML keys need not be strings
    ({"max_detections": -5}, r"^node 'det': parameter 'max_detections': -5 is out of range"),
])
def test_validate_params_names_the_node_and_the_problem(values, message):
    with pytest.raises(ConfigError, match=message):
        validate_params(values, where="node 'det'")


def test_read_params_file_returns_each_node_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("detector:\n  ros__parameters:\n    score_threshold: 0.5\n"
                    "/**:\n  ros__parameters:\n    providers: [cpu]\n"
                    "42:\n  ros__parameters: {}\n")
    assert read_params_file(path) == {"detector": {"score_threshold": 0.5}, "/**": {"providers": ["cpu"]}, "42": {}}


NOT_PARAMS_FILES = [
    ("", r"expected a ROS 2 parameters file \('/\*\*: \{ros__parameters: \{\.\.\.\}\}'\)"),
    ("{}", r"expected a ROS 2 parameters file"),
    ("- score_threshold: 0.5\n", r"expected a ROS 2 parameters file"),
    ("score_threshold: 0.5\n", r"section 'score_threshold' must hold exactly one 'ros__parameters' mapping"),
    ("/**:\n  score_threshold: 0.5\n", r"section '/\*\*' must hold exactly one 'ros__parameters' mapping"),
    ("/**:\n  ros__parameters: {}\n  extra: 1\n", r"section '/\*\*' must hold exactly one 'ros__parameters'"),
    ("/**:\n  ros__parameters: [score_threshold]\n", r"section '/\*\*' must hold exactly one 'ros__parameters'"),
    ("/**:\n  ros__parameters:\n", r"section '/\*\*' must hold exactly one 'ros__parameters'"),
]


@pytest.mark.parametrize("text, message", NOT_PARAMS_FILES)
def test_file_that_is_not_a_params_file_is_rejected_by_both_reader_and_schema(tmp_path, validator, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert not validator.is_valid(yaml.safe_load(text)), f"the schema accepts {text!r}"
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}"):
        read_params_file(path)


@pytest.mark.parametrize("make_file, message", [
    (lambda d: d / "missing.yaml", r"cannot read the parameters file \(No such file or directory\)"),
    (lambda d: d, r"cannot read the parameters file \(Is a directory\)"),
    (lambda d: _write(d / "bad.yaml", b"/**:\n  ros__parameters: {score_threshold: [0.5\n"), r"not valid YAML \("),
    (lambda d: _write(d / "binary.yaml", b"\xff\xfe\x00\x01"), r"not a text file \(invalid start byte at byte 0\)"),
], ids=["missing", "directory", "invalid-yaml", "binary"])
def test_unreadable_params_file_is_a_config_error(tmp_path, make_file, message):
    path = make_file(tmp_path)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}"):
        read_params_file(path)


def _write(path, content):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("spec, text", [
    (ParamSpec("mode", "a", "", "live", choices=("a", "b")), "one of: a, b"),
    (ParamSpec("items", ["a"], "", "live", choices=("a", "b")), "one of: a, b"),
    (ParamSpec("ratio", 0.5, "", "live", minimum=0.0, maximum=1.0), "in [0.0, 1.0]"),
    (ParamSpec("iou", 0.5, "", "live", minimum=0.0, maximum=1.0, exclusive_minimum=True), "in (0.0, 1.0]"),
    (ParamSpec("count", 1, "", "live", minimum=1, maximum=10), "in [1, 10]"),
    (ParamSpec("timeout", 1.0, "", "live", minimum=0.0), "in [0.0, inf)"),
    (ParamSpec("offset", 1.0, "", "live", maximum=2.0), "in (-inf, 2.0]"),
    (ParamSpec("name", "x", "", "live"), ""),
], ids=["choices", "list-choices", "closed", "exclusive-minimum", "int", "no-maximum", "no-minimum", "none"])
def test_constraint_text_states_the_range_or_choices(spec, text):
    assert spec.constraint_text() == text


@pytest.mark.parametrize("spec, good, bad, message", [
    (ParamSpec("offset", 1.0, "", "live", maximum=2.0), -1e9, 2.5, r"2.5 is out of range \(in \(-inf, 2.0\]\)"),
    (ParamSpec("items", ["a"], "", "live", choices=("a", "b")), ["b", "a"], ["a", "c"],
     r"'c' is not allowed \(one of: a, b\)"),
], ids=["maximum-only", "list-choices"])
def test_custom_spec_validates_its_constraint(spec, good, bad, message):
    assert spec.validate(good) == good
    with pytest.raises(ConfigError, match=rf"^parameter '{spec.name}': {message}"):
        spec.validate(bad)
