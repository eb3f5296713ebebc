"""Hard-patient phantom variants (renalseg.phantom.variants): each option changes only what it names."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from renalseg.errors import UsageError
from renalseg.phantom import synthesize_abdomen
from renalseg.phantom.variants import VARIANT_KINDS, random_variant

SMALL = {"inplane_voxels": 128, "spacing_xyz_mm": (3.0, 3.0, 3.0)}
SEED = 4


@pytest.fixture(scope="module")
def default():
    return synthesize_abdomen(SEED, **SMALL)


def _kidney_z(case, side: str) -> float:
    return float(case.params["kidneys"][side]["centre_mm"][2])


def test_arterial_phase_named_explicitly_gives_the_default_arrays(default):
    case = synthesize_abdomen(SEED, phase="arterial", **SMALL)
    for a, b in ((case.image, default.image), (case.label, default.label), (case.tissues, default.tissues)):
        assert np.array_equal(a.array, b.array) and a.geometry == b.geometry
    assert "variants" not in default.params["scene"]


def test_dropped_kidney_sits_lower_and_the_rest_stays(default):
    case = synthesize_abdomen(SEED, kidney_drop_mm={"right": 120}, **SMALL)
    assert _kidney_z(default, "right") - _kidney_z(case, "right") == pytest.approx(120.0, abs=0.01)
    assert _kidney_z(case, "left") == _kidney_z(default, "left")
    # the artery still leaves the aorta where it did
    assert case.params["kidneys"]["right"]["artery_ostium_mm"] == default.params["kidneys"]["right"]["artery_ostium_mm"]
    # both kidneys whole in view: the scan grew to hold them
    kidney = case.label.array == 2
    assert not kidney[0].any() and not kidney[-1].any()


def test_absent_kidney_is_not_drawn(default):
    case = synthesize_abdomen(SEED, absent_kidney="left", **SMALL)
    assert list(case.params["kidneys"]) == ["right"]
    assert case.params["scene"]["variants"]["absent_sides"] == ["left"]
    geometry = case.image.geometry
    zz, yy, xx = np.nonzero(case.label.array > 0)
    x_lps = geometry.index_to_world(np.stack([xx, yy, zz], axis=1))[:, 0]
    spine_x = case.params["scene"]["vertebral_body_centre_mm"][0]
    assert (x_lps < spine_x + 15).all()  # nothing of the left kidney, its artery or vein


def test_malrotated_hilum_faces_forward_and_large_tumour_is_large():
    case = synthesize_abdomen(SEED, malrotated="right", large_tumour="left", **SMALL)
    kidneys = case.params["kidneys"]
    assert 75.0 <= kidneys["right"]["tilt_deg"]["axial"] <= 100.0
    assert kidneys["left"]["tilt_deg"]["axial"] <= 45.0
    assert 70.0 <= kidneys["left"]["tumour"]["diameter_mm"] <= 100.0
    assert kidneys["left"]["tumour"]["growth"] == "exophytic"


def test_fov_cut_stops_inside_the_kidney_with_its_hilum_in_view():
    case = synthesize_abdomen(SEED, fov_cut="right_lower", fov_cut_fraction=0.3, slices=80, **SMALL)
    geometry = case.image.geometry
    hilum = geometry.world_to_index([case.params["kidneys"]["right"]["hilum_artery_mm"]])[0]
    assert 0 <= hilum[2] <= geometry.shape_zyx[0] - 1
    assert (case.label.array[0] == 2).any()  # the first (lowest) slice cuts through the kidney


@pytest.mark.parametrize("phase", ["non-contrast", "portal-venous", "nephrographic"])
def test_contrast_phase_sets_blood_and_kidney_hu(default, phase):
    case = synthesize_abdomen(SEED, phase=phase, **SMALL)
    hu = case.params["intensities_hu"]
    if phase == "non-contrast":
        assert 30.0 <= hu["renal_vein"] <= 50.0 and 30.0 <= hu["renal_artery"] <= 50.0
    else:  # the veins as bright as the arteries: only anatomy tells them apart
        assert hu["renal_vein"] >= hu["renal_artery"] and hu["renal_artery"] <= 250.0
    assert hu["kidney_medulla"] <= hu["kidney_cortex"]
    assert np.array_equal(case.label.array, default.label.array)  # same anatomy


def test_field_of_view_slices_and_off_centre(default):
    case = synthesize_abdomen(SEED, fov_mm=300.0, slice_mm=2.5, off_centre_mm=(60.0, -30.0), inplane_voxels=100)
    assert case.image.geometry.spacing_xyz_mm == pytest.approx((3.0, 3.0, 2.5))
    g = case.image.geometry
    centre = g.index_to_world([[49.5, 49.5, 0]])[0][:2]
    body = np.asarray(case.params["scene"]["vertebral_body_centre_mm"][:2])
    assert body[0] - centre[0] == pytest.approx(60.0, abs=20.0)


def test_variants_are_deterministic_and_validated():
    options = random_variant(31, "drop")
    a, b = synthesize_abdomen(31, **options, **SMALL), synthesize_abdomen(31, **options, **SMALL)
    assert np.array_equal(a.image.array, b.image.array)
    assert {random_variant(s)["phase"] for s in range(40)} >= {"non-contrast", "portal-venous"}
    assert len({tuple(sorted(random_variant(s, k))) for s in range(3) for k in VARIANT_KINDS}) > 5
    with pytest.raises(UsageError, match="Did you mean 'portal-venous'"):
        synthesize_abdomen(0, phase="portal_venus", **SMALL)
    with pytest.raises(UsageError, match="kidney_drop_mm"):
        synthesize_abdomen(0, kidney_drop_mm={"right": 400}, **SMALL)
    for clash in ({"kidney_drop_mm": {"left": 60}}, {"malrotated": "left"}, {"large_tumour": "left"}):
        with pytest.raises(UsageError, match=f"{next(iter(clash))} left: that kidney is absent"):
            synthesize_abdomen(0, absent_kidney="left", **clash, **SMALL)  # nothing to drop, turn or grow on


def test_synth_cli_variant_flags(tmp_path):
    import json

    from renalseg.cli.app import app

    out = tmp_path / "abd"
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--kind", "abdomen", "--cases", "1",
                                      "--spacing", "4,4,4", "--absent", "right", "--phase", "non-contrast",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    params = json.loads((out / "cases.json").read_text())
    assert "absent" in json.dumps(params) and "non-contrast" in json.dumps(params)
    refused = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "r"), "--kind", "roi", "--drop", "right:50"])
    assert refused.exit_code == 2 and "--kind abdomen" in refused.output
    horseshoe = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "h"), "--kind", "abdomen", "--cases", "1",
                                         "--spacing", "4,4,4", "--horseshoe", "--quiet"])
    assert horseshoe.exit_code == 0, horseshoe.output
    assert "isthmus_centre_mm" in (tmp_path / "h" / "cases.json").read_text()
    vein = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "v"), "--cases", "1", "--spacing", "3,3,3",
                                    "--left-renal-vein", "retroaortic", "--quiet"])
    assert vein.exit_code == 0, vein.output
    assert '"course": "retroaortic"' in (tmp_path / "v" / "cases.json").read_text()
    wrong = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "w"), "--left-renal-vein", "behind"])
    assert wrong.exit_code == 2 and "preaortic, retroaortic, circumaortic" in wrong.output
    assert not (tmp_path / "w").exists()


def test_horseshoe_kidney_is_one_organ_joined_in_front_of_the_great_vessels(default):
    from scipy import ndimage

    case = synthesize_abdomen(SEED, horseshoe=True, **SMALL)
    kidneys, scene = case.params["kidneys"], case.params["scene"]
    spine_x = scene["vertebral_body_centre_mm"][0]

    def largest_piece_sides(phantom) -> tuple[float, bool]:
        pieces, _ = ndimage.label(phantom.label.array == 2)
        largest = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
        zz, yy, xx = np.nonzero(largest)
        x = phantom.image.geometry.index_to_world(np.stack([xx, yy, zz], axis=1))[:, 0]
        both_sides = bool((x < spine_x - 30).any() and (x > spine_x + 30).any())
        return largest.sum() / (phantom.label.array == 2).sum(), both_sides

    # one piece of kidney from side to side, where the default phantom has two
    share, both_sides = largest_piece_sides(case)
    assert share > 0.9 and both_sides
    assert not largest_piece_sides(default)[1]
    # both halves lower than the default's kidneys, lower poles towards the midline, hila forward
    for side in ("left", "right"):
        assert _kidney_z(case, side) < _kidney_z(default, side) - 20.0
        assert kidneys[side]["tilt_deg"]["axial"] >= 75.0 and kidneys[side]["tilt_deg"]["coronal"] < 0.0
        usual = default.params["kidneys"][side]["centre_mm"][0]
        assert abs(kidneys[side]["centre_mm"][0] - spine_x) < abs(usual - spine_x)
    # the isthmus: kidney in front of (LPS: smaller y than) the aorta, at the midline
    geometry = case.image.geometry
    isthmus = np.round(geometry.world_to_index([scene["horseshoe"]["isthmus_centre_mm"]])[0]).astype(int)
    z, y, x = isthmus[::-1]
    assert case.label.array[z, y, x] == 2
    from renalseg.phantom.tissues import TISSUE_IDS

    behind = case.tissues.array[z, y:, x]  # LPS: y grows backwards
    assert (behind == TISSUE_IDS["aorta"]).any() and not (case.tissues.array[z, :y, x] == TISSUE_IDS["aorta"]).any()
    # the scan reaches where kidneys usually sit, and holds the whole horseshoe
    kidney = case.label.array == 2
    assert not kidney[0].any() and not kidney[-1].any()
    with pytest.raises(UsageError, match="horseshoe"):
        synthesize_abdomen(0, horseshoe=True, absent_kidney="left", **SMALL)


def test_horseshoe_isthmus_artery_leaves_the_aorta():
    from scipy import ndimage

    from renalseg.phantom.variants import horseshoe_shape

    seed = next(s for s in range(20) if horseshoe_shape(s)["isthmus_artery"])
    case = synthesize_abdomen(seed, horseshoe=True, **SMALL)
    from renalseg.phantom.tissues import TISSUE_IDS

    tissues = case.tissues.array
    artery, aorta = tissues == TISSUE_IDS["renal_artery"], tissues == TISSUE_IDS["aorta"]
    pieces, _ = ndimage.label(artery | aorta)
    geometry = case.image.geometry
    centre = np.round(geometry.world_to_index([case.params["scene"]["horseshoe"]["isthmus_centre_mm"]])[0]).astype(int)
    near = np.zeros(artery.shape, bool)
    z, y, x = centre[::-1]
    near[max(z - 6, 0):z + 7, max(y - 6, 0):y + 7, max(x - 6, 0):x + 7] = True
    # an artery piece reaching the isthmus is joined to the aorta
    assert (artery & near).any()
    touching = set(np.unique(pieces[artery & near])) - {0}
    assert touching & set(np.unique(pieces[aorta]))


def _vein_around_aorta(case) -> tuple[int, int]:
    """Renal-vein voxels in front of the aorta and behind it (in the same axial slice and
    left-right column as aorta voxels, anterior to all of them or posterior to all of them)."""
    from renalseg.phantom.tissues import TISSUES

    aorta = case.tissues.array == {name: value for value, name in TISSUES.items()}["aorta"]
    vein = case.label.array == 1
    y = np.arange(aorta.shape[1])[None, :, None]
    has = aorta.any(axis=1, keepdims=True)
    front = np.where(aorta, y, 10**6).min(axis=1, keepdims=True)
    back = np.where(aorta, y, -1).max(axis=1, keepdims=True)
    return int((vein & has & (y < front)).sum()), int((vein & has & (y > back)).sum())


@pytest.mark.parametrize("course", ["retroaortic", "circumaortic"])
def test_a_left_renal_vein_behind_the_aorta_runs_between_it_and_the_spine_into_the_ivc(course):
    """The variant a network that learnt "the vein passes in front of the aorta" has never
    seen: at its point behind the aorta the voxel is renal vein, with the aorta in front of
    it and the vertebral body behind; the usual vein has none behind the aorta, a
    retroaortic one none in front, a circumaortic one both; the vein reaches the IVC; the
    kidney is the same organ."""
    from scipy import ndimage

    from renalseg.phantom.abdomen import synthesize_roi
    from renalseg.phantom.tissues import TISSUES

    ids = {name: value for value, name in TISSUES.items()}
    options = {"side": "left", "great_vessels": True, "tumour": False, "spacing_xyz_mm": (1.0, 1.0, 1.0)}
    usual = synthesize_roi(SEED, **options)
    case = synthesize_roi(SEED, left_renal_vein=course, **options)
    assert "left_renal_vein" not in usual.params["scene"]
    info = case.params["scene"]["left_renal_vein"]
    assert info["course"] == course
    x, y, z = np.round(case.image.geometry.world_to_index(np.array([info["behind_aorta_mm"]]))[0]).astype(int)
    tissues, vein = case.tissues.array, case.label.array == 1
    assert vein[z, y, x]
    column = tissues[z, :, x]  # along y: anterior (low) to posterior (high)
    assert (column[max(0, y - 20):y] == ids["aorta"]).any()
    assert np.isin(column[y:y + 20], [ids["bone_cortical"], ids["bone_trabecular"]]).any()
    (usual_front, usual_behind), (front, behind) = _vein_around_aorta(usual), _vein_around_aorta(case)
    assert usual_front > 0 and usual_behind == 0 and behind > 0
    if course == "retroaortic":
        assert front == 0
    else:
        assert front >= 0.5 * usual_front
    assert (ndimage.binary_dilation(vein, iterations=2) & (tissues == ids["ivc"])).any()
    kidney, kidney_usual = case.label.array == 2, usual.label.array == 2
    assert 2 * (kidney & kidney_usual).sum() / (kidney.sum() + kidney_usual.sum()) > 0.99
    with pytest.raises(UsageError, match="left_renal_vein must be one of preaortic, retroaortic, circumaortic"):
        synthesize_roi(SEED, left_renal_vein="retro", **options)
