"""Soak test: the detector node under sustained overload with periodic hot swaps, memory and latency over time.

The node runs in its own process (``python -m prune_perception.ros.detector_node``, pinned to one core,
this process on another; helpers from bench/node_bench.py). Steps:

1. unloaded latency: one 640x480 rgb8 frame at a time (ping-pong), p50 -> sustainable rate = 1000 / p50;
2. soak: frames at --overload x the sustainable rate for --duration s (no catch-up bursts); every
   --swap-every s the parameter service (rclpy AsyncParameterClient, as ``ros2 param set`` would) sets
   ``model_path`` to the other of two models (same network, different files); every --sample-every s the
   node process' RSS and the p50/p99 latency (receive time - header.stamp) of the outputs of that interval;
3. drain, then the node's own counters from /diagnostics: received = processed + dropped + failed exactly.

Reports duration, frames in / processed / dropped / failed, RSS growth (median of the last quarter vs the
first quarter of the samples after --rss-warmup s, goal < 5 %), p99 under overload / unloaded p50 (goal
<= 2.0), swaps done and frames failed during swaps (goal 0). Writes summary.json (with the time series),
summary.md and soak.png (memory and latency over time) to --output.

    PYTHONPATH=. ROS_DOMAIN_ID=107 .venv/bin/python bench/soak.py --duration 600 --output runs/soak
    ... bench/soak.py --duration 30 --swap-every 8 --model m.onnx     # the short version the tests run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_bench import (DEFAULT_PROFILE, NAMESPACE, NODE_DETECTIONS_TOPIC, NODE_IMAGE_TOPIC, NODE_NAME,  # noqa: E402
                        START_TIMEOUT_S, Child, Client, _detections_type, bench_frame, bench_model, counts, json_safe,
                        pin_process, prepare_bench_process, split_cores, start_node)
from prune_perception.evaluation.plots import pyplot, save_figure  # noqa: E402
from prune_perception import ros_env  # noqa: E402

GOAL_RSS_GROWTH_PCT = 5.0
GOAL_P99_OVER_P50 = 2.0
DRAIN_QUIET_S = 1.0
DRAIN_MAX_S = 15.0
SWAP_TIMEOUT_S = 60.0
SWAP_SETTLE_S = 1.0


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process: psutil if installed, else /proc/<pid>/status VmRSS."""
    try:
        import psutil
    except ImportError:
        psutil = None
    try:
        if psutil is not None:
            return psutil.Process(pid).memory_info().rss
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except Exception:  # the process just ended
        return None
    return None


def percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def second_model(model: Path, folder: Path) -> Path:
    """The same network in another file with another SHA-256 (metadata 'created' changed; a plain copy for
    models without our metadata), so every swap really loads a different file."""
    import onnx

    target = folder / f"{model.stem}_b.onnx"
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    if "created" in props:
        props["created"] = f"{props['created']} (soak copy)"
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, str(target))
    else:
        shutil.copyfile(model, target)
    return target


class SoakClient(Client):
    """node_bench's client, also keeping (receive time, latency) of every output in arrival order."""

    def __init__(self, image):
        super().__init__(image)
        self.events: list[tuple[float, float]] = []   # (monotonic receive time, latency ms)

    def _on_output(self, stamp) -> None:
        super()._on_output(stamp)
        now = time.time_ns()
        self.events.append((time.monotonic(), (now - (stamp.sec * 1_000_000_000 + stamp.nanosec)) / 1e6))


class Swapper:
    """Alternates ``model_path`` between two files through the node's parameter service, one swap at a time."""

    def __init__(self, client: SoakClient, models: list[Path]):
        from rclpy.parameter_client import AsyncParameterClient

        self.client, self.models = client, models
        self.parameters = AsyncParameterClient(client.node, f"{NAMESPACE}/{NODE_NAME}")
        self.current = 0
        self.active: dict | None = None
        self.log: list[dict] = []

    def wait_ready(self, timeout: float) -> None:
        if not self.parameters.wait_for_services(timeout_sec=timeout):
            raise TimeoutError("the node's parameter services did not come up")

    def start(self, t_s: float) -> None:
        from rclpy.parameter import Parameter

        target = self.models[1 - self.current]
        diagnostics = self.client.diagnostics or {}
        self.active = {"t_s": round(t_s, 3), "to": str(target), "started": time.monotonic(),
                       "swaps_done_before": int(diagnostics.get("swaps_done", 0)),
                       "failed_before": int(diagnostics.get("frames_failed", 0)),
                       "future": self.parameters.set_parameters([Parameter("model_path", value=str(target))])}

    def poll(self, t_s: float) -> None:
        """Advance the swap in progress: accepted by the service, then reported done on /diagnostics."""
        swap = self.active
        if swap is None:
            return
        future, diagnostics = swap["future"], self.client.diagnostics or {}
        if future is not None and future.done():
            results = future.result().results
            swap["future"] = None
            swap["accepted"] = bool(results and results[0].successful)
            swap["reason"] = results[0].reason if results else "no result"
            if not swap["accepted"]:
                return self._finish(t_s, ok=False)
        if swap.get("accepted") and int(diagnostics.get("swaps_done", 0)) > swap["swaps_done_before"] \
                and diagnostics.get("model_path") == swap["to"] and diagnostics.get("model_loading") in ("", None):
            self.current = 1 - self.current
            return self._finish(t_s, ok=True)
        if time.monotonic() - swap["started"] > SWAP_TIMEOUT_S:
            swap["reason"] = f"not reported done on /diagnostics within {SWAP_TIMEOUT_S:.0f} s"
            self._finish(t_s, ok=False)

    def _finish(self, t_s: float, ok: bool) -> None:
        swap, diagnostics = self.active, self.client.diagnostics or {}
        self.log.append({"t_s": swap["t_s"], "to": Path(swap["to"]).name, "ok": ok,
                         "seconds": round(time.monotonic() - swap["started"], 3), "done_t_s": round(t_s, 3),
                         "frames_failed_during": int(diagnostics.get("frames_failed", 0)) - swap["failed_before"],
                         **({"reason": swap.get("reason", "")} if not ok else {})})
        self.active = None


def soak(client: SoakClient, publisher, node: Child, swapper: Swapper, rate_hz: float, args) -> dict:
    """Publish at ``rate_hz`` for ``args.duration`` s with swaps and samples; then drain the outputs."""
    period = 1.0 / rate_hz
    sent: list[int] = []
    samples: list[dict] = []
    start = time.monotonic()
    end = start + args.duration
    next_publish, next_sample, next_swap = start, start + args.sample_every, start + args.swap_every
    last_sample_t, last_sent, event_index = start, 0, 0
    rss = rss_bytes(node.process.pid)
    samples.append({"t_s": 0.0, "rss_mb": rss / 2**20 if rss else None, "latency_p50_ms": None,
                    "latency_p99_ms": None, "fps_in": 0.0, "fps_out": 0.0, "outputs": 0})
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_publish:
            sent.append(client.publish(publisher))
            next_publish += period
            if next_publish < now:            # fell behind: carry on from now, no burst
                next_publish = now
        if now >= next_swap and swapper.active is None:
            swapper.start(now - start)
            next_swap += args.swap_every
        swapper.poll(now - start)
        if now >= next_sample:
            node.check_alive()
            new_events = client.events[event_index:]
            event_index = len(client.events)
            latencies = [latency for _, latency in new_events]
            dt = now - last_sample_t
            rss = rss_bytes(node.process.pid)
            diagnostics = client.diagnostics or {}
            samples.append({"t_s": round(now - start, 3), "rss_mb": rss / 2**20 if rss else None,
                            "latency_p50_ms": percentile(latencies, 50), "latency_p99_ms": percentile(latencies, 99),
                            "fps_in": (len(sent) - last_sent) / dt, "fps_out": len(new_events) / dt,
                            "outputs": len(new_events), "frames_failed": int(diagnostics.get("frames_failed", 0))})
            last_sample_t, last_sent = now, len(sent)
            next_sample += args.sample_every
        client.spin(max(0.0, min(next_publish, next_sample, end) - time.monotonic()))
    publish_seconds = time.monotonic() - start
    drain_start = time.monotonic()
    client.last_receive = max(client.last_receive, drain_start)
    while (time.monotonic() - client.last_receive < DRAIN_QUIET_S and time.monotonic() - drain_start < DRAIN_MAX_S
           and not all(key in client.received for key in sent[-5:])):
        client.spin(0.05)
        swapper.poll(time.monotonic() - start)
    while swapper.active is not None and time.monotonic() - drain_start < SWAP_TIMEOUT_S:   # a swap in flight
        client.spin(0.05)
        swapper.poll(time.monotonic() - start)
    node.check_alive()
    latencies = [(client.received[key] - key) / 1e6 for key in sent if key in client.received]
    # Outputs received outside [swap requested, swap done + SWAP_SETTLE_S]: the loader shares the node's core.
    windows = [(start + swap["t_s"], start + swap["done_t_s"] + SWAP_SETTLE_S) for swap in swapper.log]
    outside = [latency for received, latency in client.events
               if received >= start and not any(low <= received <= high for low, high in windows)]
    return {"target_fps": rate_hz, "achieved_fps": len(sent) / publish_seconds, "seconds": publish_seconds,
            "published": len(sent), "outputs": len(latencies), "latencies_ms": latencies, "samples": samples,
            "start": start, "latencies_outside_swaps_ms": outside}


def rss_growth(samples: list[dict], warmup_s: float) -> dict:
    """Median RSS of the last quarter vs the first quarter of the samples after ``warmup_s``."""
    series = [(s["t_s"], s["rss_mb"]) for s in samples if s["rss_mb"] is not None and s["t_s"] >= warmup_s]
    if len(series) < 4:
        return {"samples_used": len(series), "growth_pct": None, "warmup_s": warmup_s}
    quarter = max(1, len(series) // 4)
    first = float(np.median([v for _, v in series[:quarter]]))
    last = float(np.median([v for _, v in series[-quarter:]]))
    return {"samples_used": len(series), "warmup_s": warmup_s, "first_quarter_median_mb": round(first, 2),
            "last_quarter_median_mb": round(last, 2), "growth_pct": round((last - first) / first * 100, 3),
            "min_mb": round(min(v for _, v in series), 2), "max_mb": round(max(v for _, v in series), 2)}


def run(args, model: Path, model_b: Path, output: Path, children: list[Child]) -> dict:
    from prune_perception.evaluation.latency_bench import BenchSettings, machine_info
    from prune_perception.runtime.latency_stats import LatencyStats

    node_core, bench_core = split_cores()
    machine = machine_info(BenchSettings(threads=1))
    machine.update(node_core=node_core, bench_core=bench_core, load_average_start=list(os.getloadavg()),
                   ros_domain_id=args.domain_id, rss_source="psutil" if _has_psutil() else "/proc/<pid>/status")
    print("machine:", json.dumps(machine), flush=True)
    pin_process({bench_core})
    client = SoakClient(bench_frame())
    try:
        node = start_node(model, args.domain_id, DEFAULT_PROFILE, node_core, output)
        children.append(node)
        publisher, subscription = client.target(NODE_IMAGE_TOPIC, NODE_DETECTIONS_TOPIC, _detections_type())
        client.wait_for(lambda: publisher.get_subscription_count() > 0 and subscription.get_publisher_count() > 0
                        and client.diagnostics is not None and client.diagnostics.get("model_path"),
                        "the detector node (matched, model loaded)", START_TIMEOUT_S, node)
        swapper = Swapper(client, [model, model_b])
        swapper.wait_ready(START_TIMEOUT_S)
        unloaded = client.ping_pong(publisher, args.frames, args.warmup, "unloaded", node)
        p50 = unloaded["latency_ms"]["p50"]
        if not math.isfinite(p50):
            raise RuntimeError("no unloaded latency (every frame timed out)")
        before = counts(client.fresh_diagnostics(node))
        rate = args.overload * 1000.0 / p50
        print(f"unloaded p50 {p50:.2f} ms -> sustainable {1000 / p50:.1f} fps; soaking at {rate:.1f} fps for "
              f"{args.duration:.0f} s, swap every {args.swap_every:.0f} s", flush=True)
        result = soak(client, publisher, node, swapper, rate, args)
        diagnostics = client.fresh_diagnostics(node)
        after = counts(diagnostics)
    finally:
        client.close()
    stream = {name: after[name] - before[name] for name in after if name != "pending"}
    samples = result.pop("samples")
    latencies = result.pop("latencies_ms")
    outside = LatencyStats.of(result.pop("latencies_outside_swaps_ms")).as_dict()
    result.pop("start")
    overload = LatencyStats.of(latencies).as_dict()
    swaps = swapper.log
    frames = {"published": result["published"], "outputs": result["outputs"], **after,
              "stream": stream, "lost_before_node": result["published"] - stream["received"],
              "adds_up": after["pending"] == 0 and after["received"] == after["processed"] + after["dropped"]
              + after["failed"] and stream["received"] == stream["processed"] + stream["dropped"] + stream["failed"]}
    growth = rss_growth(samples, args.rss_warmup if args.rss_warmup is not None else min(60.0, args.duration * 0.2))
    ratio = overload["p99"] / p50 if math.isfinite(overload["p99"]) else math.nan
    return {
        "machine": {**machine, "load_average_end": list(os.getloadavg())},
        "settings": {"duration_s": args.duration, "swap_every_s": args.swap_every, "overload": args.overload,
                     "sample_every_s": args.sample_every, "frames": args.frames, "warmup": args.warmup,
                     "image": "640x480 rgb8", "qos": "reliable, keep last 1", "ort_threads": 1},
        "models": [str(model), str(model_b)],
        "unloaded": {"latency_ms": unloaded["latency_ms"], "timeouts": unloaded["timeouts"],
                     "sustainable_fps": 1000.0 / p50},
        "soak": {**result, "latency_ms": overload, "latency_outside_swaps_ms": outside},
        "frames": frames,
        "rss": growth,
        "swaps": {"requested": len(swaps), "done": sum(s["ok"] for s in swaps),
                  "failed": sum(not s["ok"] for s in swaps),
                  "frames_failed_during_swaps": sum(s["frames_failed_during"] for s in swaps),
                  "swap_seconds_max": max((s["seconds"] for s in swaps), default=None), "log": swaps},
        "node_reported": {"swaps_done": int(diagnostics.get("swaps_done", 0)),
                          "swaps_failed": int(diagnostics.get("swaps_failed", 0))},
        "ratios": {"overload_p99_over_unloaded_p50": ratio, "goal_overload_p99_over_unloaded_p50": GOAL_P99_OVER_P50,
                   "overload_p99_outside_swaps_over_unloaded_p50": outside["p99"] / p50
                   if math.isfinite(outside["p99"]) else math.nan,
                   "rss_growth_pct": growth["growth_pct"], "goal_rss_growth_pct": GOAL_RSS_GROWTH_PCT},
        "series": {key: [s.get(key) for s in samples] for key in ("t_s", "rss_mb", "latency_p50_ms", "latency_p99_ms",
                                                                  "fps_in", "fps_out", "frames_failed")},
    }


def _has_psutil() -> bool:
    return importlib.util.find_spec("psutil") is not None


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    s, f, r, w, soak_result = result["settings"], result["frames"], result["rss"], result["swaps"], result["soak"]
    machine, ratios = result["machine"], result["ratios"]
    unloaded = result["unloaded"]["latency_ms"]

    def goal(value, limit, strict_less=False):
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "n/a"
        return "met" if (value < limit if strict_less else value <= limit) else "missed"

    st = f["stream"]
    growth_text = "n/a" if r["growth_pct"] is None else f"{r['growth_pct']:.2f} %"
    lines = [
        "# Detector node soak", "",
        f"{machine['cpu']} ({machine['cores']} cores; node on core {machine['node_core']}, publisher on core "
        f"{machine['bench_core']}), load average {machine['load_average_start'][0]:.2f} at start, "
        f"{machine['load_average_end'][0]:.2f} at end. {s['image']} frames, {s['qos']}, ONNX Runtime 1 thread. "
        f"Unloaded p50 {unloaded['p50']:.2f} ms ({result['unloaded']['sustainable_fps']:.1f} fps sustainable); soak "
        f"at {s['overload']:.1f}x = {soak_result['target_fps']:.1f} fps (achieved {soak_result['achieved_fps']:.1f}) "
        f"for {soak_result['seconds']:.0f} s, hot swap every {s['swap_every_s']:.0f} s. RSS from "
        f"{machine['rss_source']}.", "",
        "| measure | value | goal |", "|---|---|---|",
        f"| duration | {soak_result['seconds']:.1f} s | |",
        f"| frames published / outputs received | {f['published']} / {f['outputs']} | |",
        f"| node frames in = processed + dropped + failed (soak) | {st['received']} = {st['processed']} + "
        f"{st['dropped']} + {st['failed']} | exact: {'yes' if f['adds_up'] else 'NO'} |",
        f"| node totals (incl. unloaded phase) | {f['received']} = {f['processed']} + {f['dropped']} + "
        f"{f['failed']} (pending {f['pending']}) | |",
        f"| frames lost before the node (DDS keep-last-1) | {f['lost_before_node']} | |",
        f"| RSS first / last quarter median (after {r['warmup_s']:.0f} s) | "
        + (f"{r['first_quarter_median_mb']:.1f} / {r['last_quarter_median_mb']:.1f} MB | |" if r.get("growth_pct")
           is not None else "n/a | |"),
        f"| RSS growth | {growth_text} | "
        f"< {GOAL_RSS_GROWTH_PCT:.0f} % {goal(r['growth_pct'], GOAL_RSS_GROWTH_PCT, True)} |",
        f"| latency under overload p50 / p99 | {soak_result['latency_ms']['p50']:.2f} / "
        f"{soak_result['latency_ms']['p99']:.2f} ms | |",
        f"| p99 overload / unloaded p50 | {ratios['overload_p99_over_unloaded_p50']:.2f} | "
        f"<= {GOAL_P99_OVER_P50:.1f} {goal(ratios['overload_p99_over_unloaded_p50'], GOAL_P99_OVER_P50)} |",
        f"| same, outside swap windows (swap + {SWAP_SETTLE_S:.0f} s) | "
        f"{_fmt(ratios['overload_p99_outside_swaps_over_unloaded_p50'])} (p99 "
        f"{_fmt(soak_result['latency_outside_swaps_ms']['p99'])} ms) | |",
        f"| swaps done / requested | {w['done']} / {w['requested']} (longest {w['swap_seconds_max'] or 0:.2f} s) | |",
        f"| frames failed during swaps | {w['frames_failed_during_swaps']} | 0 "
        f"{'met' if w['frames_failed_during_swaps'] == 0 and f['failed'] == 0 else 'missed'} |",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()

    series = result["series"]
    t = np.asarray(series["t_s"], dtype=float)

    def values(key):
        return np.asarray([np.nan if v is None else v for v in series[key]], dtype=float)

    fig, (memory, latency) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    memory.plot(t, values("rss_mb"), color="tab:blue")
    memory.set(ylabel="node RSS (MB)", title="Detector node soak: memory and latency over time")
    latency.plot(t, values("latency_p50_ms"), label="p50 per interval", color="tab:green")
    latency.plot(t, values("latency_p99_ms"), label="p99 per interval", color="tab:red")
    unloaded = result["unloaded"]["latency_ms"]["p50"]
    latency.axhline(GOAL_P99_OVER_P50 * unloaded, color="grey", linestyle="--",
                    label=f"{GOAL_P99_OVER_P50:.0f} x unloaded p50")
    latency.set(xlabel="time (s)", ylabel="latency (ms)")
    for axis in (memory, latency):
        for swap in result["swaps"]["log"]:
            axis.axvline(swap["t_s"], color="orange" if swap["ok"] else "black", alpha=0.4, linewidth=1)
        axis.grid(alpha=0.3)
    latency.plot([], [], color="orange", alpha=0.6, label="hot swap")
    latency.legend(loc="upper right", fontsize=8)
    save_figure(fig, path, dpi=100)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--duration", type=float, default=600.0, help="soak seconds (default 10 min)")
    parser.add_argument("--swap-every", type=float, default=30.0, help="seconds between hot swaps")
    parser.add_argument("--overload", type=float, default=2.0, help="input rate / sustainable rate")
    parser.add_argument("--sample-every", type=float, help="seconds between RSS / latency samples "
                                                           "(default: duration / 120, 1..5 s)")
    parser.add_argument("--rss-warmup", type=float, help="seconds excluded from the RSS growth (default: "
                                                         "20 %% of the duration, at most 60)")
    parser.add_argument("--model", help="ONNX model (default: a random-initialised nano detector, exported)")
    parser.add_argument("--frames", type=int, default=200, help="timed frames of the unloaded measurement")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--output", "-o", default="runs/soak")
    parser.add_argument("--domain-id", type=int, default=ros_env.domain_id())
    args = parser.parse_args(argv)
    if args.sample_every is None:
        args.sample_every = min(5.0, max(1.0, args.duration / 120))
    if min(args.duration, args.swap_every, args.overload, args.sample_every) <= 0 or args.frames < 1:
        parser.error("duration, swap-every, overload, sample-every and frames must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = prepare_bench_process(args.domain_id, DEFAULT_PROFILE, Path(args.output))
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        try:
            model = bench_model(args.model, Path(tmp), "soak")
            if model is None:
                return 2
            result = run(args, model, second_model(model, Path(tmp)), output, children)
        finally:
            for child in children:
                child.stop()
    result = json_safe(result)
    (output / "summary.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (output / "summary.md").write_text(table)
    plot(result, output / "soak.png")
    print(table)
    print(f"wrote {output / 'summary.json'}, {output / 'summary.md'}, {output / 'soak.png'}")
    return 0 if result["frames"]["adds_up"] and result["frames"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
