"""Training on several processes or machines: torchrun and DistributedDataParallel (DDP).

    torchrun --standalone --nproc_per_node 2 -m training.finetune --data ... (the flags of one process)

torchrun starts the processes and sets RANK, LOCAL_RANK and WORLD_SIZE; ``init_distributed`` joins
them into one process group (NCCL on CUDA, gloo on CPU). A plain ``python -m training.finetune`` is
world size 1 and everything here is a no-op for it.

Rules the training loop follows (see docs/distributed.md):
- the training split is sharded by ``ShardedSeededSampler``: one seeded order, the same per-sample
  augmentation seeds as one process, every rank taking every world_size-th item;
- ``--batch-size`` is per process; the learning rate scales linearly with the number of processes
  (``scaled_lr``), as the global batch does;
- rank 0 alone decides what is shared (run folder, dataset scan) and writes files; what it builds
  reaches the other ranks through ``from_main`` / ``main_first``, which also carry rank 0's error to
  them, so no rank waits at a collective for a peer that has failed;
- what each rank must find on its own machine (the images) is checked on every rank before anything
  is written (``check_every_rank``), and the first problem stops them all;
- a rank that fails exits non-zero, and torchrun then ends the others on its machine; the process group's timeout
  (``GESTURE_DIST_TIMEOUT_S``) bounds any wait that is left. When rank 0 has told the others about its
  error, it leaves only after they have (``close_distributed``), so torchrun ends no rank that was
  already stopping and names rank 0 alone.
"""

from __future__ import annotations

import math
import os
import pickle
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import psutil
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gesture_core.checkpoint import resolve_device
from training.data import SeededSampler
from training.loop import EpochResult

T = TypeVar("T")
TIMEOUT_ENV = "GESTURE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800  # torch's own default for gloo; long enough for rank 0 to extract a large feature cache
PEERS_EXIT_TIMEOUT_S = 30.0  # how long rank 0 waits for the ranks it told to stop; a rank exits in about a second
_told_peers_to_stop = False  # set on rank 0 once it has sent the other ranks its error


class NoGpuForThisRank(ValueError):
    """More processes on this machine than it has GPUs: an error of this rank alone, raised before the
    group forms, so it says it itself (rank 0 is still waiting to join, and torchrun stops it)."""


class PeersDidNotJoin(ConnectionError):
    """The process group's start-up wait ended before every rank had joined."""


class RankZeroFailed(Exception):
    """Raised on the other ranks when rank 0 failed at something they wait for. They then stop without
    an error of their own, so that torchrun names rank 0, and its error, as the root cause."""


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, or a single process; under torchrun also before the group is joined and after it is closed."""
    return rank() == 0 if is_distributed() else int(os.environ.get("RANK", "0")) == 0


def rank_zero_is_elsewhere() -> bool:
    """Whether rank 0 runs on another machine: torchrun numbers the machines (GROUP_RANK) as it numbers
    the ranks, so rank 0 is on machine 0."""
    return int(os.environ.get("GROUP_RANK", "0")) != 0


def init_distributed(device: str) -> torch.device:
    """Join torchrun's process group if launched by it with several processes; the device of this rank."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1 or is_distributed():
        return local_device(device)
    device_here = local_device(device)
    backend = "nccl" if device_here.type == "cuda" else "gloo"
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    try:
        dist.init_process_group(backend, timeout=timeout, device_id=device_here if device_here.type == "cuda" else None)
    except (dist.DistStoreError, dist.DistNetworkError) as err:  # torchrun ends a machine's own ranks; a machine that stopped early, only this wait
        raise PeersDidNotJoin(f"not every process joined within {timeout.total_seconds():.0f} s ({err}): one stopped before "
                              f"it could (its machine's output says why, e.g. a --resume file missing there), or cannot reach "
                              f"this one; {TIMEOUT_ENV} sets the wait") from None
    if dist.get_rank() != 0:
        silence_output()
    return device_here


def local_device(device: str) -> torch.device:
    """``--device`` for this process: under torchrun, CUDA means the GPU at LOCAL_RANK."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None and launched_by_torchrun():
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local_rank >= gpus:  # else CUDA's "invalid device ordinal" traceback; NCCL takes one GPU per process
            raise NoGpuForThisRank(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', local_rank + 1)} processes on this machine, "
                                   f"which has {gpus} GPU(s): NCCL needs one GPU per process, so use --nproc_per_node {gpus} "
                                   "(or --device cpu to train on the CPU with gloo)")
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    return resolved


def silence_output() -> None:
    """Ranks other than 0 print nothing but errors: stdout goes nowhere, warnings are dropped
    (rank 0 shows the same ones); stderr stays for errors and tracebacks."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    warnings.simplefilter("ignore")


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        if _told_peers_to_stop:
            wait_for_local_peers_to_exit(PEERS_EXIT_TIMEOUT_S)


def wait_for_local_peers_to_exit(timeout_s: float) -> None:
    """Wait until this machine's other ranks (torchrun's other worker processes) have exited. torchrun
    ends the ranks still running as soon as one fails and lists each as a failure of its own (SIGTERM),
    so rank 0 failing first would bury its error among ranks that were stopping cleanly."""
    agent = psutil.Process().parent() if "TORCHELASTIC_RUN_ID" in os.environ else None  # torchrun's agent starts every rank
    peers = [p for p in (agent.children() if agent else []) if p.pid != os.getpid()]
    deadline = time.monotonic() + timeout_s
    while peers and time.monotonic() < deadline:
        peers = [p for p in peers if still_running(p)]
        time.sleep(0.01)


def still_running(process: psutil.Process) -> bool:
    """True until ``process`` has exited (a zombie not yet reaped by its parent has exited)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe() -> str:
    """The start-up line's note, e.g. "world size 2 (gloo)"."""
    return f"world size {world_size()}" + (f" ({dist.get_backend()})" if is_distributed() else "")


class PeerCannotGoOn(ValueError):
    """What ``check_every_rank`` found wrong on one of the ranks, raised on all of them."""


def check_every_rank(check: Callable[[], str | None]) -> None:
    """``check()`` on every rank: the first problem a rank finds (None: none) is raised on every rank,
    naming that rank and its machine, so that no rank goes on without the others or waits for one that
    has stopped. The rank that found it also prints it: on another machine than rank 0's, it is what
    that machine's torchrun shows."""
    if not is_distributed():
        return
    problem = check()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
    found = [(r, host, p) for r, (host, p) in enumerate(gather((socket.gethostname(), problem))) if p is not None]
    if found:
        r, host, first = found[0]
        others = f" (and on {len(found) - 1} other rank(s))" if len(found) > 1 else ""
        raise PeerCannotGoOn(f"rank {r} on {host}: {first}{others}")


def scaled_lr(lr: float, processes: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): ``--lr`` is for one process's ``--batch-size``; N
    processes train on a global batch N times larger, so the peak LR is N x ``--lr``."""
    return lr * processes


def continue_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, *, peak_lrs: Sequence[float], step: int) -> None:
    """After loading a checkpoint's optimizer and scheduler state: carry on with this run's schedule,
    its peak LRs (``scaled_lr`` of this world size) at ``step`` (epochs done x this run's steps per
    epoch), whatever world size wrote the checkpoint. The same world size gets the same values back."""
    scheduler.base_lrs = list(peak_lrs)
    scheduler.last_epoch = step
    for group, peak, factor in zip(optimizer.param_groups, peak_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"], group["lr"] = peak, peak * factor(step)


def _share_outcome(outcome: tuple[str, Any]) -> tuple[str, Any]:
    """Rank 0's (kind, value) on every rank; an error that cannot be pickled travels as its message."""
    if is_main_process() and outcome[0] == "error":
        try:
            pickle.dumps(outcome[1])
        except Exception:
            outcome = ("error", RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]}"))
    box = [outcome]
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error" and is_main_process():
        global _told_peers_to_stop
        _told_peers_to_stop = True
    return box[0]


def _on_main_first(build: Callable[[], T], *, share_result: bool) -> Any:
    """Run ``build`` on rank 0 and tell every rank how it went: its result (None on the other ranks
    unless ``share_result``), or rank 0's error raised on every rank, so that none waits at the next
    collective for a rank that has failed."""
    outcome: tuple[str, Any] = ("waiting", None)
    if is_main_process():
        try:
            outcome = ("ok", build())
        except Exception as err:
            outcome = ("error", err)
    own = outcome
    if not share_result and outcome[0] == "ok":
        outcome = ("ok", None)
    kind, value = _share_outcome(outcome)
    if kind == "error":
        raise own[1] if is_main_process() else RankZeroFailed(value)
    return own[1] if is_main_process() else value


def from_main(build: Callable[[], T]) -> T:
    """``build()`` run on rank 0 only, its result on every rank; rank 0's error is raised on every rank."""
    if not is_distributed():
        return build()
    return _on_main_first(build, share_result=True)


def main_first(build: Callable[[], T]) -> T:
    """``build()`` on rank 0, then on the other ranks: for what rank 0 caches on disk (written
    atomically) and the others then read instead of building it again."""
    if not is_distributed():
        return build()
    built = _on_main_first(build, share_result=False)
    return built if is_main_process() else build()


class ShardedSeededSampler(SeededSampler):
    """``SeededSampler``'s order and per-sample seeds, split across ranks as DistributedSampler does:
    padded by repeating the first items so every rank takes the same number of steps, then every
    ``world_size``-th item from ``rank``. Global step k trains on the same samples, with the same
    augmentation seeds, as a single process with a world_size times larger batch."""

    def __init__(self, n: int, seed: int, *, rank: int = 0, world_size: int = 1):
        super().__init__(n, seed)
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def global_order(self) -> list[tuple[int, int]]:
        """Every rank's items, interleaved: (index, seed) in the order one process would see them."""
        items = list(super().__iter__())
        total = len(self) * self.world_size
        return (items * math.ceil(total / max(len(items), 1)))[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.global_order()[self.rank :: self.world_size])

    def drops_last(self, batch_size: int) -> bool:
        """Whether a loader of ``batch_size`` leaves out each epoch's last partial batch (a batch of one
        fails BatchNorm); a rank's share no larger than one batch is kept whole."""
        return len(self) > batch_size

    def drawn(self, epochs: Iterable[int], batch_size: int) -> set[int]:
        """The indices that every rank's loader of ``batch_size`` draws over ``epochs``: the others, left out
        in each of those epochs' partial batches, were never decoded."""
        per_rank = len(self) - len(self) % batch_size if self.drops_last(batch_size) else len(self)
        drawn: set[int] = set()
        for epoch in epochs:
            replay = ShardedSeededSampler(self.n, self.seed, world_size=self.world_size)
            replay.set_epoch(epoch)
            drawn.update(index for index, _ in replay.global_order()[: per_rank * self.world_size])
        return drawn


def shard(samples: Sequence[T]) -> list[T]:
    """This rank's share of an evaluation split (no padding: every sample is evaluated once)."""
    return list(samples[rank() :: world_size()])


def for_training(model: nn.Module, device: torch.device) -> nn.Module:
    """The model wrapped in DDP (gradients averaged across ranks), or itself in one process.
    DDP covers the parameters that require gradients when it is built: wrap again after freezing or
    unfreezing."""
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def check_sync_bn(device: torch.device) -> None:
    """``--sync-bn`` under torchrun needs GPUs: PyTorch's SyncBatchNorm syncs CUDA tensors only."""
    if is_distributed() and device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only (on CPU, leave --sync-bn off)")


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``--sync-bn``: BatchNorm statistics over the global batch (``check_sync_bn`` first)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if is_distributed() else model


def broadcast_weights(model: nn.Module) -> None:
    """Rank 0's parameters and buffers into every rank's ``model`` (no shared filesystem needed)."""
    if is_distributed():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def combine_epoch(result: EpochResult) -> EpochResult:
    """Every rank's EpochResult as one: loss and accuracy over all images, the slowest rank's time,
    and every rank's failed dataset indices."""
    if not is_distributed():
        return result
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    sums = torch.tensor([result.loss * result.images, result.top1 * result.images, result.images], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    seconds = torch.tensor([result.seconds], dtype=torch.float64, device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    failed = gather(result.failed)
    loss, correct, images = sums.tolist()
    return EpochResult(loss / max(images, 1), correct / max(images, 1), int(images), float(seconds), sorted({i for f in failed for i in f}))


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def gather_predictions(logits: np.ndarray, targets: np.ndarray, failed: list[int], shard_size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``predict_logits`` of every rank's ``shard`` as one result in dataset order: (logits, targets,
    failed dataset indices)."""
    if not is_distributed():
        return logits, targets, failed
    step, me = world_size(), rank()
    failed_here = set(failed)
    kept = [me + step * i for i in range(shard_size) if i not in failed_here]
    parts = gather((logits, targets, kept, [me + step * i for i in failed]))
    index = np.concatenate([np.asarray(p[2], dtype=np.int64) for p in parts])
    order = np.argsort(index, kind="stable")
    nonempty = [p for p in parts if len(p[2])]
    if not nonempty:
        return logits[:0], targets[:0], sorted(i for p in parts for i in p[3])
    all_logits = np.concatenate([p[0] for p in nonempty])[order]
    all_targets = np.concatenate([p[1] for p in nonempty])[order]
    return all_logits, all_targets, sorted(i for p in parts for i in p[3])
