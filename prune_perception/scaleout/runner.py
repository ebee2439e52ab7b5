"""Run independent tasks on a Dask cluster: an existing one (``--scheduler ADDRESS``) or a local one.

The local cluster is ``LocalCluster(host="127.0.0.1", dashboard_address=None, n_workers=N,
threads_per_worker=1, processes=True)``: the scheduler and every worker listen on loopback only and no
dashboard is served, so nothing leaves the machine (docs/design.md §10). (The scheduler still opens its small
HTTP endpoint — health, metrics — on the same host; it is given a free port on 127.0.0.1 rather than
8787, so two clusters never collide.) Each worker is its own process with
one thread (Dask's nanny sets ``OMP_NUM_THREADS=1`` for it), so N workers use N cores.

:func:`map_tasks` submits one task per item with ``retries`` and collects every outcome as it
completes (tqdm progress): results come back in input order, so merged outputs are those of a serial
run; a task that still fails after its retries is returned as a :class:`TaskFailure` (which task, the
error, the attempts, the remote traceback) and never dropped. Errors of the user's input
(:class:`~prune_perception.errors.PrunePerceptionError`: a corrupt bag, a missing file) are
deterministic and are reported after one attempt; anything else (a crashed worker, a transient
error) is retried.
"""

from __future__ import annotations

import logging
import os
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from prune_perception.errors import ConfigError, PrunePerceptionError

DEFAULT_RETRIES = 1
LOOPBACK = "127.0.0.1"


def local_cluster(workers: int):
    """A loopback-only LocalCluster of `workers` single-threaded processes, no dashboard."""
    from distributed import LocalCluster

    return LocalCluster(host=LOOPBACK, dashboard_address=None, n_workers=workers, threads_per_worker=1,
                        processes=True, silence_logs=logging.ERROR,
                        scheduler_kwargs={"dashboard_address": f"{LOOPBACK}:0"})


@dataclass
class FanOutSettings:
    """Where and how to fan out: ``scheduler`` (address of an existing cluster) or ``workers`` local processes."""

    scheduler: str | None = None
    workers: int | None = None          # local cluster size (default: the usable cores); 0: in this process
    retries: int = DEFAULT_RETRIES
    allow_failures: bool = False
    progress: bool = True
    connect_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}")
        if self.scheduler is not None and self.workers is not None:
            raise ConfigError("--scheduler uses an existing cluster's workers: --workers applies to a local "
                              "cluster (or 0: this process) only")


@dataclass
class TaskFailure:
    """A task that failed for good."""

    task: str           # what it was, e.g. "bag runs/bags/a (model.onnx)" or "stage1.down @ 0.5"
    error: str          # "ExceptionType: message"
    attempts: int
    traceback: str = ""

    def line(self) -> str:
        return f"{self.task}: {self.error} (after {self.attempts} attempt{'s' if self.attempts != 1 else ''})"


class TaskFailures(PrunePerceptionError):
    """Some tasks failed (after their retries); the message names each one and why."""

    def __init__(self, what: str, failures: Sequence[TaskFailure], total: int):
        self.failures = list(failures)
        lines = "; ".join(f.line() for f in self.failures)
        super().__init__(f"{len(self.failures)} of {total} {what} task(s) failed: {lines}")


@dataclass
class _InputError:
    """Returned (not raised) by a task whose input is broken: such errors are deterministic, not retried."""

    error: str
    traceback: str


def _guarded(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except PrunePerceptionError as exc:
        return _InputError(f"{type(exc).__name__}: {exc}", traceback.format_exc())


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@contextmanager
def dask_client(settings: FanOutSettings, tasks: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` on ``settings.scheduler``, or on a new loopback-only LocalCluster."""
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("Dask is not installed: pip install dask distributed (scripts/setup_env.sh does)") from None
    if settings.scheduler:
        try:
            client = Client(settings.scheduler, timeout=f"{settings.connect_timeout_s}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {settings.scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    workers = settings.workers or min(default_workers(), max(1, tasks or default_workers()))
    cluster = local_cluster(workers)
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def map_tasks(function: Callable[..., Any], items: Sequence[Any], names: Sequence[str], settings: FanOutSettings,
              desc: str = "tasks", shared: Any = None) -> tuple[list[Any], list[TaskFailure]]:
    """``function(item)`` (or ``function(item, shared)``) for every item, one Dask task each.

    ``shared`` (e.g. model weights and evaluation images) is scattered once to every worker instead of
    being shipped with each task. Returns (results in input order, None where a task failed; failures in
    input order).
    """
    if len(items) != len(names):
        raise ValueError("one name per item")
    results: list[Any] = [None] * len(items)
    failures: dict[int, TaskFailure] = {}
    if not items:
        return results, []
    if settings.workers == 0:
        return _map_here(function, items, names, settings, desc, shared)
    from distributed import as_completed

    with dask_client(settings, len(items)) as client:
        extra = []
        if shared is not None:
            [shared_future] = client.scatter([shared], broadcast=True, hash=False)
            extra = [shared_future]
        run = uuid.uuid4().hex[:8]
        futures = [client.submit(_guarded, function, item, *extra, key=f"{desc}-{run}-{index}",
                                 retries=settings.retries, pure=False)
                   for index, item in enumerate(items)]
        position = {future.key: index for index, future in enumerate(futures)}
        bar = tqdm(as_completed(futures), total=len(futures), desc=desc, unit="task", disable=not settings.progress)
        for future in bar:
            index = position[future.key]
            if future.status == "error":
                exc = future.exception()
                remote = "".join(traceback.format_tb(future.traceback())) if future.traceback() else ""
                failures[index] = TaskFailure(names[index], f"{type(exc).__name__}: {exc}", settings.retries + 1,
                                              remote)
            elif future.status == "cancelled":
                failures[index] = TaskFailure(names[index], "cancelled", 1)
            else:
                value = future.result()
                if isinstance(value, _InputError):
                    failures[index] = TaskFailure(names[index], value.error, 1, value.traceback)
                else:
                    results[index] = value
            if failures and settings.progress:
                bar.set_postfix(failed=len(failures))
    return results, [failures[i] for i in sorted(failures)]


def _map_here(function: Callable[..., Any], items: Sequence[Any], names: Sequence[str], settings: FanOutSettings,
              desc: str, shared: Any) -> tuple[list[Any], list[TaskFailure]]:
    """``workers=0``: the same tasks one after the other in this process, with the same retry/failure rules."""
    extra = [] if shared is None else [shared]
    results: list[Any] = []
    failures = []
    for item, name in zip(tqdm(items, desc=desc, unit="task", disable=not settings.progress), names):
        for attempt in range(1, settings.retries + 2):
            try:
                value = _guarded(function, item, *extra)
            except Exception as exc:  # noqa: BLE001 - reported with its traceback, like a failed Dask task
                if attempt <= settings.retries:
                    continue
                value = None
                failures.append(TaskFailure(name, f"{type(exc).__name__}: {exc}", attempt, traceback.format_exc()))
            if isinstance(value, _InputError):
                failures.append(TaskFailure(name, value.error, attempt, value.traceback))
                value = None
            break
        results.append(value)
    return results, failures
