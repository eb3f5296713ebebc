"""Window placement and the Gaussian importance map."""

from __future__ import annotations

import numpy as np
import pytest

from renalseg.errors import UsageError
from renalseg.windows import box_around, gaussian_weights, window_grid, window_starts


@pytest.mark.parametrize("size", [1, 63, 64, 65, 100, 127, 152, 153, 280, 301])
@pytest.mark.parametrize("window", [16, 64, 152])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_windows_start_at_zero_end_at_border_and_respect_the_overlap(size, window, overlap):
    starts = window_starts(size, window, overlap)
    assert starts[0] == 0
    if size <= window:
        assert starts == (0,)
        return
    assert starts[-1] == size - window  # last window flush with the border, never past it
    steps = np.diff(starts)
    assert (steps > 0).all()
    assert steps.max() <= window * (1 - overlap) + 1  # rounding of spread steps
    assert steps.max() - steps.min() <= 1  # spread evenly
    covered = np.zeros(size, int)
    for s in starts:
        covered[s:s + window] += 1
    assert covered.min() >= 1


def test_fewest_windows_for_the_overlap():
    # 280 slices, 64-slice windows, step ≤ 32: ceil(216 / 32) + 1 = 8 windows
    assert len(window_starts(280, 64, 0.5)) == 8
    assert len(window_starts(128, 64, 0.5)) == 3
    assert len(window_starts(128, 64, 0.0)) == 2


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_bad_overlap_is_a_usage_error(overlap):
    with pytest.raises(UsageError, match="overlap"):
        window_starts(100, 64, overlap)


def test_window_grid_covers_every_voxel_of_an_odd_shape():
    shape, window = (33, 70, 41), (16, 32, 16)
    count = np.zeros(shape, int)
    for z, y, x in window_grid(shape, window, 0.5):
        assert z + 16 <= 33 and y + 32 <= 70 and x + 16 <= 41
        count[z:z + 16, y:y + 32, x:x + 16] += 1
    assert count.min() >= 1


def test_gaussian_has_sigma_one_eighth_of_the_window_per_axis():
    window = (41, 81, 25)
    w = gaussian_weights(window).astype(np.float64)
    centre = tuple(n // 2 for n in window)
    assert w[centre] == 1.0 and w.max() == 1.0
    for axis, n in enumerate(window):
        sigma = n / 8
        k = 6
        index = list(centre)
        index[axis] += k
        assert w[tuple(index)] == pytest.approx(np.exp(-k * k / (2 * sigma * sigma)), rel=1e-5)
    assert np.allclose(w, w[::-1, ::-1, ::-1])
    assert w.min() > 0  # every voxel of a window counts a little
    assert w[0, 0, 0] < 1e-3  # corners count much less than the centre


def test_gaussian_weights_are_read_only_and_validated():
    w = gaussian_weights((8, 8, 8))
    with pytest.raises(ValueError):
        w[0, 0, 0] = 5
    with pytest.raises(UsageError):
        gaussian_weights((8, 0, 8))


def test_box_around_holds_the_mask_and_a_window_inside_the_array():
    """The box a second pass runs over: the whole mask, at least a window each way where the
    array allows (so no window there is padded), never beyond the array; None when empty."""
    rng = np.random.default_rng(0)
    window = (64, 152, 152)
    for _ in range(50):
        shape = tuple(int(s) for s in rng.integers(20, 260, size=3))
        mask = np.zeros(shape, bool)
        lo = [int(rng.integers(0, s)) for s in shape]
        hi = [min(s, a + int(rng.integers(1, 80))) for s, a in zip(shape, lo)]
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        box = box_around(mask, window)
        assert box is not None and mask[box].sum() == mask.sum()
        for cut, w, s in zip(box, window, shape):
            assert 0 <= cut.start < cut.stop <= s and cut.stop - cut.start >= min(w, s)
    assert box_around(np.zeros((10, 10, 10), bool), window) is None
