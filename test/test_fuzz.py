"""Property-based fuzzing (hypothesis) of everything that takes outside input: camera messages, model files, bags,
parameters. The targets (strategies and checks) are in bench/fuzz_targets.py, which also says what
each one generates; ``bench/fuzz.py`` runs the same targets with large counts. ``MAX_EXAMPLES`` (env
``PRUNE_FUZZ_EXAMPLES``) bounds the examples per target here.
"""

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")
pytest.importorskip("hypothesis")

from fuzz_targets import (  # noqa: E402  (after the skips: needs rclpy)
    HUGE, LiveNode, MAX_EXAMPLES, REPO, TALLIES, Tally, Worker, frame_outcome, adapter_strategy, bag_strategy,
    build_graph_model, cdr_strategy, check_adapter, check_bag, check_model, check_node_cdr, check_node_compressed,
    check_node_image, check_params, check_replay_cli, compressed_strategy, corrupt_bag, encoded_samples,
    image_strategy, model_strategy, param_strategy, replay_outcome, run_target, set_declared_size, tally_table)


@pytest.fixture(scope="module", autouse=True)
def fuzz_report(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not TALLIES:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        reporter.write_line(f"fuzz cases per target (MAX_EXAMPLES={MAX_EXAMPLES}):")
        for line in tally_table(TALLIES.values()).splitlines():
            reporter.write_line(line)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    process = Worker(tmp_path_factory.mktemp("fuzz_worker") / "worker.log")
    yield process
    process.close()


@pytest.fixture(scope="module")
def model_bytes(tiny_onnx_model):
    import onnx

    data = Path(tiny_onnx_model).read_bytes()
    metadata = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    return data, metadata


@pytest.fixture(scope="module")
def fuzz_bags(tiny_synth, tmp_path_factory):
    from prune_perception.bags import write_dataset_bag

    root = tmp_path_factory.mktemp("fuzz_bags")
    return {f"{storage}_{transport}": write_dataset_bag(tiny_synth, "val", root / f"{storage}_{transport}",
                                                        storage=storage, transport=transport,
                                                        progress=False).path
            for storage in ("mcap", "sqlite3") for transport in ("raw", "compressed")}


def _assert_ran(tally: Tally, minimum: int) -> None:
    assert tally.crashes == 0 and tally.hangs == 0, tally.failures
    assert tally.cases >= minimum, f"{tally.target}: only {tally.cases} cases generated"


def test_node_survives_random_raw_images_and_garbage_cdr(tiny_onnx_model):
    live = LiveNode(tiny_onnx_model)
    try:
        _assert_ran(run_target("node_image", image_strategy(), lambda c: check_node_image(live, c),
                               MAX_EXAMPLES), MAX_EXAMPLES)
        _assert_ran(run_target("node_cdr", cdr_strategy(), lambda c: check_node_cdr(live, c), MAX_EXAMPLES),
                    MAX_EXAMPLES)
        live.send_good()
        live.check_accounting()
        stats = live.stats()
        assert stats.received >= 2 * MAX_EXAMPLES and stats.failed > 0 and stats.processed > 0
    finally:
        live.close()


def test_node_survives_random_compressed_images(tiny_onnx_model):
    live = LiveNode(tiny_onnx_model, input_transport="compressed", max_image_pixels=640 * 480)
    try:
        _assert_ran(run_target("node_compressed", compressed_strategy(),
                               lambda c: check_node_compressed(live, c), MAX_EXAMPLES), MAX_EXAMPLES)
        live.send_good()
        live.check_accounting()
    finally:
        live.close()


def test_header_bomb_is_refused_before_decoding(tiny_onnx_model):
    """600 bytes of JPEG declaring 30000x30000 px: refused at once (decoding took 25 s and 5 GB)."""
    live = LiveNode(tiny_onnx_model, input_transport="compressed")
    try:
        from prune_perception.ros.messages import compressed_to_msg

        for kind in ("jpeg", "png"):
            bomb = set_declared_size(encoded_samples()[kind], 30000, 30000)
            started = time.monotonic()
            before, after = live.publish_and_settle(compressed_to_msg(bomb, kind, live.header()))
            assert time.monotonic() - started < 5.0
            assert frame_outcome(before, after, expect_valid=False) == "error"
            assert "over the limit" in after.last_error and "header" in after.last_error
        live.send_good()
    finally:
        live.close()


def test_model_files_give_clear_errors_and_bad_swaps_keep_the_old_model(tiny_onnx_model, worker, model_bytes,
                                                                       tmp_path):
    good, metadata = model_bytes
    live = LiveNode(tiny_onnx_model, warmup_runs=1)   # as the worker loads: failures must match
    try:
        tally = run_target("model_load", model_strategy(),
                           lambda c: check_model(worker, live, tmp_path, good, metadata, c), MAX_EXAMPLES)
        _assert_ran(tally, MAX_EXAMPLES)
        assert tally.expected_errors > 0
        live.send_good()
        assert live.stats().failed == 0
    finally:
        live.close()


def test_huge_declared_input_is_a_clear_error(worker, tmp_path, model_bytes):
    """[1, 3, 100000, 100000] input: ModelLoadError before any allocation (was a 112 GiB MemoryError)."""
    spec = {"input": [1, 3, HUGE, HUGE], "input_type": "float", "metadata": None, "opset": 17,
            "outputs": ("native", 1, 1, 4, 6, 0.5, 0.5, "float")}
    path = tmp_path / "huge.onnx"
    path.write_bytes(build_graph_model(spec, model_bytes[1]))
    result = worker.call({"op": "load_model", "path": str(path), "model_format": "native"})
    assert result["outcome"] == "error" and "100000x100000" in result["detail"], result


def test_adapters_on_random_outputs():
    _assert_ran(run_target("adapters", adapter_strategy(), check_adapter, MAX_EXAMPLES * 3), MAX_EXAMPLES)


def test_corrupted_bags_give_bag_errors(worker, fuzz_bags, tmp_path):
    tally = run_target("bag", bag_strategy(sorted(fuzz_bags)), lambda c: check_bag(worker, tmp_path, fuzz_bags, c),
                       MAX_EXAMPLES)
    _assert_ran(tally, MAX_EXAMPLES)


def test_replay_cli_on_corrupted_bags(worker, fuzz_bags, tiny_onnx_model, tmp_path):
    count = max(MAX_EXAMPLES // 5, 4)
    tally = run_target("replay_cli", bag_strategy(sorted(fuzz_bags)),
                       lambda c: check_replay_cli(worker, tmp_path, fuzz_bags, tiny_onnx_model, c), count)
    _assert_ran(tally, count)


@pytest.mark.parametrize("corruption, expected", [
    ("truncated_mcap", "cannot open the bag's storage"), ("yaml_syntax", "cannot read metadata.yaml"),
    ("count_text", "message_count must be an integer"), ("count_wrong", None)])
def test_replay_cli_subprocess_one_line(fuzz_bags, tiny_onnx_model, tmp_path, corruption, expected):
    """The real console entry point on a corrupted bag: exit 2 with one readable line (or 0), no traceback."""
    import yaml

    bag = tmp_path / "bag"
    if corruption == "truncated_mcap":
        corrupt_bag(fuzz_bags["mcap_raw"], bag, {"target": "storage", "ops": [("truncate", 0.5)]})
    elif corruption == "yaml_syntax":
        corrupt_bag(fuzz_bags["mcap_compressed"], bag, {"target": "metadata", "ops": [("zero", 0.0, 1)]})
    else:
        shutil.copytree(fuzz_bags["sqlite3_compressed"], bag)
        document = yaml.safe_load((bag / "metadata.yaml").read_text())
        topics = document["rosbag2_bagfile_information"]["topics_with_message_count"]
        topics[0]["message_count"] = "many" if corruption == "count_text" else 3
        (bag / "metadata.yaml").write_text(yaml.safe_dump(document))
    done = subprocess.run([sys.executable, "-m", "prune_perception.cli", "-q", "replay", str(bag), "--model",
                           str(tiny_onnx_model), "--offline", "-o", str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    result = replay_outcome(done.returncode, done.stderr)
    if expected is None:   # declared count differs from the storage: read anyway, one warning line
        assert result["outcome"] == "accepted" and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "declares 3 messages" in done.stderr
    else:
        assert result["outcome"] == "error" and expected in result["detail"], result


def test_parameters_refused_with_a_reason_or_valid(tiny_onnx_model, model_bytes, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes(model_bytes[0])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(model_bytes[0][:1000])
    paths = [str(tiny_onnx_model), str(other), str(corrupt), str(tmp_path)]
    live = LiveNode(tiny_onnx_model)
    try:
        _assert_ran(run_target("params", param_strategy(paths), lambda c: check_params(live, c), MAX_EXAMPLES),
                    MAX_EXAMPLES)
        from rclpy.parameter import Parameter

        defaults = {"max_image_pixels": 7680 * 4320, "use_sim_time": False, "score_threshold": 0.2}
        results = live.node.set_parameters([Parameter(k, value=v) for k, v in defaults.items()])
        assert all(r.successful for r in results), results
        live.send_good()
        live.check_accounting()
    finally:
        live.close()
