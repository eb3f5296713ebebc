"""benchmarks/error_study.py: the split of segmentation errors behind the README's figures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
error_study = pytest.importorskip("error_study")


def _two_rods() -> np.ndarray:
    """An 8-voxel-wide rod (5.6 mm at 0.7 mm) and a separate 2-voxel one (1.4 mm)."""
    truth = np.zeros((40, 40, 40), bool)
    truth[5:35, 5:13, 5:13] = True
    truth[5:35, 25:27, 25:27] = True
    return truth


SPACING = (0.7, 0.7, 0.7)


def test_a_wall_one_voxel_too_thick_is_all_boundary_error():
    truth = _two_rods()
    thick = ndimage.binary_dilation(truth, np.ones((1, 3, 3), bool))  # walls one voxel out, in-plane
    counts = error_study.split_errors(thick, truth, SPACING)
    figures = error_study.figures(counts)
    assert counts["fn"] == 0 and counts["fp"] == counts["fp_boundary"] > 0
    assert figures["boundary_share"] == 1.0
    assert figures["dice_boundary_mended"] == 1.0
    assert figures["dice_far_mended"] == pytest.approx(figures["dice"])
    assert figures["wall_bias_voxels_per_truth"] == pytest.approx(counts["fp"] / truth.sum())
    # the thin rod's extra wall is counted with the thin rod (0-2 mm); the thick one's with
    # the thick rod (4 mm+), but for its ends, where the centerline's inscribed sphere shrinks
    thin_wall = int((thick & ~truth)[:, 20:, 20:].sum())
    assert counts["fp_boundary_0-2mm"] == thin_wall > 0
    assert counts["fp_boundary_4mm+"] > 0.8 * (counts["fp"] - thin_wall)


def test_a_missed_thin_branch_is_far_error_in_its_band():
    truth = _two_rods()
    prediction = truth.copy()
    prediction[:, 20:, 20:] = False  # the thin rod missed entirely
    counts = error_study.split_errors(prediction, truth, SPACING)
    figures = error_study.figures(counts)
    assert counts["fp"] == 0 and counts["fn"] == counts["fn_far_0-2mm"] == truth[:, 20:, 20:].sum()
    assert figures["dice_far_mended"] == 1.0
    assert figures["error_share_0-2mm"] == 1.0
    assert figures["dice_4mm+"] == 1.0 and figures["dice_0-2mm"] == 0.0
    assert figures["dice_if_perfect_0-2mm"] == 1.0
    assert figures["truth_share_0-2mm"] == pytest.approx(truth[:, 20:, 20:].sum() / truth.sum())
