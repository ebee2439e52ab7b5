"""Scale-out wall times on this machine: sensitivity sweep serial vs Dask, fine-tune epoch 1 vs N torchrun ranks.

1. Sensitivity sweep (every prunable layer group x `--ratios`, `--val-images` val images, a random-init
   `nano` detector: accuracy does not matter, the work does): serially in this process (torch on all
   usable cores) against a loopback LocalCluster of `--workers` processes x 1 thread. The Dask time is
   reported without and with the cluster start-up (what one `sensitivity --workers N` call pays).
2. One fine-tuning epoch (`--train-images` images, batch `--batch-size`, `--input-size`): the Trainer
   under `torchrun --nproc_per_node=1` (one process, torch on all usable cores) against
   `--nproc_per_node=N` (N DDP ranks over gloo on 127.0.0.1, cores // N threads each). Timed inside the
   job around `train_epoch` only (no evaluation, no process start-up), the best of `--epochs` epochs
   after one warm-up epoch.

Both parts also time the single process on 1 torch thread (torch's default on machines that report
fewer physical than logical cores, and sometimes faster than 2 threads on 2 vCPUs). The runs alternate
`--repeats` times; medians are reported. The fanned-out side and the first single-process side use all
the usable cores, so that ratio is what fanning out buys at equal hardware. The machine may be shared:
the load average is printed before and after.

    .venv/bin/python bench/scaleout.py -o runs/bench_scaleout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EPOCH_SCRIPT = r'''
import json, sys, time
import torch
import torch.distributed as dist
from prune_perception.config import TrainConfig, load_config
from prune_perception.training import distributed
from prune_perception.training.trainer import Trainer

data, out, epochs, batch, height, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
ctx = distributed.init_distributed()
if len(sys.argv) > 7:                    # the single-process baselines: this many torch threads
    torch.set_num_threads(int(sys.argv[7]))
config = load_config(TrainConfig, None, [f"data.train={data}", f"data.val={data}", f"output={out}/train",
                                         f"model.input_size=[{height}, {width}]", f"optim.batch_size={batch}",
                                         f"optim.epochs={epochs + 1}", "optim.warmup_epochs=0.5"])
torch.manual_seed(0)
trainer = Trainer(config, progress=False)
times = []
for epoch in range(epochs + 1):          # epoch 0: warm-up (allocations, caches)
    distributed.barrier()
    started = time.perf_counter()
    trainer.train_epoch(epoch)
    distributed.barrier()
    times.append(time.perf_counter() - started)
if ctx.is_main:
    Path = __import__("pathlib").Path
    Path(out, "epoch.json").write_text(json.dumps({"world_size": ctx.world_size, "threads": torch.get_num_threads(),
                                                   "steps": len(trainer.loader), "epoch_seconds": times[1:]}))
distributed.shutdown_distributed()
'''


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    import dask
    import distributed
    import torch

    from prune_perception.machine import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "dask": dask.__version__, "distributed": distributed.__version__}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(args: argparse.Namespace, work: Path) -> Path:
    from prune_perception.data.synth import SynthConfig, generate_dataset

    if args.data:
        return Path(args.data)
    root = work / "synth"
    total = round(args.train_images / 0.8)
    generate_dataset(root, SynthConfig(num_images=total, width=640, height=360, val_fraction=0.2, seed=7, workers=2),
                     progress=False)
    return root


def make_checkpoint(data: Path, input_hw: tuple[int, int], work: Path) -> Path:
    import torch

    from prune_perception.data.dataset import load_dataset
    from prune_perception.models.arch import default_arch
    from prune_perception.models.checkpoint import save_checkpoint
    from prune_perception.models.detector import Detector

    torch.manual_seed(0)
    classes = load_dataset(str(data), "train").classes
    path = work / "dense.pt"
    save_checkpoint(path, Detector(default_arch("nano", len(classes))).eval(), classes, input_hw)
    return path


def bench_sensitivity(args: argparse.Namespace, data: Path, checkpoint: Path, work: Path) -> dict:
    import torch
    from distributed import Client

    from prune_perception.pruning.sensitivity import run_sensitivity
    from prune_perception.scaleout.runner import FanOutSettings, local_cluster
    from prune_perception.scaleout.sensitivity_points import DaskSensitivity

    cores = len(os.sched_getaffinity(0))
    common = dict(ratios=tuple(args.ratios), method="l1", val_images=args.val_images, progress=False)
    serial, serial_1t, fanned, startup, points = [], [], [], [], 0
    for repeat in range(args.repeats):
        for threads, times in ((cores, serial), (1, serial_1t)):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            _, result = run_sensitivity(checkpoint, str(data), work / f"sens_serial{repeat}_{threads}", **common)
            times.append(time.perf_counter() - started)
        points = len(result)
        torch.set_num_threads(cores)

        started = time.perf_counter()
        cluster = local_cluster(args.workers)   # 127.0.0.1 only, no dashboard, 1 thread per worker
        with Client(cluster) as client:
            client.wait_for_workers(args.workers)
        startup.append(time.perf_counter() - started)
        try:
            fan_out = DaskSensitivity(FanOutSettings(scheduler=cluster.scheduler_address, progress=False))
            started = time.perf_counter()
            _, fanned_points = run_sensitivity(checkpoint, str(data), work / f"sens_dask{repeat}", fan_out=fan_out,
                                               **common)
            fanned.append(time.perf_counter() - started)
        finally:
            cluster.close()
        same = [(p.group, p.ratio, p.mAP50, p.macs) for p in fanned_points] == \
            [(p.group, p.ratio, p.mAP50, p.macs) for p in result]
        print(f"sensitivity repeat {repeat + 1}: serial {serial[-1]:.1f} s ({cores} threads), {serial_1t[-1]:.1f} s "
              f"(1 thread), dask x{args.workers} {fanned[-1]:.1f} s "
              f"(+{startup[-1]:.1f} s start-up), {points} points, same table: {same}", flush=True)
    s, d, u = statistics.median(serial), statistics.median(fanned), statistics.median(startup)
    s1 = statistics.median(serial_1t)
    return {"points": points, "val_images": args.val_images, "workers": args.workers,
            "serial_threads": cores, "serial_s": serial, "serial_1thread_s": serial_1t,
            "serial_1thread_median_s": round(s1, 2), "speedup_vs_1thread": round(s1 / d, 3), "dask_s": fanned,
            "dask_startup_s": startup, "serial_median_s": round(s, 2), "dask_median_s": round(d, 2),
            "dask_startup_median_s": round(u, 2), "speedup": round(s / d, 3),
            "speedup_with_startup": round(s / (d + u), 3)}


def run_epochs(args: argparse.Namespace, data: Path, nproc: int, work: Path, threads: int | None = None) -> dict:
    script = work / "epoch_script.py"
    script.write_text(EPOCH_SCRIPT)
    out = work / f"epoch_n{nproc}_{time.monotonic_ns()}"
    out.mkdir()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(ROOT))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        env.pop(name, None)
    height, width = args.input_size
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), str(data), str(out),
               str(args.epochs), str(args.batch_size), str(height), str(width)] + ([str(threads)] if threads else [])
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun x{nproc} failed:\n{done.stderr[-4000:]}")
    return json.loads((out / "epoch.json").read_text())


def bench_epoch(args: argparse.Namespace, data: Path, work: Path) -> dict:
    one, one_1t, many = [], [], []
    info = {}
    for repeat in range(args.repeats):
        cores = len(os.sched_getaffinity(0))   # torch's own default may be fewer (physical cores)
        for nproc, threads, times in ((1, cores, one), (1, 1, one_1t), (args.nproc, None, many)):
            result = run_epochs(args, data, nproc, work, threads)
            times.append(min(result["epoch_seconds"]))
            info[nproc, threads] = result
        single, fanned = info[1, cores], info[args.nproc, None]
        print(f"fine-tune epoch repeat {repeat + 1}: 1 process {one[-1]:.2f} s ({single['threads']} threads), "
              f"{one_1t[-1]:.2f} s (1 thread), {args.nproc} processes {many[-1]:.2f} s "
              f"({single['steps']} steps of {args.batch_size} images)", flush=True)
    a, b, a1 = statistics.median(one), statistics.median(many), statistics.median(one_1t)
    return {"train_images": single["steps"] * args.batch_size, "batch_size": args.batch_size,
            "input_size": args.input_size, "steps": single["steps"], "nproc": args.nproc,
            "threads_1": single["threads"], f"threads_per_rank_{args.nproc}": fanned["threads"],
            "epoch_1proc_s": one, f"epoch_{args.nproc}proc_s": many, "epoch_1proc_median_s": round(a, 3),
            f"epoch_{args.nproc}proc_median_s": round(b, 3), "speedup": round(a / b, 3),
            "epoch_1proc_1thread_s": one_1t, "epoch_1proc_1thread_median_s": round(a1, 3),
            "speedup_vs_1thread": round(a1 / b, 3)}


def markdown(result: dict) -> str:
    s, e = result["sensitivity"], result["epoch"]
    n = e["nproc"]
    return "\n".join([
        "| benchmark | single process | fanned out | ratio (single / fanned) |", "|---|---|---|---|",
        f"| sensitivity sweep, {s['points']} points x {s['val_images']} images | {s['serial_median_s']:.1f} s "
        f"({s['serial_threads']} threads) | {s['dask_median_s']:.1f} s (Dask, {s['workers']} workers x 1 thread; "
        f"+{s['dask_startup_median_s']:.1f} s cluster start) | {s['speedup']:.2f}x ({s['speedup_with_startup']:.2f}x "
        "with start-up) |",
        f"| same, single process on 1 thread | {s['serial_1thread_median_s']:.1f} s | | {s['speedup_vs_1thread']:.2f}x |",
        f"| fine-tune epoch, {e['steps']} steps x {e['batch_size']} images at {e['input_size'][0]}x{e['input_size'][1]} "
        f"| {e['epoch_1proc_median_s']:.2f} s (1 process, {e['threads_1']} threads) | "
        f"{e[f'epoch_{n}proc_median_s']:.2f} s (torchrun x{n}, gloo, {e[f'threads_per_rank_{n}']} thread(s)/rank) | "
        f"{e['speedup']:.2f}x |",
        f"| same, single process on 1 thread | {e['epoch_1proc_1thread_median_s']:.2f} s | | "
        f"{e['speedup_vs_1thread']:.2f}x |"]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset (default: a synthetic one generated under the output folder)")
    parser.add_argument("--train-images", type=int, default=128, help="synthetic train images (default 128)")
    parser.add_argument("--input-size", type=int, nargs=2, default=[224, 384], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="Dask workers")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=["sensitivity", "epoch"])
    parser.add_argument("-o", "--output", default="runs/bench_scaleout")
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "load_average_before": load_average()}
    print(json.dumps(result, indent=2), flush=True)
    with tempfile.TemporaryDirectory(dir=output) as scratch:
        work = Path(scratch)
        data = make_data(args, work)
        if args.only in (None, "sensitivity"):
            checkpoint = make_checkpoint(data, tuple(args.input_size), work)
            result["sensitivity"] = bench_sensitivity(args, data, checkpoint, work)
        if args.only in (None, "epoch"):
            result["epoch"] = bench_epoch(args, data, work)
    result["load_average_after"] = load_average()
    (output / "scaleout.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if "sensitivity" in result and "epoch" in result:
        table = markdown(result)
        (output / "scaleout.md").write_text(table)
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
