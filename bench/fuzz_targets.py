"""Fuzz targets (hypothesis strategies and checks) for everything that takes outside input: camera messages, model
files, bags, parameters; test/test_fuzz.py runs them in CI, ``bench/fuzz.py`` with large counts. The property is
always the same: a clear error (a PrunePerceptionError, a refused parameter with a reason, a frame counted as
failed with a reason) or a correct result; never another exception, a crash or a hang; and the node's frames add
up exactly (received = processed + dropped + failed).

Targets (each a hypothesis strategy + a check):

- ``node_image``      raw sensor_msgs/Image (any encoding string, sizes 0..64 and extreme aspect ratios,
                      steps, data lengths, endianness) published to a live DetectorNode;
- ``node_compressed`` CompressedImage data (random bytes, truncated / corrupted real JPEG and PNG, headers
                      declaring up to 65535x65535 pixels) to a live node with ``input_transport: compressed``;
- ``node_cdr``        serialized bytes that are no valid sensor_msgs/Image (random, mutated, other types)
                      published on the node's image topic;
- ``model_load``      model files (random bytes, truncated / corrupted real ONNX, onnx.helper graphs with wrong
                      input rank / dtype, wrong output shapes, huge declared dims, broken metadata) loaded by
                      ``DetectorEngine`` in a memory-capped worker process with a timeout; every file the engine
                      refuses is also hot-swapped into a live node, which must keep serving its old model;
- ``adapters``        output adapters + post-processing on random output arrays;
- ``bag``             real bags (mcap, sqlite3; raw, compressed) with flipped / replaced / deleted byte ranges,
                      truncations and metadata.yaml edits, read by ``open_bag`` (frames, images, ground truth)
                      and ``bag_info`` in the worker;
- ``replay_cli``      ``prune-perception replay BAG --model M --offline`` on corrupted bags (in the worker; one
                      real subprocess test besides): exit 0 or 2, no traceback, one error line;
- ``params``          SetParameters requests with any wire value (every ParameterValue type, NaN, inf, int64
                      extremes, empty strings and lists, invalid type codes) to a live node.

``MAX_EXAMPLES`` (env ``PRUNE_FUZZ_EXAMPLES``) bounds the examples per target in CI; the node runs with
``spin_resilient``, the product's own spin loop.
"""

from __future__ import annotations

import array
import contextlib
import io
import json
import math
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MAX_EXAMPLES = int(os.environ.get("PRUNE_FUZZ_EXAMPLES", "50"))
"""Examples per target in the tests; bench/fuzz.py passes its own counts."""
CASE_TIMEOUT_S = float(os.environ.get("PRUNE_FUZZ_CASE_TIMEOUT", "30"))
"""One case (a frame settling, a model load, a bag read) taking longer than this is a hang."""
WORKER_MEMORY_BYTES = int(os.environ.get("PRUNE_FUZZ_WORKER_MEMORY", str(6 << 30)))
"""Address-space cap of the worker process: a case that tries to allocate more fails there, not on the machine."""
WORKER_FLAG = "--fuzz-worker"


# ============================================================================================ bookkeeping ====
class Hang(Exception):
    """A case did not finish within its timeout."""


class Crash(Exception):
    """A case broke a property (wrong exception type, frames not accounted, node or worker dead, ...)."""


class AbortTarget(BaseException):
    """Stop generating cases for a target: a hang in the tests (shrinking a hang would re-run it for hours),
    or, in the benchmark, MAX_HANGS hangs (the target is presumed dead). A BaseException, so that hypothesis
    neither shrinks nor replays it."""


MAX_HANGS = 3


@dataclass
class Tally:
    """Outcome counts of one target."""

    target: str
    cases: int = 0
    accepted: int = 0
    """Valid input handled: frame processed, model loaded, bag read, parameter accepted."""
    expected_errors: int = 0
    """Clear errors: PrunePerceptionError subclasses, frames counted as failed, parameters refused with a reason."""
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "cases": self.cases, "accepted": self.accepted,
                "expected_errors": self.expected_errors, "crashes": self.crashes, "hangs": self.hangs,
                "seconds": round(self.seconds, 2), "failures": self.failures[:10]}


TALLIES: dict[str, Tally] = {}


def run_target(name: str, strategy, check: Callable[[Any], str], max_examples: int, strict: bool = True) -> Tally:
    """Run ``check`` on ``max_examples`` generated cases of ``strategy``; ``check`` returns 'accepted' or 'error'.

    strict (tests): the first crash or hang fails (hypothesis shrinks it to a minimal case). Not strict
    (benchmark): crashes and hangs are counted, the run goes on, nothing is shrunk.
    """
    from hypothesis import HealthCheck, Phase, given, settings

    tally = TALLIES.setdefault(name, Tally(name))
    started = time.monotonic()

    def one_case(case) -> None:
        tally.cases += 1
        try:
            outcome = check(case)
        except Hang as exc:
            tally.hangs += 1
            note_failure(tally, f"hang: {exc}", case)
            if strict or tally.hangs >= MAX_HANGS:
                raise AbortTarget(f"{name}: hang: {exc} (case {_short(case)})") from None
            return
        except Exception as exc:
            tally.crashes += 1
            note_failure(tally, f"crash: {type(exc).__name__}: {exc}", case)
            if strict:
                raise
            return
        if outcome == "accepted":
            tally.accepted += 1
        elif outcome == "error":
            tally.expected_errors += 1
        else:
            raise ValueError(f"check returned {outcome!r}")

    phases = (Phase.explicit, Phase.generate, Phase.shrink) if strict else (Phase.explicit, Phase.generate)
    test = settings(max_examples=max_examples, deadline=None, database=None, phases=phases,
                    suppress_health_check=list(HealthCheck), print_blob=strict)(given(strategy)(one_case))
    try:
        test()
    except AbortTarget as exc:
        if strict:
            raise AssertionError(str(exc)) from None
        note_failure(tally, f"target stopped after {tally.hangs} hangs", None)
    finally:
        tally.seconds += time.monotonic() - started
    return tally


def note_failure(tally: Tally, text: str, case) -> None:
    if len(tally.failures) < 20:
        tally.failures.append(f"{text[:2000]} | case: {_short(case)}")


def _short(case, limit: int = 300) -> str:
    text = repr(case)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def tally_table(tallies) -> str:
    lines = ["| target | cases | accepted | errors as expected | crashes | hangs | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for t in tallies:
        lines.append(f"| {t.target} | {t.cases} | {t.accepted} | {t.expected_errors} | {t.crashes} | {t.hangs} "
                     f"| {t.seconds:.1f} |")
    return "\n".join(lines)


def wait_until(predicate, timeout: float, what: str, poll: float = 0.002):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Hang(f"no {what} after {timeout:.0f} s")
        time.sleep(poll)


# ============================================================================================ strategies ====
def _st():
    from hypothesis import strategies as st

    return st


def _text(max_size: int):
    """Any text rclpy can serialize (no lone surrogates, no NUL: C strings end there)."""
    st = _st()
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=max_size)


RAW_ENCODING_NAMES = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "8UC1", "8UC3", "16UC1")
OTHER_ENCODINGS = ("yuv422", "bayer_rggb8", "32FC1", "16UC3", "RGB8", "rgb16", "", "8UC4", "64FC1", "rgb8 ", "mono8\n")


def image_strategy():
    st = _st()
    small = st.integers(0, 64)
    dims = st.one_of(st.tuples(small, small), st.tuples(st.integers(0, 2), st.sampled_from([1024, 4096])),
                     st.tuples(st.sampled_from([1024, 4096]), st.integers(0, 2)))
    return st.fixed_dictionaries({
        "encoding": st.one_of(st.sampled_from(RAW_ENCODING_NAMES), st.sampled_from(OTHER_ENCODINGS), _text(16)),
        "dims": dims,
        "step": st.one_of(st.just("exact"), st.tuples(st.just("pad"), st.integers(1, 16)),
                          st.tuples(st.just("value"), st.integers(0, 2**32 - 1))),
        "size": st.one_of(st.just("exact"), st.tuples(st.just("delta"), st.integers(-9, 9)),
                          st.tuples(st.just("value"), st.integers(0, 70_000))),
        "is_bigendian": st.one_of(st.integers(0, 1), st.integers(0, 255)),
        "seed": st.integers(0, 2**32 - 1),
        "well_formed": st.booleans(),
    })


def build_image(case: dict) -> tuple[dict, bytes]:
    """Image fields (without data) and the data bytes of an ``image_strategy`` case."""
    from prune_perception.runtime.image_msg import RAW_ENCODINGS

    if case["well_formed"]:  # a valid layout (any encoding, size, padding, endianness), so both outcomes are common
        case = {**case, "encoding": RAW_ENCODING_NAMES[case["seed"] % len(RAW_ENCODING_NAMES)], "size": "exact",
                "step": case["step"] if case["step"] == "exact" or case["step"][0] == "pad" else "exact"}
    encoding, (height, width) = case["encoding"], case["dims"]
    spec = RAW_ENCODINGS.get(encoding)
    pixel = spec.channels * spec.dtype.itemsize if spec else 1 + case["seed"] % 4
    row = width * pixel
    if case["step"] == "exact":
        step = row
    elif case["step"][0] == "pad":
        step = row + case["step"][1]
    else:
        step = case["step"][1]
    step = min(step, 2**32 - 1)
    expected = step * height
    if case["size"] == "exact":
        size = expected
    elif case["size"][0] == "delta":
        size = max(0, expected + case["size"][1])
    else:
        size = case["size"][1]
    size = min(size, 4 << 20)
    data = np.random.default_rng(case["seed"]).integers(0, 256, size, dtype=np.uint8).tobytes()
    return {"height": height, "width": width, "encoding": encoding, "step": step,
            "is_bigendian": case["is_bigendian"]}, data


@lru_cache(maxsize=1)
def encoded_samples() -> dict[str, bytes]:
    """Real JPEG / PNG files (noise, so that every byte matters), built once."""
    import cv2

    rng = np.random.default_rng(7)
    color = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    return {
        "jpeg": cv2.imencode(".jpg", color)[1].tobytes(),
        "jpeg_progressive": cv2.imencode(".jpg", color, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "jpeg_gray": cv2.imencode(".jpg", gray)[1].tobytes(),
        "png": cv2.imencode(".png", color)[1].tobytes(),
        "png_gray16": cv2.imencode(".png", (gray.astype(np.uint16) * 257))[1].tobytes(),
    }


SAMPLE_KINDS = ("jpeg", "jpeg_progressive", "jpeg_gray", "png", "png_gray16")


def compressed_strategy():
    st = _st()
    kind = st.sampled_from(SAMPLE_KINDS)
    edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=20)
    data = st.one_of(
        st.tuples(st.just("bytes"), st.binary(max_size=2048)),
        st.tuples(st.just("valid"), kind),
        st.tuples(st.just("truncated"), kind, st.floats(0, 1)),
        st.tuples(st.just("edited"), kind, edits),
        st.tuples(st.just("header"), kind, st.integers(0, 65535), st.integers(0, 65535)),
        st.tuples(st.just("magic"), st.sampled_from([b"\xff\xd8", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM",
                                                       b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a"]),
                  st.binary(max_size=64)),
    )
    image_format = st.one_of(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", ""]), _text(20))
    return st.fixed_dictionaries({"data": data, "format": image_format})


def set_declared_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a real JPEG or PNG) with its header declaring ``width`` x ``height`` (PNG CRC fixed)."""
    out = bytearray(data)
    if out[:8] == b"\x89PNG\r\n\x1a\n":
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
        return bytes(out)
    index = 2
    while index + 9 <= len(out):
        marker, length = out[index + 1], struct.unpack(">H", out[index + 2:index + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3):
            out[index + 5:index + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        index += 2 + length
    raise AssertionError("no SOF marker in the sample JPEG")


def mutated(data: bytes, kind: str, how) -> bytes:
    """A valid file cut to a fraction of its length (`truncated`, how = fraction) or with bytes overwritten
    (`edited`, how = [(relative position, value), ...])."""
    if kind == "truncated":
        return data[:int(len(data) * how)]
    out = bytearray(data)
    for position, value in how:
        out[min(int(position * len(out)), len(out) - 1)] = value
    return bytes(out)


def build_compressed(case: dict) -> bytes:
    data = case["data"]
    kind = data[0]
    if kind == "bytes":
        return data[1]
    if kind == "magic":
        return data[1] + data[2]
    sample = encoded_samples()[data[1]]
    if kind == "valid":
        return sample
    if kind in ("truncated", "edited"):
        return mutated(sample, kind, data[2])
    return set_declared_size(sample, data[2], data[3])


def cdr_strategy():
    st = _st()
    edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=12)
    return st.one_of(
        st.tuples(st.just("bytes"), st.binary(max_size=512)),
        st.tuples(st.just("mutated"), st.sampled_from(["image", "image_empty", "compressed", "detections"]), edits,
                  st.one_of(st.none(), st.floats(0, 1)), st.binary(max_size=16)),
    )


@lru_cache(maxsize=1)
def serialized_samples() -> dict[str, bytes]:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2D, Detection2DArray

    header = Header(frame_id="cam")
    image = Image(header=header, height=4, width=4, encoding="rgb8", step=12)
    image.data = array.array("B", bytes(range(48)))
    compressed = CompressedImage(header=header, format="jpeg")
    compressed.data = array.array("B", encoded_samples()["jpeg"][:200])
    return {"image": serialize_message(image), "image_empty": serialize_message(Image()),
            "compressed": serialize_message(compressed),
            "detections": serialize_message(Detection2DArray(header=header, detections=[Detection2D()]))}


def build_cdr(case) -> bytes:
    if case[0] == "bytes":
        return case[1]
    _, kind, edits, cut, insert = case
    out = bytearray(serialized_samples()[kind])
    for position, value in edits:
        out[min(int(position * len(out)), len(out) - 1)] = value
    if insert:
        at = len(out) // 2
        out[at:at] = insert
    if cut is not None:
        out = out[:int(len(out) * cut)]
    return bytes(out)


# ---------------------------------------------------------------------------------------- models ----
FLOAT_VALUES = (0.0, 0.5, 1.0, -1.0, 1e30, float("nan"), float("inf"))
HUGE = 100_000


def model_strategy():
    st = _st()
    dim = st.one_of(st.integers(0, 8), st.sampled_from([1, 3, 32, 64, 128, 192, 320, HUGE]), st.integers(1, HUGE),
                    st.sampled_from(["N", "H", "W", "K"]))
    hw = st.one_of(st.sampled_from([32, 64, 96, 128, 160]), dim)
    input_shape = st.one_of(st.tuples(st.sampled_from([1, "N", 2]), st.sampled_from([3, 3, 3, 1, 4, "C"]), hw, hw)
                            .map(list), st.lists(dim, max_size=6))
    input_type = st.sampled_from(["float", "float", "float", "float16", "double", "uint8", "int64"])
    out_type = st.sampled_from(["float"] * 6 + ["float16", "int64"])
    value = st.sampled_from(FLOAT_VALUES)
    output = st.tuples(st.sampled_from(["boxes", "scores", "output", "out0", "output0"]), st.lists(dim, max_size=4),
                       out_type, value)
    outputs = st.one_of(
        st.tuples(st.just("native"), st.sampled_from([1, "N"]), st.one_of(st.sampled_from([1, 4, 100]), dim),
                  st.sampled_from([4, 4, 4, 5, "B"]), st.one_of(st.sampled_from([1, 6, 80]), dim), value, value,
                  out_type),
        st.tuples(st.just("anchors"), st.sampled_from(["yolox", "yolov8"]), st.one_of(st.sampled_from([6, 10, 85]),
                                                                                        st.integers(0, 100)),
                  st.booleans(), value),
        st.tuples(st.just("identity")),
        st.tuples(st.just("outputs"), st.lists(output, max_size=3)),
    )
    metadata = st.one_of(st.none(), st.just("valid"),
                         st.tuples(st.just("edit"), st.sampled_from(METADATA_KEYS), st.one_of(
                             _text(40), st.sampled_from(['[]', '{}', 'null', '[1e999]', '[-1, 5]', '["a", ""]',
                                                         '{"name": "yolox"}', '"RGB"', '[100000, 100000]', '[0, 64]',
                                                         '{"scale": 0, "mean": [0,0,0], "std": [1,1,1]}']))),
                         st.dictionaries(_text(12), _text(20), max_size=3))
    graph = st.fixed_dictionaries({"input": input_shape, "input_type": input_type, "outputs": outputs,
                                   "metadata": metadata, "opset": st.sampled_from([17, 17, 11, 21])})
    return st.fixed_dictionaries({
        "file": st.one_of(
            st.tuples(st.just("bytes"), st.binary(max_size=4096)),
            st.tuples(st.just("truncated"), st.floats(0, 1)),
            st.tuples(st.just("edited"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1,
                                                  max_size=30)),
            st.tuples(st.just("metadata"), st.sampled_from(METADATA_KEYS + ("names", "extra")), _text(30)),
            st.tuples(st.just("graph"), graph),
        ),
        "model_format": st.sampled_from(["auto", "auto", "native", "yolox", "yolov8"]),
    })


METADATA_KEYS = ("prune_perception.format", "classes", "input_size", "color_order", "normalization", "letterbox",
                 "output_layout", "model_hash", "pruning", "created")
ONNX_TYPES = {"float": 1, "uint8": 2, "int64": 7, "float16": 10, "double": 11}


def _concrete(dims) -> list[int]:
    """Run-time shape for declared ``dims``: symbols become 2; a shape over 1e6 elements keeps its declaration
    (so huge declared outputs are tested) but is produced small (ONNX Runtime then refuses the mismatch)."""
    shape = [d if isinstance(d, int) else 2 for d in dims]
    if math.prod(shape) > 1_000_000:
        shape = [min(d, 2) for d in shape]
    return shape


def build_graph_model(spec: dict, valid_metadata: dict[str, str]) -> bytes:
    """ONNX bytes of a ``model_strategy`` graph spec: outputs are constants of the declared shapes (or the input)."""
    from onnx import helper, numpy_helper

    nodes, outputs, initializers = [], [], []
    in_type = ONNX_TYPES[spec["input_type"]]
    inputs = [helper.make_tensor_value_info("images", in_type, spec["input"])]

    def constant(name: str, dims, value: float, elem: str = "float") -> None:
        shape_name = f"{name}_shape"
        initializers.append(numpy_helper.from_array(np.asarray(_concrete(dims), dtype=np.int64), shape_name))
        produced = f"{name}_f" if elem != "float" else name
        nodes.append(helper.make_node("ConstantOfShape", [shape_name], [produced],
                                      value=helper.make_tensor("value", 1, [1], [value])))
        if elem != "float":
            nodes.append(helper.make_node("Cast", [produced], [name], to=ONNX_TYPES[elem]))
        outputs.append(helper.make_tensor_value_info(name, ONNX_TYPES[elem], list(dims)))

    kind = spec["outputs"][0]
    hw = [d if isinstance(d, int) and 0 < d <= 4096 else 64 for d in (list(spec["input"]) + [64] * 4)[2:4]]
    if kind == "native":
        _, n, k, four, classes, box_value, score_value, elem = spec["outputs"]
        constant("boxes", [n, k, four], box_value, elem)
        constant("scores", [n, k, classes], score_value)
    elif kind == "anchors":
        from prune_perception.runtime.adapters import expected_anchors

        _, layout, channels, right_count, value = spec["outputs"]
        anchors = expected_anchors(tuple(hw)) if right_count else max(1, expected_anchors(tuple(hw)) - 1)
        constant("output", [1, anchors, channels] if layout == "yolox" else [1, channels, anchors], value)
    elif kind == "identity":
        nodes.append(helper.make_node("Identity", ["images"], ["output"]))
        outputs.append(helper.make_tensor_value_info("output", in_type, spec["input"]))
    else:
        seen = set()
        for name, dims, elem, value in spec["outputs"][1]:
            if name not in seen:
                seen.add(name)
                constant(name, dims, value, elem)
    graph = helper.make_graph(nodes, "fuzz", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec["opset"])])
    model.ir_version = min(model.ir_version, 9)
    metadata = spec["metadata"]
    props: dict[str, str] = {}
    if metadata == "valid" or (isinstance(metadata, tuple) and metadata[0] == "edit"):
        props = dict(valid_metadata)
        if all(isinstance(d, int) for d in hw):
            props["input_size"] = json.dumps(hw)
        if isinstance(metadata, tuple):
            props[metadata[1]] = metadata[2]
    elif isinstance(metadata, dict):
        props = metadata
    if props:
        helper.set_model_props(model, props)
    return model.SerializeToString()


def build_model_file(case: dict, good_model: bytes, valid_metadata: dict[str, str]) -> bytes:
    kind, *rest = case["file"]
    if kind == "bytes":
        return rest[0]
    if kind in ("truncated", "edited"):
        return mutated(good_model, kind, rest[0])
    if kind == "metadata":
        import onnx

        model = onnx.load_from_string(good_model)
        props = {p.key: p.value for p in model.metadata_props}
        props[rest[0]] = rest[1]
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        return model.SerializeToString()
    return build_graph_model(rest[0], valid_metadata)


def adapter_strategy():
    st = _st()
    dim = st.one_of(st.integers(0, 6), st.sampled_from([84, 85, 10, 21, 2100]))
    dtype = st.sampled_from(["float32", "float32", "float16", "float64", "int64"])
    value = st.sampled_from(FLOAT_VALUES + ("random", "random", "random"))
    array_spec = st.tuples(st.lists(dim, max_size=4), dtype, value)
    # Well-formed for the format (input 32x32: 21 anchors), with a wrong dim now and then.
    count = st.one_of(st.integers(0, 3), st.just(21))
    classes = st.integers(0, 8)
    good = st.one_of(
        st.tuples(st.sampled_from([1, 2]), count, classes, dtype, value).map(
            lambda t: [([t[0], t[1], 4], t[3], t[4]), ([t[0], t[1], t[2]], t[3], t[4])]),
        st.tuples(st.sampled_from([1, 2]), count, classes, dtype, value).map(
            lambda t: [([t[0], t[1], 5 + t[2]], t[3], t[4])]),
        st.tuples(st.sampled_from([1, 2]), count, classes, dtype, value).map(
            lambda t: [([t[0], 4 + t[2], t[1]], t[3], t[4])]))
    return st.fixed_dictionaries({
        "format": st.sampled_from(["native", "yolox", "yolov8"]),
        "input_hw": st.one_of(st.just((32, 32)), st.tuples(st.sampled_from([32, 64, 96]), st.sampled_from([32, 64]))),
        "decoded": st.booleans(),
        "outputs": st.one_of(good, st.lists(array_spec, min_size=0, max_size=3)),
        "thresholds": st.tuples(st.floats(0, 1), st.floats(0.01, 1), st.integers(1, 50)),
        "batch": st.integers(1, 2),
    })


# ---------------------------------------------------------------------------------------- bags ----
def bag_strategy(bag_names: list[str]):
    st = _st()
    position = st.floats(0, 1)
    length = st.one_of(st.integers(1, 64), st.integers(1, 4096))
    operation = st.one_of(
        st.tuples(st.just("flip"), position, length, st.integers(0, 2**32 - 1)),
        st.tuples(st.just("replace"), position, length, st.integers(0, 2**32 - 1)),
        st.tuples(st.just("zero"), position, length),
        st.tuples(st.just("delete"), position, length),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("truncate"), position),
    )
    yaml_value = st.one_of(st.none(), st.integers(-5, 10**12), _text(20), st.lists(st.integers(0, 3), max_size=3),
                           st.just({}), st.just("[]"), st.floats(allow_nan=True))
    return st.fixed_dictionaries({
        "bag": st.sampled_from(bag_names),
        "target": st.sampled_from(["storage", "storage", "storage", "metadata", "metadata_yaml"]),
        "ops": st.lists(operation, min_size=1, max_size=4),
        "yaml": st.tuples(st.integers(0, 10_000), yaml_value),
    })


def corrupt_bytes(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for op in ops:
        at = min(int(op[1] * len(out)), max(len(out) - 1, 0))
        if op[0] == "truncate":
            del out[at:]
        elif op[0] == "insert":
            out[at:at] = op[2]
        elif op[0] == "delete":
            del out[at:at + op[2]]
        elif op[0] == "zero":
            out[at:at + op[2]] = bytes(len(out[at:at + op[2]]))
        else:
            noise = np.random.default_rng(op[3]).integers(0, 256, len(out[at:at + op[2]]), dtype=np.uint8).tobytes()
            if op[0] == "flip":
                noise = bytes(a ^ (b or 1) for a, b in zip(out[at:at + op[2]], noise))
            out[at:at + op[2]] = noise
    return bytes(out)


def edit_yaml(text: str, choice: int, value) -> str:
    """metadata.yaml with one key (picked by ``choice`` among all nested keys/items) set to ``value``."""
    import yaml

    document = yaml.safe_load(text)
    slots = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key in node:
                slots.append((node, key))
                walk(node[key])
        elif isinstance(node, list):
            for index in range(len(node)):
                slots.append((node, index))
                walk(node[index])

    walk(document)
    container, key = slots[choice % len(slots)]
    container[key] = value
    return yaml.safe_dump(document)


def corrupt_bag(source: Path, target: Path, case: dict) -> None:
    shutil.copytree(source, target)
    if case["target"] == "storage":
        storage = next(p for p in sorted(target.iterdir()) if p.suffix in (".mcap", ".db3"))
        storage.write_bytes(corrupt_bytes(storage.read_bytes(), case["ops"]))
    elif case["target"] == "metadata":
        metadata = target / "metadata.yaml"
        metadata.write_bytes(corrupt_bytes(metadata.read_bytes(), case["ops"]))
    else:
        metadata = target / "metadata.yaml"
        metadata.write_text(edit_yaml(metadata.read_text(), *case["yaml"]))


# ---------------------------------------------------------------------------------------- parameters ----
def param_strategy(paths: list[str]):
    st = _st()
    from prune_perception.node_params import DETECTOR_PARAMS

    names = [spec.name for spec in DETECTOR_PARAMS]
    int64 = st.one_of(st.integers(-2**63, 2**63 - 1),
                      st.sampled_from([0, 1, -1, 2, 256, 257, 1000, 1001, 10000, 10001, 2**31 - 1, 2**31, 2**63 - 1]))
    double = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([0.0, -0.0, 1.0, 1.0000001, 0.05, 0.049, 1e308, 3600.0, 3600.1]))
    strings = st.one_of(_text(40), st.sampled_from(["", " ", "auto", "native", "yolox", "yolov8", "YOLOX", "raw",
                                                    "compressed", "reliable", "best_effort", "/", "/dev/null",
                                                    "/proc/self/status", *paths]))
    value = st.one_of(
        st.tuples(st.just("not_set")), st.tuples(st.just("bool"), st.booleans()), st.tuples(st.just("int"), int64),
        st.tuples(st.just("double"), double), st.tuples(st.just("string"), strings),
        st.tuples(st.just("bytes"), st.binary(max_size=8)),
        st.tuples(st.just("bool_array"), st.lists(st.booleans(), max_size=4)),
        st.tuples(st.just("int_array"), st.lists(int64, max_size=4)),
        st.tuples(st.just("double_array"), st.lists(double, max_size=4)),
        st.tuples(st.just("string_array"), st.one_of(
            st.lists(_text(12), max_size=4),
            st.sampled_from([["cpu"], ["cuda", "cpu"], ["tensorrt", "cuda", "cpu"], [], [""], ["bogus"],
                             ["CPUExecutionProvider"], ["cpu", "cpu"]]))),
        st.tuples(st.just("bad_type"), st.integers(10, 255)),
    )
    name = st.one_of(st.sampled_from(names), st.sampled_from(["use_sim_time", "unknown_param", "", "model_path.x",
                                                              "qos_overrides./x.reliability"]))

    def typed(spec):
        """Values of the parameter's own type around its range: accepted and refused ones both common."""
        low = -2.0 if spec.minimum is None else spec.minimum
        high = low + 1e6 if spec.maximum is None else spec.maximum
        if spec.kind == "bool":
            values = st.tuples(st.just("bool"), st.booleans())
        elif spec.kind == "int":
            values = st.tuples(st.just("int"), st.integers(int(low) - 2, min(int(high) + 2, 2**63 - 1)))
        elif spec.kind == "float":
            values = st.tuples(st.just("double"), st.one_of(st.floats(low - 1, high + 1), st.just(low), st.just(high)))
        elif spec.name == "model_path":
            values = st.tuples(st.just("string"), st.sampled_from(paths + [""]))
        elif spec.kind == "str":
            values = st.tuples(st.just("string"), st.sampled_from(list(spec.choices or ()) + ["", "bogus"]))
        else:
            values = st.tuples(st.just("string_array"), st.sampled_from([["cpu"], ["cuda", "cpu"], ["bogus"], []]))
        return st.tuples(st.just(spec.name), values)

    pair = st.one_of(st.tuples(name, value), st.sampled_from(DETECTOR_PARAMS).flatmap(typed))
    return st.lists(pair, min_size=1, max_size=3)


PARAM_TYPES = {"not_set": 0, "bool": 1, "int": 2, "double": 3, "string": 4, "bytes": 5, "bool_array": 6,
               "int_array": 7, "double_array": 8, "string_array": 9}
PARAM_VALUE_FIELDS = {"bool": "bool_value", "int": "integer_value", "double": "double_value", "string": "string_value",
                      "bool_array": "bool_array_value", "int_array": "integer_array_value",
                      "double_array": "double_array_value", "string_array": "string_array_value"}
"""The ParameterValue field that carries each kind's payload (bytes are converted, see parameter_msg)."""


def parameter_msg(name: str, value):
    """rcl_interfaces/Parameter for a ``param_strategy`` value, built at the wire level (any type code)."""
    from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterValue

    kind = value[0]
    msg = ParameterValue()
    if kind == "bad_type":
        msg.type = value[1]
        msg.integer_value = 1
    else:
        msg.type = PARAM_TYPES[kind]
        payload = value[1] if len(value) > 1 else None
        if kind == "bytes":
            msg.byte_array_value = [bytes([b]) for b in payload]
        elif kind in PARAM_VALUE_FIELDS:
            setattr(msg, PARAM_VALUE_FIELDS[kind], payload)
    return ParameterMsg(name=name, value=msg)


# ============================================================================================ worker ====
class Worker:
    """A child Python process (this module with ``--fuzz-worker``) running model-load and bag cases one at a time,
    address space capped; a case that kills it or overruns its timeout is a crash or a hang, and the next case
    starts a fresh worker."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
        env.setdefault("OMP_NUM_THREADS", "1")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), WORKER_FLAG], cwd=REPO,
                                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        start_new_session=True)
        self.starts += 1
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout, self._lines), daemon=True).start()
        ready = self._get(120.0)
        if ready != {"ready": True}:
            raise RuntimeError(f"fuzz worker did not start ({ready}); log: {self.log_path}")

    @staticmethod
    def _read(stream, lines: queue.Queue) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _get(self, timeout: float):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self._kill()
            raise Hang(f"worker case still running after {timeout:.0f} s") from None
        if line is None:
            code = self.process.wait()
            self.process = None
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise Crash(f"worker process died ({how})")
        return json.loads(line)

    def call(self, request: dict, timeout: float = CASE_TIMEOUT_S) -> dict:
        if self.process is None or self.process.poll() is not None:
            self._start()
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        return self._get(timeout)

    def _kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def close(self) -> None:
        if self.process is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self._kill()
            self.process = None


def _worker_load_model(request: dict) -> dict:
    from prune_perception.errors import PrunePerceptionError
    from prune_perception.runtime.engine import DetectorEngine

    try:
        engine = DetectorEngine(request["path"], model_format=request["model_format"], providers=["cpu"],
                                intra_op_threads=1, warmup_runs=1, score_threshold=0.0)
    except PrunePerceptionError as exc:
        return {"outcome": "error", "stage": "load", "detail": str(exc)}
    try:  # a loaded model must also give detections or a clear error on a real image
        engine.detect(np.full((24, 32, 3), 100, np.uint8))
    except PrunePerceptionError as exc:
        return {"outcome": "error", "stage": "detect", "detail": f"detect: {exc}"}
    return {"outcome": "accepted", "detail": f"{engine.info.output_format} {engine.info.input_hw}"}


def _worker_read_bag(request: dict) -> dict:
    from prune_perception.bags import bag_info, open_bag
    from prune_perception.errors import InputImageError, PrunePerceptionError

    errors, frames, failed = [], 0, 0
    try:
        with open_bag(request["path"]) as bag:
            _ = bag.classes, bag.transport, bag.frame_count
            for frame in bag.frames():
                frames += 1
                try:
                    frame.image()
                except InputImageError:
                    failed += 1
            bag.ground_truth()
    except PrunePerceptionError as exc:
        errors.append(f"open_bag: {exc}")
    for scan in (True, False):
        try:
            info = bag_info(request["path"], scan=scan)
            info.to_text()
            info.to_markdown()
            json.dumps(info.as_dict())
        except PrunePerceptionError as exc:
            errors.append(f"bag_info(scan={scan}): {exc}")
    return {"outcome": "error" if errors or failed else "accepted",
            "detail": f"{frames} frames, {failed} failed; " + "; ".join(errors)[:500]}


def _worker_replay_cli(request: dict) -> dict:
    from prune_perception import cli

    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = cli.main(["-q", "replay", request["path"], "--model", request["model"], "--offline",
                         "-o", request["output"], "--providers", "cpu", "-p", "intra_op_threads=1"])
    return replay_outcome(code, stderr.getvalue())


def replay_outcome(code: int, stderr: str) -> dict:
    """'error' (exit 2, one 'prune-perception replay: error: ...' line), 'accepted' (exit 0), else 'crash'.

    Labelled warnings ('prune-perception replay: warning: ...', e.g. a bag whose metadata.yaml counts differ from
    its storage) may precede the error line: they say what was found on the way, the error says why it stopped.
    """
    lines = [line for line in stderr.splitlines() if line.strip()]
    python_lines = [line for line in lines if not _is_native_decoder_warning(line)
                    and not line.startswith("prune-perception replay: warning: ")]
    if "Traceback" in stderr or code not in (0, 2):
        return {"outcome": "crash", "detail": f"exit {code}: {stderr[-2000:]}"}
    if code == 2:
        if len(python_lines) != 1 or not python_lines[0].startswith("prune-perception replay: error: "):
            return {"outcome": "crash", "detail": f"exit 2 but stderr is not one error line: {stderr[-2000:]}"}
        return {"outcome": "error", "detail": python_lines[0][:500]}
    return {"outcome": "accepted", "detail": f"{len(lines)} stderr lines"}


def _is_native_decoder_warning(line: str) -> bool:
    """libjpeg / libpng print their warnings straight to stderr (not Python's): not ours to format."""
    return line.startswith(("Corrupt JPEG data", "Premature end of JPEG", "libpng ", "Invalid SOS", "Warning:",
                            "Bogus ", "Unsupported marker"))


WORKER_OPS = {"load_model": _worker_load_model, "read_bag": _worker_read_bag, "replay_cli": _worker_replay_cli}


def worker_main() -> int:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)              # anything a library prints goes to the log, not into the protocol
    sys.stdout = sys.stderr
    import onnxruntime  # noqa: F401  (warm imports before the first case is timed)

    import prune_perception.bags  # noqa: F401
    import prune_perception.runtime.engine  # noqa: F401

    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = WORKER_OPS[request["op"]](request)
        except Exception as exc:
            result = {"outcome": "crash", "detail": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"}
        out.write(json.dumps(result) + "\n")
    return 0


def worker_result(worker: Worker, request: dict, timeout: float = CASE_TIMEOUT_S) -> str:
    result = worker.call(request, timeout)
    if result["outcome"] == "crash":
        raise Crash(result["detail"])
    return result["outcome"]


# ============================================================================================ live node ====
class LiveNode:
    """A DetectorNode and a test node (image publisher, detections subscriber, parameter client) on one executor
    spun by the product's ``spin_resilient`` in a thread (as ``detector_node`` spins in its own process).
    The same pattern as test_detector_node's Harness, with the node process' spin loop."""

    def __init__(self, model_path, **params):
        import rclpy
        from rcl_interfaces.srv import GetParameters, SetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from vision_msgs.msg import Detection2DArray

        from prune_perception.ros.detector_node import DetectorNode, spin_resilient

        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.settings = {"model_path": str(model_path), "providers": ["cpu"], "intra_op_threads": 1,
                         "warmup_runs": 0, "score_threshold": 0.2, "qos_reliability": "reliable", "qos_depth": 10,
                         "diagnostics_period": 0.5, "input_timeout": 0.0, **params}
        self.node = DetectorNode(context=self.context,
                                 parameter_overrides=[Parameter(k, value=v) for k, v in self.settings.items()])
        self.io = rclpy.create_node("fuzz_io", context=self.context)
        self.compressed = self.settings.get("input_transport") == "compressed"
        self.publisher = self.io.create_publisher(
            CompressedImage if self.compressed else Image,
            "/detector_node/in/image/compressed" if self.compressed else "/detector_node/in/image", reliable)
        self.outputs: set[tuple[int, int]] = set()
        self.io.create_subscription(Detection2DArray, "/detector_node/out/detections",
                                    lambda msg: self.outputs.add((msg.header.stamp.sec, msg.header.stamp.nanosec)),
                                    reliable)
        self.set_client = self.io.create_client(SetParameters, "/detector_node/set_parameters")
        self.get_client = self.io.create_client(GetParameters, "/detector_node/get_parameters")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.io)
        self.thread = threading.Thread(target=spin_resilient, args=(self.executor, self.io.get_logger()), daemon=True)
        self.thread.start()
        self._stamp = 0
        wait_until(lambda: self.publisher.get_subscription_count() > 0, 30, "match of the node's image subscription")
        wait_until(lambda: self.set_client.service_is_ready(), 30, "parameter service")
        self.published = 0

    # ------------------------------------------------------------------ frames
    def header(self):
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        self._stamp += 1
        now = time.time_ns() + self._stamp
        return Header(stamp=Time(sec=now // 10**9, nanosec=now % 10**9), frame_id="fuzz")

    def stats(self):
        return self.node.stats()

    def alive(self) -> None:
        if not self.thread.is_alive():
            raise Crash("the executor stopped spinning (an exception escaped a callback)")
        if not self.node.core._worker.is_alive():
            raise Crash("the node's worker thread died")

    def publish_and_settle(self, msg):
        """Publish one message that DDS will deliver; wait until the node has received it and nothing is pending."""
        before = self.stats()
        self.publisher.publish(msg)
        self.published += 1
        after = wait_until(lambda: (s := self.stats()).received > before.received and s.pending == 0 and s,
                           CASE_TIMEOUT_S, "frame accounted (received +1, pending 0)")
        self.alive()
        return before, after

    def good_message(self):
        from prune_perception.ros.messages import compressed_to_msg, image_to_msg

        if self.compressed:
            return compressed_to_msg(encoded_samples()["jpeg"], "jpeg", self.header())
        image = np.random.default_rng(self._stamp).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        return image_to_msg(image, "rgb8", self.header())

    def send_good(self) -> None:
        """A valid frame must come out as detections (matched by stamp)."""
        msg = self.good_message()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.publisher.publish(msg)
        self.published += 1
        wait_until(lambda: key in self.outputs, CASE_TIMEOUT_S, "detections for a good frame")
        wait_until(lambda: self.stats().pending == 0, CASE_TIMEOUT_S, "pending 0")
        self.alive()

    def check_accounting(self) -> None:
        stats = wait_until(lambda: (s := self.stats()).pending == 0 and s, CASE_TIMEOUT_S, "pending 0")
        if stats.received != stats.processed + stats.dropped + stats.failed:
            raise Crash(f"frames do not add up: received {stats.received} != processed {stats.processed} + "
                        f"dropped {stats.dropped} + failed {stats.failed}")

    # ------------------------------------------------------------------ parameters
    def call(self, client, request, timeout: float = CASE_TIMEOUT_S):
        future = client.call_async(request)
        try:
            wait_until(future.done, timeout, f"response of {client.srv_name}")
        except Hang:
            client.remove_pending_request(future)
            raise
        return future.result()

    def wait_no_load(self) -> None:
        def idle():
            loader = self.node.core._loader
            return not self.node.core._loading and (loader is None or not loader.is_alive())
        wait_until(idle, CASE_TIMEOUT_S * 2, "the end of a model load", poll=0.01)

    def close(self) -> None:
        import rclpy

        self.node.close()
        self.executor.shutdown()
        self.node.destroy_node()
        self.io.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(5)


# ============================================================================================ checks ====
def check_node_image(live: LiveNode, case: dict) -> str:
    from sensor_msgs.msg import Image

    from prune_perception.errors import InputImageError
    from prune_perception.runtime.image_msg import image_from_msg

    fields, data = build_image(case)
    msg = Image(header=live.header(), **fields)
    msg.data = array.array("B", data)
    try:
        image_from_msg(msg, live.node._params["max_image_pixels"])
        valid = True
    except InputImageError:
        valid = False
    before, after = live.publish_and_settle(msg)
    return frame_outcome(before, after, expect_valid=valid)


def frame_outcome(before, after, expect_valid: bool | None) -> str:
    delta = (after.processed - before.processed, after.dropped - before.dropped, after.failed - before.failed)
    if after.received - before.received != 1 or sum(delta) != 1:
        raise Crash(f"one frame in, counts moved by received +{after.received - before.received}, "
                    f"processed/dropped/failed +{delta}")
    if delta[2]:
        if after.last_error.startswith("internal error"):
            raise Crash(f"frame failed without a clear reason: {after.last_error}")
        if expect_valid:
            raise Crash(f"a valid frame failed: {after.last_error}")
        return "error"
    if expect_valid is False:
        raise Crash("an invalid frame was processed")
    return "accepted"


def check_node_compressed(live: LiveNode, case: dict) -> str:
    from prune_perception.ros.messages import compressed_to_msg

    data = build_compressed(case)
    msg = compressed_to_msg(data, case["format"], live.header())
    before, after = live.publish_and_settle(msg)
    return frame_outcome(before, after, expect_valid=True if case["data"][0] == "valid" else None)


def check_node_cdr(live: LiveNode, case) -> str:
    data = build_cdr(case)
    before = live.stats()
    live.publisher.publish(data)
    with contextlib.suppress(Hang):     # delivered (rmw could deserialize it) and handled, or never delivered
        wait_until(lambda: (s := live.stats()).received > before.received and s.pending == 0, 0.03, "delivery")
    live.send_good()                    # reliable + one writer: the garbage (if delivered) came first
    after = live.stats()
    arrived = after.received - before.received - 1
    if arrived not in (0, 1):
        raise Crash(f"{arrived + 1} frames arrived for two messages")
    live.check_accounting()
    return "accepted" if arrived and after.processed - before.processed == 2 else "error"


def check_model(worker: Worker, live: LiveNode | None, folder: Path, good: bytes, metadata: dict[str, str],
                case: dict) -> str:
    path = folder / "case.onnx"
    path.write_bytes(build_model_file(case, good, metadata))
    result = worker.call({"op": "load_model", "path": str(path), "model_format": case["model_format"]})
    if result["outcome"] == "crash":
        raise Crash(result["detail"])
    # A file the engine refuses (same settings as the node: model_format auto, 1 thread, 1 warm-up run)
    # must leave a live node serving its old model when set as model_path.
    if result.get("stage") == "load" and live is not None and case["model_format"] == "auto":
        check_swap_keeps_old_model(live, path)
    return result["outcome"]


def check_swap_keeps_old_model(live: LiveNode, path: Path) -> None:
    from rclpy.parameter import Parameter

    node = live.node
    good = live.settings["model_path"]
    failed_before = node.core._swaps_failed
    result = node.set_parameters([Parameter("model_path", value=str(path))])[0]
    live.wait_no_load()
    wait_until(lambda: node.get_parameter("model_path").value == good, CASE_TIMEOUT_S, "model_path to revert")
    if node.core._serving["model_path"] != good or node.core._engine is None:
        raise Crash(f"after a failed swap to {path} the node serves {node.core._serving and node.core._serving['model_path']}")
    if result.successful and node.core._swaps_failed != failed_before + 1:
        raise Crash("a failed swap was not counted in swaps_failed")
    if not result.successful and not result.reason:
        raise Crash("swap refused without a reason")
    live.alive()


def check_adapter(case: dict) -> str:
    with np.errstate(all="ignore"):   # NaN / inf / overflowing outputs are part of the input space
        return _check_adapter(case)


def _check_adapter(case: dict) -> str:
    from prune_perception.errors import PrunePerceptionError
    from prune_perception.runtime.adapters import ADAPTERS, adapt
    from prune_perception.runtime.postprocess import select_detections

    rng = np.random.default_rng(len(case["outputs"]))
    outputs = []
    for dims, dtype, value in case["outputs"]:
        dims = dims if math.prod(dims) <= 200_000 else [min(d, 6) for d in dims]
        outputs.append(rng.random(dims).astype(dtype) if value == "random" else np.full(dims, value).astype(dtype))
    names = ["boxes", "scores", "extra"][:len(outputs)]
    layout = {"name": case["format"], "decoded": case["decoded"]}
    try:
        adapter = ADAPTERS[case["format"]](case["input_hw"], names, layout)
    except ValueError:
        return "error"  # the native adapter needs outputs named boxes and scores: refused at construction
    try:
        boxes, scores = adapt(adapter, outputs, case["batch"])
    except PrunePerceptionError:
        return "error"
    score, nms, top = case["thresholds"]
    for image_boxes, image_scores in zip(boxes, scores):
        try:
            select_detections(image_boxes, image_scores, score, nms, top)
        except PrunePerceptionError:
            return "error"
    return "accepted"


def check_bag(worker: Worker, folder: Path, bags: dict[str, Path], case: dict) -> str:
    target = folder / "bag"
    shutil.rmtree(target, ignore_errors=True)
    corrupt_bag(bags[case["bag"]], target, case)
    try:
        return worker_result(worker, {"op": "read_bag", "path": str(target)})
    finally:
        shutil.rmtree(target, ignore_errors=True)


def check_replay_cli(worker: Worker, folder: Path, bags: dict[str, Path], model: Path, case: dict) -> str:
    target = folder / "bag"
    shutil.rmtree(target, ignore_errors=True)
    corrupt_bag(bags[case["bag"]], target, case)
    try:
        return worker_result(worker, {"op": "replay_cli", "path": str(target), "model": str(model),
                                      "output": str(folder / "replay_out")}, timeout=CASE_TIMEOUT_S * 2)
    finally:
        shutil.rmtree(target, ignore_errors=True)


SLOW_LOAD_LIMITS = {"intra_op_threads": 4, "warmup_runs": 20}
"""Valid values above these make one model load take minutes here (256 ONNX Runtime threads on 2 cores:
2.8 s per inference, measured); the fuzz clamps them (their range checks are test_node_params' job)."""


def clamp_slow_loads(case):
    return [(name, ("int", min(value[1], SLOW_LOAD_LIMITS[name]))
             if name in SLOW_LOAD_LIMITS and value[0] == "int" and 0 <= value[1] <= 1000 else value)
            for name, value in case]


def check_params(live: LiveNode, case) -> str:
    from rcl_interfaces.srv import GetParameters, SetParameters

    from prune_perception.errors import ConfigError
    from prune_perception.node_params import PARAMS_BY_NAME, validate_params

    case = clamp_slow_loads(case)
    request = SetParameters.Request(parameters=[parameter_msg(name, value) for name, value in case])
    invalid_type = any(value[0] == "bad_type" for _, value in case)
    outcome = "accepted"
    if invalid_type:
        # rclpy's parameter service raises on an unknown type code and never answers; the node must live on.
        future = live.set_client.call_async(request)
        time.sleep(0.05)
        if not future.done():
            live.set_client.remove_pending_request(future)
        outcome = "error"
    else:
        response = live.call(live.set_client, request)
        if len(response.results) != len(case):
            raise Crash(f"{len(case)} parameters set, {len(response.results)} results")
        for (name, _), result in zip(case, response.results):
            if not result.successful:
                outcome = "error"
                if not result.reason:
                    raise Crash(f"parameter {name!r} refused without a reason")
    live.wait_no_load()
    live.alive()
    values = {name: live.node.get_parameter(name).value for name in PARAMS_BY_NAME}
    try:
        validate_params(values)
        validate_params(dict(live.node._params))
    except ConfigError as exc:
        raise Crash(f"the node holds an invalid parameter after the change: {exc}") from None
    answer = live.call(live.get_client, GetParameters.Request(names=["score_threshold"]))
    if len(answer.values) != 1:
        raise Crash("the parameter service stopped answering")
    return outcome


if __name__ == "__main__" and sys.argv[1:] == [WORKER_FLAG]:
    sys.exit(worker_main())
