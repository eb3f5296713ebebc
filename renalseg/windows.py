"""Where sliding windows go, and how much each voxel of a window counts.

Small pure functions used by :func:`renalseg.inference.sliding_window` and its callers:

* :func:`window_starts` spreads the window positions along one axis so that the
  first window starts at 0, the last one ends exactly at the border and the steps
  between them are as even as possible (no window hangs over the edge and no
  voxel is left uncovered), as nnU-Net computes them.
* :func:`gaussian_weights` is the importance map used to blend overlapping
  windows: a separable Gaussian centred on the window, peak 1, σ = 1/8 of the
  window size per axis, so voxels near a window's centre (where the network saw
  the most context) count more than those at its border.
* :func:`box_around` is the smallest box around a mask that a window fits in, for a
  second pass that is read only there (``renalseg segment``'s thin-branch pass).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from renalseg.errors import UsageError
from renalseg.tree import bounding_box

__all__ = ["window_starts", "gaussian_weights", "window_grid", "box_around"]

#: smallest weight kept; avoids denormal floats (slow) and division by ~0 at corners
_MIN_WEIGHT = 1e-6


def window_starts(size: int, window: int, overlap: float = 0.5) -> tuple[int, ...]:
    """First voxel of each window along one axis.

    Args:
        size: number of voxels along the axis (after any padding to ``window``).
        window: window length in voxels.
        overlap: fraction of a window shared by consecutive windows, in [0, 1).
            The step is at most ``window * (1 - overlap)`` voxels; the number of
            windows is the smallest that achieves it with the last window flush
            with the border.

    Returns:
        Increasing start indices; the first is 0 and the last is ``size - window``
        (or just ``(0,)`` when ``size <= window``: the caller pads).

    Raises:
        UsageError: ``overlap`` outside [0, 1) or non-positive sizes.

    Example:
        >>> window_starts(280, 64, 0.5)
        (0, 31, 62, 93, 123, 154, 185, 216)
        >>> window_starts(152, 152, 0.5), window_starts(40, 64)
        ((0,), (0,))
        >>> window_starts(100, 64, 0.0)
        (0, 36)
    """
    if not 0.0 <= overlap < 1.0:
        raise UsageError(f"Window overlap must be in [0, 1); got {overlap}. Try --overlap 0.5.")
    if size < 1 or window < 1:
        raise UsageError(f"Sizes must be positive; got size {size}, window {window}.")
    if size <= window:
        return (0,)
    target_step = max(1.0, window * (1.0 - overlap))
    count = math.ceil((size - window) / target_step) + 1
    step = (size - window) / (count - 1)
    return tuple(int(round(step * i)) for i in range(count))


def window_grid(shape_zyx: tuple[int, ...], window_zyx: tuple[int, ...],
                overlap: float = 0.5) -> list[tuple[int, int, int]]:
    """All window start corners ``(z, y, x)`` for a (padded) array shape.

    Example:
        >>> window_grid((64, 152, 200), (64, 152, 152))
        [(0, 0, 0), (0, 0, 48)]
    """
    starts = [window_starts(s, w, overlap) for s, w in zip(shape_zyx, window_zyx)]
    return [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]


@functools.lru_cache(maxsize=8)
def _gaussian_cached(window_zyx: tuple[int, int, int], sigma_scale: float) -> np.ndarray:
    axes = []
    for n in window_zyx:
        sigma = max(n * sigma_scale, 1e-3)
        centre = (n - 1) / 2.0
        coords = np.arange(n, dtype=np.float64) - centre
        axes.append(np.exp(-0.5 * (coords / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = (weights / weights.max()).astype(np.float32)
    np.maximum(weights, _MIN_WEIGHT, out=weights)
    weights.setflags(write=False)
    return weights


def gaussian_weights(window_zyx: tuple[int, int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian importance map for blending overlapping windows.

    Args:
        window_zyx: window size (z, y, x) in voxels.
        sigma_scale: σ as a fraction of the window size on each axis (1/8, as
            nnU-Net and MONAI's ``"gaussian"`` mode).

    Returns:
        float32 ``window_zyx`` array, 1 at the centre, falling to at least 1e-6 at
        the corners (strictly positive, so every covered voxel has weight).
        Read-only and cached: do not modify it.

    Example:
        >>> w = gaussian_weights((5, 4, 3))
        >>> w.shape, w.dtype, float(w.max()), bool((w > 0).all())
        ((5, 4, 3), dtype('float32'), 1.0, True)
        >>> bool(np.allclose(w, w[::-1, ::-1, ::-1]))
        True
    """
    window = tuple(int(n) for n in window_zyx)
    if len(window) != 3 or min(window) < 1:
        raise UsageError(f"Window must be 3 positive sizes (z, y, x); got {window_zyx}.")
    if not sigma_scale > 0:
        raise UsageError(f"sigma_scale must be positive; got {sigma_scale}.")
    return _gaussian_cached(window, float(sigma_scale))  # type: ignore[arg-type]


def box_around(mask: np.ndarray, window_zyx: tuple[int, ...]) -> tuple[slice, slice, slice] | None:
    """The bounding box of ``mask``'s True voxels, grown about its centre to at least
    ``window_zyx`` on each axis where the array allows and kept inside the array.

    A sliding-window pass over this box sees as much real context around the mask as
    one over the whole array (no window is padded that would not be anyway), for the
    fraction of the windows the box holds.

    Returns:
        ``(z, y, x)`` slices, or ``None`` when ``mask`` holds no True voxel.

    Example:
        >>> m = np.zeros((100, 300, 300), bool); m[40:50, 10:20, 200:260] = True
        >>> box_around(m, (64, 152, 152))
        (slice(13, 77, None), slice(0, 152, None), slice(148, 300, None))
    """
    if not np.any(mask):
        return None
    box = []
    for cut, window, size in zip(bounding_box(mask), window_zyx, mask.shape):
        lo, hi = cut.start, cut.stop
        need = min(window, size)
        if hi - lo < need:
            lo = min(max(0, lo - (need - (hi - lo)) // 2), size - need)
            hi = lo + need
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]
