"""Centerline and branch analysis against analytic tubes and trees."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LPS, OBLIQUE_30DEG

from renalseg.geometry import Geometry
from renalseg.tree import analyze_tree, centerline, drop_small_components
from renalseg.volume import Volume


def tubes(shape_zyx, spacing_xyz_mm, segments, direction=LPS) -> Volume:
    """Union of capsule-free tubes: (start_zyx_mm, end_zyx_mm, radius_mm) with flat ends."""
    spacing_zyx = np.asarray(spacing_xyz_mm, float)[::-1]
    points = np.indices(shape_zyx).reshape(3, -1).T * spacing_zyx
    mask = np.zeros(len(points), bool)
    for start, end, radius in segments:
        a, b = np.asarray(start, float), np.asarray(end, float)
        axis = b - a
        t = (points - a) @ axis / (axis @ axis)
        closest = a + np.clip(t, 0, 1)[:, None] * axis
        mask |= (np.linalg.norm(points - closest, axis=1) <= radius) & (t >= 0) & (t <= 1)
    geometry = Geometry(shape_zyx, spacing_xyz_mm, (-40.0, 12.5, 300.0), direction)
    return Volume(mask.reshape(shape_zyx), geometry)


def test_oblique_cylinder_length_and_radius():
    # radius 1.5 mm, length 30 mm along an oblique axis, 0.4 mm voxels
    start, end = np.array([6.0, 6.0, 5.0]), np.array([6.0 + 24.0, 6.0 + 10.0, 5.0 + 15.4])
    length = float(np.linalg.norm(end - start))
    volume = tubes((96, 60, 64), (0.4, 0.4, 0.4), [(start, end, 1.5)], direction=OBLIQUE_30DEG)
    stats = analyze_tree(volume)
    assert stats["end_points"] == 2 and stats["branch_points"] == 0
    assert stats["components"] == 1
    assert stats["centerline_length_mm"] == pytest.approx(length, rel=0.02)
    assert stats["radius_mm"]["median"] == pytest.approx(1.5, abs=0.1)


def test_y_tree_has_one_branch_point_and_three_ends():
    trunk = ((5.0, 25.0, 25.0), (30.0, 25.0, 25.0), 2.5)
    branch_a = ((30.0, 25.0, 25.0), (55.0, 10.0, 25.0), 1.8)
    branch_b = ((30.0, 25.0, 25.0), (50.0, 40.0, 35.0), 1.8)
    for spacing in [(0.5, 0.5, 0.5), (0.7, 0.7, 1.0)]:
        shape = tuple(int(extent / s) for extent, s in zip((60, 50, 50), spacing[::-1]))
        stats = analyze_tree(tubes(shape, spacing, [trunk, branch_a, branch_b]))
        assert stats["branch_points"] == 1, stats
        assert stats["end_points"] == 3, stats
        assert len(stats["branch_points_mm"]) == 1 and len(stats["end_points_mm"]) == 3
        # the branch point sits at the bifurcation (30, 25, 25) zyx mm, within a radius
        bp = np.asarray(stats["branch_points_mm"][0]) - np.array([-40.0, 12.5, 300.0])
        assert np.linalg.norm(bp - np.array([25.0, 25.0, 30.0])) < 3.0


def test_specks_and_small_loop_do_not_change_the_tree():
    trunk = ((4.0, 20.0, 20.0), (40.0, 24.0, 22.0), 2.0)
    clean = tubes((90, 50, 50), (0.5, 0.5, 0.5), [trunk])
    noisy = clean.array.copy()
    noisy[2, 2, 2] = noisy[45, 35, 5] = True  # two single-voxel specks
    base = analyze_tree(clean)
    speckled = analyze_tree(clean.with_array(noisy), min_component_mm3=1.0)
    assert speckled["components"] == 1
    assert speckled["end_points"] == base["end_points"] == 2
    assert speckled["centerline_length_mm"] == pytest.approx(base["centerline_length_mm"], abs=0.01)
    # a one-voxel tunnel through the vessel makes a small loop: no crash, length kept
    holed = clean.array.copy()
    holed[40, 43, :] = False
    looped = analyze_tree(clean.with_array(holed))
    assert looped["centerline_length_mm"] == pytest.approx(base["centerline_length_mm"], rel=0.05)


def test_empty_mask_gives_zero_stats():
    g = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LPS)
    stats = analyze_tree(np.zeros((4, 4, 4), bool), g)
    assert stats["components"] == 0 and stats["centerline_length_mm"] == 0.0
    assert stats["radius_mm"]["median"] is None


def test_drop_small_components_uses_physical_volume():
    mask = np.zeros((10, 10, 10), bool)
    mask[1, 1, 1:3] = True  # 2 voxels of 2 mm³ = 4 mm³
    mask[5:8, 5:8, 5:8] = True
    kept = drop_small_components(mask, (1.0, 1.0, 2.0), 5.0)
    assert kept.sum() == 27 and not kept[1, 1, 1]
    assert drop_small_components(mask, (1.0, 1.0, 2.0), 3.0).sum() == 29


def test_centerline_is_a_subset_of_the_mask_and_thin():
    volume = tubes((40, 30, 30), (0.5, 0.5, 0.5), [((3.0, 7.0, 7.0), (17.0, 8.0, 9.0), 2.0)])
    skeleton = centerline(volume.array)
    assert skeleton.any() and not (skeleton & ~volume.array).any()
    assert skeleton.sum() < volume.array.sum() / 10


def test_axis_aligned_even_rod_is_not_lost():
    # scikit-image's thinning deletes a straight 4 × 4 rod entirely (issue #3757)
    g = Geometry((40, 10, 10), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0), LPS)
    mask = np.zeros(g.shape_zyx, bool)
    mask[5:35, 3:7, 3:7] = True
    stats = analyze_tree(mask, g)
    assert stats["end_points"] == 2 and stats["components"] == 1
    assert stats["centerline_length_mm"] == pytest.approx(15.0, rel=0.05)
