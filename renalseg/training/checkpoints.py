"""A run's state on disk: ``checkpoint.pt`` for an exact ``--resume``, and its weights files.

The checkpoint holds the model, the optimiser, the position (epoch, step) and the
best validation score with a fingerprint of the cases that gave it; every sample's
augmentation is seeded by (seed, epoch, position) and nothing else is random, so a
resumed run continues exactly where the checkpoint left it. The weights files
(``best``, ``last``, ``dae``) are in the shipped format, safetensors and card.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from renalseg.errors import UsageError
from renalseg.training.config import TrainConfig, resume_config
from renalseg.training.data import TrainingCase, parse_label_map

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from renalseg.weights import ModelCard

__all__ = [
    "CHECKPOINT_NAME",
    "RunPosition",
    "open_checkpoint",
    "restore_position",
    "write_checkpoint",
    "read_checkpoint",
    "validation_fingerprint",
    "training_record",
    "save_weights",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_FORMAT = "renalseg-train-checkpoint/1"


@dataclass
class RunPosition:
    """Where a run stands; the trainer advances it, the checkpoint stores it.

    Attributes:
        epoch: completed epochs.
        step_in_epoch: optimiser steps done in the current epoch.
        global_step: optimiser steps done in all.
        best_score: the best validation score so far (``None``: none yet).
        wall_before_s: wall time the run spent before it was last started or resumed.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float | None = None
    wall_before_s: float = 0.0


def open_checkpoint(run: Path, config: TrainConfig, *, resume: bool) -> tuple[TrainConfig, dict | None]:
    """The run's config and checkpoint state to start from (``None``: a new run).

    Raises:
        UsageError: ``resume`` without a checkpoint, a checkpoint without ``resume``, an
            unreadable checkpoint, or options that differ from the run's.
    """
    path = run / CHECKPOINT_NAME
    if not resume:
        if path.exists():
            raise UsageError(f"{run} already holds a run; pass --resume to continue it or choose another --out.")
        return config, None
    if not path.exists():
        raise UsageError(f"--resume: no {CHECKPOINT_NAME} in {run}; start the run without --resume.")
    state = read_checkpoint(path)
    return resume_config(TrainConfig.from_dict(json.loads(state["config"])), config, run), state


def restore_position(state: dict, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     config: TrainConfig, *, val_fingerprint: str, run: Path) -> RunPosition:
    """Load a checkpoint's model and optimiser; its position, at ``config.lr``.

    The best score restarts when the validation cases differ from those that gave it
    (or are unknown: a checkpoint older than the fingerprint): it is no yardstick.
    """
    network.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = config.lr
    position = RunPosition(int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"]),
                           state.get("best_score"), float(state.get("wall_s", 0.0)))
    if position.best_score is not None and state.get("val_fingerprint") != val_fingerprint:
        logger.warning("--resume %s: the validation cases changed since the checkpoint; the best score "
                       "(%.4f) restarts with the next validation.", run, position.best_score)
        position.best_score = None
    return position


def write_checkpoint(path: Path, *, config: TrainConfig, network: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, position: RunPosition, val_fingerprint: str,
                     wall_s: float) -> None:
    """Write the checkpoint whole (a temporary file renamed over the old one)."""
    import torch

    buffer = io.BytesIO()
    torch.save({
        "format": _CHECKPOINT_FORMAT,
        "config": json.dumps(config.to_dict()),
        "model": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": position.epoch,
        "step_in_epoch": position.step_in_epoch,
        "global_step": position.global_step,
        "best_score": position.best_score,
        "val_fingerprint": val_fingerprint,
        "wall_s": wall_s,
    }, buffer)
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(buffer.getvalue())
    os.replace(temp, path)


def read_checkpoint(path: Path) -> dict:
    """The state :func:`write_checkpoint` wrote (tensors only: no code runs on load).

    Raises:
        UsageError: a truncated or foreign file.
    """
    import torch

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


def training_record(config: TrainConfig, position: RunPosition, *, wall_s: float, processes: int,
                    train_cases: int, val_case_ids: Sequence[str]) -> dict[str, Any]:
    """The ``training`` entry of the model card: the run's position, data and recipe."""
    return {
        "stage": config.stage,
        "steps": position.global_step,
        "epochs_completed": position.epoch,
        "wall_time_s": round(wall_s, 1),
        "processes": processes,
        "train_cases": train_cases,
        "val_cases": list(val_case_ids),
        "data": config.data_description,
        "recipe": {k: v for k, v in config.to_dict().items() if k not in ("data_description",)},
    }


def _card_for(network: torch.nn.Module, config: TrainConfig, *, metrics: dict, training: dict) -> ModelCard:
    from renalseg.weights import ModelCard

    label_map = parse_label_map(config.label_map)
    hyperparameters = dict(getattr(network, "hyperparameters", config.network_options))
    return ModelCard(
        name=config.network,
        hyperparameters=hyperparameters,
        classes=({str(i): name for i, name in enumerate(label_map.class_names)} if config.stage == "seg"
                 else {"0": "image"}),
        spacing_xyz_mm=config.spacing_xyz_mm,
        window_zyx=config.window_zyx,
        normalization=dict(config.normalization),
        parameter_count=int(sum(p.numel() for p in network.parameters())),
        training=training,
        metrics=metrics,
        synthetic_training_only=bool(config.synthetic_data),
    )


def save_weights(network: torch.nn.Module, config: TrainConfig, path: Path, *, metrics: dict,
                 training: dict) -> Path:
    """Save ``network`` in the shipped format (``path`` and its card beside it); returns ``path``."""
    from renalseg.weights import save_model

    save_model(network, _card_for(network, config, metrics=metrics, training=training), path)
    return path
