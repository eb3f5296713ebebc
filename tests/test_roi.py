"""Kidney localisation: real CT (atlas moved and cropped, DICOM fixture, upper-pole CTA),
edge cases (cut kidney, one kidney, oblique grid, no contrast), ROI semantics and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DICOM_FIXTURE, UPPER_POLE_CTA, require
from typer.testing import CliRunner

from renalseg.errors import NoKidneyFoundError, RegistrationError, UsageError
from renalseg.geometry import Geometry
from renalseg.registration import ATLAS_DIR, initial_translation, load_atlas, to_lps_grid
from renalseg.roi import ROI_INPLANE_VOXELS, KidneyROI, crop_to_roi, locate_kidneys
from renalseg.study import Study
from renalseg.volume import Volume

ATLAS_CT = ATLAS_DIR / "atlas_ct.nii.gz"
ATLAS_LABELS = ATLAS_DIR / "atlas_kidneys.nii.gz"
SIDE_LABEL = {"right": 1, "left": 2}


def _moved_atlas(z_slices: tuple[int, int] = (45, 112), shift_mm: float = 250.0) -> tuple[sitk.Image, sitk.Image]:
    """The real atlas CT (and its labels, carried along) cropped in z and moved in space."""
    ct, labels = sitk.ReadImage(str(ATLAS_CT)), sitk.ReadImage(str(ATLAS_LABELS))
    ct, labels = ct[:, :, z_slices[0]:z_slices[1]], labels[:, :, z_slices[0]:z_slices[1]]
    origin = tuple(float(o) + shift_mm for o in ct.GetOrigin())
    ct.SetOrigin(origin)
    labels.SetOrigin(origin)
    return ct, labels


def _fraction_inside(roi: KidneyROI, labels: sitk.Image) -> float:
    """Fraction of the true kidney's volume (label of ``roi.side``) inside the ROI grid."""
    value = SIDE_LABEL[roi.side]
    reference = sitk.Image(list(roi.grid.shape_xyz), sitk.sitkUInt8)
    roi.grid.apply_to(reference)
    on_grid = sitk.GetArrayFromImage(sitk.Resample(labels, reference, sitk.Transform(),
                                                   sitk.sitkNearestNeighbor, 0))
    inside_mm3 = float((on_grid == value).sum() * roi.grid.voxel_volume_mm3)
    total_mm3 = float((sitk.GetArrayFromImage(labels) == value).sum() * np.prod(labels.GetSpacing()))
    return min(1.0, inside_mm3 / total_mm3)


def _study(image: sitk.Image, name: str) -> Study:
    return Study(image=image, path=Path(f"/data/{name}.nii.gz"), format="nifti", study_id=name)


@pytest.fixture(scope="module")
def moved_atlas() -> tuple[sitk.Image, sitk.Image, list[KidneyROI]]:
    ct, labels = _moved_atlas()
    return ct, labels, locate_kidneys(_study(ct, "moved_atlas"))


# -- real CT: success ------------------------------------------------------------------

def test_moved_and_cropped_atlas_finds_both_kidneys_in_place(moved_atlas):
    ct, labels, rois = moved_atlas
    assert [roi.side for roi in rois] == ["right", "left"]
    for roi in rois:
        assert _fraction_inside(roi, labels) >= 0.99, roi.side
        assert not roi.truncated
        assert 80.0 <= roi.kidney_volume_ml <= 250.0  # atlas: right ~147 ml, left ~118 ml
    right, left = rois
    # sides from patient LPS x: the left kidney lies at larger x
    assert np.mean(left.box_mm_lps, axis=0)[0] > np.mean(right.box_mm_lps, axis=0)[0]


def test_roi_grid_is_the_model_grid_and_the_voxel_box_covers_it(moved_atlas):
    ct, _, rois = moved_atlas
    study = Geometry.from_sitk(ct)
    for roi in rois:
        grid = roi.grid
        assert min(grid.shape_zyx[1:]) >= ROI_INPLANE_VOXELS  # wider where the renal vessels need it
        assert grid.spacing_xyz_mm == (0.7, 0.7, 1.0)
        assert grid.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert grid.shape_zyx[0] * 1.0 >= 100.0  # whole kidney (~100 mm) plus margins
        # every corner of the model grid falls inside the study-voxel box
        index = study.world_to_index(grid.corners_world())
        start = np.asarray(roi.start_zyx[::-1])
        stop = start + np.asarray(roi.shape_zyx[::-1]) - 1
        assert (index >= start - 1e-6).all() and (index <= stop + 1e-6).all()
        # and the box is tight: no more than one voxel of slack on each side
        assert (index.min(axis=0) - start < 1.0 + 1e-6).all() and (stop - index.max(axis=0) < 1.0 + 1e-6).all()
        payload = json.loads(json.dumps(roi.to_dict()))
        assert payload["side"] == roi.side and payload["box_voxels_zyx"]["shape"] == list(roi.shape_zyx)


def test_the_kidneys_localisation_found_hold_the_real_kidney_labels_and_not_a_shifted_copy(moved_atlas):
    """The quality check that sets the network's kidney against localisation's, on real CT."""
    from renalseg.quality import KIDNEY_MIN_LOCATED_SHARE, ScanQuality, judge, kidney_label_facts

    ct, labels, rois = moved_atlas
    geometry, kidneys = Geometry.from_sitk(labels), sitk.GetArrayFromImage(labels) > 0
    located = [roi.mask for roi in rois]
    facts = kidney_label_facts(kidneys, geometry, sitk.GetArrayFromImage(ct), located=located)
    assert facts["located_share"] >= 0.85, facts  # the atlas's own kidneys (un-enhanced: ~30 HU)
    shifted = np.roll(kidneys, 15, axis=1)  # 45 mm towards the back: muscle and bone
    moved = kidney_label_facts(shifted, geometry, None, located=located)
    assert moved["located_share"] < KIDNEY_MIN_LOCATED_SHARE, moved
    scan = {"inplane_spacing_mm": 0.7, "slice_thickness_mm": 1.0}
    verdicts = [judge(ScanQuality("late_arterial", "", {}, scan), {}, kidneys={"right": f}) for f in (facts, moved)]
    assert verdicts[0]["verdict"] == "ok" and verdicts[1]["verdict"] == "unreliable"
    assert verdicts[1]["warnings"][0].startswith("right kidney label: ")


def test_crop_to_roi_resamples_the_study_onto_the_roi_grid_in_hu(moved_atlas):
    ct, labels, rois = moved_atlas
    right = rois[0]
    crop = crop_to_roi(_study(ct, "moved_atlas"), right)
    assert crop.geometry == right.grid
    assert crop.array.dtype == np.float32
    label_crop = crop_to_roi(Volume.from_sitk(sitk.Cast(labels, sitk.sitkFloat32)), right, pad_hu=0)
    kidney_hu = crop.array[label_crop.array > 0.5]
    assert 0.0 < float(np.median(kidney_hu)) < 60.0  # un-enhanced kidney, ~15-40 HU
    assert crop.array.min() >= -1024.0


def test_preview_draws_the_right_kidney_box_on_the_viewers_left(moved_atlas):
    from renalseg.preview import render_locate_preview

    ct, _, rois = moved_atlas
    rendered = render_locate_preview(_study(ct, "moved_atlas"), rois)
    picture = np.asarray(rendered)
    red = (picture[..., 0] > 200) & (picture[..., 1] < 120) & (picture[..., 2] < 120)
    blue = (picture[..., 2] > 200) & (picture[..., 0] < 120)
    assert red.sum() > 100 and blue.sum() > 100  # both boxes drawn
    # radiological convention: the patient's right kidney on the viewer's left, in both views
    for start, stop in rendered.info["panels"].values():
        view = slice(start, stop)
        assert np.nonzero(red[:, view])[1].mean() < np.nonzero(blue[:, view])[1].mean()


def test_without_a_spacing_the_rois_lie_on_the_shipped_cards_grid(moved_atlas):
    """The grid belongs to the weights' card: ``locate_kidneys(study)`` reads the shipped one's."""
    from renalseg.weights import DEFAULT_WEIGHTS_PATH, read_card

    spacing = read_card(DEFAULT_WEIGHTS_PATH).spacing_xyz_mm
    for roi in moved_atlas[2]:
        assert roi.grid.spacing_xyz_mm == pytest.approx(spacing, abs=1e-9)


def test_same_seed_same_rois_and_atlas_origin_is_not_trusted(moved_atlas):
    ct, _, rois = moved_atlas
    again = locate_kidneys(Volume.from_sitk(ct), seed=0)
    assert [(r.side, r.start_zyx, r.shape_zyx, r.grid.shape_zyx) for r in again] == \
        [(r.side, r.start_zyx, r.shape_zyx, r.grid.shape_zyx) for r in rois]
    for first, second in zip(rois, again):  # same up to floating-point summation order
        np.testing.assert_allclose(first.grid.origin_xyz_mm, second.grid.origin_xyz_mm, atol=1e-6)
        assert first.kidney_volume_ml == pytest.approx(second.kidney_volume_ml, abs=1e-6)


def test_same_seed_same_rois_on_a_clinical_size_study():
    """512 × 512 slices at a scanner's spacing: twice the same study, the same ROIs to 1e-6 mm
    (with SimpleITK's default thread count they moved by up to 6 mm from call to call)."""
    from renalseg.phantom.abdomen import synthesize_abdomen

    image = synthesize_abdomen(11).image
    first, second = locate_kidneys(image, seed=0), locate_kidneys(image, seed=0)
    for a, b in zip(first, second):
        assert (a.side, a.start_zyx, a.shape_zyx) == (b.side, b.start_zyx, b.shape_zyx)
        np.testing.assert_allclose(a.grid.origin_xyz_mm, b.grid.origin_xyz_mm, atol=1e-6)


def test_initial_translation_recovers_a_250_mm_shift():
    ct, _ = _moved_atlas()
    hu, fov = to_lps_grid(ct, 3.0)
    translation = initial_translation(hu, fov, load_atlas(ATLAS_DIR))
    np.testing.assert_allclose(translation, [250.0, 250.0, 250.0], atol=6.0)


# -- abdomen phantoms ------------------------------------------------------------------

#: varied spacing, field of view and stored orientation (seeds vary the patient's position)
PHANTOM_OPTIONS = [
    {"spacing_xyz_mm": (1.5, 1.5, 2.0), "inplane_voxels": 256},
    {"spacing_xyz_mm": (1.2, 1.2, 1.5), "inplane_voxels": 320, "direction": "RAS"},
    {"spacing_xyz_mm": (1.6, 1.6, 2.5), "inplane_voxels": 240, "direction": "LAS"},
    {"spacing_xyz_mm": (1.4, 1.4, 3.0), "inplane_voxels": 280, "direction": "RPS"},
    {"spacing_xyz_mm": (1.5, 1.5, 1.25), "inplane_voxels": 256},
]


def _check_phantom(seed: int, *, clinical: bool = False) -> None:
    from renalseg.phantom.abdomen import synthesize_abdomen

    options = {} if clinical else PHANTOM_OPTIONS[seed % len(PHANTOM_OPTIONS)]
    case = synthesize_abdomen(seed, **options)
    rois = locate_kidneys(case.image)
    assert sorted(roi.side for roi in rois) == ["left", "right"]
    geometry = case.image.geometry
    zz, yy, xx = np.nonzero(case.label.array == 2)  # KiPA22: 2 = kidney
    points = geometry.index_to_world(np.stack([xx, yy, zz], axis=1))
    kidneys = case.params["kidneys"]
    centres = {side: np.asarray(kidneys[side]["centre_mm"]) for side in ("left", "right")}
    for roi in rois:
        other = "left" if roi.side == "right" else "right"
        mine = (np.linalg.norm(points - centres[roi.side], axis=1)
                < np.linalg.norm(points - centres[other], axis=1))
        index = roi.grid.world_to_index(points[mine])
        last = np.asarray(roi.grid.shape_xyz) - 0.5
        inside = np.all((index >= -0.5) & (index <= last), axis=1)
        assert inside.mean() >= 0.99, (seed, roi.side, inside.mean())
        hilum = roi.grid.world_to_index([kidneys[roi.side]["hilum_artery_mm"]])[0]
        assert np.all((hilum >= 0) & (hilum <= last - 0.5)), (seed, roi.side, "artery root at the hilum")
        # the side is the patient's: the ROI holds that kidney's centre, not the other's
        own = roi.grid.world_to_index([centres[roi.side]])[0]
        assert np.all((own >= 0) & (own <= last - 0.5))


@pytest.mark.parametrize("seed", [0, 1])
def test_abdomen_phantom_kidneys_and_hila_inside_their_rois(seed):
    _check_phantom(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6, 7, 8, 9])
def test_abdomen_phantom_kidneys_and_hila_inside_their_rois_more_seeds(seed):
    _check_phantom(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [10, 11])
def test_clinical_size_abdomen_phantoms(seed):
    """512 × 512 × 250–500 voxels at 0.6–0.85 mm, as a scanner writes them."""
    _check_phantom(seed, clinical=True)


# -- real CT: refusals -----------------------------------------------------------------

def test_real_dicom_upper_abdomen_without_kidneys_is_refused():
    from renalseg.io.study import read_study

    study = read_study(require(DICOM_FIXTURE))
    with pytest.raises(NoKidneyFoundError, match=r"(?s)no kidney in the field of view.*40 mm.*left nor the right"):
        locate_kidneys(study)


def test_real_cta_with_only_the_right_upper_pole_is_refused_naming_the_hilum():
    from renalseg.io.study import read_study

    study = read_study(require(UPPER_POLE_CTA))
    with pytest.raises(NoKidneyFoundError) as caught:
        locate_kidneys(study)
    message = str(caught.value)
    assert "right kidney" in message and "hilum lies outside" in message
    assert "below the scanned region" in message
    assert str(UPPER_POLE_CTA) in message


# -- edge cases on real anatomy --------------------------------------------------------

def test_kidney_cut_slightly_with_hilum_in_view_is_kept_and_flagged():
    ct, labels = _moved_atlas((76, 112), shift_mm=-40.0)  # right kidney loses its lowest ~24 mm
    rois = locate_kidneys(_study(ct, "cut"))
    by_side = {roi.side: roi for roi in rois}
    assert by_side["right"].truncated and "below the scanned region" in by_side["right"].notes[0]
    assert not by_side["left"].truncated
    for roi in rois:
        assert _fraction_inside(roi, labels) >= 0.99


def test_one_kidney_absent_gives_one_roi_and_a_warning(caplog):
    ct, labels = _moved_atlas((40, 112), shift_mm=0.0)
    array = sitk.GetArrayFromImage(ct)
    array[sitk.GetArrayFromImage(labels) == SIDE_LABEL["left"]] = -100  # fat where the left kidney was
    no_left = sitk.GetImageFromArray(array)
    no_left.CopyInformation(ct)
    with caplog.at_level(logging.WARNING, logger="renalseg.roi"):
        rois = locate_kidneys(_study(no_left, "single"))
    assert [roi.side for roi in rois] == ["right"]
    assert _fraction_inside(rois[0], labels) >= 0.99
    assert any("left kidney" in record.getMessage() for record in caplog.records)
    # asking for the missing side alone is an error that names it
    with pytest.raises(NoKidneyFoundError, match="left kidney"):
        locate_kidneys(_study(no_left, "single"), sides=("left",))


@pytest.mark.slow
def test_oblique_study_grid_still_finds_both_kidneys():
    ct, labels = sitk.ReadImage(str(ATLAS_CT)), sitk.ReadImage(str(ATLAS_LABELS))
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.0, 0.0, np.radians(20))
    direction = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.asarray(ct.GetDirection()).reshape(3, 3)
    reference = sitk.Image([140, 130, 112], sitk.sitkInt16)
    reference.SetSpacing((2.5, 2.5, 3.0))
    reference.SetDirection(tuple(direction.ravel()))
    reference.SetOrigin((200.0, -10.0, 94.3))
    oblique = sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1024)
    oblique_labels = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    rois = locate_kidneys(Volume.from_sitk(oblique))
    assert [roi.side for roi in rois] == ["right", "left"]
    for roi in rois:
        assert _fraction_inside(roi, oblique_labels) >= 0.99


@pytest.mark.slow
def test_extra_atlas_is_fused_by_majority_vote(tmp_path):
    from renalseg.io.image import write_image

    # a second atlas: the same CT with each kidney label eroded by one voxel
    labels = sitk.ReadImage(str(ATLAS_LABELS))
    eroded = sitk.Cast(sitk.BinaryErode(labels == 1, [1, 1, 1]), sitk.sitkUInt8) + \
        sitk.Cast(sitk.BinaryErode(labels == 2, [1, 1, 1]), sitk.sitkUInt8) * 2
    eroded.CopyInformation(labels)
    write_image(sitk.ReadImage(str(ATLAS_CT)), tmp_path / "atlas_ct.nii.gz")
    write_image(eroded, tmp_path / "atlas_kidneys.nii.gz")
    ct, true_labels = _moved_atlas()
    rois = locate_kidneys(_study(ct, "two_atlases"), atlases=[tmp_path])
    assert [roi.side for roi in rois] == ["right", "left"]
    for roi in rois:
        assert _fraction_inside(roi, true_labels) >= 0.99


@pytest.mark.parametrize("phase", ["arterial", pytest.param("portal", marks=pytest.mark.slow)])
def test_contrast_enhanced_kidneys_are_found_like_unenhanced_ones(phase):
    """The atlas is un-enhanced (~15 HU); the same anatomy with enhancing kidneys."""
    from scipy import ndimage

    ct, labels = _moved_atlas((30, 112), shift_mm=-77.0)
    array = sitk.GetArrayFromImage(ct).astype(np.int16)
    kidney = sitk.GetArrayFromImage(labels) > 0
    rng = np.random.default_rng(0)
    if phase == "portal":  # homogeneous nephrographic enhancement
        array[kidney] = 170 + rng.normal(0, 15, kidney.sum())
    else:  # bright cortex rim around darker medulla
        medulla = ndimage.binary_erosion(kidney, iterations=2)
        array[kidney] = 210 + rng.normal(0, 15, kidney.sum())
        array[medulla] = 70 + rng.normal(0, 15, medulla.sum())
    enhanced = sitk.GetImageFromArray(array)
    enhanced.CopyInformation(ct)
    rois = locate_kidneys(_study(enhanced, phase))
    assert [roi.side for roi in rois] == ["right", "left"]
    for roi in rois:
        assert _fraction_inside(roi, labels) >= 0.99


def test_uniform_volume_is_a_registration_error_not_a_box():
    flat = Volume(np.zeros((40, 100, 100), np.int16),
                  Geometry((40, 100, 100), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    with pytest.raises(RegistrationError, match="did not converge|cannot start"):
        locate_kidneys(flat)


def test_unknown_side_is_a_usage_error_with_a_suggestion(ct_factory):
    with pytest.raises(UsageError, match="Did you mean 'left'"):
        locate_kidneys(ct_factory(), sides=("lefft",))


def test_atlas_folder_without_labels_is_named(tmp_path):
    from renalseg.errors import InputError

    (tmp_path / "atlas_ct.nii.gz").write_bytes(ATLAS_CT.read_bytes())
    with pytest.raises(InputError, match="atlas_kidneys.nii.gz is missing"):
        load_atlas(tmp_path)


def test_shipped_atlas_hilum_is_medial_to_each_kidney():
    atlas = load_atlas(ATLAS_DIR)
    # LPS: +x is the patient's left; the hilum faces the midline
    assert atlas.hilum_lps["right"][0] > atlas.centre_lps["right"][0]
    assert atlas.hilum_lps["left"][0] < atlas.centre_lps["left"][0]
    assert atlas.centre_lps["right"][0] < atlas.centre_lps["left"][0]
    assert 100 < atlas.volume_ml["right"] < 200 and 80 < atlas.volume_ml["left"] < 160


# -- CLI -------------------------------------------------------------------------------

def test_locate_cli_writes_report_preview_crops_and_error_json(tmp_path):
    from PIL import Image

    from renalseg.cli.app import app
    from renalseg.io.image import write_image

    ct, _ = _moved_atlas((50, 112), shift_mm=-120.0)
    good = write_image(ct, tmp_path / "in" / "good case.nii.gz")
    write_image(sitk.ReadImage(str(require(UPPER_POLE_CTA))), tmp_path / "in" / "upper_pole.nii.gz")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["locate", str(tmp_path / "in"), "--out", str(out), "--crop"])
    assert result.exit_code == 1, result.output
    report = json.loads((out / "good_case" / "report.json").read_text())
    assert report["status"] == "ok" and report["input"]["path"] == str(good)
    assert [roi["side"] for roi in report["rois"]] == ["right", "left"]
    assert Image.open(out / "good_case" / "preview.png").size[1] == 360
    for side in ("right", "left"):
        crop = sitk.ReadImage(str(out / "good_case" / f"roi_{side}.nii.gz"))
        grid = report["rois"][0 if side == "right" else 1]["model_grid"]
        assert list(crop.GetSize())[::-1] == grid["shape_zyx"]
        np.testing.assert_allclose(crop.GetOrigin(), grid["origin_xyz_mm"], atol=1e-3)
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / "good_case" / f"kidney_{side}.nii.gz"))).any()
    assert report["missing_reasons"] == {} and all(0 < roi["confidence"] <= 1 for roi in report["rois"])
    error = json.loads((out / "upper_pole" / "error.json").read_text())
    assert error["status"] == "error" and error["error"] == "NoKidneyFoundError"
    assert "right kidney" in error["message"]
    assert not (out / "upper_pole" / "report.json").exists()
    # without --overwrite an existing output is an error for that study, kept as it was
    again = CliRunner().invoke(app, ["locate", str(good), "--out", str(out), "--quiet"])
    assert again.exit_code == 1 and "exists" in again.output
    assert (out / "good_case" / "roi_left.nii.gz").exists()


def test_locate_cli_missing_input_is_a_usage_error(tmp_path):
    from renalseg.cli.app import app

    result = CliRunner().invoke(app, ["locate", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2


def test_preview_outlines_each_kidney_found_inside_its_box(moved_atlas):
    """The located kidneys' outlines are drawn, each inside its own box."""
    import dataclasses

    from renalseg.preview import _LOCATE_COLOURS, render_locate_preview

    ct, _, rois = moved_atlas
    study = _study(ct, "moved_atlas")
    with_masks = np.asarray(render_locate_preview(study, rois)).astype(int)
    boxes_only = np.asarray(render_locate_preview(study, [dataclasses.replace(r, mask=None) for r in rois])).astype(int)
    for roi in rois:
        colour = np.array(_LOCATE_COLOURS[roi.side])
        outline = (np.abs(with_masks - colour).sum(axis=-1) < 60) & (np.abs(boxes_only - colour).sum(axis=-1) >= 60)
        assert outline.sum() > 150, roi.side  # a kidney's outline in both views, not a few pixels
        box = np.abs(boxes_only - colour).sum(axis=-1) < 60
        for start, stop in render_locate_preview(study, rois).info["panels"].values():
            rows, cols = np.nonzero(outline[:, start:stop])
            box_rows, box_cols = np.nonzero(box[:, start:stop])
            assert len(rows) > 50
            assert box_cols.min() - 3 <= cols.min() and cols.max() <= box_cols.max() + 3
            assert box_rows.min() - 3 <= rows.min() and rows.max() <= box_rows.max() + 3
