"""A loaded model ready to segment kidney ROIs: ``load_model`` and ``Segmenter``.

The model card (``renalseg.weights``) is authoritative for everything inference
needs: the voxel spacing the network was trained at, the window size, the intensity
normalisation and the class names. :class:`ModelSpec` is that subset as plain data,
so the pipeline can also run an analytic predictor (tests, or a researcher's own
model) through exactly the same stitching and geometry code.

Example:
    >>> import numpy as np
    >>> spec = ModelSpec(window_zyx=(8, 8, 8))
    >>> segmenter = Segmenter.from_predictor(
    ...     lambda b: np.concatenate([1 - b, b], axis=1), spec)
    >>> hu = np.full((10, 12, 9), 1024.0, dtype=np.float32)
    >>> segmenter.predict(hu).shape, round(float(segmenter.predict(hu)[1].min()), 5)
    ((2, 10, 12, 9), 1.0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from renalseg.errors import GeometryError, ModelError, UsageError
from renalseg.inference import Predictor, sliding_window
from renalseg.volume import Volume
from renalseg.weights import ModelCard

__all__ = ["ModelSpec", "Segmenter", "load_model"]

log = logging.getLogger(__name__)


def _floats(values: Any, count: int) -> Any:
    out = tuple(float(v) for v in values)
    if len(out) != count:
        raise ValueError(f"expected {count} numbers, got {list(values)}")
    return out


@dataclass(frozen=True)
class ModelSpec:
    """What inference needs to know about a model (normally read from its card).

    The model grid's defaults (spacing, window) are a card's
    (:class:`~renalseg.weights.ModelCard`): the card owns the grid.

    Attributes:
        name: architecture / model name for reports.
        classes: label value (as text) -> class name; "0" is background.
        spacing_xyz_mm: voxel spacing (x, y, z) the network expects.
        window_zyx: network input window (z, y, x) in voxels.
        clip_hu: HU range kept before scaling.
        scale: the range ``clip_hu`` maps to (linearly).
        sha256: sha256 of the weights file (``None`` for analytic predictors).
        synthetic_training_only: the weights never saw patient data.
        limits: the card's ``limits`` block (empty: the defaults of
            :data:`renalseg.quality.DEFAULT_LIMITS`).
    """

    name: str = "analytic"
    classes: Mapping[str, str] = field(default_factory=lambda: {"0": "background", "1": "renal_artery"})
    spacing_xyz_mm: tuple[float, float, float] = ModelCard.spacing_xyz_mm
    window_zyx: tuple[int, int, int] = ModelCard.window_zyx
    clip_hu: tuple[float, float] = (-1024.0, 1024.0)
    scale: tuple[float, float] = (0.0, 1.0)
    sha256: str | None = None
    synthetic_training_only: bool = False
    limits: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_card(cls, card: Any) -> ModelSpec:
        """Read the fields from a ``renalseg.weights.ModelCard`` (or a dict with its keys)."""
        data = dict(card) if isinstance(card, Mapping) else card.to_dict()
        defaults = cls()
        normalization = data.get("normalization") or {}
        try:
            return cls(
                name=str(data.get("name", "model")),
                classes={str(k): str(v) for k, v in dict(data.get("classes", defaults.classes)).items()},
                spacing_xyz_mm=_floats(data.get("spacing_xyz_mm", defaults.spacing_xyz_mm), 3),
                window_zyx=tuple(int(v) for v in data.get("window_zyx", defaults.window_zyx)),  # type: ignore[arg-type]
                clip_hu=_floats(normalization.get("clip_hu", defaults.clip_hu), 2),
                scale=_floats(normalization.get("scale", defaults.scale), 2),
                sha256=data.get("sha256") or None,
                synthetic_training_only=bool(data.get("synthetic_training_only", False)),
                limits=dict(data.get("limits") or {}),
            )
        except (TypeError, ValueError) as err:
            raise ModelError(f"The model card is malformed ({err}); re-export the weights with "
                             "renalseg.weights.save_model.") from err

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """Clip HU to ``clip_hu`` and map it linearly onto ``scale``; float32 copy.

        Example:
            >>> ModelSpec().normalize(np.array([-2000.0, 0.0, 1024.0])).tolist()
            [0.0, 0.5, 1.0]
        """
        lo, hi = self.clip_hu
        s0, s1 = self.scale
        out = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
        out -= lo
        out *= (s1 - s0) / (hi - lo)
        out += s0
        return out

    @property
    def air_value(self) -> float:
        """The normalised value of air (−1024 HU): what padding uses."""
        return float(self.normalize(np.array([-1024.0]))[0])


@dataclass
class Segmenter:
    """A model ready for inference over whole ROIs.

    Attributes:
        predictor: batch (B, 1, z, y, x) normalised -> probabilities (B, C, z, y, x).
        spec: spacing, window, normalisation and classes.
        network: the ``torch.nn.Module`` (``None`` for analytic predictors).
        card: the model card as loaded (``None`` for analytic predictors).
        device: where the network runs, e.g. ``"cpu"`` or ``"cuda:0"``.
        device_reason: why that device was chosen (said once by the CLI).
        weights_path: the weights file, when loaded from disk.
        batch_size: windows per forward pass.
    """

    predictor: Predictor
    spec: ModelSpec
    network: Any = None
    card: Any = None
    device: str = "cpu"
    device_reason: str = "cpu"
    weights_path: Path | None = None
    batch_size: int = 1

    @classmethod
    def from_predictor(cls, predictor: Predictor, spec: ModelSpec | None = None) -> Segmenter:
        """Wrap any callable (e.g. an analytic predictor in tests) as a Segmenter."""
        return cls(predictor=predictor, spec=spec or ModelSpec())

    @property
    def current_device(self) -> str:
        """The device now in use (it changes after an out-of-memory fallback to the CPU)."""
        device = getattr(self.predictor, "device", None)
        return str(device) if device is not None else self.device

    def predict(self, roi: Volume | np.ndarray, *, overlap: float = 0.5, tta: bool = False,
                on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Class probabilities over a whole ROI by sliding windows.

        Args:
            roi: the ROI in HU, ``(Z, Y, X)`` on the model grid (patient-oriented:
                z → superior, y → posterior, x → left, at ``spec.spacing_xyz_mm``). A
                :class:`Volume` has its spacing checked.
            overlap: window overlap fraction in [0, 1).
            tta: mirroring test-time augmentation on all three axes (8× the work).
            on_progress: ``on_progress(windows_done, windows_total)``.

        Returns:
            float32 ``(C, Z, Y, X)`` probabilities, C = number of classes.

        Raises:
            GeometryError: a Volume at another spacing than the model's.
            ModelError: the network's output does not have ``C`` channels.
        """
        if isinstance(roi, Volume):
            if not np.allclose(roi.geometry.spacing_xyz_mm, self.spec.spacing_xyz_mm, rtol=1e-3, atol=1e-4):
                raise GeometryError(
                    f"ROI spacing {roi.geometry.spacing_xyz_mm} mm differs from the model's "
                    f"{self.spec.spacing_xyz_mm} mm; resample it first (renalseg.pipeline does this)."
                )
            hu = roi.array
        else:
            hu = np.asarray(roi)
        if hu.ndim != 3:
            raise UsageError(f"Expected an ROI array (Z, Y, X); got shape {hu.shape}.")
        probabilities = sliding_window(
            self.spec.normalize(hu), self.predictor, window_zyx=self.spec.window_zyx, overlap=overlap,
            batch_size=self.batch_size, mirror_axes=(0, 1, 2) if tta else (),
            pad_value=self.spec.air_value, on_progress=on_progress,
        )
        if probabilities.shape[0] != self.spec.num_classes:
            raise ModelError(
                f"The model returned {probabilities.shape[0]} channels but its card lists "
                f"{self.spec.num_classes} classes ({dict(self.spec.classes)}); the weights and card disagree."
            )
        return probabilities


def _batch_size_for(device: Any) -> int:
    """Windows per forward pass: 1 on the CPU (no gain, more memory), more on big GPUs."""
    if getattr(device, "type", "cpu") != "cuda":
        return 1
    import torch

    free_bytes, _ = torch.cuda.mem_get_info(device)
    # ~3 GiB per 152 × 152 × 64 window under fp16 autocast with headroom; OOM fallback
    # halves the batch if this estimate is too optimistic.
    return int(max(1, min(4, free_bytes // (3 * 1024**3))))


def load_model(weights: Path | str | None = None, device: str = "auto", *, autocast: bool = True,
               on_fallback: Callable[[str], None] | None = None) -> Segmenter:
    """Load weights and their model card and prepare them for inference.

    Args:
        weights: the weights file (safetensors, card beside it) or folder; ``None``
            for the shipped weights (``renalseg.weights.DEFAULT_WEIGHTS_PATH``).
        device: ``auto`` (CUDA if usable, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        autocast: float16 autocast on CUDA (never used on the CPU).
        on_fallback: called with a message if the run falls back to smaller batches
            or the CPU after an out-of-memory error.

    Returns:
        A :class:`Segmenter` whose ``network`` is the whole DPA-DenseBiasNet.

    Raises:
        ModelError: missing weights, or card and architecture disagree.
        UsageError: an unusable ``device``.
    """
    from renalseg import weights as weights_module
    from renalseg.inference import NetworkPredictor, select_device

    torch_device, reason = select_device(device)
    path = Path(weights) if weights is not None else Path(weights_module.DEFAULT_WEIGHTS_PATH)
    # load_model_files says what is missing and verifies the card's sha256 of the file
    network, card = weights_module.load_model_files(path, device="cpu")
    spec = ModelSpec.from_card(card)
    predictor = NetworkPredictor(network, torch_device, autocast=autocast, on_fallback=on_fallback)
    log.info("model %s on %s", spec.name, reason)
    return Segmenter(
        predictor=predictor, spec=spec, network=predictor.network, card=card, device=str(torch_device),
        device_reason=reason, weights_path=path, batch_size=_batch_size_for(torch_device),
    )
