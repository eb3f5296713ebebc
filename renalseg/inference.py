"""Sliding-window inference over a whole ROI, and the device a network runs on.

:func:`sliding_window` is the one stitching routine of the project: it takes any
predictor callable (a network wrapper, or an analytic function in the tests), so
``renalseg segment`` and :meth:`renalseg.segmenter.Segmenter.predict` share it.
:class:`NetworkPredictor` turns a ``torch.nn.Module`` into such a callable, with
autocast on CUDA only and the out-of-memory fallback (smaller batches, then the
CPU, with a warning). :func:`select_device` parses ``--device``.

torch is imported only inside the functions that need it, so importing this
module (for :func:`sliding_window` with a numpy predictor) stays cheap.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from renalseg.errors import ModelError, UsageError, suggest
from renalseg.windows import gaussian_weights, window_grid

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "Predictor",
    "sliding_window",
    "select_device",
    "NetworkPredictor",
    "is_out_of_memory",
    "DEVICE_CHOICES",
]

log = logging.getLogger(__name__)

#: a batch (B, C_in, z, y, x) float32 -> predictions (B, C_out, z, y, x) float32
Predictor = Callable[[np.ndarray], np.ndarray]

#: accepted ``--device`` values (``cuda:N`` for any N as well)
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

#: largest accumulator kept in float64 (beyond it, float32 to bound memory: a kidney ROI
#: of the five-output model is ~180 MiB in float64, and it is alive while the network's
#: working memory peaks; float32 halves it at a cost of ~1.5e-6 in a probability)
_FLOAT64_ACCUMULATOR_BYTES = 64 * 1024**2


def _mirror_sets(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes to flip (the empty one first)."""
    axes = sorted(set(int(a) for a in mirror_axes))
    for axis in axes:
        if axis not in (0, 1, 2):
            raise UsageError(f"Mirror axes are spatial (0 = z, 1 = y, 2 = x); got {axis}.")
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def sliding_window(
    array: np.ndarray,
    predict: Predictor,
    *,
    window_zyx: tuple[int, int, int],
    overlap: float = 0.5,
    batch_size: int = 1,
    importance: str = "gaussian",
    sigma_scale: float = 0.125,
    mirror_axes: Sequence[int] = (),
    pad_value: float = 0.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run ``predict`` over overlapping windows of ``array`` and blend the results.

    Windows of ``window_zyx`` voxels start at :func:`renalseg.windows.window_starts`
    on each axis (the last one flush with the border). Each window's prediction is
    weighted by a Gaussian importance map (σ = ``sigma_scale`` × window) and the
    weighted sum is divided by the summed weights, so a predictor that returns its
    input returns the input exactly (to float32 rounding). An array smaller than the
    window on some axis is padded (centred, with ``pad_value``) and cropped back.
    Accumulation is in place (float64 for ROI-sized arrays); the weight map is computed once
    (cached).

    Args:
        array: float ``(Z, Y, X)`` or ``(C_in, Z, Y, X)``, already normalised the way
            the predictor expects.
        predict: callable mapping a float32 batch ``(B, C_in, z, y, x)`` (``z, y, x`` =
            ``window_zyx``) to ``(B, C_out, z, y, x)`` (numpy, any float dtype).
        window_zyx: window size (z, y, x) in voxels, e.g. (64, 152, 152).
        overlap: fraction of a window shared by neighbours, in [0, 1).
        batch_size: windows per ``predict`` call.
        importance: ``"gaussian"`` or ``"constant"`` (plain averaging).
        sigma_scale: σ of the Gaussian as a fraction of the window.
        mirror_axes: spatial axes (0 = z, 1 = y, 2 = x) for mirroring test-time
            augmentation; every subset is flipped, predicted, flipped back and the
            results averaged (3 axes = 8 predictions per window).
        pad_value: value for the padding of arrays smaller than a window (the
            normalised value of air, typically 0).
        on_progress: called as ``on_progress(windows_done, windows_total)``.

    Returns:
        float32 ``(C_out, Z, Y, X)`` blended predictions on the input's grid.

    Raises:
        UsageError: bad window, overlap, batch size or importance mode.
        ModelError: the predictor returned an array of the wrong shape.

    Example:
        >>> x = np.random.default_rng(0).random((33, 37, 35), dtype=np.float32)
        >>> y = sliding_window(x, lambda b: b + 1, window_zyx=(16, 16, 16))
        >>> y.shape, bool(np.abs(y[0] - (x + 1)).max() < 1e-6)
        ((1, 33, 37, 35), True)
    """
    data = np.asarray(array, dtype=np.float32)
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise UsageError(f"Expected an array (Z, Y, X) or (C, Z, Y, X); got shape {np.shape(array)}.")
    window = tuple(int(w) for w in window_zyx)
    if len(window) != 3 or min(window) < 1:
        raise UsageError(f"Window must be 3 positive sizes (z, y, x); got {window_zyx}.")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1; got {batch_size}.")
    if importance == "gaussian":
        weights = gaussian_weights(window, sigma_scale)  # type: ignore[arg-type]
    elif importance == "constant":
        weights = np.ones(window, dtype=np.float32)
    else:
        raise UsageError(
            f"Unknown importance mode {importance!r}; choose 'gaussian' or 'constant'."
            + suggest(importance, ["gaussian", "constant"])
        )
    flips = _mirror_sets(mirror_axes)

    # pad (centred) any axis shorter than the window; remember how to crop back
    spatial = data.shape[1:]
    pad_lo = [max(0, (w - s) // 2) for s, w in zip(spatial, window)]
    pad_hi = [max(0, w - s) - lo for s, w, lo in zip(spatial, window, pad_lo)]
    if any(pad_lo) or any(pad_hi):
        data = np.pad(data, [(0, 0)] + list(zip(pad_lo, pad_hi)), mode="constant",
                      constant_values=pad_value)
    padded = data.shape[1:]
    corners = window_grid(padded, window, overlap)
    total = len(corners)

    # Summed weights in float64; each window's contribution is pre-divided by them (no
    # final division pass). The accumulator is float64 up to 64 MiB, so a prediction that
    # does not depend on the window comes back exactly; a kidney ROI's (2-5 channels of
    # ~4.6 M voxels) is float32, where summing up to 64 overlapping windows loses ~1.5e-6.
    weight_sum = np.zeros(padded, dtype=np.float64)
    for z, y, x in corners:
        weight_sum[z:z + window[0], y:y + window[1], x:x + window[2]] += weights

    out: np.ndarray | None = None
    batch = np.empty((min(batch_size, total), data.shape[0], *window), dtype=np.float32)
    done = 0
    for first in range(0, total, batch_size):
        chunk = corners[first:first + batch_size]
        n = len(chunk)
        for i, (z, y, x) in enumerate(chunk):
            batch[i] = data[:, z:z + window[0], y:y + window[1], x:x + window[2]]
        predictions = _predict_mirrored(predict, batch[:n], flips)
        if predictions.ndim != 5 or predictions.shape[0] != n or predictions.shape[2:] != window:
            raise ModelError(
                f"The predictor returned shape {predictions.shape}; expected ({n}, C, *{window}) "
                "(batch, classes, z, y, x). Check the network's output layout."
            )
        if out is None:
            channels = predictions.shape[1]
            wide = channels * int(np.prod(padded)) * 8 <= _FLOAT64_ACCUMULATOR_BYTES
            out = np.zeros((channels, *padded), dtype=np.float64 if wide else np.float32)
        for i, (z, y, x) in enumerate(chunk):
            region = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
            share = (weights / weight_sum[region]).astype(out.dtype, copy=False)
            prediction = predictions[i].astype(out.dtype, copy=False)
            np.multiply(prediction, share, out=prediction)
            out[(slice(None), *region)] += prediction
        done += n
        if on_progress is not None:
            on_progress(done, total)

    if out is None:  # cannot happen: there is always at least one window
        raise RuntimeError("sliding_window produced no windows")
    crop = tuple(slice(lo, lo + s) for lo, s in zip(pad_lo, spatial))
    return np.ascontiguousarray(out[(slice(None), *crop)], dtype=np.float32)


def _predict_mirrored(predict: Predictor, batch: np.ndarray, flips: list[tuple[int, ...]]) -> np.ndarray:
    """``predict`` on a batch, averaged over mirrorings; float32, writable."""
    result: np.ndarray | None = None
    for axes in flips:
        if axes:
            spatial_axes = tuple(a + 2 for a in axes)
            prediction = np.flip(np.asarray(predict(np.ascontiguousarray(np.flip(batch, spatial_axes)))),
                                 spatial_axes)
        else:
            prediction = np.asarray(predict(batch))
        if result is None:
            result = np.array(prediction, dtype=np.float32, copy=True)
        else:
            if prediction.shape != result.shape:
                raise ModelError(f"The predictor returned shape {prediction.shape} for a mirrored batch; "
                                 f"expected {result.shape}.")
            result += prediction
    if result is None:  # cannot happen: flips always holds the empty set
        raise RuntimeError("no mirroring to predict")
    if len(flips) > 1:
        result /= len(flips)
    return result


# -- devices ------------------------------------------------------------------------------


def select_device(spec: str = "auto") -> tuple[torch.device, str]:
    """The torch device for ``--device`` and a one-line reason for the choice.

    ``auto`` is CUDA when usable, else the CPU (never MPS unless asked for).

    Args:
        spec: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        (device, reason), e.g. ``(device("cpu"), "cpu (auto: CUDA not available)")``.

    Raises:
        UsageError: unknown value, or the requested accelerator is not usable.

    Example:
        >>> select_device("cpu")[0].type
        'cpu'
    """
    import torch

    value = str(spec).strip().lower()
    if value == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
            return device, f"{device} ({torch.cuda.get_device_name(device)}; auto: CUDA available)"
        return torch.device("cpu"), "cpu (auto: CUDA not available)"
    if value == "cpu":
        return torch.device("cpu"), "cpu"
    if value == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("--device mps: Apple MPS is not available here; use --device cpu or auto.")
        return torch.device("mps"), "mps"
    if value == "cuda" or value.startswith("cuda:"):
        index_text = value.partition(":")[2]
        if value.startswith("cuda:") and not index_text.isdigit():
            raise UsageError(f"--device {spec}: expected cuda:N with N a GPU number, e.g. cuda:0.")
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {spec}: CUDA is not available (no GPU, or a CPU-only PyTorch build). "
                "Use --device cpu, or --device auto to pick whatever is there."
            )
        index = int(index_text) if index_text else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise UsageError(f"--device {spec}: only {count} GPU(s) visible (cuda:0 … cuda:{count - 1}).")
        device = torch.device("cuda", index)
        return device, f"{device} ({torch.cuda.get_device_name(device)})"
    raise UsageError(
        f"--device {spec!r} is not a device; choose auto, cpu, cuda, cuda:N or mps."
        + suggest(value, DEVICE_CHOICES)
    )


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA/MPS out-of-memory error raised by torch."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class NetworkPredictor:
    """A network as a :data:`Predictor`: numpy batch in, numpy probabilities out.

    Runs under ``torch.inference_mode``; on CUDA with ``autocast`` it runs in
    float16 autocast (never on the CPU: bf16 is far slower there without bfloat16
    instructions, and no faster with them: 1.5 s per 152 × 152 × 64 window
    either way, 2 threads of an AMD EPYC with AVX-512 BF16, shipped weights). On an
    out-of-memory error the batch is split in halves and retried, and the largest
    batch that worked is remembered; when a single window does not fit, the network
    moves to the CPU for the rest of the run, with a warning.

    Args:
        network: maps float32 ``(B, C_in, z, y, x)`` to probabilities ``(B, C, z, y, x)``.
        device: where to run; the network is moved there.
        autocast: use float16 autocast on CUDA.
        on_fallback: called with a message when the device or batch size changes
            (the CLI prints it; the library logs it as a warning either way).
    """

    def __init__(self, network: Any, device: torch.device | str, *, autocast: bool = True,
                 on_fallback: Callable[[str], None] | None = None) -> None:
        import torch

        self.device = torch.device(device)
        self.network = network
        if self.device.type != "meta":  # a meta device only simulates an accelerator in tests
            self.network = network.to(self.device)
        self.network.eval()
        self.autocast = autocast
        self.on_fallback = on_fallback
        #: largest batch known to fit (None: not limited yet)
        self.max_batch: int | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.max_batch is not None and len(batch) > self.max_batch:
            parts = [self(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
            return np.concatenate(parts)
        try:
            return self._forward(batch)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            self._release_cache()
            if len(batch) > 1:
                half = (len(batch) + 1) // 2
                self.max_batch = half
                self._warn(f"out of memory on {self.device} with {len(batch)} windows per batch; "
                           f"retrying with {half}")
                return np.concatenate([self(batch[:half]), self(batch[half:])])
            if self.device.type == "cpu":
                raise ModelError(
                    "Out of memory on the CPU for a single window. Close other programs or use a "
                    "machine with more memory."
                ) from err
            self._warn(f"out of memory on {self.device} for a single window; continuing on the CPU "
                       "(slower)")
            self.move_to_cpu()
            return self._forward(batch)

    def move_to_cpu(self) -> None:
        import torch

        self.device = torch.device("cpu")
        self.network = self.network.to(self.device)
        self.max_batch = None

    def _warn(self, message: str) -> None:
        log.warning(message)
        if self.on_fallback is not None:
            self.on_fallback(message)

    def _release_cache(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            tensor = tensor.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and self.autocast:
                with torch.autocast("cuda", dtype=torch.float16):
                    output = self.network(tensor)
            else:
                output = self.network(tensor)
            return output.float().cpu().numpy()
