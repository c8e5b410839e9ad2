"""Data parallelism across the processes of `torchrun --nproc_per_node=N -m experiments.run SPEC`.

Every process walks the same plan in the same order. Rank 0 alone touches the results folder (locks,
checkpoints, metrics, summaries, runs.csv, the report) and decides whether each run is trained; it
broadcasts that decision so the other ranks join the same run or skip it with it. Inside a run each
rank takes its slice of the same global batch (Batches is a pure function of seed, split and step),
gradients are averaged by DistributedDataParallel, and evaluation losses are averaged across ranks,
so N processes train what one process would on that global batch.

Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op for a single process.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: a process that torchrun did not start never needs it here.


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group from torchrun's environment, with a backend per device type.

    The device is not chosen here: runs name their own (a spec on a GPU host may train on the CPU), so
    gloo serves CPU tensors and, where CUDA and NCCL exist, NCCL serves CUDA tensors; each CUDA run
    sets its device when it starts (use_device). Binding every process to cuda:LOCAL_RANK here broke
    CPU runs on a host with fewer GPUs than processes ("invalid device ordinal") and handed NCCL CPU
    tensors on hosts with more."""
    if not launched():
        return
    import torch.distributed as dist
    if dist.is_initialized():
        return
    dist.init_process_group(backend())


def backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors where both exist: 'cpu:gloo,cuda:nccl'."""
    import torch
    import torch.distributed as dist
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def use_device(device: torch.device) -> None:
    """A CUDA run under torchrun: make its device the current one (NCCL's collectives run there)."""
    if active() and device.type == "cuda":
        import torch
        torch.cuda.set_device(device)


def close() -> None:
    if active():
        import torch.distributed as dist
        dist.destroy_process_group()


def active() -> bool:
    """In a process group of more than one process."""
    if not launched():
        return False
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if not active():
        return 0
    import torch.distributed as dist
    return dist.get_rank()


def world() -> int:
    if not active():
        return 1
    import torch.distributed as dist
    return dist.get_world_size()


def launch_rank() -> int:
    """This process's rank as torchrun numbers it, known before init() (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_writer() -> bool:
    """Only rank 0 writes results."""
    return rank() == 0


def device(name: str) -> str:
    """Each rank on its own GPU: a run's `cuda` (or `auto` with CUDA) becomes cuda:LOCAL_RANK; an
    explicit cuda:N, cpu or mps is kept as it is."""
    if active() and name in ("auto", "cuda"):
        import torch
        if torch.cuda.is_available():
            return f"cuda:{local_rank()}"
    return name


def broadcast(obj: Any) -> Any:
    """Rank 0's value of a picklable object, on every rank."""
    if not active():
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values into these tensors, in place, on every rank."""
    if active():
        import torch.distributed as dist
        for t in tensors:
            dist.broadcast(t, src=0)


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of t across ranks (in place)."""
    if active():
        import torch.distributed as dist
        dist.all_reduce(t)
        t /= world()
    return t


def summed(t: torch.Tensor) -> torch.Tensor:
    """The sum of t across ranks (in place)."""
    if active():
        import torch.distributed as dist
        dist.all_reduce(t)
    return t


def share(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of t's rows; the shares differ by a row at most (evaluation windows)."""
    n, r = world(), rank()
    return t if n == 1 else t[t.shape[0] * r // n:t.shape[0] * (r + 1) // n]


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (rows), equal for every rank."""
    n = world()
    if n == 1:
        return t
    if t.shape[0] % n:
        raise ValueError(f"a global batch of {t.shape[0]} rows does not split over {n} processes")
    per = t.shape[0] // n
    return t[rank() * per:(rank() + 1) * per]


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around the model (which broadcasts rank 0's weights at construction)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
