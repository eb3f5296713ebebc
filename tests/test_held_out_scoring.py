"""Held-out scoring of a four-structure model as `renalseg segment` writes it
(renalseg.metrics.structure_scores, recipes/evaluate_shipped.py's by-structure path)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from renalseg.errors import InputError, UsageError
from renalseg.metrics import FOUND_NAMES, structure_scores
from renalseg.quality import measure_scan
from renalseg.segmenter import ModelSpec, Segmenter
from renalseg.weights import ModelCard

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "evaluate_shipped.py"
VEIN, KIDNEY, ARTERY, TUMOUR = 1, 2, 3, 4
FIVE = {"0": "background", "1": "renal_vein", "2": "kidney", "3": "renal_artery", "4": "tumour"}
SPACING = (0.7, 0.7, 1.0)


def load_recipe():
    spec = importlib.util.spec_from_file_location("evaluate_shipped", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def hand_made(tumour: bool = True) -> np.ndarray:
    """A KiPA22 truth: kidney block, a tumour on it, a vein rod and an artery rod beside it."""
    truth = np.zeros((30, 24, 40), np.uint8)
    truth[5:25, 4:20, 4:16] = KIDNEY
    if tumour:
        truth[8:14, 6:12, 6:12] = TUMOUR
    truth[2:28, 10:14, 22:26] = VEIN
    truth[2:28, 10:12, 30:32] = ARTERY
    return truth


def test_structure_scores_on_hand_made_maps():
    truth = hand_made()
    written = truth.copy()
    written[2:15, 10:14, 22:26] = ARTERY        # the lower half of the vein labelled artery
    written[5:25, 4:20, 16] = KIDNEY            # the kidney one slab too wide
    written[8:14, 6:12, 6:9] = KIDNEY           # half the tumour missed
    s = structure_scores(written, truth, SPACING)
    true_vein = truth == VEIN
    assert s["vein_as_artery"] == pytest.approx(13 / 26)
    assert s["artery_as_vein"] == 0.0
    for key, value in (("vein", VEIN), ("kidney", KIDNEY), ("artery", ARTERY), ("tumour", TUMOUR)):
        assert s[f"dice_{key}"] == pytest.approx(dice(written == value, truth == value)), key
    assert s["dice_vein"] == pytest.approx(2 * 13 / (13 + 26))
    assert s["dice_tumour"] == pytest.approx(2 * 108 / (108 + 216))
    assert math.isnan(s["tumour_ml_where_none"])
    # the artery's own figures see the vein taken for artery: found everywhere, but far off
    assert s["found_0-2mm"] == 1.0 and s["artery_hd95_mm"] > 5.0
    assert set(FOUND_NAMES) <= set(s)
    # an artery-only model: the artery's figures and the vein it takes, nothing of what it does not label
    only = structure_scores(np.where(written == ARTERY, ARTERY, 0), truth, SPACING, structures=("artery",))
    assert set(only) == {"dice_artery", "vein_as_artery", "artery_hd95_mm", "artery_mcd_mm", *FOUND_NAMES}
    assert only["dice_artery"] == s["dice_artery"] and only["vein_as_artery"] == s["vein_as_artery"]
    assert true_vein.sum() == 26 * 16


def test_a_tumour_is_scored_only_where_there_is_one():
    truth = hand_made(tumour=False)
    written = truth.copy()
    written[8:14, 6:12, 6:12] = TUMOUR         # a tumour where none is: 216 voxels of 0.49 mm³
    s = structure_scores(written, truth, SPACING)
    assert math.isnan(s["dice_tumour"])
    assert s["tumour_ml_where_none"] == pytest.approx(216 * 0.49 / 1000, abs=1e-4)
    assert s["dice_vein"] == 1.0 and s["vein_as_artery"] == 0.0


def test_structure_scores_refuse_bad_input():
    with pytest.raises(InputError, match="different shapes"):
        structure_scores(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), SPACING)
    with pytest.raises(UsageError, match="arteries"):
        structure_scores(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), SPACING, structures=("arteries",))


# -- the recipe's by-structure path: each case through segment_study -----------------------------

BAND_HU = {VEIN: 200.0, KIDNEY: 120.0, ARTERY: 450.0, TUMOUR: 60.0}


def band_predictor(batch: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Five-class one-hot by HU band: what a model that labels by brightness would write."""
    hu = batch * (spec.clip_hu[1] - spec.clip_hu[0]) + spec.clip_hu[0]
    classes = np.zeros(hu.shape, np.int64)
    for value, centre in BAND_HU.items():
        classes[np.abs(hu - centre) < 30] = value
    return np.concatenate([(classes == c).astype(np.float32) for c in range(5)], axis=1)


def write_case(folder: Path, case_id: str, truth: np.ndarray, image_hu: np.ndarray) -> None:
    for kind, array in (("image", image_hu.astype(np.int16)), ("label", truth)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        image.SetOrigin((40.0, -10.0, 100.0))  # the patient's left: one left kidney crop
        (folder / kind).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / kind / f"{case_id}.nii.gz"))


def test_the_recipe_scores_each_structure_as_written_and_compares_a_second_model(tmp_path):
    recipe = load_recipe()
    folder = tmp_path / "four_pv"
    cases = {}
    for case_id, tumour in (("roi_1", True), ("roi_2", False)):
        truth = hand_made(tumour)
        image = np.full(truth.shape, -80.0)
        for value, hu in BAND_HU.items():
            image[truth == value] = hu
        image[2:15, 10:14, 22:26] = BAND_HU[ARTERY]  # the lower vein as bright as the artery
        write_case(folder, case_id, truth, image)
        cases[case_id] = truth
    spec = ModelSpec(classes=FIVE, window_zyx=(16, 24, 24))
    four = Segmenter.from_predictor(lambda b: band_predictor(b, spec), spec)
    artery_spec = ModelSpec(window_zyx=(16, 24, 24))


    def artery_predictor(batch: np.ndarray) -> np.ndarray:
        artery = band_predictor(batch, artery_spec)[:, ARTERY:ARTERY + 1]
        return np.concatenate([1.0 - artery, artery], axis=1)

    artery_only = Segmenter.from_predictor(artery_predictor, artery_spec)
    result = recipe.evaluate_folder_as_written(four, folder, overlap=0.25, compare=artery_only)
    rows = {row["case"]: row for row in result["cases"]}
    for case_id, truth in cases.items():
        row = rows[case_id]
        assert row["vein_as_artery"] == pytest.approx(13 / 26)
        assert row["compare_vein_as_artery"] == pytest.approx(13 / 26)
        assert row["dice_vein"] == pytest.approx(2 * 13 / (13 + 26))
        assert row["dice_kidney"] == pytest.approx(1.0)
        expected_artery = dice((truth == ARTERY) | _lower_vein(truth), truth == ARTERY)
        assert row["dice_artery"] == pytest.approx(expected_artery)
        assert row["compare_dice_artery"] == pytest.approx(expected_artery)
        assert "compare_dice_vein" not in row  # the artery-only model is not scored on what it does not label
        assert row["topology_on"] == 0.0       # both vessels labelled, no aorta or IVC in this crop
        assert math.isnan(row["compare_topology_on"])
    assert rows["roi_1"]["dice_tumour"] == pytest.approx(1.0) and math.isnan(rows["roi_2"]["dice_tumour"])
    summary = result["summary"]
    assert summary["dice_tumour"]["n"] == 1 and summary["dice_vein"]["n"] == 2
    assert summary["compare_topology_on"]["mean"] is None  # undefined: stored as null, not NaN
    assert result["structures"] == ["artery", "vein", "kidney", "tumour"]
    assert result["compare"]["structures"] == ["artery"]
    # what --publish writes: the per-structure figures in the card's metrics, valid JSON
    metrics = recipe.card_metrics({"four_pv": result}, {"val_dice": 0.5}, overlap=0.25)
    held = metrics["held_out"]["four_pv"]
    assert held["cases"] == ["roi_1", "roi_2"] and held["dice_kidney"]["mean"] == pytest.approx(1.0)
    assert held["compare_vein_as_artery"]["mean"] == pytest.approx(0.5)
    assert metrics["compared_with"]["structures"] == ["artery"] and metrics["selection"] == {"val_dice": 0.5}
    card = ModelCard(name="dpa_densebiasnet", classes=FIVE, metrics=metrics)
    assert json.loads(card.to_json(), parse_constant=pytest.fail)["metrics"] == card.metrics
    table = recipe.as_written_table({"four_pv": result})
    assert "| four_pv | evaluated | 0.667 | 1.000 |" in table and "| four_pv | compared |" in table


def _lower_vein(truth: np.ndarray) -> np.ndarray:
    lower = np.zeros(truth.shape, bool)
    lower[2:15, 10:14, 22:26] = True
    return lower & (truth == VEIN)


def test_the_artery_weight_scales_only_the_artery_and_keeps_probabilities_summing_to_one():
    """--artery-weight: a voxel the network calls 40% artery, 60% vein becomes artery at w = 2
    (0.8 against 0.6, renormalised), and the model itself is left as it was."""
    recipe = load_recipe()
    spec = ModelSpec(classes=FIVE, window_zyx=(4, 8, 8))

    def unsure(batch: np.ndarray) -> np.ndarray:
        out = np.zeros((batch.shape[0], 5, *batch.shape[2:]), np.float32)
        out[:, VEIN], out[:, ARTERY] = 0.6, 0.4
        return out

    model = Segmenter.from_predictor(unsure, spec)
    weighted = recipe.with_artery_weight(model, 2.0)
    hu = np.zeros((4, 8, 8), np.float32)
    p = weighted.predict(hu, overlap=0.0)
    assert np.allclose(p.sum(axis=0), 1.0)
    assert np.allclose(p[ARTERY], 0.8 / 1.4) and np.allclose(p[VEIN], 0.6 / 1.4)
    assert np.argmax(p, axis=0).min() == ARTERY
    assert np.allclose(model.predict(hu, overlap=0.0)[ARTERY], 0.4)


def _thick_slices_recipe():
    """recipes/thick_slices.py as a module (recipes are scripts, not part of the package)."""
    spec = importlib.util.spec_from_file_location("thick_slices", RECIPE.with_name("thick_slices.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thick_slice_held_out_cases_keep_the_field_of_view_and_the_truth_in_place(tmp_path):
    """recipes/thick_slices.py makes the thick-slice held-out sets: the image and its truth
    must cover the same physical box on one grid (the scoring compares them voxel by voxel),
    the truth must stay where it was in millimetres, and a case already that thick is copied."""
    thick = _thick_slices_recipe()
    truth = hand_made()
    label = sitk.GetImageFromArray(truth)
    label.SetSpacing(SPACING)
    label.SetOrigin((-12.5, 30.25, 101.0))
    label.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    image = sitk.Cast(label, sitk.sitkInt16) * 100 - 50
    image.CopyInformation(label)
    thick_image = thick.thicken(image, 3.0, label=False)
    thick_label = thick.thicken(label, 3.0, label=True)
    for one in (thick_image, thick_label):
        assert one.GetSpacing() == pytest.approx((0.7, 0.7, 3.0))
        assert one.GetOrigin() == label.GetOrigin() and one.GetDirection() == label.GetDirection()
        assert one.GetSize() == (40, 24, 10)  # 29 mm of slices: 0, 3, ... 27 mm
    assert thick_label.GetPixelID() == label.GetPixelID() and thick_image.GetPixelID() == sitk.sitkInt16

    def centre_mm(img: sitk.Image, value: int) -> np.ndarray:
        idx = np.argwhere(sitk.GetArrayFromImage(img) == value)[:, ::-1].mean(axis=0)
        return np.array(img.TransformContinuousIndexToPhysicalPoint(idx.tolist()))

    for value in (KIDNEY, VEIN):
        assert np.linalg.norm(centre_mm(thick_label, value) - centre_mm(label, value)) < 1.5
    # the slab average blurs along z only: a row of the kidney block keeps its in-plane edge
    row = sitk.GetArrayFromImage(thick_image)[5, 12]
    assert row[5] == 150 and row[17] == -50
    folder = tmp_path / "src"
    for sub, img in (("image", image), ("label", label)):
        (folder / sub).mkdir(parents=True)
        sitk.WriteImage(img, str(folder / sub / "c1.nii.gz"))
    (folder / "cases.json").write_text(json.dumps({"kind": "roi", "cases": [{"case": "c1"}]}))
    for mm, name in ((3.0, "z3"), (1.0, "z1")):
        subprocess.run([sys.executable, str(RECIPE.with_name("thick_slices.py")), str(folder), str(tmp_path / name),
                        "--slice-mm", str(mm)], check=True, capture_output=True)
    assert sitk.ReadImage(str(tmp_path / "z3" / "label" / "c1.nii.gz")).GetSize() == (40, 24, 10)
    assert (tmp_path / "z1" / "image" / "c1.nii.gz").read_bytes() == (folder / "image" / "c1.nii.gz").read_bytes()
    assert json.loads((tmp_path / "z3" / "cases.json").read_text())["cases"][0]["thick_slice_mm"] == 3.0


def test_noisy_held_out_cases_add_the_asked_noise_on_the_same_grid_and_leave_the_truth(tmp_path):
    """recipes/thick_slices.py --noise-hu makes the noise-robustness sets: the image keeps
    its grid and mean, gains the asked standard deviation, the same each time, and the
    truth is copied byte for byte."""
    thick = _thick_slices_recipe()
    flat = sitk.Image(48, 40, 30, sitk.sitkInt16) + 40
    flat.SetSpacing(SPACING)
    flat.SetOrigin((-12.5, 30.25, 101.0))
    noisy = sitk.GetArrayFromImage(thick.add_noise(flat, 30.0, seed=7)).astype(float)
    assert noisy.std() == pytest.approx(30.0, rel=0.02) and noisy.mean() == pytest.approx(40.0, abs=1.0)
    # neighbours correlate as a reconstruction makes them, not as white noise
    assert 0.2 < np.corrcoef(noisy[:, :, 1:].ravel(), noisy[:, :, :-1].ravel())[0, 1] < 0.8
    folder = tmp_path / "src"
    label = sitk.GetImageFromArray(hand_made())
    label.SetSpacing(SPACING)
    for sub, img in (("image", sitk.Cast(label, sitk.sitkInt16) * 100 - 50), ("label", label)):
        img.CopyInformation(label)
        (folder / sub).mkdir(parents=True)
        sitk.WriteImage(img, str(folder / sub / "c1.nii.gz"))
    (folder / "cases.json").write_text(json.dumps({"kind": "roi", "cases": [{"case": "c1", "seed": 3}]}))
    for name in ("n1", "n2"):
        subprocess.run([sys.executable, str(RECIPE.with_name("thick_slices.py")), str(folder), str(tmp_path / name),
                        "--noise-hu", "30"], check=True, capture_output=True)
    written = sitk.ReadImage(str(tmp_path / "n1" / "image" / "c1.nii.gz"))
    assert written.GetSize() == label.GetSize() and written.GetSpacing() == pytest.approx(SPACING)
    assert (tmp_path / "n1" / "image" / "c1.nii.gz").read_bytes() == (tmp_path / "n2" / "image" / "c1.nii.gz").read_bytes()
    assert (tmp_path / "n1" / "label" / "c1.nii.gz").read_bytes() == (folder / "label" / "c1.nii.gz").read_bytes()
    assert json.loads((tmp_path / "n1" / "cases.json").read_text())["cases"][0]["added_noise_hu"] == 30.0


def test_training_phantoms_drawn_on_a_scanner_grid_with_more_noise_keep_the_box_in_mm(tmp_path):
    """recipes/make_training_phantoms.py --spacing-mm --noise-hu makes the held-out sets that
    stand for a real scan (a 1.5 mm CTA measuring 36 HU): the case is rendered on that grid
    with that noise, the box stays about as wide in millimetres as on the model grid (not 152
    of the coarser voxels), and the index records what was asked."""
    out = tmp_path / "r15"
    subprocess.run([sys.executable, str(RECIPE.with_name("make_training_phantoms.py")), str(out), "--seeds", "9600-9600",
                    "--phase", "arterial", "--spacing-mm", "1.5,1.5,1.5", "--noise-hu", "36-36"],
                   check=True, capture_output=True)
    image = sitk.ReadImage(str(out / "image" / "roi_09600.nii.gz"))
    label = sitk.ReadImage(str(out / "label" / "roi_09600.nii.gz"))
    assert image.GetSpacing() == pytest.approx((1.5, 1.5, 1.5)) and label.GetSize() == image.GetSize()
    width_mm = [image.GetSize()[a] * 1.5 for a in (0, 1)]
    assert all(152 * 0.7 <= w < 152 * 1.5 for w in width_mm), width_mm
    index = json.loads((out / "cases.json").read_text())
    assert index["spacing_xyz_mm"] == [1.5, 1.5, 1.5]
    assert index["cases"][0]["options"]["noise_range_hu"] == [36.0, 36.0]
    whole = SimpleNamespace(start_zyx=(0, 0, 0), shape_zyx=image.GetSize()[::-1], side="left")
    assert measure_scan(image, [whole])["noise_hu"] == pytest.approx(36.0, rel=0.15)


def test_training_phantoms_can_carry_a_left_renal_vein_behind_the_aorta(tmp_path):
    """--vein-behind-aorta-share S draws, per seed and from a stream of its own, which cases
    get a retroaortic or circumaortic left renal vein; the index records the course, and a
    case left out of the share is drawn as it always was."""
    script = str(RECIPE.with_name("make_training_phantoms.py"))
    common = ["--seeds", "9600-9601", "--phase", "arterial", "--spacing-mm", "3,3,3"]
    subprocess.run([sys.executable, script, str(tmp_path / "all"), *common, "--vein-behind-aorta-share", "1"],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, script, str(tmp_path / "none"), *common, "--vein-behind-aorta-share", "0"],
                   check=True, capture_output=True)
    courses = [c["options"].get("left_renal_vein") for c in json.loads((tmp_path / "all" / "cases.json").read_text())
               ["cases"]]
    assert len(courses) == 2 and set(courses) <= {"retroaortic", "circumaortic"}
    assert all("left_renal_vein" not in c["options"]
               for c in json.loads((tmp_path / "none" / "cases.json").read_text())["cases"])


def test_training_phantoms_can_be_drawn_as_a_low_kvp_scan_shows_iodine(tmp_path):
    """--iodine-gain G: each iodine tissue's HU above 40 times G (the aorta of an 80 kVp CTA
    where 120 kVp shows 400), bone's less, fat and muscle as they were; the anatomy the same."""
    from renalseg.phantom.tissues import DEFAULT_INTENSITY_RANGES_HU, TISSUE_IDS, iodine_gain_ranges

    ranges = iodine_gain_ranges(1.6)
    assert ranges["aorta"] == pytest.approx((40 + 1.6 * 210, 40 + 1.6 * 460))
    assert ranges["kidney_medulla"][0] == DEFAULT_INTENSITY_RANGES_HU["kidney_medulla"][0] == 40.0
    assert ranges["bone_cortical"] == pytest.approx((400 * 1.36, 1200 * 1.36))
    assert "fat" not in ranges and "muscle" not in ranges
    assert iodine_gain_ranges(1.0) == {k: DEFAULT_INTENSITY_RANGES_HU[k] for k in ranges}
    script = str(RECIPE.with_name("make_training_phantoms.py"))
    common = ["--seeds", "9600-9600", "--phase", "arterial", "--spacing-mm", "3,3,3"]
    for name, extra in (("plain", []), ("bright", ["--iodine-gain", "2"])):
        subprocess.run([sys.executable, script, str(tmp_path / name), *common, *extra], check=True, capture_output=True)
    image = {n: sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / n / "image" / "roi_09600.nii.gz")))
             for n in ("plain", "bright")}
    tissue = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plain" / "tissue" / "roi_09600.nii.gz")))
    assert np.array_equal(tissue, sitk.GetArrayFromImage(
        sitk.ReadImage(str(tmp_path / "bright" / "tissue" / "roi_09600.nii.gz"))))
    aorta, fat = tissue == TISSUE_IDS["aorta"], tissue == TISSUE_IDS["fat"]
    plain, bright = (float(np.median(image[n][aorta])) for n in ("plain", "bright"))
    assert bright - 40 == pytest.approx(2 * (plain - 40), rel=0.15)
    assert np.median(image["bright"][fat]) == pytest.approx(np.median(image["plain"][fat]), abs=10)
