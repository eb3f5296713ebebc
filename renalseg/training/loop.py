"""The trainer: both stages, checkpoints, exact ``--resume``, best-by-validation.

Stage ``dae`` trains the convolutional denoising autoencoder (dropout corruption of
the input, MSE against the clean input) on unlabelled patches; stage ``seg`` trains
DenseBiasNet, with the frozen DAE encoder's features embedded (DPA) unless the plain
network is chosen, under the HRA loss. Paper defaults: Adam, lr 1e-4, betas
(0.9, 0.999), weight decay 1e-5, batch 1, 200 epochs (He et al., MedIA 2020).

A run folder holds:

- ``config.json``: the :class:`TrainConfig` (also inside every checkpoint);
- ``checkpoint.pt``: model, optimiser and position (epoch, step) — ``--resume``
  continues from it exactly, because every sample's augmentation is seeded by
  (seed, epoch, position) and nothing else is random;
- ``metrics.jsonl`` and ``metrics.csv``: one row per epoch (loss, validation score);
- ``best.safetensors`` + ``best.json``: the best-by-validation weights and card in
  the shipped format (``renalseg segment --weights``), ``last.*`` the latest; for the
  DAE stage ``dae.safetensors`` (+ ``.json``), the encoder for ``--encoder``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from renalseg.errors import ModelError, UsageError, suggest
from renalseg.io.output import atomic_write_json, atomic_write_text
from renalseg.roi import MODEL_SPACING_XYZ_MM
from renalseg.training.augment import DEFAULT_NORMALIZATION, AugmentConfig, sample_patch
from renalseg.training.data import TrainingCase, parse_label_map
from renalseg.weights import normalize_hu
from renalseg.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    rank_positions,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "RESUMABLE_FIELDS",
    "CHECKPOINT_NAME",
    "epoch_plan",
    "make_batch",
    "dice_per_class",
    "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_FORMAT = "renalseg-train-checkpoint/1"
#: options that may change when a run is resumed (extend it, validate more often, ...)
#: ``lr`` too: a resumed run may continue at a lower learning rate (a manual step decay);
#: the metrics log records the rate of every epoch
RESUMABLE_FIELDS: frozenset[str] = frozenset(
    {"epochs", "max_steps", "time_limit_min", "val_every", "checkpoint_every", "checkpoint_minutes", "lr"}
)
#: where the starting weights came from: not read on resume (the checkpoint holds every
#: parameter), so another path (the run copied elsewhere) is accepted and the stored one kept
_PROVENANCE_FIELDS: frozenset[str] = frozenset({"encoder", "init_weights"})
STAGES = ("dae", "seg")
#: where a data description (``TrainConfig.data_description``) turns to the validation
#: cases: ", 2 validation cases from DIR" (``renalseg train``), ", validation seeds A-B; ..."
#: (``benchmarks/train_gpu.py``). A resumed run may validate on other cases (its best score
#: restarts), so only the part before this must match.
_VALIDATION_CLAUSE = re.compile(r",\s*(?:\d+\s+)?validation\b.*\Z", re.DOTALL)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as JSON in each checkpoint).

    Attributes:
        stage: ``"dae"`` (autoencoder, images only) or ``"seg"`` (segmentation).
        network: a ``renalseg.nets.NETWORKS`` name (``"dae"``, ``"dpa_densebiasnet"``,
            ``"densebiasnet"``).
        network_options: hyper-parameters passed to ``build_network``.
        encoder: DAE weights (``dae.safetensors`` from stage dae) whose encoder the
            DPA network embeds, frozen; required for ``dpa_densebiasnet`` unless
            ``init_weights`` brings one.
        init_weights: seg stage: start from these weights (a ``.safetensors`` of the
            same network, e.g. the shipped ones, or a run's ``best.safetensors``)
            instead of a random initialisation: fine-tuning on your own labelled CTA, or
            a second phase with another loss or patch size. The DAE encoder inside them
            stays frozen.
        label_map: ``--label-map`` text (source value → class), e.g. ``"3:renal_artery"``.
        patch_zyx: training patch (z, y, x) voxels; the paper: 64 × 152 × 152.
        window_zyx: inference window, written to the model card and used for validation
            (the network is fully convolutional: it may exceed the training patch).
        spacing_xyz_mm: model grid spacing (x, y, z) mm, written to the card.
        normalization: the card's intensity normalisation.
        loss: a ``renalseg.training.losses.LOSSES`` name (seg stage).
        hra_threshold: HRA loss threshold T (paper: 0.1).
        lr, betas, weight_decay: Adam (paper: 1e-4, (0.9, 0.999), 1e-5).
        batch_size: samples per process per step (paper: 1).
        amp: mixed precision: each training step's forward pass under ``torch.autocast``
            in bfloat16 (tensor cores on a GPU); weights, optimiser, loss and validation
            stay float32 (``--amp``).
        epochs: passes of ``samples_per_epoch`` samples (paper: 200).
        samples_per_epoch: samples per epoch; ``None`` = the number of training cases.
        max_steps: stop after this many optimiser steps in total (``None``: no limit).
        time_limit_min: stop (checkpointed) after this many minutes of this session.
        foreground_share: share of patches centred near the first class (artery).
        hard_negative_share: share centred near bright unlabelled voxels (bone, bowel
            contrast, other arteries: ``TrainingCase.hard_negatives``); the rest of the
            patches are placed uniformly.
        augment: augmentation settings.
        seed: seeds the network's initialisation and every sample.
        val_every: validate every this many epochs (and at the end).
        val_overlap: sliding-window overlap for validation (whole cases, ``window_zyx``).
        checkpoint_every: write the checkpoint every this many epochs ...
        checkpoint_minutes: ... and at least this often within an epoch.
        synthetic_data: trained on phantoms only (said in the model card).
        data_description: what the data was (written to the model card).
    """

    stage: str = "seg"
    network: str = "dpa_densebiasnet"
    network_options: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None
    init_weights: str | None = None
    label_map: str = "3:renal_artery"
    patch_zyx: tuple[int, int, int] = (64, 152, 152)
    window_zyx: tuple[int, int, int] = (64, 152, 152)
    spacing_xyz_mm: tuple[float, float, float] = MODEL_SPACING_XYZ_MM
    normalization: dict[str, list[float]] = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))
    loss: str = "hra"
    hra_threshold: float = 0.1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-5
    batch_size: int = 1
    amp: bool = False
    epochs: int = 200
    samples_per_epoch: int | None = None
    max_steps: int | None = None
    time_limit_min: float | None = None
    foreground_share: float = 0.5
    hard_negative_share: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    val_every: int = 1
    val_overlap: float = 0.25
    checkpoint_every: int = 1
    checkpoint_minutes: float = 10.0
    synthetic_data: bool = False
    data_description: str = ""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise UsageError(f"--stage must be one of {', '.join(STAGES)}; got {self.stage!r}."
                             + suggest(self.stage, STAGES))
        if len(self.patch_zyx) != 3 or min(self.patch_zyx) < 1:
            raise UsageError(f"--patch must be three positive sizes; got {self.patch_zyx}.")
        for name in ("batch_size", "epochs", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be ≥ 1; got {getattr(self, name)}.")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive; got {self.lr}.")
        if not 0.0 <= self.foreground_share <= 1.0:
            raise UsageError(f"--foreground-share must be in [0, 1]; got {self.foreground_share}.")
        if not 0.0 <= self.hard_negative_share <= 1.0 - self.foreground_share:
            raise UsageError(f"--hard-negative-share must be in [0, 1 − foreground share]; got "
                             f"{self.hard_negative_share} with --foreground-share {self.foreground_share}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be ≥ 1; got {self.max_steps}.")
        parse_label_map(self.label_map)  # fails early on a bad map

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["augment"] = self.augment.to_dict()
        for key in ("patch_zyx", "window_zyx", "spacing_xyz_mm", "betas"):
            data[key] = list(data[key])
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["augment"] = AugmentConfig.from_dict(data.get("augment", {}))
        for key in ("patch_zyx", "window_zyx", "spacing_xyz_mm", "betas"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class TrainProgress:
    """What the trainer reports to ``on_progress`` (the CLI draws it).

    ``kind`` is ``"step"`` (after each optimiser step), ``"validation"`` or
    ``"epoch"`` (after each epoch, with the validation score when validated).
    """

    kind: str
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float | None = None
    score: float | None = None
    score_name: str = ""
    best_score: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None


@dataclass(frozen=True)
class TrainResult:
    """Where a run ended and what it produced."""

    out_dir: Path
    steps: int
    epochs_done: int
    best_score: float | None
    score_name: str
    best_weights: Path | None
    last_weights: Path | None
    wall_s: float
    stopped_early: str | None = None


def epoch_plan(n_cases: int, n_samples: int, *, seed: int, epoch: int) -> np.ndarray:
    """Case index of each sample position of an epoch: shuffled passes over the cases.

    The plan depends only on (seed, epoch), never on the number of processes.

    Example:
        >>> plan = epoch_plan(3, 7, seed=0, epoch=0)
        >>> len(plan), sorted(plan[:3].tolist())
        (7, [0, 1, 2])
    """
    rng = np.random.default_rng([seed, epoch, 1])
    passes = math.ceil(n_samples / n_cases)
    return np.concatenate([rng.permutation(n_cases) for _ in range(passes)])[:n_samples]


def make_batch(
    cases: Sequence[TrainingCase],
    plan: np.ndarray,
    positions: Sequence[int],
    config: TrainConfig,
    *,
    epoch: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The samples at ``positions`` of an epoch's plan, stacked.

    Returns:
        float32 ``(B, 1, Z, Y, X)`` normalised images and int64 ``(B, Z, Y, X)``
        class indices (``None`` for the dae stage).
    """
    images, labels = [], []
    for position in positions:
        rng = np.random.default_rng([config.seed, epoch, int(position)])
        case = cases[int(plan[int(position) % len(plan)])]
        image, label = sample_patch(case, config.patch_zyx, rng, foreground_share=config.foreground_share,
                                    hard_negative_share=config.hard_negative_share, augment=config.augment,
                                    normalization=config.normalization)
        images.append(image)
        labels.append(label)
    image_batch = np.stack(images)[:, None]
    if config.stage == "dae" or any(label is None for label in labels):
        return image_batch, None
    return image_batch, np.stack(labels).astype(np.int64)


#: the training cases of the run whose loader workers are being forked: the workers
#: inherit them (copy-on-write, nothing pickled), so a worker's batch is built from the
#: very arrays the main process holds
_LOADER_CASES: Sequence[TrainingCase] = ()


def _loader_batch(plan: np.ndarray, positions: Sequence[int], config: TrainConfig,
                  epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
    return make_batch(_LOADER_CASES, plan, positions, config, epoch=epoch)


class BatchLoader:
    """The batches of the coming steps, built ahead in worker processes (``--loader-workers``).

    On a GPU the patch sampling and augmentation (0.06 s per 96 × 96 × 48 patch,
    0.19 s per 152 × 152 × 64 on one core of the development machine) would leave the
    device idle between steps; ``workers`` forked processes build the next
    ``2 × workers`` steps' batches while the device trains. Every sample is seeded by
    (seed, epoch, position) alone, so the batches — and the run, resume included — are
    the same with any number of workers (tested). With ``workers == 0`` each batch is
    built in this process when it is needed.

    Workers are forked (they inherit the cases without copying them); where ``fork``
    does not exist (Windows) ask for 0 workers.
    """

    def __init__(self, cases: Sequence[TrainingCase], config: TrainConfig, workers: int = 0) -> None:
        import multiprocessing

        self.cases, self.config, self.workers = cases, config, workers
        self.pending: dict[tuple[int, int], Future] = {}
        self.pool: ProcessPoolExecutor | None = None
        if workers < 0:
            raise UsageError(f"--loader-workers {workers}: pass 0 (build batches in this process) or more.")
        if workers:
            if "fork" not in multiprocessing.get_all_start_methods():
                raise UsageError("--loader-workers needs the 'fork' start method, which this platform lacks; "
                                 "pass --loader-workers 0.")
            global _LOADER_CASES
            _LOADER_CASES = cases
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))

    def batch(self, plan: np.ndarray, epoch: int, step: int,
              positions_of: Callable[[int], list[int]], steps_in_epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The batch of ``step`` of ``epoch``; asks the workers for the steps after it."""
        if self.pool is None:
            return make_batch(self.cases, plan, positions_of(step), self.config, epoch=epoch)
        for ahead in range(step, min(step + 2 * self.workers, steps_in_epoch)):
            if (epoch, ahead) not in self.pending:
                self.pending[(epoch, ahead)] = self.pool.submit(_loader_batch, plan, positions_of(ahead),
                                                                self.config, epoch)
        return self.pending.pop((epoch, step)).result()  # submitted above, if not before

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending.clear()


def dice_per_class(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class (1 … num_classes − 1); 1.0 when both are empty.

    Example:
        >>> dice_per_class(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 2)
        [0.6666666666666666]
    """
    scores = []
    for c in range(1, num_classes):
        p, t = prediction == c, target == c
        denominator = int(p.sum()) + int(t.sum())
        scores.append(1.0 if denominator == 0 else 2.0 * int((p & t).sum()) / denominator)
    return scores


# --------------------------------------------------------------------------- network


def _torch():
    import torch

    return torch


def build_training_network(config: TrainConfig, *, load_weights: bool = True) -> torch.nn.Module:
    """The network of ``config`` (seeded), with the frozen DAE encoder loaded for DPA.

    ``load_weights=False`` (a resumed run: its checkpoint restores every parameter)
    reads neither ``encoder`` nor ``init_weights``, so a run folder resumes even where
    those files are gone (e.g. ``weights/training`` copied to another machine); the
    DAE encoder is still frozen, as the checkpoint's optimiser expects.

    Raises:
        UsageError: an unknown network, or DPA without ``--encoder``.
        ModelError: encoder weights that do not fit the network.
    """
    torch = _torch()
    from renalseg.nets import NETWORKS, build_network

    if config.network not in NETWORKS:
        raise UsageError(f"Unknown network {config.network!r}; choose one of {', '.join(NETWORKS)}."
                         + suggest(config.network, NETWORKS))
    if config.stage == "dae" and config.network != "dae":
        raise UsageError(f"--stage dae trains the 'dae' network, not {config.network!r}.")
    if config.stage == "seg" and config.network == "dae":
        raise UsageError("--stage seg trains 'dpa_densebiasnet' or 'densebiasnet', not 'dae'.")
    torch.manual_seed(config.seed)
    network = build_network(config.network, **config.network_options)
    if not load_weights:
        if config.stage == "seg" and hasattr(network, "encoder"):
            freeze_encoder(network)
        return network
    if config.stage == "seg" and config.init_weights:
        from_plain = load_initial_weights(network, config)
        if from_plain:  # the plain weights bring no encoder: --encoder does
            if not config.encoder:
                raise UsageError(f"--init {config.init_weights} holds plain DenseBiasNet weights; to start "
                                 "DPA-DenseBiasNet from them pass --encoder RUN_DAE/dae.safetensors "
                                 "(or --no-dpa to go on training the plain network).")
            load_encoder(network, Path(config.encoder))
    elif config.stage == "seg" and hasattr(network, "encoder"):
        if not config.encoder:
            raise UsageError(
                f"{config.network} embeds a trained DAE encoder: pass --encoder RUN_DAE/dae.safetensors "
                "(from `renalseg train --stage dae`), or --no-dpa for plain DenseBiasNet."
            )
        load_encoder(network, Path(config.encoder))
    return network


def load_initial_weights(network: torch.nn.Module, config: TrainConfig) -> bool:
    """Copy ``config.init_weights`` into ``network`` (all of it; a DAE encoder stays frozen).

    Plain DenseBiasNet weights also start a DPA-DenseBiasNet (:func:`plain_to_dpa_state`):
    every weight is copied into the segmenter and the DPA feature inputs start at zero
    weight, so the network starts out computing exactly what the plain one did and
    learns from there how much of the DAE's features to use. The encoder is then
    loaded from ``config.encoder`` by the caller.

    Returns:
        True when plain weights were expanded into a DPA network (its encoder still
        to load), False for weights of the network itself.

    Raises:
        UsageError: the file does not exist.
        ModelError: unreadable weights, another network, or other hyper-parameters.
    """
    from renalseg.weights import load_model_files

    path = Path(config.init_weights)  # type: ignore[arg-type]
    if not path.exists():
        raise UsageError(f"--init {path}: no such file; pass a .safetensors saved by renalseg "
                         "(the shipped weights or a run's best.safetensors).")
    source, card = load_model_files(path)
    from_plain = card.name == "densebiasnet" and config.network == "dpa_densebiasnet"
    if card.name != config.network and not from_plain:
        raise ModelError(f"--init {path}: holds {card.name!r} weights, but this run trains {config.network!r}"
                         + (" (drop --no-dpa)" if card.name == "dpa_densebiasnet" else "") + ".")
    # GroupNorm's parameters have the same shapes whatever the grouping: compare it by name
    theirs = card.hyperparameters.get("group_size", 4)
    ours = getattr(network, "hyperparameters", {}).get("group_size", 4)
    if theirs != ours:
        raise ModelError(f"--init {path}: its network normalises {theirs} channels per group, this run's "
                         f"{ours}; pass --network-options '{{\"group_size\": {theirs}}}'.")
    state = source.state_dict()
    if from_plain:
        try:
            state = plain_to_dpa_state(state, network.state_dict())
        except ModelError as err:
            raise ModelError(f"--init {path}: {err}") from err
    head = _head_rows_by_class(network, state, card, config)
    try:
        network.load_state_dict({**state, **head}, strict=not from_plain)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise ModelError(f"--init {path}: its network has other hyper-parameters than this run's "
                         f"({first}).") from err
    if hasattr(network, "encoder"):
        freeze_encoder(network)
    return from_plain


def plain_to_dpa_state(plain: Mapping[str, Any], dpa: Mapping[str, Any]) -> dict[str, Any]:
    """A plain DenseBiasNet's state dict laid out for a DPA-DenseBiasNet's segmenter.

    DPA's analysis layers (1, 3, 5, 7) take the DAE features as extra input channels
    after the plain layer's own (see ``DenseBiasNet.layer_in_channels``); their weights
    start at zero, so the DPA network's output equals the plain network's whatever the
    encoder computes. The encoder's entries are left out (the caller loads a DAE).

    Raises:
        ModelError: the two networks differ in anything but those extra channels.
    """
    from renalseg.nets.densebiasnet import PRIOR_LAYERS

    takes_priors = {f"layers.{layer}.conv.weight" for layer in PRIOR_LAYERS}
    out: dict[str, Any] = {}
    for key, value in plain.items():
        target = f"segmenter.{key}"
        if target not in dpa:
            raise ModelError(f"plain weight {key!r} has no place in DPA-DenseBiasNet; the networks differ.")
        want = dpa[target]
        if want.shape == value.shape:
            out[target] = value
        elif key in takes_priors and want.shape[0] == value.shape[0] and want.shape[2:] == value.shape[2:] \
                and want.shape[1] > value.shape[1]:
            grown = want.new_zeros(want.shape)
            grown[:, : value.shape[1]] = value
            out[target] = grown
        else:
            raise ModelError(f"plain weight {key!r} {tuple(value.shape)} does not fit DPA-DenseBiasNet's "
                             f"{tuple(want.shape)}; the networks differ in widths or bias maps.")
    missing = [k for k in dpa if k not in out and not k.startswith("encoder.")]
    if missing:
        raise ModelError(f"the plain weights lack {len(missing)} of DPA-DenseBiasNet's segmenter weights "
                         f"(first: {missing[0]}).")
    return out


def _head_rows_by_class(network: torch.nn.Module, state: Mapping[str, Any], card: Any,
                        config: TrainConfig) -> dict[str, Any]:
    """The output layer for ``--init`` weights with other classes than the ``--label-map``.

    Adding a class to trained weights (e.g. the kidney beside the artery) keeps what
    they learned: each class the two share by name (background included) takes its
    row of the 1 × 1 × 1 output convolution from the weights; a new class keeps this
    run's seeded initialisation. Nothing to do (``{}``) when the classes are the same
    or the network has no ``head``.
    """
    own = dict(network.state_dict())
    heads = [key[: -len("weight")] for key in own if key == "head.weight" or key.endswith(".head.weight")]
    if len(heads) != 1:
        return {}
    w_key, b_key = heads[0] + "weight", heads[0] + "bias"
    if w_key not in state or own[w_key].shape == state[w_key].shape or own[w_key].shape[1:] != state[w_key].shape[1:]:
        return {}  # the same classes, or another network (load_state_dict names the mismatch)
    names = parse_label_map(config.label_map).class_names
    source_names = [str(card.classes.get(str(i), "")) for i in range(state[w_key].shape[0])]
    weight, bias = own[w_key].clone(), own[b_key].clone()
    shared = [name for name in names if name in source_names]
    for name in shared:
        weight[names.index(name)] = state[w_key][source_names.index(name)]
        bias[names.index(name)] = state[b_key][source_names.index(name)]
    logger.info("--init: output classes %s taken from the weights; %s start from scratch", shared,
                [name for name in names if name not in shared])
    return {w_key: weight, b_key: bias}


def load_encoder(network: torch.nn.Module, path: Path) -> None:
    """Copy a trained DAE's encoder into ``network.encoder``, frozen.

    Raises:
        UsageError: the file does not exist.
        ModelError: not DAE weights, or its encoder does not fit ``network.encoder``.
    """
    from renalseg.weights import load_model_files

    if not Path(path).exists():
        raise UsageError(f"--encoder {path}: no such file; train one with `renalseg train --stage dae`.")
    dae, card = load_model_files(Path(path))
    if getattr(card, "name", None) != "dae":
        raise ModelError(f"--encoder {path}: expected DAE weights (card name 'dae'); "
                         f"got {getattr(card, 'name', '?')!r}. Pass the dae.safetensors of a --stage dae run.")
    try:
        network.load_encoder_from(dae)  # type: ignore[operator]
    except ModelError as err:
        raise ModelError(f"--encoder {path}: {err}") from err
    freeze_encoder(network)


def freeze_encoder(network: torch.nn.Module) -> None:
    """No gradient for ``network.encoder`` and its normalisation in eval mode."""
    network.encoder.requires_grad_(False)
    network.encoder.eval()


def _train_mode(network: torch.nn.Module) -> None:
    network.train()
    if hasattr(network, "encoder") and not any(p.requires_grad for p in network.encoder.parameters()):
        network.encoder.eval()


def _logits_module(network: torch.nn.Module) -> torch.nn.Module:
    """A module whose ``forward`` gives logits (what DDP must wrap: it hooks ``forward``)."""
    torch = _torch()

    class LogitsOf(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner.logits(x) if hasattr(self.inner, "logits") else self.inner(x)

    return LogitsOf(network)


def _segmentation_loss(config: TrainConfig) -> Callable[[Any, Any], Any]:
    from renalseg.training.losses import LOSSES

    if config.loss not in LOSSES:
        raise UsageError(f"Unknown --loss {config.loss!r}; choose one of {', '.join(LOSSES)}."
                         + suggest(config.loss, LOSSES))
    function = LOSSES[config.loss]
    if config.loss in ("hra", "hra_dice"):
        return lambda logits, target: function(logits, target, threshold=config.hra_threshold)
    return lambda logits, target: function(logits, target)


# --------------------------------------------------------------------------- run files


def _card_for(network: torch.nn.Module, config: TrainConfig, *, metrics: dict, training: dict):
    from renalseg.weights import ModelCard

    label_map = parse_label_map(config.label_map)
    hyperparameters = dict(getattr(network, "hyperparameters", config.network_options))
    return ModelCard(
        name=config.network,
        hyperparameters=hyperparameters,
        classes=({str(i): name for i, name in enumerate(label_map.class_names)} if config.stage == "seg"
                 else {"0": "image"}),
        spacing_xyz_mm=list(config.spacing_xyz_mm),
        window_zyx=list(config.window_zyx),
        normalization=dict(config.normalization),
        parameter_count=int(sum(p.numel() for p in network.parameters())),
        training=training,
        metrics=metrics,
        synthetic_training_only=bool(config.synthetic_data),
    )


def _save_weights(network: torch.nn.Module, config: TrainConfig, path: Path, *, metrics: dict,
                  training: dict) -> Path:
    from renalseg.weights import save_model

    card = _card_for(network, config, metrics=metrics, training=training)
    save_model(network, card, path)
    return path


def _write_checkpoint(path: Path, state: dict) -> None:
    torch = _torch()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(buffer.getvalue())
    os.replace(temp, path)


def _read_checkpoint(path: Path) -> dict:
    torch = _torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as err:  # truncated or foreign file
        raise UsageError(f"{path}: not a readable renalseg checkpoint ({err}). Start a new --out folder.") from err
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise UsageError(f"{path}: not a renalseg training checkpoint ({_CHECKPOINT_FORMAT}).")
    return state


def validation_fingerprint(cases: Sequence[TrainingCase]) -> str:
    """A digest of the validation cases (ids, grids, voxels), kept in each checkpoint.

    The best score is only comparable on the same cases: a resumed run whose
    validation cases differ (e.g. regenerated phantoms) restarts its best score.
    """
    digest = hashlib.sha256()
    for case in cases:
        digest.update(case.case_id.encode())
        digest.update(repr(case.geometry).encode())
        digest.update(np.ascontiguousarray(case.image_hu).tobytes())
        if case.label is not None:
            digest.update(np.ascontiguousarray(case.label).tobytes())
    return digest.hexdigest()


def _training_data_part(description: str) -> str:
    """A data description without its validation clause (see ``_VALIDATION_CLAUSE``).

    Example:
        >>> _training_data_part("40 training cases from data/, 2 validation cases from val/")
        '40 training cases from data/'
        >>> _training_data_part("500 training phantoms made in memory (synthesize_roi seeds 1000-1499), "
        ...                     "validation seeds 9400-9407; benchmarks/train_gpu.py")
        '500 training phantoms made in memory (synthesize_roi seeds 1000-1499)'
    """
    return _VALIDATION_CLAUSE.sub("", description)


def _check_resume_config(stored: TrainConfig, requested: TrainConfig, run: Path) -> TrainConfig:
    """The stored config with the resumable fields taken from the request.

    The data description must match up to its validation clause: other validation
    cases are allowed (``train`` restarts the best score), other training data is not.
    The request's description is kept, so the card names the cases that chose the best
    weights.
    """
    differences = [
        f"{f.name}: run has {getattr(stored, f.name)!r}, you passed {getattr(requested, f.name)!r}"
        for f in fields(TrainConfig)
        if f.name not in RESUMABLE_FIELDS | _PROVENANCE_FIELDS | {"data_description"}
        and getattr(stored, f.name) != getattr(requested, f.name)
    ]
    stored_data, requested_data = (_training_data_part(c.data_description) for c in (stored, requested))
    if stored_data != requested_data:
        differences.append(f"training data: run has {stored_data!r}, you passed {requested_data!r}")
    if differences:
        raise UsageError(
            f"--resume {run}: the options differ from the run's ({'; '.join(differences[:4])}). "
            f"Resume with the same options (only {', '.join(sorted(RESUMABLE_FIELDS))} may change), "
            "or start a new --out folder."
        )
    return replace(stored, data_description=requested.data_description,
                   **{name: getattr(requested, name) for name in RESUMABLE_FIELDS})


def _append_metrics(run: Path, row: dict) -> None:
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    _rewrite_csv(run)


def _read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _rewrite_csv(run: Path) -> None:
    rows = _read_metrics(run)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run / "metrics.csv", out.getvalue())


def _truncate_metrics(run: Path, step: int) -> None:
    """Drop rows written after the checkpoint (a run killed between the two writes)."""
    rows = [row for row in _read_metrics(run) if row.get("step", 0) <= step]
    atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _rewrite_csv(run)


# --------------------------------------------------------------------------- validation


def _validate(network: torch.nn.Module, config: TrainConfig, cases: Sequence[TrainingCase],
              device: torch.device, num_classes: int) -> dict[str, float]:
    """Whole-case validation: Dice per class (seg) or reconstruction MSE on centre patches (dae)."""
    torch = _torch()
    from renalseg.inference import sliding_window

    network.eval()
    try:
        with torch.no_grad():
            if config.stage == "dae":
                errors = []
                for case in cases:
                    image, _ = sample_patch(case, config.patch_zyx, np.random.default_rng(0), foreground_share=0.0,
                                            augment=None, normalization=config.normalization)
                    x = torch.from_numpy(image[None, None]).to(device)
                    errors.append(float(torch.mean((network(x) - x) ** 2)))
                return {"val_mse": float(np.mean(errors))}

            def predict(batch: np.ndarray) -> np.ndarray:
                x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
                logits = network.logits(x) if hasattr(network, "logits") else network(x)
                return torch.softmax(logits, dim=1).cpu().numpy()

            per_case = []
            for case in cases:
                image = normalize_hu(case.image_hu, config.normalization)
                probabilities = sliding_window(image, predict, window_zyx=tuple(config.window_zyx),
                                               overlap=config.val_overlap, pad_value=0.0)
                per_case.append(dice_per_class(np.argmax(probabilities, axis=0), case.label, num_classes))
    finally:
        _train_mode(network)
    scores = np.asarray(per_case, dtype=float)
    names = parse_label_map(config.label_map).class_names[1:]
    result = {f"val_dice_{name}": float(scores[:, i].mean()) for i, name in enumerate(names)}
    result["val_dice"] = float(scores.mean())
    result["val_dice_std"] = float(scores.mean(axis=1).std())
    return result


# --------------------------------------------------------------------------- train


def train(
    config: TrainConfig,
    out_dir: Path | str,
    *,
    train_cases: Sequence[TrainingCase],
    val_cases: Sequence[TrainingCase] = (),
    resume: bool = False,
    context: DistributedContext | None = None,
    device: str = "cpu",
    on_progress: Callable[[TrainProgress], None] | None = None,
    network_factory: Callable[[TrainConfig], torch.nn.Module] | None = None,
    loader_workers: int = 0,
) -> TrainResult:
    """Train one stage; returns where the run ended.

    Args:
        config: the run's settings (on ``resume`` only :data:`RESUMABLE_FIELDS` may differ
            from the stored ones).
        out_dir: the run folder (created; must not hold a run unless ``resume``).
        train_cases: training cases on the model grid (labelled for ``seg``): any sequence;
            one with a true ``made_on_demand`` attribute builds each case when a batch asks
            for it (e.g. a phantom per sample, ``benchmarks/train_gpu.py --fresh``) and is
            not walked up front.
        val_cases: validation cases (never trained on); none disables best-by-validation
            (the last weights are then also the best).
        resume: continue the run in ``out_dir`` from its checkpoint, exactly.
        context: this process's place in a torchrun job (default: single process).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under torchrun, CUDA uses the local rank).
        on_progress: called with :class:`TrainProgress` events (rank 0 only).
        network_factory: builds the network from the config (default:
            :func:`build_training_network`); tests pass tiny stand-ins.
        loader_workers: processes building the coming batches ahead (:class:`BatchLoader`);
            the run is the same with any number; 0 builds each batch when it is needed.

    Raises:
        UsageError: an existing run without ``resume``, no run to resume, changed options.
        DataLayoutError: no training cases, or unlabelled cases for the seg stage.
    """
    from renalseg.errors import DataLayoutError

    torch = _torch()
    started = time.monotonic()
    context = context or DistributedContext()
    run = Path(out_dir)
    checkpoint_path = run / CHECKPOINT_NAME
    if not train_cases:
        raise DataLayoutError("No training cases (all went to validation?). Add cases or lower --val-fraction.")
    if config.stage == "seg":
        # cases made when a batch asks for them (phantoms made afresh) are not made here
        walked = val_cases if getattr(train_cases, "made_on_demand", False) else (*train_cases, *val_cases)
        unlabelled = [c.case_id for c in walked if c.label is None]
        if unlabelled:
            raise DataLayoutError(f"--stage seg needs labels; no label for case(s) {', '.join(unlabelled[:5])}.")
    # before anything is written: a bad worker count leaves no run folder behind (the
    # worker processes themselves start with the first batch asked for)
    loader = BatchLoader(train_cases, config, loader_workers)
    val_fingerprint = validation_fingerprint(val_cases)
    state: dict | None = None
    if resume:
        if not checkpoint_path.exists():
            raise UsageError(f"--resume: no {CHECKPOINT_NAME} in {run}; start the run without --resume.")
        state = _read_checkpoint(checkpoint_path)
        config = _check_resume_config(TrainConfig.from_dict(json.loads(state["config"])), config, run)
    elif checkpoint_path.exists():
        raise UsageError(f"{run} already holds a run; pass --resume to continue it or choose another --out.")

    torch_device = torch.device(device)
    if torch_device.type == "cuda" and context.distributed:
        torch_device = torch.device("cuda", context.local_rank)
    network = (network_factory(config) if network_factory is not None
               else build_training_network(config, load_weights=state is None))
    network.to(torch_device)
    _train_mode(network)
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=tuple(config.betas),  # type: ignore[arg-type]
                                 weight_decay=config.weight_decay)
    label_map = parse_label_map(config.label_map)
    score_name = "val_mse" if config.stage == "dae" else "val_dice"
    higher_is_better = config.stage == "seg"
    epoch, step_in_epoch, global_step = 0, 0, 0
    best_score: float | None = None
    wall_before = 0.0
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step_in_epoch, global_step = int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"])
        best_score = state.get("best_score")
        wall_before = float(state.get("wall_s", 0.0))
        for group in optimizer.param_groups:
            group["lr"] = config.lr
        stored_fingerprint = state.get("val_fingerprint")
        if best_score is not None and stored_fingerprint != val_fingerprint:
            # a score on other validation cases (or on unknown ones: a checkpoint older than
            # the fingerprint) is no yardstick: the best weights restart
            logger.warning("--resume %s: the validation cases changed since the checkpoint; the best score "
                           "(%.4f) restarts with the next validation.", run, best_score)
            best_score = None
        if context.is_main:
            _truncate_metrics(run, global_step)
    if context.is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", config.to_dict())

    model: torch.nn.Module = network if config.stage == "dae" else _logits_module(network)
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None)
    loss_fn = None if config.stage == "dae" else _segmentation_loss(config)

    samples_per_epoch = config.samples_per_epoch or len(train_cases)
    global_batch = config.batch_size * context.world_size
    steps_per_epoch = math.ceil(samples_per_epoch / global_batch)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    positions = rank_positions(context, config.batch_size)
    session_start_step = global_step
    last_checkpoint = time.monotonic()
    stopped: str | None = None
    best_name = "dae.safetensors" if config.stage == "dae" else "best.safetensors"

    def emit(event: TrainProgress) -> None:
        if on_progress is not None and context.is_main:
            on_progress(event)

    def elapsed() -> float:
        return time.monotonic() - started

    def eta() -> float | None:
        done = global_step - session_start_step
        return None if done == 0 else elapsed() / done * (total_steps - global_step)

    def save_checkpoint() -> None:
        if context.is_main:
            _write_checkpoint(checkpoint_path, {
                "format": _CHECKPOINT_FORMAT,
                "config": json.dumps(config.to_dict()),
                "model": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "best_score": best_score,
                "val_fingerprint": val_fingerprint,
                "wall_s": wall_before + elapsed(),
            })

    def describe_training() -> dict[str, Any]:
        return {
            "stage": config.stage,
            "steps": global_step,
            "epochs_completed": epoch,
            "wall_time_s": round(wall_before + elapsed(), 1),
            "processes": context.world_size,
            "train_cases": len(train_cases),
            "val_cases": [c.case_id for c in val_cases],
            "data": config.data_description,
            "recipe": {k: v for k, v in config.to_dict().items() if k not in ("data_description",)},
        }

    epoch_losses: list[float] = []
    row: dict[str, Any] = {}

    def positions_of(step: int) -> list[int]:
        return [step * global_batch + p for p in positions]

    try:
        while epoch < config.epochs and global_step < total_steps and stopped is None:
            plan = epoch_plan(len(train_cases), steps_per_epoch * global_batch, seed=config.seed, epoch=epoch)
            epoch_started = time.monotonic()
            while step_in_epoch < steps_per_epoch:
                step_positions = positions_of(step_in_epoch)
                images, labels = loader.batch(plan, epoch, step_in_epoch, positions_of, steps_per_epoch)
                x = torch.from_numpy(images).to(torch_device)
                inputs = x
                if config.stage == "dae":
                    # dropout corruption seeded per sample like the augmentation (any process split)
                    inputs = torch.cat([
                        network.corrupt(x[i:i + 1], generator=torch.Generator().manual_seed(  # type: ignore[operator]
                            int(np.random.default_rng([config.seed, epoch, int(pos), 2]).integers(2**62))))
                        for i, pos in enumerate(step_positions)])
                with torch.autocast(torch_device.type, dtype=torch.bfloat16, enabled=config.amp):
                    output = model(inputs)
                output = output.float()  # the loss in float32 (a no-op without --amp)
                if config.stage == "dae":
                    loss = torch.mean((output - x) ** 2)
                else:
                    y = torch.from_numpy(labels).to(torch_device)  # type: ignore[arg-type]
                    # mean of per-sample losses: the same for any split of the batch over processes
                    loss = torch.stack([loss_fn(output[i:i + 1], y[i:i + 1]) for i in range(len(y))]).mean()  # type: ignore[misc]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if not torch.isfinite(loss):
                    raise ModelError(f"The loss became {float(loss)} at step {global_step + 1}; lower --lr.")
                step_loss = all_reduce_mean(float(loss.detach()), context, torch_device)
                epoch_losses.append(step_loss)
                step_in_epoch += 1
                global_step += 1
                emit(TrainProgress("step", epoch, config.epochs, global_step, total_steps, loss=step_loss,
                                   best_score=best_score, elapsed_s=elapsed(), eta_s=eta()))
                if global_step >= total_steps:
                    if config.max_steps is not None and global_step >= config.max_steps:
                        stopped = "max steps"
                    break
                if config.time_limit_min is not None:
                    # every process must stop after the same step: agree on the slowest clock
                    late = elapsed() > config.time_limit_min * 60
                    if all_reduce_mean(float(late), context, torch_device) > 0:
                        stopped = "time limit"
                        break
                if time.monotonic() - last_checkpoint > config.checkpoint_minutes * 60:
                    save_checkpoint()
                    last_checkpoint = time.monotonic()
            epoch_done = step_in_epoch >= steps_per_epoch
            if epoch_done:
                epoch += 1
                step_in_epoch = 0
            finished = epoch >= config.epochs or global_step >= total_steps or stopped is not None
            row = {
                "epoch": epoch, "step": global_step,
                "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                "lr": config.lr, "epoch_s": round(time.monotonic() - epoch_started, 2),
                "wall_s": round(wall_before + elapsed(), 1),
            }
            epoch_losses = []
            validate = val_cases and (finished or (epoch_done and epoch % config.val_every == 0))
            if validate:
                if context.is_main:
                    metrics = _validate(network, config, val_cases, torch_device, label_map.num_classes)
                    row.update(metrics)
                    score = metrics[score_name]
                    improved = best_score is None or (score > best_score if higher_is_better else score < best_score)
                    if improved:
                        best_score = score
                        _save_weights(network, config, run / best_name, metrics=metrics,
                                      training=describe_training())
                    emit(TrainProgress("validation", epoch, config.epochs, global_step, total_steps,
                                       score=score, score_name=score_name, best_score=best_score,
                                       elapsed_s=elapsed(), eta_s=eta()))
                barrier(context)
            row["best_score"] = best_score
            if finished or (epoch_done and epoch % config.checkpoint_every == 0):
                save_checkpoint()
                last_checkpoint = time.monotonic()
            if context.is_main:
                _append_metrics(run, row)
            emit(TrainProgress("epoch", epoch, config.epochs, global_step, total_steps, loss=row["train_loss"],
                               score=row.get(score_name), score_name=score_name, best_score=best_score,
                               elapsed_s=elapsed(), eta_s=eta()))
    finally:
        loader.close()

    last = None
    best = None
    if context.is_main:
        summary = {score_name: row.get(score_name)} if val_cases else {}
        last = _save_weights(network, config, run / ("dae_last.safetensors" if config.stage == "dae" else "last.safetensors"),
                             metrics=summary, training=describe_training())
        if not val_cases and not (run / best_name).exists():  # no validation: the last weights are the best we know
            _save_weights(network, config, run / best_name, metrics=summary, training=describe_training())
        if (run / best_name).exists():
            best = run / best_name
        else:
            # validated, but the best weights are not in this folder (a checkpoint copied
            # without them, e.g. weights/training, that has not beaten its best score since):
            # never pass the last weights off as the best
            logger.warning("%s: no %s (validation has not beaten the checkpoint's best score %s since it was "
                           "copied here); the last weights are %s.", run, best_name, best_score, last)
    barrier(context)
    return TrainResult(run, global_step, epoch, best_score, score_name, best, last,
                       wall_before + elapsed(), stopped)
