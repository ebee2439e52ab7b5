"""`prune-perception demo`: the whole story (synth -> train -> prune -> export -> bag -> replay -> compare)."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prune_perception.cli import build_parser, main
from prune_perception.demo import _marker_matches, _write_marker, bench_settings, node_threads, summary_lines
from prune_perception.node_params import read_params_file

ROOT = Path(__file__).resolve().parents[1]
TINY = ["-n", "40", "--image-size", "320x192", "--input-size", "192x128", "--epochs", "1",
        "--finetune-epochs", "1", "--ratios", "0.3", "0.5"]


def _demo(output: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "prune_perception.cli", "-q", "demo", "-o", str(output), *args],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)   # a hang guard, not a speed check
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, time.monotonic() - started


def test_summary_lines_format():
    lines = summary_lines((0.848, 0.835), (524_000_000, 251_000_000), (13.0, 6.1), (12.5, 6.0), (19.04, 12.0),
                          ((7.0, 3.7), (0.845, 0.833)), 1)
    assert lines == ["mAP50   dense 0.848  pruned 0.835  (-1.3 points)",
                     "MACs    dense 524 M  pruned 251 M  (-52 %)",
                     "latency dense 13.0 ms  pruned 6.1 ms inference p50 (2.13x; round-robin, 1 ONNX Runtime "
                     "thread(s) like the node)",
                     "node    inference p50 12.5 / 6.0 ms (2.08x); end to end p50 19.0 / 12.0 ms (pruned 0.63 of dense)",
                     "INT8    dense 7.0 ms  pruned 3.7 ms inference p50 (3.51x float dense); offline mAP50 0.845 / 0.833"]


def test_demo_times_with_the_thread_setting_of_the_shipped_node_config():
    """The round-robin timing, the replays and the offline runs use what config/detector.yaml gives the node."""
    shipped = read_params_file(ROOT / "config" / "detector.yaml")["/**"]["intra_op_threads"]
    assert shipped >= 1            # a fixed count: ONNX Runtime's default (0) takes every core
    assert node_threads() == shipped and bench_settings().threads == shipped


def test_demo_options_and_defaults():
    args = build_parser().parse_args(["demo"])
    assert (args.output, args.num_images, args.epochs, args.finetune_epochs, args.budget, args.ratios, args.rate) == (
        "runs/demo", 1000, None, 12, 3.0, [0.3, 0.4, 0.5], 1.0)
    args = build_parser().parse_args(["demo", "--image-size", "320x192", "--input-size", "192x128"])
    assert (args.image_size, args.input_size) == ((320, 192), (192, 128))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--input-size", "big"])


def test_stage_marker_needs_same_key_and_outputs(tmp_path):
    marker, output = tmp_path / "done.json", tmp_path / "out.bin"
    key = {"config": {"a": 1}, "source_sha256": "abc"}
    assert not _marker_matches(marker, key)
    _write_marker(marker, key, extra=3)
    assert _marker_matches(marker, key)
    assert not _marker_matches(marker, {**key, "source_sha256": "def"})
    assert not _marker_matches(marker, key, [output])
    output.write_bytes(b"x")
    assert _marker_matches(marker, key, [output])
    marker.write_text("{broken")
    assert not _marker_matches(marker, key)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """The tiny demo's output folder, its first run and that run's seconds."""
    out = tmp_path_factory.mktemp("tiny_demo") / "demo"
    return out, *_demo(out, *TINY)


@pytest.mark.slow
def test_demo_runs_every_stage_then_reuses_them(tiny_demo):
    out, first, first_s = tiny_demo
    for stage in range(1, 8):
        assert f"== {stage}/7 " in first.stdout
    expected = [out / "train" / "best.pt", out / "prune" / "pruned.pt", out / "prune" / "history.json",
                out / "export" / "dense.onnx", out / "export" / "pruned.onnx", out / "bag" / "val",
                out / "replay" / "dense.json", out / "replay" / "pruned.json",
                out / "compare" / "compare.md", out / "compare" / "compare.json"]
    for path in expected:
        assert path.exists(), path
    html = (out / "compare" / "compare.html").read_text()
    assert "dense.onnx" in html and "pruned.onnx" in html

    summary = json.loads((out / "summary.json").read_text())
    lines = summary["summary"]
    assert [line.split()[0] for line in lines] == ["mAP50", "MACs", "latency", "node", "INT8"]
    assert (out / "export" / "dense.int8.onnx").exists() and (out / "export" / "pruned.int8.onnx").exists()
    for name in ("dense", "pruned"):   # replays on /clock: a real pipeline latency, no WARN for the stamps
        node = summary["replay"][name]["node"]
        assert float(node["pipeline_latency_ms_p50"]) < 10_000 and node["pipeline_latency_note"] == "", node
        assert float(node["latency_inference_ms_p50"]) > 0
    assert all(c["latency_p50_ms"] > 0 for c in summary["pruned"]["candidates"])
    assert summary["report"] == str(out / "compare" / "compare.html")
    assert summary["pruned"]["macs"] < summary["dense"]["macs"]      # 2 candidates within budget at mAP ~0
    assert summary["replay"]["dense"]["frames"] == 8 and summary["offline"]["pruned"]["frames"] == 8
    # the output ends with the report's path and the three lines
    tail = first.stdout.strip().splitlines()[-6:]
    assert tail == [f"report: {out / 'compare' / 'compare.html'}", *lines]

    second, second_s = _demo(out, *TINY)
    print(f"first run {first_s:.1f} s, second run {second_s:.1f} s")
    for what in ("best.pt (training", "pruned.pt (pruning", "dense.onnx (exported", "pruned.onnx (exported",
                 "val (written"):
        assert f"reusing {out}" in second.stdout and what in second.stdout, what
    timings = json.loads((out / "summary.json").read_text())["stage_seconds"]
    assert all(timings[stage] < 1.0 for stage in ("synth", "train", "prune", "export", "bag")), timings
    assert second_s < first_s, (first_s, second_s)

    # another fine-tuning setting redoes pruning (and the export of the pruned model), not training
    third, _ = _demo(out, *TINY[:-5], "--finetune-epochs", "0", "--ratios", "0.3")
    assert "reusing" in third.stdout and "best.pt (training" in third.stdout
    assert "pruned.pt (pruning" not in third.stdout and "pruned.onnx (exported" not in third.stdout
    assert "dense.onnx (exported" in third.stdout
    assert json.loads((out / "summary.json").read_text())["pruned"]["ratio"] == 0.3


# ------------------------------------------------------------------ every command over the demo's outputs
REPR = re.compile(r"^[A-Z]\w*\(\w+=")   # a dataclass repr, e.g. BagSummary(path=...)


def _cli(capsys, *args) -> str:
    """`prune-perception ARGS` in this process (an exception fails the test with its traceback); its stdout."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, f"prune-perception {' '.join(map(str, args))}: exit {code}\n{err[-3000:]}"
    return out


def _summary(out: str) -> str:
    """The last line: a short human-readable summary, not a raw repr."""
    last = out.strip().splitlines()[-1]
    assert last and not REPR.match(last) and len(last) < 400, last
    return last


@pytest.mark.slow
def test_every_command_runs_over_the_demo_outputs(tiny_demo, tmp_path, capsys):
    """Each sub-command (and each kind of pruning output in `report`) on the tiny demo's files: exit 0, no
    traceback, a readable last line or valid JSON."""
    demo, _, _ = tiny_demo
    data, dense_pt = demo / "synth", demo / "train" / "best.pt"
    dense_onnx, pruned_onnx, bag = demo / "export" / "dense.onnx", demo / "export" / "pruned.onnx", demo / "bag" / "val"
    out = tmp_path
    sets = ["--set", f"data.train={data}", "--set", f"data.val={data}", "--set", "finetune.batch_size=8"]

    assert "dataset written to" in _summary(_cli(capsys, "-q", "synth", "-o", out / "synth", "-n", "4", "--width",
                                                 "128", "--height", "96", "--workers", "1"))
    assert "best checkpoint" in _summary(_cli(capsys, "train", *sets[:4], "--set", "model.input_size=[96, 160]",
                                              "--set", "optim.epochs=1", "--set", "optim.batch_size=8",
                                              "-o", out / "train", "-q"))   # -q after the sub-command
    evaluated = json.loads(_cli(capsys, "eval", dense_pt, "--data", data, "--json", "-q"))
    assert 0.0 <= evaluated["mAP50"] <= 1.0 and evaluated["split"] == "val"
    assert _summary(_cli(capsys, "eval", pruned_onnx, "--data", data, "-o", out / "eval", "-q")).startswith("mAP50 ")

    prune = ["prune", "--checkpoint", dense_pt, *sets, "-q"]
    runs = {"plain": ["--ratio", "0.3", "--finetune-epochs", "0"],
            "iterative": ["--ratio", "0.4", "--schedule", "iterative", "--steps", "2", "--finetune-epochs", "0"],
            "weight": ["--ratio", "0.3", "--granularity", "weight", "--finetune-epochs", "0"],
            "elastic": ["--ratio", "0.3", "--schedule", "elastic", "--finetune-epochs", "1",
                        "--set", "prune.elastic_hard_epochs=0"],
            "latency": ["--latency-ms", "10000", "--threads", "1", "--finetune-epochs", "0",
                        "--set", "prune.latency_runs=3"]}
    for name, args in runs.items():
        _summary(_cli(capsys, *prune, *args, "-o", out / name))
    sensitivity = _cli(capsys, "sensitivity", "--checkpoint", dense_pt, "--data", data, "--ratios", "0.5",
                       "--layers", "neck.td3", "--val-images", "4", "-o", out / "sensitivity", "-q")
    assert "most sensitive: neck.td3" in _summary(sensitivity)
    every_kind = [demo / "prune", *(out / name for name in runs)]   # the demo's run: an accuracy budget
    report = _summary(_cli(capsys, "report", *every_kind, "--sensitivity", out / "sensitivity", "-o", out / "report"))
    assert report.startswith(f"pruning report of {len(every_kind)} run(s)")
    html = (out / "report" / "report.html").read_text()
    assert all(f"<td>{run.name}</td>" in html for run in every_kind) and "budget ≤" in html and "latency ≤" in html

    assert "wrote" in _summary(_cli(capsys, "export", dense_pt, "-o", out / "export" / "dense.onnx"))
    bench = ["bench", dense_onnx, pruned_onnx, "--runs", "5", "--warmup", "1", "--images", "2", "-o", out / "bench"]
    assert len(json.loads(_cli(capsys, *bench, "--json"))["models"]) == 2
    assert _summary(_cli(capsys, *bench, "-q")).startswith("inference p50: dense ")

    assert "frames" in _summary(_cli(capsys, "bag", "from-dataset", data, "-o", out / "bag", "-q"))
    assert json.loads(_cli(capsys, "bag", "info", out / "bag", "--json"))
    _summary(_cli(capsys, "bag", "info", bag))
    assert "images" in _summary(_cli(capsys, "bag", "to-dataset", out / "bag", "-o", out / "from_bag", "-q"))
    offline = json.loads(_cli(capsys, "replay", bag, "--model", pruned_onnx, "--offline", "--json", "-o",
                              out / "offline"))
    assert offline["frames"] == 8
    compared = json.loads(_cli(capsys, "compare", bag, "--models", dense_onnx, pruned_onnx, "--offline", "--json",
                               "-o", out / "compare"))
    assert len(compared) == 2
    assert _summary(_cli(capsys, "fleet-eval", bag, out / "bag", "--models", pruned_onnx, "--workers", "0", "-o",
                         out / "fleet", "-q")) == "2 evaluation(s) of 1 model(s) on 2 bag(s), 0 failed"

    # ROS: in their own processes, as a user runs them
    for args in (["replay", bag, "--model", pruned_onnx, "--max-rate", "-o", out / "replay"],
                 ["node", "--model", pruned_onnx, "--camera", "synthetic", "--camera-size", "320x192",
                  "--camera-count", "3", "--duration", "3", "-p", "providers=[cpu]"]):
        done = subprocess.run([sys.executable, "-m", "prune_perception.cli", *map(str, args), "-q"],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert re.search(r"8/8 frames answered|detector 0: received \d+", _summary(done.stdout)), done.stdout
