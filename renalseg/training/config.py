"""The training recipe: :class:`TrainConfig`, frozen and validated, and its JSON round trip.

A run's configuration travels with it: ``config.json`` in the run folder and the same
JSON inside every checkpoint, so ``--resume`` knows what the run was and refuses to
continue it with other options (only :data:`RESUMABLE_FIELDS` may change).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from renalseg.errors import UsageError, suggest
from renalseg.training.augment import DEFAULT_NORMALIZATION, AugmentConfig
from renalseg.training.data import parse_label_map

__all__ = ["TrainConfig", "STAGES", "RESUMABLE_FIELDS", "resume_config"]

STAGES = ("dae", "seg")
#: options that may change when a run is resumed (extend it, validate more often, ...)
#: ``lr`` too: a resumed run may continue at a lower learning rate (a manual step decay);
#: the metrics log records the rate of every epoch
RESUMABLE_FIELDS: frozenset[str] = frozenset(
    {"epochs", "max_steps", "time_limit_min", "val_every", "checkpoint_every", "checkpoint_minutes", "lr"}
)
#: where the starting weights came from: not read on resume (the checkpoint holds every
#: parameter), so another path (the run copied elsewhere) is accepted and the stored one kept
_PROVENANCE_FIELDS: frozenset[str] = frozenset({"encoder", "init_weights"})
#: where a data description (``TrainConfig.data_description``) turns to the validation
#: cases: ", 2 validation cases from DIR" (``renalseg train``), ", validation seeds A-B; ..."
#: (runs that make their phantoms in memory). A resumed run may validate on other cases
#: (its best score restarts), so only the part before this must match.
_VALIDATION_CLAUSE = re.compile(r",\s*(?:\d+\s+)?validation\b.*\Z", re.DOTALL)
#: fields held as tuples, written to JSON as lists
_TUPLE_FIELDS = ("patch_zyx", "window_zyx", "spacing_xyz_mm", "betas")


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
        spacing_xyz_mm: the grid (x, y, z) mm the cases are resampled to and the model
            is trained at; written to the card, which is what inference reads. The
            recipe's default is the paper's 0.7 × 0.7 × 1.0 mm.
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
        time_limit_min: stop (checkpointed) after this many minutes since the run was
            started or resumed.
        foreground_share: share of patches centred near the first class (artery).
        hard_negative_share: share centred near bright unlabelled voxels (bone, bowel
            contrast, other arteries: ``TrainingCase.hard_negatives``).
        class_share: share centred near a voxel of a foreground class drawn uniformly
            among those the case holds (``--class-share``: a rare class such as the
            tumour is centred as often as the kidney).
        mimic_share: share centred near unlabelled phantom tissue that looks like a
            tumour (``TrainingCase.mimics``: spleen, liver, bowel, pancreas, adrenal,
            renal cyst; needs tissue maps); the rest are placed uniformly.
        augment: augmentation settings.
        seed: seeds the network's initialisation and every sample.
        val_every: validate every this many epochs (and at the end).
        val_overlap: sliding-window overlap for validation (whole cases, ``window_zyx``).
        checkpoint_every: write the checkpoint every this many epochs ...
        checkpoint_minutes: ... and at least this often within an epoch.
        synthetic_data: trained on phantoms only (said in the model card).
        data_description: what the data was (written to the model card).

    Example:
        >>> config = TrainConfig(patch_zyx=(48, 96, 96), lr=5e-5)
        >>> TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        True
        >>> TrainConfig(stage="sge")
        Traceback (most recent call last):
        ...
        renalseg.errors.UsageError: --stage must be one of dae, seg; got 'sge'. Did you mean 'seg'?
    """

    stage: str = "seg"
    network: str = "dpa_densebiasnet"
    network_options: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None
    init_weights: str | None = None
    label_map: str = "3:renal_artery"
    patch_zyx: tuple[int, int, int] = (64, 152, 152)
    window_zyx: tuple[int, int, int] = (64, 152, 152)
    spacing_xyz_mm: tuple[float, float, float] = (0.7, 0.7, 1.0)
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
    class_share: float = 0.0
    mimic_share: float = 0.0
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
        if not 0.0 <= self.class_share <= 1.0 - self.foreground_share - self.hard_negative_share + 1e-9:
            raise UsageError(f"--class-share must be in [0, 1 − foreground share − hard-negative share]; got "
                             f"{self.class_share} with --foreground-share {self.foreground_share} and "
                             f"--hard-negative-share {self.hard_negative_share}.")
        others = self.foreground_share + self.hard_negative_share + self.class_share
        if not 0.0 <= self.mimic_share <= 1.0 - others + 1e-9:
            raise UsageError(f"--mimic-share must be in [0, 1 − the other shares ({others:g})]; got "
                             f"{self.mimic_share}.")
        if not 0.0 <= self.augment.thick_slices <= 1.0:
            raise UsageError(f"--thick-slices must be in [0, 1]; got {self.augment.thick_slices}.")
        if not 0.0 <= self.augment.noisy_scans <= 1.0:
            raise UsageError(f"--noisy-scans must be in [0, 1]; got {self.augment.noisy_scans}.")
        if not 0.0 <= self.augment.scanner_grids <= 1.0:
            raise UsageError(f"--scanner-grids must be in [0, 1]; got {self.augment.scanner_grids}.")
        if self.augment.spare_thin_class and self.augment.scanner_grids == 0:
            raise UsageError("--spare-thin-branches spares thin branches in the patches --scanner-grids coarsens; "
                             "give --scanner-grids a share above 0.")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be ≥ 1; got {self.max_steps}.")
        parse_label_map(self.label_map)  # fails early on a bad map

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["augment"] = self.augment.to_dict()
        for key in _TUPLE_FIELDS:
            data[key] = list(data[key])
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["augment"] = AugmentConfig.from_dict(data.get("augment", {}))
        for key in _TUPLE_FIELDS:
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def _training_data_part(description: str) -> str:
    """A data description without its validation clause (see ``_VALIDATION_CLAUSE``).

    Example:
        >>> _training_data_part("40 training cases from data/, 2 validation cases from val/")
        '40 training cases from data/'
        >>> _training_data_part("500 training phantoms made in memory (synthesize_roi seeds 1000-1499), "
        ...                     "validation seeds 9400-9407")
        '500 training phantoms made in memory (synthesize_roi seeds 1000-1499)'
    """
    return _VALIDATION_CLAUSE.sub("", description)


def resume_config(stored: TrainConfig, requested: TrainConfig, run: Path) -> TrainConfig:
    """The stored config with the resumable fields taken from the request.

    The data description must match up to its validation clause: other validation
    cases are allowed (``train`` restarts the best score), other training data is not.
    The request's description is kept, so the card names the cases that chose the best
    weights.

    Raises:
        UsageError: any other option differs (the message names up to four).
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
