"""The paper's metrics against analytic values and a brute-force implementation."""

from __future__ import annotations

import json
import math

import numpy as np
from scipy import ndimage
import pytest
from conftest import LPS, OBLIQUE_30DEG
from scipy.spatial.distance import cdist
from typer.testing import CliRunner

from renalseg.cli.app import app
from renalseg.errors import GeometryError, UsageError
from renalseg.geometry import Geometry
from renalseg.io.image import write_image
from renalseg.metrics import evaluate_case, evaluate_masks, evaluate_pairs, summarize
from renalseg.tree import centerline
from renalseg.volume import Volume

SPACING = (0.6, 0.5, 0.8)  # x, y, z mm: anisotropic so axis mix-ups show


def sphere(shape, centre_zyx_mm, radius_mm, spacing_xyz=SPACING):
    points = np.indices(shape).reshape(3, -1).T * np.asarray(spacing_xyz)[::-1]
    return (np.linalg.norm(points - np.asarray(centre_zyx_mm), axis=1) <= radius_mm).reshape(shape)


def brute_force(pred, gt, spacing_xyz):
    """Straightforward version: explicit 6-neighbour (MSD) and 3 × 3 × 3 (KiPA22: HD, HD95) surfaces and
    all-pairs distances."""
    spacing_zyx = np.asarray(spacing_xyz)[::-1]

    def surface(mask):
        padded = np.pad(mask, 1)
        out = np.zeros_like(mask)
        for z, y, x in np.argwhere(mask):
            z, y, x = z + 1, y + 1, x + 1
            ring = [padded[z - 1, y, x], padded[z + 1, y, x], padded[z, y - 1, x],
                    padded[z, y + 1, x], padded[z, y, x - 1], padded[z, y, x + 1]]
            out[z - 1, y - 1, x - 1] = not all(ring)
        return out

    def kipa_surface(mask):
        padded = np.pad(mask, 1)
        out = np.zeros_like(mask)
        for z, y, x in np.argwhere(mask):
            out[z, y, x] = not padded[z:z + 3, y:y + 3, x:x + 3].all()
        return out

    def directed(a, b):
        return cdist(np.argwhere(a) * spacing_zyx, np.argwhere(b) * spacing_zyx).min(axis=1)

    sp, sg = surface(pred), surface(gt)
    d_pg, d_gp = directed(sp, sg), directed(sg, sp)
    kp, kg = kipa_surface(pred), kipa_surface(gt)
    k_pg, k_gp = directed(kp, kg), directed(kg, kp)
    cp, cg = centerline(pred, spacing_xyz), centerline(gt, spacing_xyz)
    return {
        "dice": 2 * (pred & gt).sum() / (pred.sum() + gt.sum()),
        "mcd_mm": max(directed(cp, cg).mean(), directed(cg, cp).mean()),
        "msd_mm": max(d_pg.mean(), d_gp.mean()),
        "hd_mm": max(k_pg.max(), k_gp.max()),
        "hd95_mm": max(np.percentile(k_pg, 95), np.percentile(k_gp, 95)),
    }


def test_identical_masks_are_perfect():
    mask = sphere((20, 24, 22), (8.0, 6.0, 6.5), 3.5)
    metrics = evaluate_masks(mask, mask, SPACING)
    assert metrics == {"dice": 1.0, "mcd_mm": 0.0, "msd_mm": 0.0, "hd_mm": 0.0, "hd95_mm": 0.0}


def test_sphere_shifted_by_2mm_matches_analytic_dice_and_hd():
    r, d = 6.0, 2.0
    shape = (30, 40, 36)
    a = sphere(shape, (12.0, 10.0, 10.0), r, (0.5, 0.5, 0.5))
    b = sphere(shape, (12.0, 10.0, 10.0 + d), r, (0.5, 0.5, 0.5))  # +2 mm along x
    metrics = evaluate_masks(a, b, (0.5, 0.5, 0.5))
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12  # intersection of two balls
    assert metrics["dice"] == pytest.approx(lens / (4 / 3 * math.pi * r ** 3), abs=0.03)
    assert metrics["hd_mm"] == pytest.approx(d, abs=0.5)  # within one voxel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (14, 16, 15)
    pred = sphere(shape, rng.uniform(4, 6, 3), rng.uniform(2.0, 3.0))
    gt = sphere(shape, rng.uniform(4, 6, 3), rng.uniform(2.0, 3.0))
    gt[rng.integers(0, 14), rng.integers(0, 16), rng.integers(0, 15)] = True  # a stray voxel
    fast, slow = evaluate_masks(pred, gt, SPACING), brute_force(pred, gt, SPACING)
    for key, value in slow.items():
        assert fast[key] == pytest.approx(value, abs=1e-9), key


def test_empty_masks_have_defined_values():
    empty = np.zeros((5, 5, 5), bool)
    full = empty.copy()
    full[1:4, 1:4, 1:4] = True
    assert evaluate_masks(empty, empty, SPACING) == {"dice": 1.0, "mcd_mm": 0.0, "msd_mm": 0.0,
                                                     "hd_mm": 0.0, "hd95_mm": 0.0}
    one = evaluate_masks(empty, full, SPACING)
    assert one["dice"] == 0.0 and all(math.isnan(one[k]) for k in ("mcd_mm", "msd_mm", "hd_mm", "hd95_mm"))
    summary = summarize([one, evaluate_masks(full, full, SPACING)])
    assert summary["hd_mm"] == {"mean": 0.0, "std": 0.0, "n": 1}
    assert summary["dice"]["n"] == 2 and summary["dice"]["mean"] == 0.5


def _volume(mask, direction=LPS, origin=(10.0, -20.0, 5.0), spacing=SPACING):
    return Volume(mask.astype(np.uint8), Geometry(mask.shape, spacing, origin, direction))


def test_grids_must_match_or_be_resampled():
    mask = sphere((16, 18, 20), (6.0, 4.5, 6.0), 2.5)
    gt = _volume(mask)
    moved = _volume(mask, origin=(10.0, -20.0, 5.0 + 0.8))  # one slice off
    with pytest.raises(GeometryError, match="different grids"):
        evaluate_case(moved, gt)
    resampled = evaluate_case(moved, gt, resample=True)
    assert resampled["dice"] < 1.0 and resampled["hd_mm"] == pytest.approx(0.8, abs=1e-6)


def test_multi_label_truth_needs_gt_label():
    mask = sphere((16, 18, 20), (6.0, 4.5, 6.0), 2.5)
    truth = mask.astype(np.uint8) * 3
    truth[0, 0, :4] = 1  # KiPA-like: another structure labelled 1
    pred, gt = _volume(mask), Volume(truth, _volume(mask).geometry)
    with pytest.raises(UsageError, match="--gt-label"):
        evaluate_case(pred, gt)
    assert evaluate_case(pred, gt, gt_label=3)["dice"] == 1.0


def _write_cases(root, names, shift_mm=0.0, direction=OBLIQUE_30DEG):
    for i, name in enumerate(names):
        mask = sphere((16, 18, 20), (6.0, 4.5, 6.0 + shift_mm), 2.5 + 0.2 * i)
        write_image(_volume(mask, direction), root / f"{name}.nii.gz")


def test_evaluate_pairs_and_cli(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    _write_cases(tmp_path / "pred", ["case_b", "case_a"], shift_mm=0.6)
    _write_cases(tmp_path / "gt", ["case_a", "case_b", "case_c"])
    rows = evaluate_pairs([tmp_path / "pred"], [tmp_path / "gt"])
    assert [r["case"] for r in rows] == ["case_a", "case_b"]
    assert all(0 < r["dice"] < 1 for r in rows)
    out = tmp_path / "metrics.csv"
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("case,dice,mcd_mm,msd_mm,hd_mm,hd95_mm") and len(lines) == 3
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["summary"]["dice"]["n"] == 2
    assert doc["cases"][0]["dice"] == pytest.approx(rows[0]["dice"])
    # a prediction without truth is a usage error naming it
    _write_cases(tmp_path / "pred", ["case_zz"])
    bad = CliRunner().invoke(app, ["evaluate", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")])
    assert bad.exit_code == 2 and "case_zz" in bad.output


def test_segment_output_folders_match_by_folder_name(tmp_path):
    mask = sphere((16, 18, 20), (6.0, 4.5, 6.0), 2.5)
    write_image(_volume(mask), tmp_path / "results" / "p01" / "labels.nii.gz")
    write_image(_volume(mask), tmp_path / "results" / "p02" / "labels.nii.gz")
    write_image(_volume(mask), tmp_path / "truth" / "p01.nii.gz")
    write_image(_volume(mask), tmp_path / "truth" / "p02.nii.gz")
    rows = evaluate_pairs([tmp_path / "results"], [tmp_path / "truth"])
    assert [(r["case"], r["dice"]) for r in rows] == [("p01", 1.0), ("p02", 1.0)]


def test_cli_evaluate_json_with_kipa_truth(tmp_path):
    mask = sphere((16, 18, 20), (6.0, 4.5, 6.0), 2.5)
    truth = mask.astype(np.uint8) * 3
    truth[0, 0, :3] = 2  # kidney label elsewhere
    write_image(_volume(mask), tmp_path / "pred.nii.gz")
    write_image(Volume(truth, _volume(mask).geometry), tmp_path / "truth.nii.gz")
    runner = CliRunner()
    refused = runner.invoke(app, ["evaluate", str(tmp_path / "pred.nii.gz"), "--gt", str(tmp_path / "truth.nii.gz")])
    assert refused.exit_code == 2 and "--gt-label" in refused.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred.nii.gz"), "--gt", str(tmp_path / "truth.nii.gz"),
                                 "--gt-label", "3", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["cases"][0]["dice"] == 1.0 and doc["summary"]["hd_mm"]["mean"] == 0.0
    # an empty prediction: NaN distances become null in JSON, never a crash
    write_image(_volume(np.zeros_like(mask)), tmp_path / "empty.nii.gz")
    empty = runner.invoke(app, ["evaluate", str(tmp_path / "empty.nii.gz"), "--gt", str(tmp_path / "truth.nii.gz"),
                                "--gt-label", "3", "--json"])
    assert empty.exit_code == 0, empty.output
    case = json.loads(empty.stdout)["cases"][0]
    assert case["dice"] == 0.0 and case["hd_mm"] is None


def test_cli_evaluate_structures_scores_each_against_kipa_truth(tmp_path):
    """--structures: one row per case and structure against KiPA22 truth, the prediction's
    values from a segment folder's labels.json; a structure the truth lacks is n/a with the
    volume labelled there; a structure the prediction does not label scores Dice 0."""
    shape = (16, 18, 20)
    kidney = sphere(shape, (6.0, 4.5, 8.0), 3.0)
    tube = np.zeros(shape, bool)
    tube[2:14, 2, 2] = True
    truth = np.zeros(shape, np.uint8)
    truth[kidney], truth[tube] = 2, 3  # KiPA22: 2 kidney, 3 artery; no vein, no tumour
    written = truth.copy()
    written[kidney & (np.indices(shape)[2] > 12)] = 4  # part of the kidney labelled tumour
    geometry = _volume(kidney).geometry
    write_image(Volume(truth, geometry), tmp_path / "truth" / "p01.nii.gz")
    write_image(Volume(written, geometry), tmp_path / "results" / "p01" / "labels.nii.gz")
    (tmp_path / "results" / "p01" / "labels.json").write_text(json.dumps(
        {"0": "background", "1": "renal_vein", "2": "kidney", "3": "renal_artery", "4": "tumour"}))
    # the artery-only model's folder: its artery is value 1 and it labels nothing else
    artery_only = np.where(truth == 3, 1, 0).astype(np.uint8)
    write_image(Volume(artery_only, geometry), tmp_path / "artery_only" / "p01" / "labels.nii.gz")
    (tmp_path / "artery_only" / "p01" / "labels.json").write_text(json.dumps({"0": "background",
                                                                              "1": "renal_artery"}))
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "results"), "--gt", str(tmp_path / "truth"),
                                 "--structures", "all", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {r["structure"]: r for r in doc["cases"]}
    assert list(rows) == ["artery", "vein", "kidney", "tumour"]
    voxel_ml = geometry.voxel_volume_mm3 / 1000
    kept = (written == 2).sum()
    assert rows["artery"]["dice"] == 1.0 and rows["artery"]["found_0-2mm"] == 1.0
    assert rows["kidney"]["dice"] == pytest.approx(2 * kept / (kept + kidney.sum()))
    assert rows["vein"]["dice"] is None and rows["tumour"]["dice"] is None  # the truth holds neither
    assert rows["tumour"]["pred_volume_ml"] == pytest.approx((written == 4).sum() * voxel_ml, abs=1e-4)
    assert "found_0-2mm" not in rows["kidney"] and rows["kidney"]["mcd_mm"] is None  # centerlines: vessels'
    assert rows["artery"]["mcd_mm"] == 0.0 and rows["kidney"]["hd95_mm"] > 0
    assert set(doc["summary"]) == {"artery", "vein", "kidney", "tumour"}
    assert doc["summary"]["kidney"]["dice"]["n"] == 1 and doc["summary"]["tumour"]["dice"]["n"] == 0
    only = runner.invoke(app, ["evaluate", str(tmp_path / "artery_only"), "--gt", str(tmp_path / "truth"),
                               "--structures", "artery,kidney", "--json"])
    assert only.exit_code == 0, only.output
    scored = {r["structure"]: r["dice"] for r in json.loads(only.stdout)["cases"]}
    assert scored == {"artery": 1.0, "kidney": 0.0}  # its artery found by labels.json, no kidney labelled
    for bad, words in ((["--structures", "arteries"], "unknown structure"),
                       (["--structures", "all", "--gt-label", "3"], "leave out --label")):
        refused = runner.invoke(app, ["evaluate", str(tmp_path / "results"), "--gt", str(tmp_path / "truth"), *bad])
        assert refused.exit_code == 2 and words in refused.output, refused.output
    # without --structures a KiPA22 truth asks which value is the artery, and says --structures exists
    plain = runner.invoke(app, ["evaluate", str(tmp_path / "artery_only"), "--gt", str(tmp_path / "truth")])
    assert plain.exit_code == 2 and "--structures" in plain.output


def test_cli_evaluate_a_second_truth_after_one_gt_is_named_and_n_counts_the_cases_scored(tmp_path):
    """`--gt a b` gives b to the predictions (an option takes one value): the refusal says
    to repeat --gt. The table's mean row counts the cases a structure was scored in: a
    tumour in one of two cases is n=1, not 2."""
    shape = (16, 18, 20)
    kidney = sphere(shape, (6.0, 4.5, 8.0), 3.0)
    geometry = _volume(kidney).geometry
    for case, with_tumour in (("p01", True), ("p02", False)):
        truth = np.where(kidney, 2, 0).astype(np.uint8)
        if with_tumour:
            truth[kidney & (np.indices(shape)[2] > 12)] = 4
        write_image(Volume(truth, geometry), tmp_path / "truth" / f"{case}.nii.gz")
        write_image(Volume(truth, geometry), tmp_path / "results" / case / "labels.nii.gz")
        (tmp_path / "results" / case / "labels.json").write_text(json.dumps(
            {"0": "background", "2": "kidney", "4": "tumour"}))
    runner = CliRunner()
    preds = [str(tmp_path / "results" / "p01"), str(tmp_path / "results" / "p02")]
    wrong = runner.invoke(app, ["evaluate", *preds, "--gt", str(tmp_path / "truth" / "p01.nii.gz"),
                                str(tmp_path / "truth" / "p02.nii.gz"), "--structures", "kidney,tumour"])
    assert wrong.exit_code == 2
    assert "p02.nii.gz lies beside the truth but was read as a prediction" in " ".join(wrong.output.split())
    assert "--gt A --gt B" in wrong.output
    right = runner.invoke(app, ["evaluate", *preds, "--gt", str(tmp_path / "truth" / "p01.nii.gz"), "--gt",
                                str(tmp_path / "truth" / "p02.nii.gz"), "--structures", "kidney,tumour"],
                          env={"COLUMNS": "250"})
    assert right.exit_code == 0, right.output
    means = [line for line in right.output.splitlines() if "mean ± std" in line]
    assert len(means) == 2 and "kidney" in means[0] and "(n=2)" in means[0]
    assert "tumour" in means[1] and "(n=1)" in means[1] and "1.0000 ± 0.0000" in means[1]


def _two_vessels(spacing_xyz=SPACING):
    """A thick (radius 2.5 mm) and a thin (radius 0.6 mm) rod along z, apart in x."""
    shape = (40, 30, 50)
    zyx = np.indices(shape) * np.asarray(spacing_xyz)[::-1].reshape(3, 1, 1, 1)
    thick = ((zyx[1] - 7.5) ** 2 + (zyx[2] - 8.0) ** 2 <= 2.5 ** 2) & (zyx[0] > 3) & (zyx[0] < 28)
    thin = ((zyx[1] - 7.5) ** 2 + (zyx[2] - 22.0) ** 2 <= 0.6 ** 2) & (zyx[0] > 3) & (zyx[0] < 28)
    return thick, thin


def test_centerline_recall_by_diameter_separates_thick_and_thin_vessels():
    from renalseg.metrics import centerline_recall_by_diameter

    thick, thin = _two_vessels()
    gt = thick | thin
    bands = ((0.0, 2.0), (2.0, math.inf))
    only_thick = centerline_recall_by_diameter(thick, gt, SPACING, bands_mm=bands)
    assert only_thick["0-2mm"]["recall"] == 0.0
    assert only_thick["2mm+"]["recall"] == 1.0
    # both bands hold about the rods' 24 mm of length
    assert 15 < only_thick["0-2mm"]["length_mm"] < 35 and 15 < only_thick["2mm+"]["length_mm"] < 35
    assert centerline_recall_by_diameter(gt, gt, SPACING, bands_mm=bands)["0-2mm"]["recall"] == 1.0
    assert centerline_recall_by_diameter(np.zeros_like(gt), gt, SPACING, bands_mm=bands)["2mm+"]["recall"] == 0.0


def test_centerline_recall_counts_a_branch_found_one_voxel_off_but_not_two():
    from renalseg.metrics import centerline_recall_by_diameter

    _, thin = _two_vessels()
    one_off = np.roll(thin, 2, axis=2)   # moved 1.2 mm: its edge 0.6 mm from the true centerline (< 0.8 mm voxel)
    far_off = np.roll(thin, 6, axis=2)   # moved 3.6 mm: its edge 3 mm away, a different vessel
    assert centerline_recall_by_diameter(one_off, thin, SPACING)["0-2mm"]["recall"] == 1.0
    assert centerline_recall_by_diameter(far_off, thin, SPACING)["0-2mm"]["recall"] == 0.0


def test_centerline_recall_without_truth_is_nan_and_shapes_must_match():
    from renalseg.errors import InputError
    from renalseg.metrics import centerline_recall_by_diameter

    empty = np.zeros((10, 10, 10), bool)
    result = centerline_recall_by_diameter(empty, empty, SPACING)
    assert all(math.isnan(r["recall"]) and r["length_mm"] == 0.0 for r in result.values())
    with pytest.raises(InputError, match="different shapes"):
        centerline_recall_by_diameter(empty, np.zeros((10, 10, 11), bool), SPACING)


def test_cli_evaluate_reports_which_vessel_calibres_were_found(tmp_path):
    thick, thin = _two_vessels()
    write_image(_volume(thick), tmp_path / "pred.nii.gz")            # the thin vessel missed
    write_image(_volume(thick | thin), tmp_path / "truth.nii.gz")
    out = tmp_path / "metrics.csv"
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "pred.nii.gz"), "--gt", str(tmp_path / "truth.nii.gz"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "share of the true centerline found" in " ".join(result.output.split())
    case = json.loads(out.with_suffix(".json").read_text())["cases"][0]
    assert case["found_0-2mm"] == 0.0 and case["found_4mm+"] == 1.0
    assert case["found_2-4mm"] is None          # no vessel of 2-4 mm in the truth: undefined, not 0
    assert "found_0-2mm" in out.read_text().splitlines()[0]


@pytest.mark.parametrize("radius_mm", [1.0, 1.6, 2.5])
def test_centerline_diameter_estimate_is_within_a_voxel(radius_mm):
    from renalseg.metrics import centerline_recall_by_diameter

    spacing = (0.5, 0.5, 0.8)
    shape = (30, 40, 40)
    zyx = np.indices(shape) * np.asarray(spacing)[::-1].reshape(3, 1, 1, 1)
    rod = ((zyx[1] - 10.0) ** 2 + (zyx[2] - 10.0) ** 2 <= radius_mm ** 2) & (zyx[0] > 3) & (zyx[0] < 20)
    d = 2 * radius_mm  # the estimate is quantised to the grid: within one voxel side of 2 r
    near = centerline_recall_by_diameter(rod, rod, spacing, bands_mm=((d - 0.5, d + 0.5),))
    everything = centerline_recall_by_diameter(rod, rod, spacing, bands_mm=((0, math.inf),))
    assert list(near.values())[0]["length_mm"] >= 0.9 * list(everything.values())[0]["length_mm"] > 5


def test_hd_uses_the_kipa22_evaluator_surface():
    """The surface is ITK's SimpleContourExtractor's (what KiPA22's evaluation.py measures HD on)."""
    import SimpleITK as sitk

    from renalseg.metrics import surface_voxels

    rng = np.random.default_rng(3)
    mask = np.pad(ndimage.gaussian_filter(rng.random((12, 14, 13)), 1.5) > 0.5, 1)
    contour = sitk.GetArrayFromImage(sitk.SimpleContourExtractor(sitk.GetImageFromArray(mask.astype(np.uint8))))
    assert np.array_equal(contour > 0, surface_voxels(mask, connectivity=26))
    # where the two surfaces part: the first brute-force case (two spheres and a stray voxel)
    rng = np.random.default_rng(0)
    shape = (14, 16, 15)
    pred = sphere(shape, rng.uniform(4, 6, 3), rng.uniform(2.0, 3.0))
    gt = sphere(shape, rng.uniform(4, 6, 3), rng.uniform(2.0, 3.0))
    gt[rng.integers(0, 14), rng.integers(0, 16), rng.integers(0, 15)] = True
    box = ndimage.find_objects((pred | gt).astype(np.uint8))[0]  # as evaluate_masks crops and pads
    six = [surface_voxels(np.pad(m[box], 1)) for m in (pred, gt)]
    from renalseg.metrics import directed_distances

    old_hd95 = max(np.percentile(directed_distances(six[0], six[1], SPACING), 95),
                   np.percentile(directed_distances(six[1], six[0], SPACING), 95))
    assert round(float(old_hd95), 3) == 2.209  # the 6-neighbour surface's HD95 (before)
    assert round(evaluate_masks(pred, gt, SPACING)["hd95_mm"], 3) == 2.081  # the KiPA22 surface's


def test_evaluate_reads_a_float_truth_of_whole_values_and_refuses_a_probability_map(tmp_path):
    """Truth stored as floats with 2.9999 for the artery scores as 3 (not an empty truth);
    a probability map given as the prediction is refused naming it."""
    g = Geometry((12, 20, 20), (0.8, 0.8, 1.0), (0.0, 0.0, 0.0), LPS)
    truth = np.zeros(g.shape_zyx, np.float32)
    truth[2:10, 8:12, 8:12] = 2.9999
    pred = write_image(Volume((truth > 0).astype(np.uint8) * 3, g), tmp_path / "p" / "c1.nii.gz")
    gt = write_image(Volume(truth, g), tmp_path / "g" / "c1.nii.gz")
    (row,) = evaluate_pairs([pred], [gt], pred_label=3, gt_label=3)
    assert row["dice"] == pytest.approx(1.0) and row["gt_volume_ml"] > 0
    write_image(Volume(truth / 4.0, g), pred, overwrite=True)  # 0.75: a probability
    from renalseg.io.plausibility import NotALabelMapError

    with pytest.raises(NotALabelMapError, match=r"c1\.nii\.gz.*not whole numbers"):
        evaluate_pairs([pred], [gt], pred_label=3, gt_label=3)
