"""Synthetic CTA phantoms: ground truth a trained model and the tests can rely on."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi
from typer.testing import CliRunner

from renalseg.errors import OutputExistsError, UsageError
from renalseg.geometry import Geometry
from renalseg.phantom import (
    DEFAULT_INTENSITY_RANGES_HU,
    TISSUE_IDS,
    TISSUES,
    render_tissues,
    synthesize_abdomen,
    synthesize_roi,
    write_cases,
)
from renalseg.phantom.anatomy import smooth_path
from renalseg.phantom.render import Canvas
from renalseg.phantom.shapes import Ellipsoid, Tube, rotation_matrix
from renalseg.phantom.tissues import TISSUE_RANGES_HU, TUMOUR_HYPER_HU, TUMOUR_HYPO_HU, TUMOUR_NECROSIS_HU
from renalseg.volume import Volume

LPS_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FULL = np.ones((3, 3, 3), bool)  # 26-connectivity
#: small grids that keep the default suite fast; anatomy is the same at any grid
SMALL_ROI = {"inplane_voxels": 64, "spacing_xyz_mm": (1.7, 1.7, 2.0)}
SMALL_ABDOMEN = {"inplane_voxels": 160, "spacing_xyz_mm": (2.4, 2.4, 3.0)}


@pytest.fixture(scope="module")
def roi_left():
    """A full-size roi case (left kidney, no accessory artery)."""
    return synthesize_roi(5, side="left", accessory=False, tumour=False)


@pytest.fixture(scope="module")
def roi_right_tumour():
    return synthesize_roi(8, side="right", accessory=False, tumour=True)


@pytest.fixture(scope="module")
def abdomen_lps():
    return synthesize_abdomen(3, **SMALL_ABDOMEN)


@pytest.fixture(scope="module")
def abdomen_ras():
    return synthesize_abdomen(3, direction="RAS", **SMALL_ABDOMEN)


def _world_centroid(volume: Volume, mask: np.ndarray) -> np.ndarray:
    zyx = np.argwhere(mask).mean(axis=0)
    return volume.geometry.index_to_world([zyx[::-1]])[0]


def _core(tissues: np.ndarray, name: str, spacing_xyz_mm, depth_mm: float) -> np.ndarray:
    """Voxels of a tissue at least ``depth_mm`` from its boundary (PSF and partial volume free)."""
    mask = (tissues == TISSUE_IDS[name]).astype(np.uint8)
    size = tuple(2 * int(np.ceil(depth_mm / s)) + 1 for s in tuple(spacing_xyz_mm)[::-1])
    return ndi.minimum_filter(mask, size=size).astype(bool)


# -- determinism --------------------------------------------------------------------------
def test_same_seed_and_options_give_identical_arrays():
    a = synthesize_roi(21, **SMALL_ROI)
    b = synthesize_roi(21, **SMALL_ROI)
    c = synthesize_roi(22, **SMALL_ROI)
    for name in ("image", "label", "tissues"):
        assert np.array_equal(getattr(a, name).array, getattr(b, name).array), name
        assert getattr(a, name).geometry == getattr(b, name).geometry
    assert a.params["intensities_hu"] == b.params["intensities_hu"]
    assert not np.array_equal(a.image.array, c.image.array) or a.image.array.shape != c.image.array.shape


def test_params_are_json_ready(roi_left):
    text = json.dumps(roi_left.params)
    assert json.loads(text)["seed"] == 5


# -- roi kind: grid ------------------------------------------------------------------------
def test_roi_grid_is_lps_152_square_at_clinical_spacing(roi_left):
    g = roi_left.image.geometry
    assert g.shape_zyx[1:] == (152, 152) and 100 <= g.shape_zyx[0] <= 320
    assert g.direction == LPS_IDENTITY
    assert 0.55 <= g.spacing_xyz_mm[0] == g.spacing_xyz_mm[1] <= 0.8
    assert 0.5 <= g.spacing_xyz_mm[2] <= 1.0
    assert roi_left.image.array.dtype == np.int16
    assert roi_left.label.array.dtype == np.uint8 and roi_left.tissues.array.dtype == np.uint8
    assert roi_left.label.geometry.is_same_grid(g) and roi_left.tissues.geometry.is_same_grid(g)
    assert set(np.unique(roi_left.label.array)) <= {0, 1, 2, 3, 4}


def test_kidney_anatomy_parameters_are_in_the_issue_ranges(roi_left, roi_right_tumour):
    for case in (roi_left, roi_right_tumour):
        kidney = case.params["kidneys"][case.params["side"]]
        assert 100 <= kidney["length_mm"] <= 130 and 50 <= kidney["width_mm"] <= 70
        assert 30 <= kidney["thickness_mm"] <= 50 and 5 <= kidney["cortex_mm"] <= 8
        assert 8 <= kidney["pyramids"] <= 12
        assert 4.0 <= kidney["renal_vein_radius_mm"] <= 6.0  # 8–12 mm across
        # at the hilum the vein lies in front of the artery (anterior is -y in LPS)
        assert kidney["hilum_vein_mm"][1] < kidney["hilum_artery_mm"][1]


def test_whole_kidney_is_inside_the_roi(roi_left):
    kidney = roi_left.label.array == 2
    # no kidney voxel on the x/y faces: the whole kidney cross-section is in view
    for face in (kidney[:, 0], kidney[:, -1], kidney[:, :, 0], kidney[:, :, -1], kidney[0], kidney[-1]):
        assert face.sum() < 0.002 * kidney.sum()
    volume_ml = kidney.sum() * roi_left.image.geometry.voxel_volume_mm3 / 1000
    assert 60 < volume_ml < 300


# -- intensities -----------------------------------------------------------------------------
def test_case_intensities_are_inside_the_declared_ranges(roi_left, roi_right_tumour):
    for case in (roi_left, roi_right_tumour):
        for name, value in case.params["intensities_hu"].items():
            lo, hi = DEFAULT_INTENSITY_RANGES_HU[name]
            assert lo <= value <= hi, (name, value)


def test_sampled_intensities_keep_arterial_phase_order():
    """Arteries brighter than the cortex (its blood supply), cortex brighter than medulla."""
    from renalseg.phantom.abdomen import sample_intensities

    for seed in range(200):
        hu = sample_intensities(np.random.default_rng(seed))
        assert hu["renal_artery"] - hu["kidney_cortex"] >= 80 - 0.1
        assert hu["kidney_cortex"] > hu["kidney_medulla"] and hu["renal_artery"] > hu["renal_vein"]
        for name, value in hu.items():
            lo, hi = DEFAULT_INTENSITY_RANGES_HU[name]
            assert lo <= value <= hi, (name, value)


def test_intensity_ranges_narrow_the_artery_and_keep_everything_else():
    """A narrower artery band (weakly enhanced arteries) keeps the couplings and, seed for
    seed, every other tissue's value: the same draws, only the artery's band changes."""
    from renalseg.phantom.abdomen import sample_intensities

    for seed in range(100):
        default = sample_intensities(np.random.default_rng(seed))
        weak = sample_intensities(np.random.default_rng(seed), ranges={"renal_artery": (250, 300)})
        assert 250 <= weak["renal_artery"] <= 300
        assert weak["renal_artery"] - weak["kidney_cortex"] >= 80 - 0.1
        assert 0.98 * weak["renal_artery"] - 0.1 <= weak["aorta"] <= 1.08 * weak["renal_artery"] + 0.1
        for name in ("liver", "fat", "kidney_medulla", "renal_vein", "spleen"):
            assert weak[name] == default[name], name


def test_intensity_ranges_name_the_bad_tissue():
    from renalseg.phantom.abdomen import intensity_ranges

    with pytest.raises(UsageError, match="renal_arterie.*Did you mean 'renal_artery'"):
        intensity_ranges({"renal_arterie": (250, 300)})
    for bad in ((300, 250), 300, ("a", "b"), (250, 300, 350)):
        with pytest.raises(UsageError, match="renal_artery.*lo ≤ hi"):
            intensity_ranges({"renal_artery": bad})


def test_roi_phantom_takes_intensity_ranges():
    case = synthesize_roi(11, inplane_voxels=40, spacing_xyz_mm=(2.8, 2.8, 3.5),
                          intensity_ranges_hu={"renal_artery": (250, 270)})
    assert 250 <= case.params["intensities_hu"]["renal_artery"] <= 270
    assert case.params["options"]["intensity_ranges_hu"] == {"renal_artery": (250, 270)}


@pytest.mark.parametrize("name", ["kidney_cortex", "kidney_medulla", "fat", "renal_artery", "renal_vein",
                                  "muscle"])
def test_measured_hu_of_each_structure_is_in_its_range(roi_left, roi_right_tumour, name):
    measured = 0
    for case in (roi_left, roi_right_tumour):
        depth = 0.8 if name in ("renal_artery", "renal_vein") else 1.5  # box erosion: corners reach deeper
        core = _core(case.tissues.array, name, case.image.geometry.spacing_xyz_mm, depth)
        if core.sum() < 30:
            continue
        median = float(np.median(case.image.array[core]))
        lo, hi = DEFAULT_INTENSITY_RANGES_HU[name]
        assert lo - 8 <= median <= hi + 8, (name, median)
        assert abs(median - case.params["intensities_hu"][name]) < 8, (name, median)
        measured += 1
    assert measured >= 1, f"no core voxels of {name} in either case"


def test_noise_level_matches_the_declared_sigma(roi_left):
    core = _core(roi_left.tissues.array, "fat", roi_left.image.geometry.spacing_xyz_mm, 3.0)
    sigma = roi_left.params["imaging"]["noise_sigma_hu"]
    measured = float(np.std(roi_left.image.array[core].astype(float)))
    expected = np.hypot(sigma, 4.0)  # noise and the fat's smooth 4 HU texture
    assert 0.8 * expected < measured < 1.25 * expected, (measured, expected)
    assert 8 <= sigma <= 25 and 0.6 <= roi_left.params["imaging"]["psf_fwhm_mm"] <= 1.0


def test_a_noisier_draw_keeps_the_case_and_scales_only_its_noise():
    """``noise_range_hu`` (the recipe's ``--noise-hu``) makes the same patient as a noisier
    scan: anatomy, labels and noise pattern are the seed's, only the noise's scale changes,
    so a held-out case drawn again at 40 HU isolates what noise alone costs."""
    small = {"inplane_voxels": 48, "spacing_xyz_mm": (2.4, 2.4, 3.0)}
    quiet, loud = synthesize_roi(3, **small), synthesize_roi(3, noise_range_hu=(40.0, 40.0), **small)
    sigma = quiet.params["imaging"]["noise_sigma_hu"]
    assert 8 <= sigma <= 25 and loud.params["imaging"]["noise_sigma_hu"] == 40.0
    assert np.array_equal(quiet.label.array, loud.label.array)
    assert np.array_equal(quiet.tissues.array, loud.tissues.array)
    assert loud.image.geometry.is_same_grid(quiet.image.geometry)
    extra = loud.image.array.astype(float) - quiet.image.array
    # the same pattern, scaled: the difference is the quiet noise times (40 / sigma - 1)
    assert np.std(extra) == pytest.approx(40.0 - sigma, rel=0.1)


# -- artery tree -----------------------------------------------------------------------------
def test_artery_fraction_of_the_roi_is_as_in_the_paper(roi_left, roi_right_tumour):
    for case in (roi_left, roi_right_tumour):
        fraction = float((case.label.array == 3).mean())
        assert 0.001 <= fraction <= 0.01, fraction


def test_artery_tree_is_one_component_from_the_ostium_or_medial_edge_to_the_hilum(roi_left):
    artery = roi_left.label.array == 3
    components, n = ndi.label(artery, structure=FULL)
    sizes = ndi.sum(artery, components, range(1, n + 1))
    tree = components == (int(np.argmax(sizes)) + 1)
    # any other piece is the trunk leaving and re-entering the crop, never a floating fragment
    border = np.zeros_like(artery)
    border[[0, -1]] = border[:, [0, -1]] = border[:, :, [0, -1]] = True
    for k in range(1, n + 1):
        assert (components == k)[border].any() or k == int(np.argmax(sizes)) + 1
    assert sizes.max() > 0.95 * artery.sum()
    artery = tree
    # it starts at the aortic ostium when that is in view, else it enters through the
    # ROI boundary medially (the aorta's side: -x for a left kidney)
    g = roi_left.label.geometry
    ostium = np.asarray(roi_left.params["kidneys"]["left"]["artery_ostium_mm"])
    x, y, z = np.round(g.world_to_index([ostium])[0]).astype(int)
    if all(2 <= v < n - 2 for v, n in zip((z, y, x), artery.shape)):
        assert artery[z - 2:z + 3, y - 2:y + 3, x - 2:x + 3].any()
        aorta = roi_left.tissues.array == TISSUE_IDS["aorta"]
        assert aorta[z - 3:z + 4, y - 3:y + 4, x - 3:x + 4].any()
    else:
        entry = artery & border
        assert entry.sum() > 5
        kidney_x = _world_centroid(roi_left.label, roi_left.label.array == 2)[0]
        assert _world_centroid(roi_left.label, entry)[0] < kidney_x - 20
    # and it reaches the hilum
    hilum = np.asarray(roi_left.params["kidneys"]["left"]["hilum_artery_mm"])
    ijk = np.round(roi_left.label.geometry.world_to_index([hilum])[0]).astype(int)
    z, y, x = ijk[2], ijk[1], ijk[0]
    assert artery[z - 3:z + 4, y - 3:y + 4, x - 3:x + 4].any()


def test_accessory_artery_is_a_second_tree_from_the_aorta():
    case = synthesize_roi(5, side="left", accessory=True, **SMALL_ROI)
    kidney = case.params["kidneys"]["left"]
    assert kidney["variants"]["accessory_artery"]
    roots = [b for b in kidney["tree"] if b["parent"] is None]
    assert [b["kind"] for b in roots] == ["main", "accessory"]


def test_radius_never_increases_from_root_to_leaves_and_follows_murray(roi_left):
    tree = roi_left.params["kidneys"]["left"]["tree"]
    children: dict[int, list[dict]] = {}
    for b in tree:
        assert b["radius_end_mm"] <= b["radius_start_mm"]
        if b["parent"] is not None:
            children.setdefault(b["parent"], []).append(b)
    for parent, kids in children.items():
        r_parent = tree[parent]["radius_end_mm"]
        assert all(k["radius_start_mm"] <= r_parent + 1e-3 for k in kids)
        assert sum(k["radius_start_mm"] ** 3 for k in kids) == pytest.approx(r_parent**3, rel=0.01)
    main = tree[0]
    assert main["kind"] == "main" and 2.5 <= main["radius_start_mm"] <= 3.5  # 5–7 mm diameter
    segmental = [b for b in tree if b["kind"] == "segmental"]
    assert 4 <= len(segmental) <= 6
    assert all(0.9 <= b["radius_start_mm"] <= 2.1 for b in segmental)  # 2–4 mm (±10%)


@pytest.mark.parametrize("seed", range(8))
def test_tree_calibre_is_anatomical_for_any_seed(seed):
    """Scene only (no rendering): both kidneys' trees against the calibres the phantom specifies."""
    from renalseg.phantom.abdomen import build_scene, random_placement

    rng = np.random.default_rng(seed)
    rotation, shift = random_placement(rng)
    scene = build_scene(rng, rotation=rotation, shift_mm=shift)
    for kidney in scene.kidneys.values():
        tree = kidney.params["tree"]
        diameters: dict[str, list[float]] = {}
        for b in tree:
            diameters.setdefault(b["kind"], []).append(2 * b["radius_start_mm"])
            if b["parent"] is not None:
                assert b["radius_start_mm"] <= tree[b["parent"]]["radius_end_mm"] + 1e-3
        assert 5.0 - 1e-6 <= diameters["main"][0] <= 7.0 + 1e-6
        assert 4 <= len(diameters["segmental"]) <= 6
        assert all(1.8 <= d <= 4.2 for d in diameters["segmental"])
        assert all(0.9 <= d <= 2.3 for d in diameters["interlobar"]) and min(diameters["interlobar"]) <= 1.5
        assert min(diameters["arcuate"]) <= 1.5  # a branch of radius <= 0.75 mm
        assert 8 <= kidney.params["pyramids"] <= 12


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 16))
def test_rendered_roi_properties_for_more_seeds(seed):
    case = synthesize_roi(seed)
    artery = case.label.array == 3
    assert 0.001 <= artery.mean() <= 0.01
    components, n = ndi.label(artery, structure=FULL)
    border = np.zeros_like(artery)
    border[[0, -1]] = border[:, [0, -1]] = border[:, :, [0, -1]] = True
    g = case.label.geometry
    kidney = case.params["kidneys"][case.params["side"]]
    rooted = set()
    for ostium in (kidney["artery_ostium_mm"], kidney["accessory_ostium_mm"]):
        if ostium is not None:
            x, y, z = np.round(g.world_to_index([ostium])[0]).astype(int)
            rooted.update(np.unique(components[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]).tolist())
    for k in range(1, n + 1):  # every piece starts at an ostium in view or enters through the crop's edge
        assert (components == k)[border].any() or k in rooted


def test_label_radius_shrinks_from_root_to_leaves(roi_left):
    """Measured on the label itself: thick near the root, about a voxel at the leaves."""
    label = roi_left.label
    artery = label.array == 3
    spacing = label.geometry.spacing_xyz_mm
    depth = ndi.distance_transform_edt(artery, sampling=spacing[::-1])
    tree = roi_left.params["kidneys"]["left"]["tree"]

    def max_depth_near(point_mm) -> float:
        ijk = np.round(label.geometry.world_to_index([point_mm])[0]).astype(int)
        x, y, z = ijk
        if not (0 <= z < artery.shape[0] and 0 <= y < artery.shape[1] and 0 <= x < artery.shape[2]):
            return float("nan")
        return float(depth[max(z - 2, 0):z + 3, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3].max())

    main = tree[0]
    assert main["kind"] == "main"
    assert max_depth_near(main["end_mm"]) >= 1.8
    leaves = [max_depth_near(b["end_mm"]) for b in tree if b["kind"] == "arcuate"]
    leaves = [v for v in leaves if np.isfinite(v)]
    assert len(leaves) > 10 and np.median(leaves) <= 1.2


def test_at_least_one_labelled_branch_is_thinner_than_0_75_mm(roi_left):
    tree = roi_left.params["kidneys"]["left"]["tree"]
    thin = [b for b in tree if b["radius_start_mm"] <= 0.75]
    assert thin
    interlobar = [b for b in tree if b["kind"] == "interlobar"]
    assert min(2 * b["radius_start_mm"] for b in interlobar) <= 1.5  # paper: thinnest ≤ 1.5 mm
    # the thin branches are in the label (connected to the tree, not lost to partial volume)
    artery = roi_left.label.array == 3
    hits = 0
    for b in thin:
        x, y, z = np.round(roi_left.label.geometry.world_to_index([b["end_mm"]])[0]).astype(int)
        hits += bool(artery[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any())
    assert hits >= 0.9 * len(thin)


def test_tumour_is_labelled_and_vessels_are_displaced_out_of_it(roi_right_tumour):
    tumour = roi_right_tumour.params["kidneys"]["right"]["tumour"]
    assert tumour["present"] and 10 <= tumour["diameter_mm"] <= 70
    lo, hi = TUMOUR_HYPER_HU if tumour["enhancement"] == "hyper" else TUMOUR_HYPO_HU
    assert lo <= roi_right_tumour.params["intensities_hu"]["tumour"] <= hi
    mask = roi_right_tumour.label.array == 4
    assert mask.sum() > 0
    core = ndi.binary_erosion(mask, iterations=2)
    assert not (core & (roi_right_tumour.label.array == 3)).any()


def test_a_hilar_tumour_grows_in_the_hilum_and_its_main_vessel_gaps_are_the_truth_of_h():
    """``tumour_site="hilar"``: a tumour in the renal hilum, against the sinus, and the
    generator's own gaps from the main renal artery and vein to it (R.E.N.A.L.'s h), which
    the plan, measuring on the labels, finds. The default keeps tumours out of the hilum."""
    from renalseg.nephrometry import HILAR_CONTACT_MM
    from renalseg.phantom.tissues import TISSUE_IDS
    from renalseg.plan import plan_labels

    small = {"inplane_voxels": 96, "spacing_xyz_mm": (1.1, 1.1, 1.5)}
    for seed in (63002, 63007):  # a 60 mm tumour the main vessels run into; a 19 mm one 5-6 mm from them
        case = synthesize_roi(seed, tumour_site="hilar", **small)  # a tumour without asking for one
        tumour = case.params["kidneys"][case.params["side"]]["tumour"]
        assert tumour["present"] and tumour["growth"] == "hilar"
        sinus = ndi.distance_transform_edt(case.tissues.array != TISSUE_IDS["sinus_fat"], sampling=(1.5, 1.1, 1.1))
        assert sinus[case.label.array == 4].min() <= 3.0  # against the sinus (two voxels)
        truth = min(tumour["main_vessel_gap_mm"].values()) <= HILAR_CONTACT_MM
        assert truth is (seed == 63002)
        (kidney,) = plan_labels(case.label, {1: "vein", 2: "kidney", 3: "artery", 4: "tumour"}).plan["kidneys"]
        assert kidney["tumour"]["nephrometry"]["hilar"]["h"] is truth
    default = synthesize_roi(63002, tumour=True, **small).params
    assert default["kidneys"][default["side"]]["tumour"]["growth"] != "hilar"
    with pytest.raises(UsageError, match="tumour_site"):
        synthesize_roi(1, tumour_site="pelvic", **small)


def test_distractors_are_present_in_the_roi(roi_left, roi_right_tumour):
    """Bright things that are not renal artery: bone, aorta, contrast bowel or calcification."""
    for case in (roi_left, roi_right_tumour):
        tissues = set(np.unique(case.tissues.array).tolist())
        bright = {TISSUE_IDS[n] for n in ("bone_cortical", "aorta", "bowel_contrast", "calcification")}
        assert tissues & bright
        assert TISSUE_IDS["muscle"] in tissues


# -- abdomen kind -------------------------------------------------------------------------------
def test_abdomen_kidneys_lie_on_their_anatomical_sides(abdomen_lps, abdomen_ras):
    for case in (abdomen_lps, abdomen_ras):
        kidneys = case.params["kidneys"]
        left, right = (np.asarray(kidneys[s]["centre_mm"]) for s in ("left", "right"))
        assert left[0] > right[0] + 80  # patient left is +x in LPS
        assert right[2] < left[2]  # the right kidney lies lower
        # the labels agree with the parameters in physical space, whatever the storage order
        kidney = case.label.array == 2
        comps, n = ndi.label(kidney, structure=FULL)
        sizes = ndi.sum(kidney, comps, range(1, n + 1))
        big = np.argsort(sizes)[::-1][:2] + 1
        centroids = sorted((_world_centroid(case.label, comps == k) for k in big), key=lambda c: c[0])
        assert np.linalg.norm(centroids[1] - left) < 12 and np.linalg.norm(centroids[0] - right) < 12
        assert kidneys["left"]["artery_ostium_mm"][0] < left[0]


def test_abdomen_artery_trees_start_at_their_aortic_ostia(abdomen_lps):
    """Every artery component starts at an aortic ostium: no floating fragments."""
    artery = abdomen_lps.label.array == 3
    components, n = ndi.label(artery, structure=FULL)
    g = abdomen_lps.label.geometry
    rooted = set()
    for side, kidney in abdomen_lps.params["kidneys"].items():
        ostia = [o for o in (kidney["artery_ostium_mm"], kidney["accessory_ostium_mm"]) if o is not None]
        for ostium in ostia:
            x, y, z = np.round(g.world_to_index([ostium])[0]).astype(int)
            found = np.unique(components[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2])
            assert len(found[found > 0]) == 1, (side, ostium)
            rooted.update(found[found > 0].tolist())
    assert rooted == set(range(1, n + 1))  # (a main and an accessory tree may touch at 2.4 mm)


def test_abdomen_direction_option_stores_the_same_anatomy(abdomen_lps, abdomen_ras):
    assert abdomen_lps.image.geometry.orientation == "LPS"
    assert abdomen_ras.image.geometry.orientation == "RAS"
    assert np.array_equal(abdomen_ras.image.array, abdomen_lps.image.array[:, ::-1, ::-1])
    corners_lps = abdomen_lps.image.geometry.corners_world()
    corners_ras = abdomen_ras.image.geometry.corners_world()
    assert np.allclose(np.sort(corners_lps, axis=0), np.sort(corners_ras, axis=0), atol=1e-4)


@pytest.mark.slow
def test_abdomen_default_grid_is_clinical():
    case = synthesize_abdomen(0)
    g = case.image.geometry
    assert g.shape_zyx[1:] == (512, 512) and 250 <= g.shape_zyx[0] <= 500
    assert 0.6 <= g.spacing_xyz_mm[0] <= 0.85 and 0.5 <= g.spacing_xyz_mm[2] <= 1.25
    assert {1, 2, 3} <= set(np.unique(case.label.array).tolist())


# -- writing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["LPS", "RAS"])
def test_dicom_round_trip_keeps_geometry_and_hu(tmp_path, abdomen_lps, abdomen_ras, direction):
    case = abdomen_lps if direction == "LPS" else abdomen_ras
    write_cases(tmp_path / "ds", [case], kind="abdomen", fmt="dicom")
    folder = tmp_path / "ds" / "image" / "case_0000"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    back = Volume.from_sitk(image)
    assert back.geometry.is_same_grid(case.image.geometry, atol=1e-4), back.geometry.describe()
    assert np.array_equal(back.array.astype(np.int16), case.image.array)
    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(files[0])
    # pydicom alone (no ITK): the same grid from the header tags
    g = case.image.geometry
    last = pydicom.dcmread(files[-1], stop_before_pixels=True)
    row, col = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
    assert np.allclose(np.asarray(ds.ImagePositionPatient, float), g.origin_xyz_mm, atol=1e-4)
    assert np.allclose(np.stack([row, col], axis=1), g.direction_matrix[:, :2], atol=1e-6)
    assert np.allclose([float(v) for v in ds.PixelSpacing], [g.spacing_xyz_mm[1], g.spacing_xyz_mm[0]])
    first_ipp = np.asarray(ds.ImagePositionPatient, float)
    step = (np.asarray(last.ImagePositionPatient, float) - first_ipp) / (len(files) - 1)
    assert np.allclose(step, g.direction_matrix[:, 2] * g.spacing_xyz_mm[2], atol=1e-5)
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(hu, case.image.array[0].astype(float))
    assert ds.Modality == "CT" and float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    assert float(ds.SliceThickness) == pytest.approx(case.image.geometry.spacing_xyz_mm[2])
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert len(uids) == len(files) == case.image.geometry.shape_zyx[0]
    # deterministic: the same case written again gets the same UIDs
    write_cases(tmp_path / "again", [case], kind="abdomen", fmt="dicom")
    again = pydicom.dcmread(tmp_path / "again" / "image" / "case_0000" / files[0].name, stop_before_pixels=True)
    assert again.SeriesInstanceUID == ds.SeriesInstanceUID and again.SOPInstanceUID == ds.SOPInstanceUID


def test_dicom_series_reads_through_renalseg_read_study(tmp_path, abdomen_ras):
    from renalseg.io.study import read_study

    write_cases(tmp_path / "ds", [abdomen_ras], kind="abdomen", fmt="dicom")
    study = read_study(tmp_path / "ds" / "image" / "case_0000")
    assert study.geometry.is_same_grid(abdomen_ras.image.geometry, atol=1e-4)
    assert np.array_equal(study.volume.array.astype(np.int16), abdomen_ras.image.array)


def test_cli_writes_the_training_layout_and_refuses_to_overwrite(tmp_path, monkeypatch):
    import renalseg.phantom
    from renalseg.cli.app import app

    monkeypatch.setattr(renalseg.phantom, "synthesize_roi",
                        lambda seed, **options: synthesize_roi(seed, **{**SMALL_ROI, **options}))
    out = tmp_path / "phantoms"
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--cases", "2", "--seed", "40", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "cases.json").read_text())
    assert [c["name"] for c in meta["cases"]] == ["case_0000", "case_0001"]
    assert [c["params"]["seed"] for c in meta["cases"]] == [40, 41]  # case i uses seed S + i
    for name in ("case_0000", "case_0001"):
        image = sitk.ReadImage(str(out / "image" / f"{name}.nii.gz"))
        label = sitk.ReadImage(str(out / "label" / f"{name}.nii.gz"))
        tissue = sitk.ReadImage(str(out / "tissue" / f"{name}.nii.gz"))
        assert Geometry.from_sitk(image) == Geometry.from_sitk(label) == Geometry.from_sitk(tissue)
        assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
    again = synthesize_roi(41, **SMALL_ROI)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "image" / "case_0001.nii.gz"))),
                          again.image.array)
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--cases", "1", "--quiet"])
    assert result.exit_code == 1 and "overwrite" in result.output
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "s"), "--spacing", "0.7,0.7", "--quiet"])
    assert result.exit_code == 2 and "three positive numbers" in result.output
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "s"), "--cases", "1", "--spacing",
                                      "2.0,2.0,2.5", "--quiet"])
    assert result.exit_code == 0
    assert sitk.ReadImage(str(tmp_path / "s" / "image" / "case_0000.nii.gz")).GetSpacing() == (2.0, 2.0, 2.5)
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "u"), "--cases", "1", "--seed", "40",
                                      "--stones", "--excreted-contrast", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    case = json.loads((tmp_path / "u" / "cases.json").read_text())["cases"][0]["params"]
    assert case["options"]["stones"] and case["options"]["excreted_contrast"] and case["intensities_hu"]["calculus"]
    tissue = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "u" / "tissue" / "case_0000.nii.gz")))
    assert (tissue == TISSUE_IDS["calculus"]).any()


def test_write_cases_rejects_unknown_format_and_existing_folder(tmp_path):
    with pytest.raises(UsageError, match="nifti"):
        write_cases(tmp_path / "x", [], kind="roi", fmt="png")
    (tmp_path / "y").mkdir()
    with pytest.raises(OutputExistsError):
        write_cases(tmp_path / "y", [], kind="roi")


def test_unknown_option_is_a_usage_error_with_a_suggestion():
    with pytest.raises(UsageError, match="Did you mean 'tumour'"):
        synthesize_roi(0, tumor=True)


# -- rendering --------------------------------------------------------------------------------------
def test_render_tissues_gives_requested_means_and_noise():
    g = Geometry((40, 50, 60), (0.7, 0.7, 1.0), (10.0, -20.0, 300.0), LPS_IDENTITY)
    tissues = np.full(g.shape_zyx, TISSUE_IDS["fat"], np.uint8)
    tissues[:, :, 30:] = TISSUE_IDS["kidney_cortex"]
    image = render_tissues(Volume(tissues, g), {"fat": -100.0, "kidney_cortex": 200.0}, psf_fwhm_mm=0.8,
                           noise_sigma_hu=15.0, rng=np.random.default_rng(1))
    assert image.geometry == g and image.array.dtype == np.int16
    assert abs(np.mean(image.array[:, :, :25]) + 100) < 1.0 and abs(np.mean(image.array[:, :, 35:]) - 200) < 1.0
    assert 13.5 < np.std(image.array[:, :, :25]) < 16.5
    with pytest.raises(UsageError, match="kidney_cortex"):
        render_tissues(Volume(tissues, g), {"fat": -100.0}, psf_fwhm_mm=0.8, noise_sigma_hu=0,
                       rng=np.random.default_rng(1))


def test_partial_volume_of_a_thin_tube_matches_its_cross_section():
    """A 0.5 mm radius vessel on 0.8 mm voxels: intensity integral = π r² L (supersampled)."""
    g = Geometry((30, 30, 30), (0.8, 0.8, 0.8), (-12.0, -12.0, -12.0), LPS_IDENTITY)
    canvas = Canvas(g, background_tissue=TISSUE_IDS["fat"], background_hu=0.0)
    line = smooth_path(np.array([[-20.0, -3.0, 1.0], [20.0, 4.0, -2.0]]), 1.0)
    canvas.paint(TISSUE_IDS["renal_artery"], 1000.0, [Tube(line, np.full(len(line), 0.5), thin=True)],
                 centrelines=[line])
    inner = canvas.hu[5:-5, 5:-5, 5:-5]
    # length of the tube inside the inner box, measured along x
    direction = (line[-1] - line[0]) / np.linalg.norm(line[-1] - line[0])
    length = (20 * 0.8) / abs(direction[0])
    area = inner.sum() / 1000.0 * 0.8**3 / length
    assert area == pytest.approx(np.pi * 0.25, rel=0.03)
    # and the label stays connected although no voxel is half covered by much
    artery = canvas.tissue == TISSUE_IDS["renal_artery"]
    assert ndi.label(artery, structure=FULL)[1] == 1


@pytest.mark.parametrize("kind", ["ellipsoid", "tube", "thin_tube", "coarse_ellipsoid"])
def test_partial_volume_matches_exact_supersampling(kind):
    """The analytic coverage (and its coarse signed-distance path) against brute force:
    the same shape painted on a 3–4× finer grid with exact distances, block-averaged."""
    line = smooth_path(np.array([[-12.0, -3.0, 1.0], [0.0, 2.0, -1.0], [12.0, 4.0, -3.0]]), 1.0)
    h, n, f, shape = {
        "ellipsoid": (0.8, 24, 4, Ellipsoid((0.3, -0.2, 0.1), rotation_matrix([1, 2, 3], 0.7), (6.0, 4.0, 5.0))),
        "tube": (0.8, 24, 4, Tube(line, np.full(len(line), 1.6))),
        "thin_tube": (0.8, 24, 4, Tube(line, np.full(len(line), 0.5), thin=True)),
        "coarse_ellipsoid": (0.7, 40, 3, Ellipsoid((0.3, -0.2, 0.1), rotation_matrix([1, 2, 3], 0.7),
                                                   (12.0, 10.0, 11.0))),
    }[kind]
    origin = -(n - 1) / 2 * h
    coarse = Canvas(Geometry((n, n, n), (h, h, h), (origin,) * 3, LPS_IDENTITY), background_hu=0.0)
    fine_origin = origin - h / 2 + h / (2 * f)
    fine = Canvas(Geometry((n * f,) * 3, (h / f,) * 3, (fine_origin,) * 3, LPS_IDENTITY), background_hu=0.0)
    fine._coarse_sdf = lambda *_: None  # exact distances everywhere
    if kind == "coarse_ellipsoid":
        assert coarse._coarse_sdf(shape, coarse.box(*shape.bbox_mm())) is not None  # the path under test
    coarse.paint(TISSUE_IDS["renal_artery"], 1000.0, [shape])
    fine.paint(TISSUE_IDS["renal_artery"], 1000.0, [shape])
    reference = fine.hu.reshape(n, f, n, f, n, f).mean(axis=(1, 3, 5))
    assert coarse.hu.sum() == pytest.approx(reference.sum(), rel=0.01)
    boundary = (reference > 0) & (reference < 1000)
    error = np.abs(coarse.hu - reference)[boundary]
    assert error.mean() < 35 and error.max() < 150  # HU, of a 1000 HU contrast


def test_tissue_table_is_consistent():
    assert set(TISSUE_RANGES_HU) == set(TISSUES.values()) == set(DEFAULT_INTENSITY_RANGES_HU) | {"tumour_necrosis",
                                                                                                  "calculus"}
    assert all(lo < hi for lo, hi in TISSUE_RANGES_HU.values())
    assert all(lo < hi for lo, hi in DEFAULT_INTENSITY_RANGES_HU.values())
    assert DEFAULT_INTENSITY_RANGES_HU["renal_artery"] == (250.0, 500.0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_great_vessel_roi_holds_the_ostia_the_great_vessels_and_the_kidney(side):
    """The training crop of the four-structure model is the box `renalseg segment` places:
    every renal artery's aortic origin, the aorta and the IVC in view, the kidney whole."""
    case = synthesize_roi(11, side=side, accessory=True, great_vessels=True, spacing_xyz_mm=(1.4, 1.4, 2.0),
                          inplane_voxels=76)
    g, tissues = case.image.geometry, case.tissues.array
    kidney = case.params["kidneys"][side]
    for ostium in (kidney["artery_ostium_mm"], kidney["accessory_ostium_mm"]):
        index = g.world_to_index([ostium])[0]
        assert np.all(index >= 0) and np.all(index <= np.array(g.shape_zyx[::-1]) - 1), ostium
    assert (tissues == TISSUE_IDS["aorta"]).sum() > 1000 and (tissues == TISSUE_IDS["ivc"]).sum() > 1000
    edges = np.zeros(tissues.shape, bool)
    edges[[0, -1]], edges[:, [0, -1]], edges[:, :, [0, -1]] = True, True, True
    assert not (case.label.array[edges] == 2).any()  # no kidney voxel on the box's faces
    assert min(g.shape_zyx[1:]) >= 76 and g.orientation == "LPS"


def test_a_large_hypervascular_tumour_has_a_labelled_non_enhancing_core_and_nothing_else_moves():
    """Clear-cell-like tumours enhance around necrotic or cystic areas; the core is tumour
    (KiPA22 label 4) at one HU below 40, inside the tumour, and only tumour voxels change."""
    from renalseg.phantom.abdomen import necrotic_cores

    case = synthesize_roi(20006, tumour=True)  # a 62 mm hypervascular tumour
    tumour = case.params["kidneys"][case.params["side"]]["tumour"]
    assert tumour["enhancement"] == "hyper" and tumour["diameter_mm"] > 30
    tissues, labels, image = case.tissues.array, case.label.array, case.image.array
    core = tissues == TISSUE_IDS["tumour_necrosis"]
    whole = core | (tissues == TISSUE_IDS["tumour"])
    assert 0.1 <= core.sum() / whole.sum() <= 0.5
    assert (labels[core] == 4).all() and (labels == 4).sum() == whole.sum()
    hu = case.params["intensities_hu"]["tumour_necrosis"]
    assert TUMOUR_NECROSIS_HU[0] <= hu <= TUMOUR_NECROSIS_HU[1] < hu + 100 <= case.params["intensities_hu"]["tumour"]
    inner = ndi.binary_erosion(core, iterations=2)
    assert abs(np.median(image[inner]) - hu) < 15
    assert not (core & ~ndi.binary_erosion(whole)).any()  # never on the tumour's surface
    # on a painted map: only tumour voxels change, the rest of the case is its seed's
    painted = np.where(core, TISSUE_IDS["tumour"], tissues).astype(np.uint8)
    before, mean_hu = painted.copy(), np.zeros(painted.shape, np.float32)
    necrotic_cores(painted, mean_hu, case.tissues.geometry, case.params["kidneys"], 20006)
    assert np.array_equal(painted, tissues)
    assert np.array_equal(painted != before, core) and not mean_hu[~core].any()


def test_stones_and_excreted_contrast_are_bright_kidney_not_artery_and_nothing_else_moves():
    """A CTA often shows stones in the calyces and contrast excreted into the collecting
    system: bright like an artery, inside the kidney, labelled kidney (the collecting system
    they lie in) and never artery; the rest of the case stays its seed's."""
    from renalseg.phantom.tissues import CALCULUS_HU, EXCRETED_CONTRAST_HU

    options = dict(side="left", tumour=False, phase="arterial")
    plain = synthesize_roi(5, **options)
    case = synthesize_roi(5, stones=True, excreted_contrast=True, **options)
    tissues, labels, image = case.tissues.array, case.label.array, case.image.array
    stones = tissues == TISSUE_IDS["calculus"]
    assert stones.sum() * case.image.geometry.voxel_volume_mm3 >= 4.0  # at least one stone 2 mm across
    assert (labels[stones] == 2).all()
    assert np.array_equal(labels == 3, plain.label.array == 3)  # not one artery voxel changes
    assert np.array_equal(labels == 1, plain.label.array == 1)
    drawn = case.params["intensities_hu"]
    assert all(CALCULUS_HU[0] <= v <= CALCULUS_HU[1] for v in drawn["calculus"])
    assert EXCRETED_CONTRAST_HU[0] <= drawn["collecting_system"] <= EXCRETED_CONTRAST_HU[1]
    urine = ndi.binary_erosion(tissues == TISSUE_IDS["collecting_system"])
    assert np.median(image[urine]) > 0.7 * drawn["collecting_system"]
    assert image[stones].max() > 0.7 * min(drawn["calculus"])
    # only the urinary tract and its blurred edge change: the seed's anatomy, HU and noise stay
    urinary = np.isin(tissues, [TISSUE_IDS[k] for k in ("collecting_system", "ureter", "calculus")])
    changed = image != plain.image.array
    assert changed.any() and not (changed & ~ndi.binary_dilation(urinary, iterations=4)).any()
    assert np.array_equal(synthesize_roi(5, **options).image.array, plain.image.array)
