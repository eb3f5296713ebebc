"""The R.E.N.A.L. nephrometry score on hand-built kidneys whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LPS, OBLIQUE_30DEG

import renalseg.nephrometry
from renalseg.geometry import Geometry
from renalseg.nephrometry import renal_score

SHAPE = (120, 80, 90)
CENTRE = np.array([45.0, 40.0, 60.0])  # x, y, z mm (LPS): the kidney's centre


def kidney_scene(tumour_xyz, tumour_r, geometry=None, *, vessel=False):
    """A kidney (ellipsoid 56 × 48 × 100 mm, long axis superior) whose sinus opens medially
    (towards -x), and a ball tumour, drawn on ``geometry`` (default 1 mm, LPS) in world mm."""
    g = geometry or Geometry(SHAPE, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LPS)
    index = np.indices(g.shape_zyx).reshape(3, -1)[::-1].T.astype(float)
    x, y, z = (g.index_to_world(index) - CENTRE).T.reshape(3, *g.shape_zyx)
    outer = (x / 28) ** 2 + (y / 24) ** 2 + (z / 50) ** 2 <= 1
    sinus = ((x + 14) / 16) ** 2 + (y / 10) ** 2 + (z / 22) ** 2 <= 1
    tx, ty, tz = np.asarray(tumour_xyz, float) - CENTRE
    tumour = (x - tx) ** 2 + (y - ty) ** 2 + (z - tz) ** 2 <= tumour_r ** 2
    kidney = outer & ~sinus & ~tumour
    if vessel:  # a 2 mm interlobar vessel from the sinus up through the parenchyma to the tumour
        kidney &= ~(((x + 2) ** 2 + y ** 2 <= 1.0) & (z > 0) & (z < 42))
    return kidney, tumour, sinus, g


def at(dx, dy, dz):
    return CENTRE + np.array([dx, dy, dz], float)


def test_a_small_endophytic_upper_pole_tumour_far_from_the_sinus_scores_low():
    kidney, tumour, sinus, g = kidney_scene(at(8, 0, 36), 7)
    score = renal_score(kidney, tumour, g)
    assert (score["R"]["points"], score["E"]["points"], score["N"]["points"], score["L"]["points"]) == (1, 3, 1, 1)
    assert score["score"] == 6 and score["complexity"] == "low" and score["E"]["exophytic_percent"] == 0
    # the sinus found from the outline is where the true one is: the same distance to the tumour
    truth = renal_score(kidney, tumour, g, sinus=sinus)
    assert score["N"]["distance_mm"] == pytest.approx(truth["N"]["distance_mm"], abs=1.0)
    assert score["N"]["distance_mm"] == pytest.approx(15.6, abs=1.5)  # 36 - 7 - the sinus' 22 mm, less its wall


def test_an_exophytic_tumour_across_the_kidneys_middle_scores_e1_l3():
    kidney, tumour, _, g = kidney_scene(at(30, 0, 0), 12)
    score = renal_score(kidney, tumour, g)
    assert score["E"]["points"] == 1 and 55 < score["E"]["exophytic_percent"] < 80  # centre 2 mm past the outline
    assert score["L"] == {"points": 3, "between_polar_lines_percent": 100.0, "crosses_midline": True}
    assert score["R"]["diameter_mm"] == pytest.approx(25, abs=1.5) and score["R"]["points"] == 1


def test_a_large_tumour_touching_the_sinus_scores_high():
    kidney, tumour, _, g = kidney_scene(at(-2, 0, 20), 22)
    score = renal_score(kidney, tumour, g)
    assert score["R"]["points"] == 2 and score["N"] == {"points": 3, "distance_mm": pytest.approx(0, abs=1.5)}
    assert score["score"] >= 10 and score["complexity"] == "high"


def test_anterior_and_posterior_are_read_in_the_patients_frame():
    assert renal_score(*kidney_scene(at(10, -22, -30), 8)[:2], kidney_scene(at(0, 0, 0), 1)[3])["A"] == "a"
    assert renal_score(*kidney_scene(at(10, 22, -30), 8)[:2], kidney_scene(at(0, 0, 0), 1)[3])["A"] == "p"
    assert renal_score(*kidney_scene(at(30, 0, -30), 8)[:2], kidney_scene(at(0, 0, 0), 1)[3])["A"] == "x"


def test_a_vessel_running_through_the_parenchyma_does_not_bring_the_sinus_to_the_tumour(monkeypatch):
    """Interlobar vessels are labelled artery or vein, not kidney: holes in the kidney label
    joined to the sinus. Closed over, they leave the tumour 15 mm from the sinus; left open,
    the sinus would reach it."""
    kidney, tumour, _, g = kidney_scene(at(8, 0, 36), 7, vessel=True)
    assert renal_score(kidney, tumour, g)["N"]["distance_mm"] == pytest.approx(15.6, abs=1.5)
    monkeypatch.setattr(renalseg.nephrometry, "VESSEL_CLOSING_MM", 0.0)
    assert renal_score(kidney, tumour, g)["N"]["distance_mm"] < 4


def test_the_score_does_not_depend_on_the_grid():
    """The same kidney on an oblique, anisotropic grid (30° about z; 0.8 × 0.8 × 1.5 mm):
    the same points, figures within a voxel."""
    direction = np.asarray(OBLIQUE_30DEG, float).reshape(3, 3)
    half = np.array([0.8, 0.8, 1.5]) * (np.array([110, 110, 80]) - 1) / 2
    oblique = Geometry((80, 110, 110), (0.8, 0.8, 1.5), tuple(CENTRE - direction @ half), OBLIQUE_30DEG)
    for where, r in ((at(8, 0, 36), 7), (at(30, 0, 0), 12), (at(10, -22, -36), 6)):
        straight = renal_score(*kidney_scene(where, r)[:2], kidney_scene(where, r)[3])
        kidney, tumour, _, g = kidney_scene(where, r, oblique)
        assert not any(np.take(kidney | tumour, i, axis=a).any() for a in range(3) for i in (0, -1))  # all in view
        turned = renal_score(kidney, tumour, g)
        for feature in ("R", "E", "N", "L"):
            assert turned[feature]["points"] == straight[feature]["points"], (where, feature, turned, straight)
        assert turned["A"] == straight["A"]
        assert turned["N"]["distance_mm"] == pytest.approx(straight["N"]["distance_mm"], abs=1.5)
        assert turned["E"]["exophytic_percent"] == pytest.approx(straight["E"]["exophytic_percent"], abs=6)


def test_nothing_is_scored_without_a_tumour_or_a_sinus():
    kidney, tumour, _, g = kidney_scene(at(8, 0, 36), 7)
    assert renal_score(kidney, np.zeros_like(tumour), g) is None
    z, y, x = np.indices(SHAPE)
    ball = (x - 45) ** 2 + (y - 40) ** 2 + (z - 60) ** 2 <= 30 ** 2  # no hilum, no sinus
    assert renal_score(ball & ~tumour, tumour & ball, g) is None
