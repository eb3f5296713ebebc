"""A run's metrics: validation scores, and the per-epoch log ``metrics.jsonl`` + ``metrics.csv``.

Validation is on whole cases: Dice per class of the sliding-window prediction (seg
stage), or the reconstruction error on each case's centre patch (dae stage). The log
holds one row per epoch (loss, learning rate, times, validation scores); the CSV is
rewritten from the JSONL after each row, with a column for every key any row has.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from renalseg.io.output import atomic_write_text
from renalseg.training.augment import sample_patch
from renalseg.training.config import TrainConfig
from renalseg.training.data import TrainingCase, parse_label_map
from renalseg.training.network import train_mode
from renalseg.weights import normalize_hu

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["dice_per_class", "validate", "append_metrics", "read_metrics", "truncate_metrics"]


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


def validate(network: torch.nn.Module, config: TrainConfig, cases: Sequence[TrainingCase],
             device: torch.device) -> dict[str, float]:
    """Whole-case validation: Dice per class (seg) or reconstruction MSE on centre patches (dae).

    Returns:
        ``{"val_mse": ...}`` (dae), or ``val_dice`` (the mean over cases and classes:
        what picks the best weights), ``val_dice_std`` (over cases) and
        ``val_dice_<class>`` for each class (seg). For a class absent from some cases
        (a tumour), where one false voxel scores 0 and hides how much is labelled, also
        ``val_dice_<class>_present`` (the mean over the cases that hold it) and
        ``val_false_ml_<class>`` (the mean volume labelled in the cases that do not).
    """
    import torch

    network.eval()
    try:
        with torch.no_grad():
            if config.stage == "dae":
                return {"val_mse": _reconstruction_error(network, config, cases, device)}
            per_case, counts = _dice_per_case(network, config, cases, device)
    finally:
        train_mode(network)
    scores = np.asarray(per_case, dtype=float)
    names = parse_label_map(config.label_map).class_names[1:]
    result = {f"val_dice_{name}": float(scores[:, i].mean()) for i, name in enumerate(names)}
    result["val_dice"] = float(scores.mean())
    result["val_dice_std"] = float(scores.mean(axis=1).std())
    for i, name in enumerate(names):
        present = np.array([truth[i] > 0 for _, truth in counts])
        if present.all() or not present.any():
            continue
        result[f"val_dice_{name}_present"] = float(scores[present, i].mean())
        result[f"val_false_ml_{name}"] = float(np.mean([labelled[i] * _voxel_ml(case)
                                                         for (labelled, _), case, p in zip(counts, cases, present)
                                                         if not p]))
    return result


def _voxel_ml(case: TrainingCase) -> float:
    return float(np.prod(case.geometry.spacing_xyz_mm)) / 1000.0


def _reconstruction_error(network: torch.nn.Module, config: TrainConfig, cases: Sequence[TrainingCase],
                          device: torch.device) -> float:
    """The DAE's mean squared error on each case's centre patch, averaged."""
    import torch

    errors = []
    for case in cases:
        image, _ = sample_patch(case, config.patch_zyx, np.random.default_rng(0), foreground_share=0.0,
                                augment=None, normalization=config.normalization)
        x = torch.from_numpy(image[None, None]).to(device)
        errors.append(float(torch.mean((network(x) - x) ** 2)))
    return float(np.mean(errors))


def _softmax(batch: np.ndarray, *, network: torch.nn.Module, device: torch.device) -> np.ndarray:
    """Class probabilities of a batch of windows (the sliding window's predictor)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
    logits = network.logits(x) if hasattr(network, "logits") else network(x)
    return torch.softmax(logits, dim=1).cpu().numpy()


def _dice_per_case(network: torch.nn.Module, config: TrainConfig, cases: Sequence[TrainingCase],
                   device: torch.device) -> tuple[list[list[float]], list[tuple[np.ndarray, np.ndarray]]]:
    """Each case's Dice per foreground class, predicted whole by sliding windows, and
    its voxel counts per foreground class (labelled, true)."""
    from renalseg.inference import sliding_window

    num_classes = parse_label_map(config.label_map).num_classes
    predict = partial(_softmax, network=network, device=device)
    per_case, counts = [], []
    for case in cases:
        image = normalize_hu(case.image_hu, config.normalization)
        probabilities = sliding_window(image, predict, window_zyx=tuple(config.window_zyx),
                                       overlap=config.val_overlap, pad_value=0.0)
        labelled = np.argmax(probabilities, axis=0)
        per_case.append(dice_per_class(labelled, case.label, num_classes))
        counts.append((np.bincount(labelled.ravel(), minlength=num_classes)[1:],
                       np.bincount(np.asarray(case.label).ravel(), minlength=num_classes)[1:num_classes]))
    return per_case, counts


def append_metrics(run: Path, row: dict) -> None:
    """Add one epoch's row to ``metrics.jsonl`` and rewrite ``metrics.csv``."""
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    _rewrite_csv(run)


def read_metrics(run: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (none when there is no log yet)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _rewrite_csv(run: Path) -> None:
    rows = read_metrics(run)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run / "metrics.csv", out.getvalue())


def truncate_metrics(run: Path, step: int) -> None:
    """Drop rows written after the checkpoint at ``step`` (a run killed between the two writes)."""
    rows = [row for row in read_metrics(run) if row.get("step", 0) <= step]
    atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _rewrite_csv(run)
