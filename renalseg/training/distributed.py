"""Distributed training under ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node=N -m renalseg train ...`` starts N processes and tells
each its rank through environment variables. The CLI reads them (the library never
reads the environment) and passes them to :func:`context_from_env`; then
:func:`init_distributed` joins the process group: gloo on the CPU, nccl on CUDA.
Only rank 0 logs and writes files.

Samples are assigned by their *global* position in the step (see
:func:`rank_positions`) and each sample's augmentation is seeded by that position, so
N processes with batch B see exactly the samples one process with batch N × B sees:
the loss and the gradient (DDP averages them) are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from renalseg.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DistributedContext",
    "context_from_env",
    "init_distributed",
    "shutdown_distributed",
    "rank_positions",
    "all_reduce_mean",
    "gather_floats",
    "barrier",
]

_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank, 0 … world_size − 1.
        world_size: number of processes.
        local_rank: rank on this node (picks the CUDA device).
        master_addr: rendezvous host (torchrun's ``MASTER_ADDR``).
        master_port: rendezvous port (torchrun's ``MASTER_PORT``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def context_from_env(environ: Mapping[str, str]) -> DistributedContext:
    """The context torchrun describes in ``environ`` (single process when absent).

    Example:
        >>> context_from_env({}).world_size
        1
        >>> c = context_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
        ...                       "MASTER_ADDR": "localhost", "MASTER_PORT": "1234"})
        >>> c.rank, c.world_size, c.is_main
        (1, 2, False)
    """
    if "WORLD_SIZE" not in environ:
        return DistributedContext()
    try:
        context = DistributedContext(
            rank=int(environ.get("RANK", "0")),
            world_size=int(environ["WORLD_SIZE"]),
            local_rank=int(environ.get("LOCAL_RANK", "0")),
            master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(environ.get("MASTER_PORT", "29500")),
        )
    except ValueError as err:
        values = {k: environ.get(k) for k in _TORCHRUN_KEYS}
        raise UsageError(f"Malformed torchrun environment {values}; start with torchrun.") from err
    if not 0 <= context.rank < context.world_size:
        raise UsageError(f"RANK {context.rank} is outside WORLD_SIZE {context.world_size}.")
    return context


def init_distributed(context: DistributedContext, device: torch.device) -> None:
    """Join the process group (no-op for a single process).

    gloo on the CPU, nccl on CUDA; the TCP rendezvous at ``master_addr:master_port``.
    """
    if not context.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://{context.master_addr}:{context.master_port}",
        rank=context.rank,
        world_size=context.world_size,
        timeout=timedelta(minutes=60),  # rank 0 validates while the others wait
    )


def shutdown_distributed(context: DistributedContext) -> None:
    """Leave the process group (no-op for a single process).

    Every process waits at a barrier first, so none tears the group down while another
    is still inside a collective: after a stop that every rank agreed on (a non-finite
    loss), one rank leaving early aborted the other's gloo threads (``terminate called
    without an active exception``).
    """
    if not context.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_positions(context: DistributedContext, batch_size: int) -> range:
    """Positions, within one global step of ``batch_size × world_size`` samples, of this rank's samples.

    Example:
        >>> list(rank_positions(DistributedContext(rank=1, world_size=2), 2))
        [2, 3]
    """
    return range(context.rank * batch_size, (context.rank + 1) * batch_size)


def all_reduce_mean(value: float, context: DistributedContext, device: torch.device | str = "cpu") -> float:
    """The mean of ``value`` over all processes (the value itself for one process).

    ``device`` must be the training device (nccl reduces CUDA tensors only).
    """
    if not context.distributed:
        return float(value)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def gather_floats(value: float, context: DistributedContext, device: torch.device | str = "cpu") -> list[float]:
    """Every process's ``value``, in rank order (``[value]`` for one process).

    One all-reduce: each rank writes its value into its own slot of a zero vector and
    the vectors are summed, so a NaN or an infinity stays in the slot of the rank that
    had it (the mean of :func:`all_reduce_mean` would not say whose it was). ``device``
    must be the training device (nccl reduces CUDA tensors only).

    Example:
        >>> gather_floats(0.25, DistributedContext())
        [0.25]
    """
    if not context.distributed:
        return [float(value)]
    import torch
    import torch.distributed as dist

    slots = torch.zeros(context.world_size, dtype=torch.float64, device=device)
    slots[context.rank] = float(value)
    dist.all_reduce(slots)
    return [float(v) for v in slots.cpu().tolist()]


def barrier(context: DistributedContext) -> None:
    """Wait for every process (no-op for a single process)."""
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()
