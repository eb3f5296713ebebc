"""One optimiser step of each stage: :func:`dae_step` and :func:`seg_step`.

Both run the forward pass (in bfloat16 under ``--amp``), compute the loss in float32,
back-propagate (DDP averages the gradients over the processes of a torchrun job),
then agree with every other process on the step's loss before the optimiser moves:
each process's loss goes through one collective all-reduce on every step, and a NaN
or infinite loss on any process stops all of them at that step with the same
:class:`~renalseg.errors.NonFiniteLossError`, instead of one process raising while
the others wait for it in the next collective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from renalseg.errors import NonFiniteLossError, UsageError, suggest
from renalseg.training.config import TrainConfig
from renalseg.training.distributed import DistributedContext, gather_floats

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["segmentation_loss", "dae_step", "seg_step", "agree_on_loss", "bfloat16_pays"]


def segmentation_loss(config: TrainConfig) -> Callable[[Any, Any], Any]:
    """The seg stage's loss ``(logits, target) -> scalar`` named by ``config.loss``.

    Raises:
        UsageError: an unknown loss (the message lists the valid ones).
    """
    from renalseg.training.losses import LOSSES

    if config.loss not in LOSSES:
        raise UsageError(f"Unknown --loss {config.loss!r}; choose one of {', '.join(LOSSES)}."
                         + suggest(config.loss, LOSSES))
    if config.loss in ("hra", "hra_dice"):
        return partial(LOSSES[config.loss], threshold=config.hra_threshold)
    return LOSSES[config.loss]


def bfloat16_pays(device: torch.device) -> bool:
    """Whether ``--amp``'s bfloat16 forward pass is worth running on ``device``.

    On CUDA, and on CPUs with bfloat16 instructions (AVX-512 BF16 or AMX), as oneDNN
    reports them. Elsewhere PyTorch falls back to a single-threaded im2col + GEMM for
    bfloat16 3D convolutions: one 152 × 152 × 64 DPA-DenseBiasNet training step took more
    than 500 s, against 22 s in float32, on a 2-core AMD EPYC with AVX2 only.
    """
    import torch

    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _forward(model: torch.nn.Module, inputs: torch.Tensor, *, amp: bool) -> torch.Tensor:
    """``model(inputs)`` (in bfloat16 under ``amp``), as float32: the loss is computed in float32."""
    import torch

    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=amp):
        output = model(inputs)
    return output.float()  # a no-op without amp


def _corrupt(network: torch.nn.Module, images: torch.Tensor, positions: Sequence[int], *,
             seed: int, epoch: int) -> torch.Tensor:
    """The DAE's dropout corruption, seeded per sample like the augmentation (any process split)."""
    import torch

    return torch.cat([
        network.corrupt(images[i:i + 1], generator=torch.Generator().manual_seed(  # type: ignore[operator]
            int(np.random.default_rng([seed, epoch, int(position), 2]).integers(2**62))))
        for i, position in enumerate(positions)])


def dae_step(model: torch.nn.Module, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
             images: torch.Tensor, positions: Sequence[int], *, config: TrainConfig, epoch: int, step: int,
             context: DistributedContext, amp: bool) -> float:
    """One step of the denoising autoencoder: reconstruct ``images`` from their corrupted copies.

    Args:
        model: what is called (``network``, or its DDP wrapper under torchrun).
        network: the DAE itself (it corrupts the inputs).
        optimizer: moves the trainable parameters.
        images: float32 ``(B, 1, Z, Y, X)`` normalised patches, on the training device.
        positions: each sample's position in the epoch (seeds its corruption).
        config: the run's settings (``seed``).
        epoch: the epoch (seeds the corruption).
        step: the step's number in the run, from 1 (named by an error).
        context: this process's place in a torchrun job.
        amp: the forward pass in bfloat16.

    Returns:
        The mean squared error averaged over every process's samples.

    Raises:
        NonFiniteLossError: the loss of any process is NaN or infinite (raised by all).
    """
    import torch

    inputs = _corrupt(network, images, positions, seed=config.seed, epoch=epoch)
    loss = torch.mean((_forward(model, inputs, amp=amp) - images) ** 2)
    return _descend(optimizer, loss, step=step, context=context)


def seg_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
             labels: torch.Tensor, loss_fn: Callable[[Any, Any], Any], *, amp: bool, step: int,
             context: DistributedContext) -> float:
    """One step of the segmentation network.

    Args:
        model: a module whose ``forward`` gives logits (DDP-wrapped under torchrun).
        optimizer: moves the trainable parameters (not a frozen DAE encoder).
        images: float32 ``(B, 1, Z, Y, X)`` normalised patches, on the training device.
        labels: int64 ``(B, Z, Y, X)`` class indices, on the training device.
        loss_fn: :func:`segmentation_loss`'s loss.
        amp: the forward pass in bfloat16.
        step: the step's number in the run, from 1 (named by an error).
        context: this process's place in a torchrun job.

    Returns:
        The loss, the mean of per-sample losses over every process's samples (the same
        for any split of the global batch over processes).

    Raises:
        NonFiniteLossError: the loss of any process is NaN or infinite (raised by all).
    """
    import torch

    logits = _forward(model, images, amp=amp)
    loss = torch.stack([loss_fn(logits[i:i + 1], labels[i:i + 1]) for i in range(len(labels))]).mean()
    return _descend(optimizer, loss, step=step, context=context)


def _descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, step: int,
             context: DistributedContext) -> float:
    """Back-propagate ``loss``; step the optimiser once every process's loss is known to be finite."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mean = agree_on_loss(float(loss.detach()), step=step, context=context, device=loss.device)
    optimizer.step()
    return mean


def agree_on_loss(loss: float, *, step: int, context: DistributedContext,
                  device: torch.device | str = "cpu") -> float:
    """The mean of every process's ``loss``; every process raises alike if any is not finite.

    A collective operation on every step and every process (:func:`gather_floats`), so
    no process can stop alone and leave the others waiting.

    Raises:
        NonFiniteLossError: naming ``step``, the rank(s) whose loss was NaN or infinite,
            and the value.

    Example:
        >>> agree_on_loss(0.5, step=3, context=DistributedContext())
        0.5
        >>> try:
        ...     agree_on_loss(float("nan"), step=3, context=DistributedContext())
        ... except NonFiniteLossError as err:
        ...     print(str(err).split(";")[0])
        The loss became nan at step 3
    """
    losses = gather_floats(loss, context, device)
    bad = [rank for rank, value in enumerate(losses) if not math.isfinite(value)]
    if bad:
        where = (f" on rank {', '.join(map(str, bad))} of {context.world_size} processes"
                 if context.distributed else "")
        raise NonFiniteLossError(f"The loss became {losses[bad[0]]} at step {step}{where}; training stopped. "
                                 "Lower --lr (--resume continues from the last checkpoint at the new rate).")
    return sum(losses) / len(losses)
