"""Multi-process training under ``torchrun`` (PyTorch DistributedDataParallel), CPU / gloo.

``torchrun`` starts one process per rank and describes the job in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). Without those
variables everything here is a no-op for a single process, so the same code paths serve a plain
``prune-perception train`` and a ``torchrun ... -m prune_perception.cli train``.

- Backend: gloo. The trainer runs on the CPU (no ``.to(device)`` anywhere in training, loss or
  evaluation), so NCCL/CUDA training is not offered: asking for it is a ConfigError rather than a
  silent CPU run. gloo over TCP also works between machines (set ``GLOO_SOCKET_IFNAME`` to the NIC).
- Threads: each rank uses ``cores // local world size`` intra-op threads (at least 1), so N ranks on
  one machine do not oversubscribe its cores.
- BatchNorm: torch's SyncBatchNorm runs on GPUs only, so :func:`synchronized_batchnorm` provides the
  same computation on the CPU over gloo: while training, every BatchNorm2d normalises with the mean
  and variance of the *global* batch (all ranks' shards) and back-propagates through them, so a
  torchrun fine-tune computes what one process computes on the whole batch (up to float rounding).
- Helpers: the rank-0 checks, barrier, object broadcast (pickled: only ever our own in-memory state
  between our own ranks, never a file from disk), tensor all-reduce, buffer averaging.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from prune_perception.errors import ConfigError

T = TypeVar("T")

BACKENDS = ("auto", "gloo", "nccl")
BACKEND_ENV = "PRUNE_PERCEPTION_DIST_BACKEND"
DEFAULT_TIMEOUT_S = 1800.0    # a rank waits this long for the others (rank 0 evaluates while they wait)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job; the defaults describe a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None      # None: no process group (single process)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that evaluates, writes checkpoints/history/plots and shows progress."""
        return self.rank == 0


_context = DistContext()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def env_context() -> DistContext:
    """The job as torchrun describes it in the environment (a single process when it does not)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise ConfigError(f"inconsistent distributed environment: RANK={rank} WORLD_SIZE={world} "
                          f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}")
    return DistContext(rank, world, local_rank, local_world)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_rank(local_world_size: int, cores: int | None = None) -> int:
    return max(1, (cores or usable_cores()) // max(1, local_world_size))


def resolve_backend(backend: str = "auto") -> str:
    """gloo, or a ConfigError for what is not supported (NCCL: the trainer is CPU-only)."""
    backend = os.environ.get(BACKEND_ENV, backend) or "auto"
    if backend not in BACKENDS:
        raise ConfigError(f"distributed backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "nccl":
        raise ConfigError("NCCL (multi-GPU) training is not supported: training, loss and evaluation run on the CPU, "
                          "so ranks talk over gloo. Use the default backend (gloo) — see docs/scale-out.md")
    return "gloo"


def init_distributed(backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the torchrun job (once per process) and pin this rank's threads; a no-op without torchrun.

    Returns the context, which :func:`context` returns from then on.
    """
    global _context
    if dist.is_available() and dist.is_initialized():
        return _context
    ctx = env_context()
    if not ctx.is_distributed:
        return ctx
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed: cannot run under torchrun")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"WORLD_SIZE={ctx.world_size} but {name} is not set: start the job with torchrun "
                              "(see docs/scale-out.md)")
    chosen = resolve_backend(backend)
    torch.set_num_threads(threads_per_rank(ctx.local_world_size))
    dist.init_process_group(chosen, rank=ctx.rank, world_size=ctx.world_size, timeout=timedelta(seconds=timeout_s))
    _context = replace(ctx, backend=chosen)
    return _context


def shutdown_distributed(synchronize: bool = True) -> None:
    """Leave the process group (end of a command); safe to call when none was joined.

    `synchronize` (normal completion): wait for every rank first, so no rank tears its connections down
    while another still reads the last message. Pass False on an error path (the others may never come).
    """
    global _context
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
    _context = DistContext()


def context() -> DistContext:
    """The joined job, or a single-process context when no process group is up."""
    if dist.is_available() and dist.is_initialized():
        return _context
    return DistContext()


def is_main_process() -> bool:
    return context().is_main


def barrier() -> None:
    if context().is_distributed:
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """`obj` of rank `src` on every rank (pickled; the value passed on other ranks is ignored)."""
    if not context().is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks (returns a new tensor; the input when single-process)."""
    ctx = context()
    if not ctx.is_distributed:
        return values
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / ctx.world_size


def sum_over_ranks(value: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the sum of `value` over ranks, world size): the global normaliser of a per-rank loss (no gradient)."""
    ctx = context()
    total = value.detach().clone()
    if ctx.is_distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total, ctx.world_size


@torch.no_grad()
def broadcast_module_state(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's module (same architecture everywhere)."""
    if not context().is_distributed:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=src)


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over ranks, in place.

    With :func:`synchronized_batchnorm` the ranks' statistics are already equal; the Trainer still averages
    them at epoch ends as a guarantee that every rank holds the same model (and EMA) whatever ran.
    """
    ctx = context()
    if not ctx.is_distributed:
        return
    for buffer in module.buffers():
        if buffer.dtype.is_floating_point:
            dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM)
            buffer.data.div_(ctx.world_size)



# ------------------------------------------------------------------------- synchronised BatchNorm
class _SyncBatchNormFunction(torch.autograd.Function):
    """BatchNorm over the global batch: statistics and their gradient terms all-reduced over ranks (gloo, CPU).

    Forward: per-rank mean/variance (two-pass, float32) combined in float64 into the global biased
    variance. Backward, with g the incoming gradient and x̂ the normalised input:
    dx = w·invstd·(g − Σg/N − x̂·Σ(g·x̂)/N) with both sums over the global batch (N elements per channel);
    the weight/bias gradients stay per-rank sums (DDP averages them like every other parameter).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = [0, *range(2, x.dim())]
        count = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x.detach(), dim=dims, unbiased=False)
        stats = torch.cat([(mean.double() * count), (var.double() + mean.double() ** 2) * count,
                           torch.tensor([float(count)], dtype=torch.float64)])
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        channels = x.shape[1]
        total = stats[-1]
        global_mean = stats[:channels] / total
        global_var = (stats[channels:2 * channels] / total - global_mean ** 2).clamp(min=0.0)
        mean32, var32 = global_mean.to(x.dtype), global_var.to(x.dtype)
        invstd = torch.rsqrt(var32 + eps)
        output = F.batch_norm(x, mean32, var32, weight, bias, training=False, eps=eps)
        ctx.save_for_backward(x, weight, mean32, invstd)
        ctx.total = float(total)
        total = total.clone()
        ctx.mark_non_differentiable(mean32, global_var, total)
        return output, mean32, global_var, total

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_var, _grad_total):
        x, weight, mean, invstd = ctx.saved_tensors
        shape = [1, -1] + [1] * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        x_hat = (x - mean.view(shape)) * invstd.view(shape)
        sum_dy = grad_output.sum(dims)
        sum_dy_xhat = (grad_output * x_hat).sum(dims)
        grad_weight, grad_bias = sum_dy_xhat.clone(), sum_dy.clone()
        sums = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        channels = x.shape[1]
        mean_dy = (sums[:channels] / ctx.total).view(shape)
        mean_dy_xhat = (sums[channels:] / ctx.total).view(shape)
        scale = (invstd * (weight if weight is not None else 1.0)).view(shape)
        grad_input = (grad_output - mean_dy - x_hat * mean_dy_xhat) * scale
        return grad_input, (grad_weight if weight is not None else None), (grad_bias if weight is not None else None), None


class _GlooSyncBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose training forward uses the global batch's statistics (see synchronized_batchnorm).

    Only ever set as the ``__class__`` of an existing BatchNorm2d for the duration of a training epoch:
    it adds no state, so parameters, buffers, state_dict keys and isinstance checks stay those of BN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and context().is_distributed):
            return super().forward(x)
        output, mean, var, total = _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (total / max(total - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return output


@contextmanager
def synchronized_batchnorm(module: nn.Module) -> Iterator[int]:
    """Within the block, every BatchNorm2d of `module` normalises over all ranks' batches while training.

    A no-op for a single process. Yields the number of BatchNorm layers synchronised.
    """
    layers = [m for m in module.modules() if type(m) is nn.BatchNorm2d] if context().is_distributed else []
    for layer in layers:
        layer.__class__ = _GlooSyncBatchNorm2d
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.__class__ = nn.BatchNorm2d
