"""renalseg.plan on hand-built label maps and one small phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from renalseg.cli.app import app
from renalseg.errors import GeometryError, InputError, UsageError
from renalseg.geometry import Geometry
from renalseg.io.image import write_image
from renalseg.plan import (PlanConfig, parse_label_map, plan_labels, plan_study, proposed_clamping, region_shares,
                           tumour_region)
from renalseg.volume import Volume

KIPA = {3: "artery", 2: "kidney", 4: "tumour"}
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _t_tree(shape=(44, 30, 64), *, tumour=False, x0=0, kidney=True) -> np.ndarray:
    """A kidney slab (x 30-58) with a T-shaped artery: a trunk from the medial side (x = 2)
    that splits at x = 40 into a superior and an inferior branch (z is superior)."""
    labels = np.zeros(shape, np.uint8)
    if kidney:
        labels[4:40, 6:24, x0 + 30:x0 + 58] = 2
    labels[21:24, 14:17, x0 + 2:x0 + 42] = 3          # trunk along x
    labels[8:37, 14:17, x0 + 39:x0 + 42] = 3          # the two branches along z
    if tumour:
        z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
        ball = (z - 34) ** 2 + (y - 15) ** 2 + (x - x0 - 50) ** 2 <= 16
        labels[ball] = 4
    return labels


def _volume(labels: np.ndarray, spacing=(1.0, 1.0, 1.0), direction=IDENTITY) -> Volume:
    return Volume(labels, Geometry(labels.shape, spacing, (10.0, -20.0, 300.0), direction))


def test_levels_roots_and_names_on_a_hand_built_tree() -> None:
    result = plan_labels(_volume(_t_tree()), KIPA)
    (kidney,) = result.plan["kidneys"]
    assert kidney["side"] == "left"  # the artery comes from -x (medial for a left kidney)
    by_id = {b["id"]: b for b in kidney["branches"]}
    (root,) = kidney["roots"]
    main = by_id[root]
    assert (main["level"], main["name"], main["parent"]) == ("main", "main renal artery", None)
    assert main["start_mm"][0] < 10.0 + 6  # starts at the medial end (x ≈ 2 voxels from the origin)
    children = [by_id[c] for c in main["children"]]
    assert sorted(c["level"] for c in children) == ["segmental", "segmental"]
    upper = max(children, key=lambda c: c["end_mm"][2])
    assert upper["name"] == "segmental 1" and upper["region"].startswith("upper")
    assert 40 < upper["territory_percent"] < 60
    assert all(c["diameter_mean_mm"] > 1.5 for c in children)


def test_territories_partition_the_kidney() -> None:
    labels = _t_tree()
    result = plan_labels(_volume(labels), KIPA)
    territory = result.territories.array
    kidney = labels == 2
    values = {t["value"] for t in result.plan["kidneys"][0]["territories"]}
    assert len(values) == 2
    assert np.all(np.isin(territory[kidney], list(values)))  # every kidney voxel, one territory
    assert not territory[~(kidney | (labels == 4))].any()
    total = sum(t["volume_ml"] for t in result.plan["kidneys"][0]["territories"])
    assert total == pytest.approx(kidney.sum() / 1000, abs=0.02)
    upper = next(t["value"] for t in result.plan["kidneys"][0]["territories"] if t["name"] == "segmental 1")
    assert (territory[30:40][kidney[30:40]] == upper).all()  # the superior end (high z) belongs to the superior branch


def test_feeding_branch_and_clamping_candidate() -> None:
    result = plan_labels(_volume(_t_tree(tumour=True)), KIPA, config=PlanConfig(margin_mm=2.0))
    (kidney,) = result.plan["kidneys"]
    by_id = {b["id"]: b for b in kidney["branches"]}
    assert kidney["status"] == "planned"
    assert [by_id[b]["name"] for b in kidney["tumour"]["feeding"]] == ["segmental 1"]
    clamping = kidney["clamping"]
    assert clamping["strategy"] == "selective"
    assert [c["name"] for c in clamping["candidates"]] == ["segmental 1"]
    assert clamping["coverage_percent"] >= 95
    assert 35 < clamping["ischaemic_percent"] < 65
    assert clamping["fallback"]["names"] == ["main renal artery"] and clamping["fallback"]["ischaemic_percent"] == 100
    assert result.candidates == (clamping["candidates"][0]["branch"],)


def test_tumour_region_and_shares() -> None:
    kidney = np.ones((1, 1, 11), bool)
    tumour = np.zeros_like(kidney)
    tumour[0, 0, 5] = True
    kidney[tumour] = False
    region = tumour_region(tumour, kidney, (1.0, 1.0, 1.0), 3.0)
    assert region.sum() == 7
    assert region_shares(np.array([[[1] * 6 + [2] * 5]]), region) == {1: round(4 / 7, 4), 2: round(3 / 7, 4)}


def test_territories_file_is_on_the_study_grid(tmp_path) -> None:
    # anisotropic, off-origin and flipped (RAS storage): geometry must come back to 1e-4 mm
    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    labels = _volume(_t_tree(tumour=True), spacing=(0.8, 0.9, 1.2), direction=direction)
    path = write_image(labels, tmp_path / "seg.nii.gz")
    result = plan_study(labels=path, label_map=KIPA, out_dir=tmp_path / "plan")
    written = sitk.ReadImage(str(tmp_path / "plan" / "territories.nii.gz"))
    source = sitk.ReadImage(str(path))
    assert written.GetSize() == source.GetSize()
    for a, b in ((written.GetSpacing(), source.GetSpacing()), (written.GetOrigin(), source.GetOrigin()),
                 (written.GetDirection(), source.GetDirection())):
        assert np.allclose(a, b, atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(written), result.territories.array)
    names = json.loads((tmp_path / "plan" / "territories.json").read_text())
    assert {int(k) for k in names} >= set(np.unique(result.territories.array).tolist())
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["schema"] == "renalseg.plan/1" and plan["study"]["labels"] == str(path)
    assert (tmp_path / "plan" / "plan.png").stat().st_size > 1000
    assert not list((tmp_path / "plan").glob(".*"))  # no temporary files left
    # the same territories as a 3D Slicer segmentation, cropped to their box on the
    # study's grid: the same voxels in the same place, one named segment per territory,
    # coloured as plan.png draws it and coded as kidney
    import nrrd

    from renalseg.plan_picture import territory_colours

    voxels, header = nrrd.read(str(tmp_path / "plan" / "territories.seg.nrrd"), index_order="C")
    x0, y0, z0 = (int(v) for v in header["Segmentation_ReferenceImageExtentOffset"].split())
    nz, ny, nx = voxels.shape
    assert np.array_equal(voxels, result.territories.array[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx])
    assert voxels.astype(bool).sum() == result.territories.array.astype(bool).sum()
    seg = sitk.ReadImage(str(tmp_path / "plan" / "territories.seg.nrrd"))
    for a, b in ((seg.GetSpacing(), source.GetSpacing()),
                 (seg.GetOrigin(), source.TransformIndexToPhysicalPoint((x0, y0, z0))),
                 (seg.GetDirection(), source.GetDirection())):
        assert np.allclose(a, b, atol=1e-4)
    segments = {int(header[k.replace("_Name", "_LabelValue")]): (header[k], header[k.replace("_Name", "_Color")],
                                                                 header[k.replace("_Name", "_Tags")])
                for k in header if k.endswith("_Name")}
    colours = territory_colours(plan, set(result.candidates))
    assert set(segments) == set(np.unique(result.territories.array).tolist()) - {0}
    for value, (name, colour, tags) in segments.items():
        assert name == f"{names[str(value)]['side']} kidney: {names[str(value)]['name']}"
        assert [round(float(c) * 255) for c in colour.split()] == list(colours[value])
        assert "SCT^64033007^Kidney" in tags


def test_no_tumour_gives_tree_and_territories() -> None:
    (kidney,) = plan_labels(_volume(_t_tree()), KIPA).plan["kidneys"]
    assert kidney["status"] == "no_tumour" and kidney["tumour"] is None and kidney["clamping"] is None
    assert kidney["territories"] and any("no tumour" in n for n in kidney["notes"])


def test_no_kidney_label_gives_the_tree_only() -> None:
    (kidney,) = plan_labels(_volume(_t_tree(kidney=False)), KIPA).plan["kidneys"]
    assert kidney["status"] == "no_kidney" and kidney["branches"] and not kidney["territories"]
    assert any("no kidney label" in n for n in kidney["notes"])


def test_a_side_without_artery_is_named_and_the_other_side_planned() -> None:
    labels = np.zeros((44, 30, 140), np.uint8)
    labels[:, :, 70:] = _t_tree(shape=(44, 30, 70))      # patient left (+x): kidney with artery
    right = _t_tree(shape=(44, 30, 70))[:, :, ::-1].copy()
    right[right == 3] = 0                                # patient right: kidney, no artery
    labels[:, :, :70] = right
    result = plan_labels(_volume(labels), KIPA, name="seg.nii.gz")
    by_side = {k["side"]: k for k in result.plan["kidneys"]}
    assert by_side["left"]["status"] == "no_tumour" and by_side["left"]["territories"]
    assert by_side["right"]["status"] == "no_artery"
    assert any("no artery label on the right side in seg.nii.gz" in n for n in by_side["right"]["notes"])


def test_a_segment_folder_without_an_artery_label_says_how_to_get_one(tmp_path) -> None:
    """`renalseg segment --structures tumour` writes no artery; planning it is a usage error
    naming its labels.json and saying to segment the artery, not only to pass a label map."""
    study = tmp_path / "tumour_only"
    labels = _t_tree(tumour=True)
    labels[labels != 4] = 0
    write_image(_volume(labels), study / "labels.nii.gz")
    (study / "labels.json").write_text(json.dumps({"0": "background", "4": "tumour"}))
    result = CliRunner().invoke(app, ["plan", str(study)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert str(study / "labels.json") in result.output and "--structures artery,kidney,tumour" in result.output
    assert not (study / "plan.json").exists()


def test_a_kidney_segment_located_none_of_is_said_in_the_plan(tmp_path) -> None:
    """report.json's missing_reasons (a kidney localisation refused, say for a large tumour
    filling its fat) reach plan.json and the command's table: that side is not planned."""
    study = tmp_path / "study"
    write_image(_volume(_t_tree(tumour=True)), study / "labels.nii.gz")
    (study / "labels.json").write_text(json.dumps({"0": "background", "2": "kidney", "3": "renal_artery",
                                                   "4": "tumour"}))
    why = "nothing kidney-like where the right kidney should be (confidence 0.26, at least 0.42 needed)"
    (study / "report.json").write_text(json.dumps({"status": "ok", "missing_sides": ["right"],
                                                   "missing_reasons": {"right": why}}))
    result = CliRunner().invoke(app, ["plan", str(study), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["side"]: row for row in json.loads(result.stdout)}
    assert rows["right"]["status"] == "not_located" and "confidence 0.26" in rows["right"]["notes"][0]
    assert rows["left"]["status"] == "planned"
    plan = json.loads((study / "plan.json").read_text())
    assert plan["study"]["not_located"] == {"right": why}
    from renalseg.plan_picture import banner_text
    assert "right kidney not located by renalseg segment, so not planned" in banner_text(plan)


def test_the_report_says_why_a_kidney_has_no_proposal(tmp_path) -> None:
    """report.html's "Proposed clamping" names every kidney: one without a tumour says so,
    and one segment located none of is not left out (the page is not a plan of one kidney)."""
    pytest.importorskip("plotly")
    study = tmp_path / "study"
    write_image(_volume(_t_tree()), study / "labels.nii.gz")
    (study / "labels.json").write_text(json.dumps({"0": "background", "2": "kidney", "3": "renal_artery"}))
    (study / "report.json").write_text(json.dumps({"status": "ok", "missing_sides": ["right"],
                                                   "missing_reasons": {"right": "cut by the field of view"}}))
    done = CliRunner().invoke(app, ["plan", str(study), "--report", "--quiet"])
    assert done.exit_code == 0, done.output
    page = (study / "report.html").read_text(encoding="utf-8")
    assert "<b>left kidney</b>: no tumour, nothing to clamp" in page
    assert "<b>right kidney</b>: not located by renalseg segment, not planned" in page
    assert "(cut by the field of view)" in page


def test_an_artery_that_stops_short_of_the_kidney_is_no_artery_for_it() -> None:
    """The network's artery may end before the kidney (a gap it left): the tree is listed,
    but no territory, feeding branch or clamp can come of it, so the kidney is not called
    planned (a surgeon reading the summary would take "planned" for a plan)."""
    labels = _t_tree(tumour=True)
    labels[(labels == 3) & (np.indices(labels.shape)[2] >= 24)] = 0  # the trunk stops 6 mm short of the kidney
    (kidney,) = plan_labels(_volume(labels), KIPA, name="seg.nii.gz").plan["kidneys"]
    assert kidney["status"] == "no_artery" and kidney["branches"]
    assert not kidney["territories"] and kidney["clamping"] is None
    assert "no artery branch reaches the left kidney in seg.nii.gz: no territories." in kidney["notes"]


def test_a_second_kidney_piece_on_the_same_side_is_not_taken_for_the_other_kidney() -> None:
    """A piece labelled kidney above the kidney (the spleen, say) must not become the
    "other" kidney and take the side's name away from the kidney and its artery."""
    labels = np.zeros((80, 30, 64), np.uint8)
    labels[:44] = _t_tree()
    labels[56:76, 8:22, 40:60] = 2                      # 5.6 ml of false kidney, 6 mm further left
    result = plan_labels(_volume(labels), KIPA, name="seg.nii.gz")
    (kidney,) = result.plan["kidneys"]
    assert kidney["side"] == "left" and kidney["status"] == "no_tumour" and kidney["territories"]
    assert any("second kidney-labelled piece of 5.6 ml in seg.nii.gz" in n for n in kidney["notes"])


def test_tumour_outside_the_kidney_is_stated_with_its_nearest_branches() -> None:
    labels = _t_tree()
    labels[30:34, 24:28, 10:14] = 4  # beside the trunk, not touching the kidney
    (kidney,) = plan_labels(_volume(labels), KIPA).plan["kidneys"]
    assert kidney["status"] == "tumour_outside_kidney" and kidney["clamping"] is None
    assert kidney["tumour"]["outside_kidney_ml"] > 0
    assert kidney["tumour"]["nearest_branches"][0]["name"] == "main renal artery"
    assert any("does not touch the kidney" in n for n in kidney["notes"])


def test_labels_on_another_grid_name_both_files(tmp_path) -> None:
    study = tmp_path / "study"
    write_image(_volume(_t_tree()), study / "labels.nii.gz")
    (study / "labels.json").write_text(json.dumps({"0": "background", "3": "renal_artery", "2": "kidney"}))
    other = write_image(_volume(_t_tree(), spacing=(1.0, 1.0, 2.0)), tmp_path / "other.nii.gz")
    with pytest.raises(GeometryError, match="other.nii.gz") as err:
        plan_study(study, labels=other, label_map=KIPA)
    assert "labels.nii.gz" in str(err.value)


def test_empty_label_map_names_the_file(tmp_path) -> None:
    path = write_image(_volume(np.zeros((8, 8, 8), np.uint8)), tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="empty.nii.gz"):
        plan_study(labels=path, label_map=KIPA, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_label_map_parsing() -> None:
    assert parse_label_map("3:artery,2:kidney,4:tumour") == KIPA
    with pytest.raises(UsageError, match="Did you mean 'artery'"):
        parse_label_map("3:arteri")
    with pytest.raises(UsageError, match="VALUE:NAME"):
        parse_label_map("three:artery")


def test_cli_plan_with_labels_and_label_map(tmp_path) -> None:
    path = write_image(_volume(_t_tree(tumour=True)), tmp_path / "seg.nii.gz")
    runner = CliRunner()
    ok = runner.invoke(app, ["plan", "--labels", str(path), "--label-map", "3:artery,2:kidney,4:tumour",
                             "--out", str(tmp_path / "plans"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)[0]["clamp"] == ["segmental 1"]
    # a slab of kidney has no sinus to measure from: not scored, and said
    assert json.loads(ok.stdout)[0]["nephrometry"] is None
    assert any("R.E.N.A.L. not scored" in note for note in json.loads(ok.stdout)[0]["notes"])
    assert json.loads((tmp_path / "plans" / "seg" / "plan.json").read_text())["settings"]["min_tumour_piece_ml"] == 0.1
    every = runner.invoke(app, ["plan", "--labels", str(path), "--label-map", "3:artery,2:kidney,4:tumour",
                                "--out", str(tmp_path / "every"), "--min-tumour-ml", "0"])
    assert every.exit_code == 0, every.output
    assert json.loads((tmp_path / "every" / "seg" / "plan.json").read_text())["settings"]["min_tumour_piece_ml"] == 0
    again = runner.invoke(app, ["plan", "--labels", str(path), "--label-map", "3:artery,2:kidney,4:tumour",
                                "--out", str(tmp_path / "plans")])
    assert again.exit_code == 1 and "--overwrite" in again.output
    bad = runner.invoke(app, ["plan", "--labels", str(path), "--label-map", "3:arteri", "--out", str(tmp_path)])
    assert bad.exit_code == 2


def test_small_phantom_truth_and_plan() -> None:
    from renalseg.phantom import synthesize_roi

    case = synthesize_roi(20999, inplane_voxels=96, spacing_xyz_mm=(1.2, 1.2, 1.5), tumour=True, territories=True)
    kidney = case.label.array == 2
    truth = case.territory.array
    assert truth[kidney].min() > 0 and not truth[case.label.array == 0].any()
    assert case.territory.geometry.is_same_grid(case.label.geometry)
    side = case.params["side"]
    assert case.truth["kidneys"][side]["feeding"]
    assert set(case.truth["kidneys"][side]["tumour_percent"]) >= set(case.truth["kidneys"][side]["feeding"])
    result = plan_labels(case.label, KIPA)
    (entry,) = result.plan["kidneys"]
    assert entry["side"] == side and entry["status"] == "planned"
    from renalseg.nephrometry import renal_score

    score = entry["tumour"]["nephrometry"]  # the largest tumour piece on the kidney, scored on the study's grid
    hilar = score.pop("hilar")  # KIPA names no vein: known only where the main artery touches the tumour
    assert hilar["main_vein_mm"] is None and hilar["h"] is (True if hilar["main_artery_mm"] <= 2 else None)
    expected = renal_score(kidney, case.label.array == 4, case.label.geometry)
    assert expected.pop("hilar") is None and score == expected  # no vessels given: no suffix
    assert score["score"] == sum(score[k]["points"] for k in "RENL") and score["suffix"] in "apx"
    plan_map = result.territories.array
    assert plan_map[kidney].min() > 0
    # each plan territory mostly lies in one true territory
    agree = sum(np.bincount(truth[kidney & (plan_map == t["value"])]).max()
                for t in entry["territories"] if (kidney & (plan_map == t["value"])).any())
    assert agree / kidney.sum() > 0.6


def test_each_tumour_piece_is_listed_with_the_branches_that_feed_it() -> None:
    """A second, smaller tumour piece in the other territory: the union feeds from both
    segmental branches, each piece from its own, largest first, with where it lies."""
    labels = _t_tree(tumour=True)
    z, y, x = np.ogrid[:44, :30, :64]
    labels[(z - 9) ** 2 + (y - 15) ** 2 + (x - 52) ** 2 <= 9] = 4  # a smaller piece by the inferior branch
    (kidney,) = plan_labels(_volume(labels), KIPA).plan["kidneys"]
    by_id = {b["id"]: b for b in kidney["branches"]}
    tumour = kidney["tumour"]
    assert len(tumour["feeding"]) == 2
    large, small = tumour["pieces"]
    assert large["volume_ml"] > small["volume_ml"] >= 0.1 and tumour["small_pieces"] == 0
    assert large["region"].startswith("upper") and small["region"].startswith("lower")
    assert large["centre_mm"][2] > small["centre_mm"][2]
    (upper,), (lower,) = large["feeding"], small["feeding"]
    assert by_id[upper]["end_mm"][2] > by_id[lower]["end_mm"][2]  # each fed by the branch beside it
    assert sorted(tumour["feeding"]) == sorted([upper, lower])


def test_a_speck_of_tumour_does_not_add_a_feeding_branch() -> None:
    """A 0.008 ml speck by the inferior branch: with its 5 mm margin it would make that
    branch a feeding one; the plan leaves it out, counts it and says so, and plans it
    when asked to take every piece."""
    labels = _t_tree(tumour=True)
    labels[9:11, 14:16, 49:51] = 4  # 8 voxels of 1 mm: a speck in the inferior territory
    (kidney,) = plan_labels(_volume(labels), KIPA).plan["kidneys"]
    tumour = kidney["tumour"]
    assert len(tumour["feeding"]) == 1 and len(tumour["pieces"]) == 1
    assert tumour["small_pieces"] == 1 and tumour["small_pieces_ml"] == 0.008
    assert any("1 tumour piece(s) under 0.1 ml" in note for note in kidney["notes"])
    assert tumour["volume_ml"] == round(float((labels == 4).sum()) / 1000, 2)  # the volume still counts it
    (every,) = plan_labels(_volume(labels), KIPA, config=PlanConfig(min_tumour_piece_ml=0)).plan["kidneys"]
    assert len(every["tumour"]["feeding"]) == 2 and every["tumour"]["small_pieces"] == 0


def test_a_main_artery_that_is_its_own_territory_feeds_only_by_its_own_share() -> None:
    """The main artery runs straight into the kidney and ends there, with one side branch
    (minor at minor_share 0.25): the main artery's own terminal makes a territory of its
    own. A tumour wholly in the side branch's territory is fed by that branch alone; the
    main artery's whole tree (100% of the tumour) must not make its own territory a
    feeding one too."""
    labels = np.zeros((44, 30, 64), np.uint8)
    labels[4:40, 6:24, 30:58] = 2
    labels[21:24, 14:17, 2:55] = 3   # the main artery, ending inside the kidney
    labels[24:30, 14:17, 33:36] = 3  # a side branch towards the upper pole
    z, y, x = np.ogrid[:44, :30, :64]
    labels[(z - 34) ** 2 + (y - 15) ** 2 + (x - 34) ** 2 <= 9] = 4
    (kidney,) = plan_labels(_volume(labels), KIPA, config=PlanConfig(minor_share=0.25)).plan["kidneys"]
    main, side = kidney["branches"]
    assert main["level"] == "main" and side["level"] == "further"
    assert {t["branch"] for t in kidney["territories"]} == {main["id"], side["id"]}
    assert kidney["tumour"]["feeding"] == [side["id"]]
    (candidate,) = kidney["clamping"]["candidates"]
    assert candidate["branch"] == side["id"] and candidate["tumour_percent"] == 100.0
    assert kidney["clamping"]["strategy"] == "selective" and candidate["ischaemic_percent"] < 30


def test_a_kidney_with_tumour_specks_only_is_planned_without_a_tumour() -> None:
    labels = _t_tree()
    labels[33:35, 14:16, 49:51] = 4  # 8 voxels: 0.008 ml
    (kidney,) = plan_labels(_volume(labels), KIPA).plan["kidneys"]
    assert kidney["status"] == "no_tumour" and kidney["clamping"] is None
    assert kidney["tumour"]["feeding"] == [] and kidney["tumour"]["small_pieces"] == 1
    assert any("no tumour piece of 0.1 ml or more" in note for note in kidney["notes"])


def test_the_plan_names_fluid_that_segment_took_for_a_cyst(tmp_path) -> None:
    """A hypodense tumour dropped as a cyst would leave the kidney without a tumour: the
    plan says how much fluid `segment` took beside it and how to keep it."""
    study = tmp_path / "study"
    write_image(_volume(_t_tree(tumour=True)), study / "labels.nii.gz")
    (study / "labels.json").write_text(json.dumps({"0": "background", "2": "kidney", "3": "renal_artery",
                                                   "4": "tumour"}))
    notes = {}
    for ml in (16.25, 0.2):
        (study / "report.json").write_text(json.dumps({"rois": [], "arteries": {
            "left": {"cleanup": {"fluid_tumour_pieces": 1, "fluid_tumour_ml": ml}}}}))
        (kidney,) = plan_study(study, overwrite=True).plan["kidneys"]
        notes[ml] = [n for n in kidney["notes"] if "fluid" in n]
    assert len(notes[16.25]) == 1 and "16.2 ml" in notes[16.25][0] and "--keep-fluid-tumour" in notes[16.25][0]
    assert notes[0.2] == []  # specks are not worth a note


def test_the_plan_carries_segments_verdict_on_the_labels_it_is_built_on(tmp_path) -> None:
    study = tmp_path / "study"
    write_image(_volume(_t_tree(tumour=True)), study / "labels.nii.gz")
    (study / "labels.json").write_text(json.dumps({"0": "background", "2": "kidney", "3": "renal_artery",
                                                   "4": "tumour"}))
    from PIL import Image

    tall = "left kidney label spans 246 mm head to foot, taller than any adult kidney"
    found, pictures = {}, {}
    for verdict, warnings in (("unreliable", ["slice spacing 1.5 mm is coarser", tall]), ("ok", [])):
        (study / "report.json").write_text(json.dumps({"rois": [], "quality": {"verdict": verdict,
                                                                               "warnings": warnings}}))
        result = plan_study(study, overwrite=True)
        (kidney,) = result.plan["kidneys"]
        found[verdict] = (result.plan["study"]["segment_verdict"], [n for n in kidney["notes"] if "judged" in n])
        pictures[verdict] = np.asarray(Image.open(study / "plan.png").convert("RGB"))
    verdict, notes = found["unreliable"]
    assert verdict == "unreliable" and len(notes) == 1
    assert pictures["unreliable"][2, -2].tolist() == [160, 30, 30]  # plan.png's banner: red
    assert pictures["ok"][2, -2].tolist() == [30, 110, 50]
    assert notes[0].startswith(f"renalseg segment judged this study unreliable: {tall}")  # this kidney's warning
    assert json.loads((study / "plan.json").read_text())["study"]["segment_verdict"] == "ok"
    assert found["ok"] == ("ok", [])


def test_cli_plan_meshes_and_report_in_the_study_folder(tmp_path) -> None:
    pytest.importorskip("plotly")
    study = tmp_path / "study"
    write_image(_volume(_t_tree(tumour=True)), study / "labels.nii.gz")
    (study / "labels.json").write_text(json.dumps({"0": "background", "2": "kidney", "3": "renal_artery",
                                                   "4": "kidney_tumour"}))
    runner = CliRunner()
    done = runner.invoke(app, ["plan", str(study), "--meshes", "--report", "--quiet"])
    assert done.exit_code == 0, done.output
    names = json.loads((study / "territories.json").read_text())
    values = sorted(int(v) for v in names if int(v) > 0)
    stls = sorted(p.name for p in (study / "territories").glob("*.stl"))
    assert stls == [f"territory_{v:03d}.stl" for v in values] and len(stls) == 2
    assert (study / "territories" / stls[0]).read_bytes()[:9] == b"SPACE=LPS"
    assert (study / "report.html").stat().st_size > 1000
    page = (study / "report.html").read_text(encoding="utf-8")
    assert "Tumour planned: the segmented tumour." in page
    (kidney,) = [k for k in json.loads((study / "plan.json").read_text())["kidneys"] if k["clamping"]]
    names, cost = proposed_clamping(kidney["clamping"])  # what is proposed, first, in words
    assert (f"<b>{kidney['side']} kidney</b>: clamp {', '.join(names)}, leaving "
            f"{cost['ischaemic_percent']:g}% of the kidney without blood") in page
    refused = runner.invoke(app, ["plan", str(study), "--report", "--out", str(tmp_path / "elsewhere")])
    assert refused.exit_code == 2 and "--report" in refused.output
    given = runner.invoke(app, ["plan", str(study), "--tumour-at", "58,-5,334", "--tumour-diameter-mm", "12",
                                "--report", "--overwrite", "--quiet"])
    assert given.exit_code == 0, given.output
    page = (study / "report.html").read_text(encoding="utf-8")
    assert "Tumour planned: a sphere 12 mm across at LPS (58.0, -5.0, 334.0) mm" in page


def test_a_bug_in_one_study_does_not_end_a_plan_batch(tmp_path, monkeypatch) -> None:
    """An unexpected error planning one study of several is that study's failure, named as a
    bug; the next one is planned and the command exits 1."""
    import renalseg.plan

    studies = []
    for name in ("study_a", "study_b"):
        study = tmp_path / name
        write_image(_volume(_t_tree(tumour=True)), study / "labels.nii.gz")
        (study / "labels.json").write_text(json.dumps({"0": "background", "2": "kidney", "3": "renal_artery",
                                                       "4": "kidney_tumour"}))
        studies.append(study)
    real = renalseg.plan.plan_study

    def broken_on_a(study, **kwargs):
        if study is not None and study.name == "study_a":
            raise IndexError("index 3 is out of bounds")
        return real(study, **kwargs)

    monkeypatch.setattr(renalseg.plan, "plan_study", broken_on_a)
    result = CliRunner().invoke(app, ["plan", *map(str, studies), "--out", str(tmp_path / "plans")])
    assert result.exit_code == 1, result.output
    assert "study_a: unexpected IndexError" in result.output and "Traceback" not in result.output
    assert (tmp_path / "plans" / "study_b" / "plan.json").exists()
    assert not (tmp_path / "plans" / "study_a").exists()


def _study_with_false_tumour(tmp_path):
    """A segment output folder whose tumour is false: a ball at the inferior end, where the
    true tumour (drawn by hand below) lies at the superior end, fed by segmental 1."""
    study = tmp_path / "study"
    labels = _t_tree()
    z, y, x = np.ogrid[:44, :30, :64]
    labels[(z - 9) ** 2 + (y - 15) ** 2 + (x - 50) ** 2 <= 16] = 4
    write_image(_volume(labels), study / "labels.nii.gz")
    (study / "labels.json").write_text(json.dumps({"0": "background", "2": "kidney", "3": "renal_artery",
                                                   "4": "tumour"}))
    drawn = np.zeros_like(labels)
    drawn[(z - 34) ** 2 + (y - 15) ** 2 + (x - 50) ** 2 <= 16] = 1
    drawn[30:38, 14:17, 40:41] = 1                   # across the artery: the artery stays artery
    return study, labels, drawn


def test_the_plan_takes_a_tumour_drawn_by_hand_in_place_of_the_segmented_one(tmp_path) -> None:
    study, labels, drawn = _study_with_false_tumour(tmp_path)
    config = PlanConfig(margin_mm=2.0)
    (segmented,) = plan_study(study, config=config).plan["kidneys"]
    names = {b["id"]: b["name"] for b in segmented["branches"]}
    assert [names[b] for b in segmented["tumour"]["feeding"]] == ["segmental 2"]
    path = write_image(_volume(drawn), tmp_path / "tumour.nii.gz")
    result = plan_study(study, config=config, tumour=path, out_dir=tmp_path / "drawn")
    (kidney,) = result.plan["kidneys"]
    names = {b["id"]: b["name"] for b in kidney["branches"]}
    assert [names[b] for b in kidney["tumour"]["feeding"]] == ["segmental 1"]
    # no artery voxel given to the tumour
    assert kidney["tumour"]["volume_ml"] == pytest.approx((drawn.astype(bool) & (labels != 3)).sum() / 1000, abs=1e-3)
    assert result.plan["study"]["tumour"] == str(path)
    written = json.loads((tmp_path / "drawn" / "plan.json").read_text())
    assert written["study"]["tumour"] == str(path)
    # the tumour corrected in renalseg's own labels.seg.nrrd (the segment 'Tumour', value 4)
    from renalseg.io.slicer import write_seg_nrrd

    corrected = np.where(labels == 4, 0, labels).astype(np.uint8)
    corrected[(drawn > 0) & (labels != 3)] = 4
    seg = write_seg_nrrd(corrected, _volume(corrected).geometry, {"2": "kidney", "3": "renal_artery", "4": "tumour"},
                         tmp_path / "labels.seg.nrrd")
    (again,) = plan_study(study, config=config, tumour=seg, tumour_value=4, out_dir=tmp_path / "seg").plan["kidneys"]
    assert again["tumour"] == kidney["tumour"] and again["clamping"] == kidney["clamping"]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(study / "labels.nii.gz"))).tolist() == labels.tolist()


def test_a_tumour_file_cropped_to_its_segment_is_placed_on_the_studys_grid(tmp_path) -> None:
    """A segmentation saved cropped to what it holds (same spacing and direction, first
    voxel on the study's grid) is placed where it lies; one off the voxels is refused."""
    study, _, drawn = _study_with_false_tumour(tmp_path)
    config = PlanConfig(margin_mm=2.0)
    whole = write_image(_volume(drawn), tmp_path / "whole.nii.gz")
    full = plan_study(study, config=config, tumour=whole, out_dir=tmp_path / "full").plan["kidneys"]
    box = tuple(slice(a, b) for a, b in ((28, 40), (9, 22), (38, 56)))
    assert drawn[box].sum() == drawn.sum()
    geometry = _volume(drawn).geometry.crop((28, 9, 38), drawn[box].shape)
    cropped = write_image(Volume(np.ascontiguousarray(drawn[box]), geometry), tmp_path / "cropped.nii.gz")
    part = plan_study(study, config=config, tumour=cropped, out_dir=tmp_path / "part").plan["kidneys"]
    assert part == full
    between = Volume(np.ascontiguousarray(drawn[box]), Geometry(
        drawn[box].shape, (1.0, 1.0, 1.0), tuple(np.add(geometry.origin_xyz_mm, 0.5).tolist()), IDENTITY))
    with pytest.raises(GeometryError, match="between.nii.gz"):
        plan_study(study, config=config, tumour=write_image(between, tmp_path / "between.nii.gz"),
                   out_dir=tmp_path / "between")
    outside = Volume(np.ascontiguousarray(drawn[box]), _volume(drawn).geometry.crop((38, 9, 38), drawn[box].shape))
    with pytest.raises(GeometryError, match="outside.nii.gz"):  # its tumour would reach past the study
        plan_study(study, config=config, tumour=write_image(outside, tmp_path / "outside.nii.gz"),
                   out_dir=tmp_path / "outside")


def test_a_tumour_file_is_checked_before_anything_is_written(tmp_path) -> None:
    study, labels, drawn = _study_with_false_tumour(tmp_path)
    out = tmp_path / "out"
    shifted = write_image(_volume(drawn, spacing=(1.0, 1.0, 2.0)), tmp_path / "shifted.nii.gz")
    with pytest.raises(GeometryError, match="shifted.nii.gz") as err:
        plan_study(study, tumour=shifted, out_dir=out)
    assert "labels.nii.gz" in str(err.value)
    several = write_image(_volume(np.where(labels > 0, labels, drawn * 4).astype(np.uint8)), tmp_path / "all.nii.gz")
    with pytest.raises(UsageError, match=r"all.nii.gz holds the values 2, 3, 4.*--tumour-value"):
        plan_study(study, tumour=several, out_dir=out)
    with pytest.raises(InputError, match="all.nii.gz: no voxel with a value 7"):
        plan_study(study, tumour=several, tumour_value=7, out_dir=out)
    with pytest.raises(InputError, match="missing.nii.gz"):
        plan_study(study, tumour=tmp_path / "missing.nii.gz", out_dir=out)
    assert not out.exists()
    (kidney,) = plan_study(study, tumour=several, tumour_value=4, out_dir=out,
                           config=PlanConfig(margin_mm=2.0)).plan["kidneys"]
    assert kidney["status"] == "planned"


def test_cli_plan_tumour_options(tmp_path) -> None:
    study, _, drawn = _study_with_false_tumour(tmp_path)
    path = write_image(_volume(drawn), tmp_path / "tumour.nii.gz")
    runner = CliRunner()
    ok = runner.invoke(app, ["plan", str(study), "--tumour", str(path), "--margin-mm", "2", "--out",
                             str(tmp_path / "plans"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)[0]["feeding"] == ["segmental 1"]
    two = runner.invoke(app, ["plan", str(study), str(study), "--tumour", str(path), "--out", str(tmp_path / "two")])
    assert two.exit_code == 2 and "one study at a time" in two.output
    alone = runner.invoke(app, ["plan", str(study), "--tumour-value", "4", "--out", str(tmp_path / "alone")])
    assert alone.exit_code == 2 and "--tumour FILE" in alone.output


def test_the_plan_takes_a_tumour_given_by_its_centre_and_longest_diameter(tmp_path) -> None:
    """As a radiology report gives it: the segmented (false) tumour is replaced by a sphere
    of that diameter at the point, given in LPS or, as 3D Slicer shows it, in RAS."""
    study, labels, _ = _study_with_false_tumour(tmp_path)
    config = PlanConfig(margin_mm=2.0)
    centre = (60.0, -5.0, 334.0)  # voxel (x 50, y 15, z 34): the true tumour's centre
    result = plan_study(study, config=config, tumour_at=centre, tumour_diameter_mm=9.0, out_dir=tmp_path / "lps")
    (kidney,) = result.plan["kidneys"]
    names = {b["id"]: b["name"] for b in kidney["branches"]}
    assert [names[b] for b in kidney["tumour"]["feeding"]] == ["segmental 1"]
    z, y, x = np.ogrid[:44, :30, :64]
    ball = (z - 34) ** 2 + (y - 15) ** 2 + (x - 50) ** 2 <= 4.5 ** 2
    assert kidney["tumour"]["volume_ml"] == pytest.approx((ball & (labels != 3)).sum() / 1000, abs=0.005)  # 2 decimals
    assert result.plan["study"]["tumour_at"] == {"centre_mm": [60.0, -5.0, 334.0], "diameter_mm": 9.0}
    assert "9 mm across" in json.loads((tmp_path / "lps" / "plan.json").read_text())["study"]["tumour"]
    from PIL import Image

    from renalseg.plan_picture import banner_text

    assert banner_text(result.plan) == "tumour planned: a sphere 9 mm across at LPS (60.0, -5.0, 334.0) mm"
    assert Image.open(tmp_path / "lps" / "plan.png").convert("RGB").getpixel((2, 2)) == (90, 90, 90)  # its strip
    runner = CliRunner()
    ras = runner.invoke(app, ["plan", str(study), "--tumour-at", "ras:-60,5,334", "--tumour-diameter-mm", "9",
                              "--margin-mm", "2", "--out", str(tmp_path / "ras"), "--json"])
    assert ras.exit_code == 0, ras.output
    assert json.loads(ras.stdout)[0]["feeding"] == ["segmental 1"]
    segmented = runner.invoke(app, ["plan", str(study), "--margin-mm", "2", "--out", str(tmp_path / "segmented")])
    assert segmented.exit_code == 0 and "--tumour-diameter-mm" in segmented.output  # the hint, where it applies
    given = runner.invoke(app, ["plan", str(study), "--tumour-at", "ras:-60,5,334", "--tumour-diameter-mm", "9",
                                "--out", str(tmp_path / "given")])
    assert given.exit_code == 0 and "--tumour-diameter-mm" not in given.output
    assert json.loads((tmp_path / "ras" / "study" / "plan.json").read_text())["kidneys"] == [kidney]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(study / "labels.nii.gz"))).tolist() == labels.tolist()


def test_a_point_keeps_the_segmented_tumour_there_and_leaves_the_others_out(tmp_path) -> None:
    study, labels, drawn = _study_with_false_tumour(tmp_path)
    both = np.where((drawn > 0) & (labels != 3), 4, labels).astype(np.uint8)  # the true and the false tumour
    write_image(_volume(both), study / "labels.nii.gz", overwrite=True)
    config = PlanConfig(margin_mm=2.0)
    (kidney,) = plan_study(study, config=config, tumour_at=(60.0, -5.0, 331.0)).plan["kidneys"]  # 3 mm off
    names = {b["id"]: b["name"] for b in kidney["branches"]}
    assert [names[b] for b in kidney["tumour"]["feeding"]] == ["segmental 1"]
    true_piece = (both == 4) & (np.arange(44)[:, None, None] > 22)
    assert kidney["tumour"]["volume_ml"] == pytest.approx(true_piece.sum() / 1000, abs=0.005)
    with pytest.raises(InputError, match=r"labels.nii.gz: no segmented tumour within 10 mm.*--tumour-diameter-mm"):
        plan_study(study, config=config, tumour_at=(30.0, -5.0, 334.0), out_dir=tmp_path / "none")
    with pytest.raises(InputError, match=r"labels.nii.gz: the tumour at LPS \(60.0, -5.0, 500.0\) mm lies outside"):
        plan_study(study, config=config, tumour_at=(60.0, -5.0, 500.0), tumour_diameter_mm=20, out_dir=tmp_path / "far")
    with pytest.raises(UsageError, match="not both"):
        plan_study(study, tumour=study / "labels.nii.gz", tumour_at=(60.0, -5.0, 334.0), out_dir=tmp_path / "x")
    assert not any((tmp_path / name).exists() for name in ("none", "far", "x"))
    runner = CliRunner()
    for arguments, words in ((["--tumour-at", "60,-5"], "not a point"),
                             (["--tumour-at", "mm:60,-5,334"], "not a point"),
                             (["--tumour-diameter-mm", "30"], "give both"),
                             (["--tumour-at", "60,-5,334", "--tumour-diameter-mm", "0"], "> 0 mm")):
        refused = runner.invoke(app, ["plan", str(study), *arguments, "--out", str(tmp_path / "cli")])
        assert refused.exit_code == 2 and words in refused.output, (arguments, refused.output)
    assert not (tmp_path / "cli").exists()


def test_a_tumour_sphere_is_placed_in_world_coordinates_on_an_oblique_grid() -> None:
    """Every voxel whose centre lies within the radius, and no other, on a tilted,
    anisotropic grid (checked against every voxel's world position)."""
    from scipy.spatial.transform import Rotation

    from renalseg.plan import tumour_sphere

    rotation = Rotation.from_euler("xyz", [20, -15, 35], degrees=True).as_matrix()
    geometry = Geometry((30, 40, 50), (0.8, 0.7, 1.5), (-12.0, 40.0, 250.0), tuple(rotation.ravel()))
    centre = geometry.index_to_world(np.array([[24.3, 19.6, 14.2]]))[0]
    mask = tumour_sphere(geometry, centre, 17.0)
    index = np.argwhere(np.ones(geometry.shape_zyx, bool))[:, ::-1].astype(float)
    inside = (np.linalg.norm(geometry.index_to_world(index) - centre, axis=1) <= 8.5).reshape(geometry.shape_zyx)
    assert mask.sum() > 500 and np.array_equal(mask, inside)


def test_a_whole_study_grid_is_planned_as_its_labelled_part() -> None:
    """The plan crops a study's grid to its structures and pastes the territories back:
    the same label map in a grid 4 times larger (origin moved so every voxel keeps its
    LPS position) gives the same plan, the same territories in place and nothing outside,
    and a report.json ROI box in the study's voxels still names the side."""
    small = _t_tree(tumour=True)
    big = np.zeros((80, 70, 120), np.uint8)
    offset = (20, 25, 40)
    inside = tuple(slice(o, o + n) for o, n in zip(offset, small.shape))
    big[inside] = small
    small_volume = _volume(small)
    origin = np.asarray(small_volume.geometry.origin_xyz_mm) - np.asarray(offset[::-1], float)
    big_volume = Volume(big, Geometry(big.shape, (1.0, 1.0, 1.0), tuple(origin.tolist()), IDENTITY))

    def roi(start):  # the kidney's box, called "right" against what its artery says
        return [{"side": "right", "box_voxels_zyx": {"start": list(start), "shape": [40, 22, 32]}}]

    config = PlanConfig(margin_mm=2.0)
    tight = plan_labels(small_volume, KIPA, config=config, rois=roi((2, 4, 28)))
    whole = plan_labels(big_volume, KIPA, config=config, rois=roi(np.add((2, 4, 28), offset)))
    for result in (tight, whole):
        result.plan.pop("seconds")
    assert whole.plan == tight.plan and whole.plan["kidneys"][0]["side"] == "right"
    assert whole.territories.array.shape == big.shape and whole.territories.geometry == big_volume.geometry
    assert np.array_equal(whole.territories.array[inside], tight.territories.array)
    assert whole.territories.array.sum() == tight.territories.array.sum() > 0
    assert np.array_equal(whole.labels.array[inside], tight.labels.array)


def test_clamping_counts_a_kidney_region_once_when_one_candidate_lies_under_another() -> None:
    """Clamping a branch stops the blood to all of its tree. In phantom 20044 the main
    artery's own terminal branches are a territory that holds tumour, so the candidates
    hold both it and segmental branches under it: the kidney left without blood is the
    whole kidney once (it was counted as 171% in such a case), so those candidates are
    not proposed."""
    from renalseg.phantom import synthesize_roi

    case = synthesize_roi(20044, tumour=True)
    (kidney,) = plan_labels(case.label, KIPA).plan["kidneys"]
    clamping = kidney["clamping"]
    by_id = {b["id"]: b for b in kidney["branches"]}
    candidates = {c["branch"] for c in clamping["candidates"]}


    def ancestors(i: int) -> set[int]:
        parent = by_id[i]["parent"]
        return {parent} | ancestors(parent) if parent is not None else set()

    under_another = [c for c in candidates if ancestors(c) & candidates]
    assert under_another, "the case no longer has a candidate under another; pick another seed"
    assert clamping["ischaemic_percent"] <= clamping["fallback"]["ischaemic_percent"] + 1e-6
    assert clamping["ischaemic_percent"] == pytest.approx(100.0, abs=0.01)
    assert clamping["strategy"] != "selective"
    # each territory carries its own share of tumour + margin (plan.png's legend): the
    # main artery's own terminal branches hold part, though its tree holds all
    shares = {t["branch"]: t["tumour_percent"] for t in kidney["territories"]}
    assert sum(shares.values()) == pytest.approx(100.0, abs=1.0)
    assert all(shares[c["branch"]] == c["tumour_percent"] for c in clamping["candidates"])
    main = kidney["roots"][0]
    assert shares[main] < by_id[main]["tumour_percent"] == 100.0


def test_the_fewest_clamps_are_a_cut_of_the_tree_that_holds_the_tumour() -> None:
    """Phantom 20000's deepest candidates are five branches; one division holds all of
    tumour + margin: the plan names it as the fewest clamps, with what it costs, and
    plan.png and the command say so. In 20041 one division holds as much as five
    candidates for 4.5 points more of the kidney, and is proposed."""
    from renalseg.phantom import synthesize_roi

    for seed, strategy in ((20000, "selective"), (20041, "fewest")):
        case = synthesize_roi(seed, tumour=True)
        result = plan_labels(case.label, KIPA)
        (kidney,) = result.plan["kidneys"]
        clamping, by_id = kidney["clamping"], {b["id"]: b for b in kidney["branches"]}
        fewest = clamping["fewest"]
        assert clamping["strategy"] == strategy
        assert len(fewest["branches"]) < len(clamping["candidates"])
        assert fewest["tumour_percent"] >= 95.0
        assert fewest["ischaemic_percent"] < 0.9 * clamping["fallback"]["ischaemic_percent"]
        # a cut: no branch under another, none the main artery; their territories' sum is the cost
        assert kidney["roots"][0] not in fewest["branches"]
        for branch in fewest["branches"]:
            parent = by_id[branch]["parent"]
            while parent is not None:
                assert parent not in fewest["branches"]
                parent = by_id[parent]["parent"]
        assert fewest["ischaemic_percent"] == pytest.approx(
            sum(by_id[b]["territory_percent"] for b in fewest["branches"]), abs=0.05)
        assert fewest["names"] == [by_id[b]["name"] for b in fewest["branches"]]
    # the proposal (20041): the territories drawn bright in plan.png lie under that division
    assert set(result.candidates) and all(
        any(b in fewest["branches"] for b in _ancestors_and_self(by_id, c)) for c in result.candidates)


def test_fewer_clamps_for_about_the_same_kidney_are_proposed() -> None:
    """Phantom 20016's fewest clamps (two branches) leave exactly the kidney its three deepest
    candidates leave without blood, and 20022's two leave 0.37 points more than its four: each
    is proposed, with a note saying what it saves and costs; the candidates stay listed. With
    --fewest-tolerance-percent 0 only the one that costs nothing more is; 20000's single
    division costs 11.5 points more and is not."""
    from renalseg.phantom import synthesize_roi

    expected = {20016: ("fewest", "fewest"), 20022: ("fewest", "selective"), 20000: ("selective", "selective")}
    for seed, strategies in expected.items():
        labels = synthesize_roi(seed, tumour=True).label
        for tolerance, strategy in zip((0.05, 0.0), strategies):
            (kidney,) = plan_labels(labels, KIPA, config=PlanConfig(fewest_tolerance=tolerance)).plan["kidneys"]
            clamping = kidney["clamping"]
            assert clamping["strategy"] == strategy, (seed, tolerance)
            fewest = clamping["fewest"]
            assert clamping["candidates"] and len(fewest["branches"]) < len(clamping["candidates"])
            extra = fewest["ischaemic_percent"] - clamping["ischaemic_percent"]
            assert (strategy == "fewest") == (extra <= 100 * tolerance + 1e-6)
            said = [n for n in kidney["notes"] if "vessel(s) fewer to dissect" in n]
            assert len(said) == (strategy == "fewest")
            if said:
                assert proposed_clamping(clamping)[0] == fewest["names"]
                assert f"for {max(extra, 0):.2f} points more" in said[0]
    with pytest.raises(UsageError, match="fewest_tolerance"):
        PlanConfig(fewest_tolerance=-0.1)


def _ancestors_and_self(by_id: dict, branch: int) -> list[int]:
    chain = [branch]
    while by_id[chain[-1]]["parent"] is not None:
        chain.append(by_id[chain[-1]]["parent"])
    return chain


def test_a_horseshoe_kidneys_halves_are_planned_as_two_kidneys() -> None:
    """A horseshoe kidney is one kidney-labelled piece from side to side; each half has its
    own artery and territories, so each is planned, split where the isthmus is thinnest."""
    from renalseg.phantom import synthesize_abdomen

    case = synthesize_abdomen(31002, horseshoe=True, tumour=True, inplane_voxels=200, fov_mm=400.0, slice_mm=2.0,
                              territories=True)
    kidney = case.label.array == 2
    result = plan_labels(case.label, KIPA, name="horseshoe.nii.gz")
    kidneys = {entry["side"]: entry for entry in result.plan["kidneys"]}
    assert set(kidneys) == {"left", "right"}
    for side, entry in kidneys.items():
        assert entry["territories"] and any("horseshoe (fused) kidney" in note for note in entry["notes"])
    # every kidney voxel in one territory, and each territory on its own half's side
    plan_map = result.territories.array
    assert plan_map[kidney].min() > 0
    isthmus_x = case.params["scene"]["horseshoe"]["isthmus_centre_mm"][0]
    geometry = case.label.geometry
    for side, entry in kidneys.items():
        values = [t["value"] for t in entry["territories"]]
        zz, yy, xx = np.nonzero(np.isin(plan_map, values) & kidney)
        x = geometry.index_to_world(np.stack([xx, yy, zz], axis=1))[:, 0]
        assert ((x > isthmus_x - 40) if side == "left" else (x < isthmus_x + 40)).all()
    truth = case.territory.array
    agree = sum(np.bincount(truth[kidney & (plan_map == t["value"])]).max()
                for entry in kidneys.values() for t in entry["territories"]
                if (kidney & (plan_map == t["value"])).any())
    assert agree / kidney.sum() > 0.6


def test_an_artery_label_of_single_voxels_is_planned_without_branches() -> None:
    """What `segment` writes for a kidney it barely sees may hold only a voxel of artery:
    its centerline has no edge; the plan has the main renal artery alone supply the
    kidney (main-artery clamping, the fallback) instead of failing."""
    labels = _t_tree()
    labels[labels == 3] = 0
    labels[20, 15, 40] = 3
    result = plan_labels(_volume(labels), KIPA, name="speck.nii.gz")
    (kidney,) = result.plan["kidneys"]
    assert [t["name"] for t in kidney["territories"]] == ["main renal artery"]
    assert (result.territories.array[labels == 2] == kidney["territories"][0]["value"]).all()


def test_the_report_gives_the_renal_score_and_says_when_it_is_read_from_the_segmented_tumour() -> None:
    from renalseg.report import _proposals_html

    score = {"score": 9, "suffix": "p", "complexity": "moderate", "R": {"points": 2, "diameter_mm": 45.0},
             "E": {"points": 2, "exophytic_percent": 30.0}, "N": {"points": 3, "distance_mm": 1.0}, "A": "p",
             "L": {"points": 2, "between_polar_lines_percent": 40.0, "crosses_midline": False}, "hilar": None}
    plan = {"study": {"labels": "/s/labels.nii.gz"}, "kidneys": [{"side": "left", "tumour": {"nephrometry": score}}]}
    page = "".join(_proposals_html(plan))
    assert ("Tumour complexity (R.E.N.A.L. nephrometry)</h3>"
            "<div><b>left kidney</b>: R.E.N.A.L. 9p (moderate): R 2 (45 mm across)") in page
    assert "Proposed clamping" not in page  # no clamping in this plan: the score is not under that heading
    assert "scored on the segmented tumour" in page
    drawn = {**plan, "study": {"labels": "/s/labels.nii.gz", "tumour": "tumour.nii.gz"}}
    other = {**plan, "study": {"labels": "/s/other_tool.nii.gz"}}
    for given in (drawn, other):
        page = "".join(_proposals_html(given))
        assert "R.E.N.A.L. 9p" in page and "segmented tumour" not in page


def _hilum_scene(tumour_rel, tumour_r, *, vein=True, tributary=False) -> Volume:
    """A kidney (ellipsoid 56 × 48 × 100 mm at x = 45) whose sinus opens medially (-x, the
    patient's right: a left kidney), a main renal artery (5 mm across) from the medial
    side into the sinus, where it gives three branches into the parenchyma, a renal vein
    (8 mm across) 9 mm in front of it, and a ball tumour at ``tumour_rel`` mm from the
    kidney's centre. ``tributary``: the vein gathers three veins in the sinus and takes a
    3 mm tributary (a gonadal vein) from below 20 mm before the hilum."""
    g = Geometry((120, 80, 90), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    z, y, x = np.indices(g.shape_zyx).astype(float)
    x, y, z = x - 45, y - 40, z - 60
    labels = np.zeros(g.shape_zyx, np.uint8)
    sinus = ((x + 14) / 16) ** 2 + (y / 10) ** 2 + (z / 22) ** 2 <= 1
    labels[((x / 28) ** 2 + (y / 24) ** 2 + (z / 50) ** 2 <= 1) & ~sinus] = 2
    if vein:
        labels[((y + 9) ** 2 + z ** 2 <= 16) & (x > -43) & (x <= -12)] = 1
    if vein and tributary:
        for dz in (-16, 0, 16):
            labels[((y + 6) ** 2 + (z - dz * np.clip((x + 12) / 20, 0, 1)) ** 2 <= 4) & (x > -13) & (x < 8)] = 1
        labels[((x + 32) ** 2 + (y + 9) ** 2 <= 2.25) & (z < -3) & (z > -33)] = 1
    artery = (y ** 2 + z ** 2 <= 6.25) & (x > -43) & (x <= -15)
    for dz in (-18, 0, 18):
        artery |= (y ** 2 + (z - dz * np.clip((x + 15) / 25, 0, 1)) ** 2 <= 2.25) & (x > -15) & (x < 12)
    labels[artery] = 3
    tx, ty, tz = tumour_rel
    labels[(x - tx) ** 2 + (y - ty) ** 2 + (z - tz) ** 2 <= tumour_r ** 2] = 4
    return Volume(labels, g)


def test_a_tumour_abutting_the_main_renal_vein_or_artery_is_hilar() -> None:
    """R.E.N.A.L.'s suffix h: the tumour touches the main renal artery or vein. Far from
    both it is not hilar; without a vein label it is known only where the artery touches."""
    from renalseg.nephrometry import describe, notation

    def score(tumour_rel, tumour_r, *, vein=True, tributary=False):
        kipa = {**KIPA, 1: "vein"} if vein else KIPA
        (kidney,) = plan_labels(_hilum_scene(tumour_rel, tumour_r, vein=vein, tributary=tributary),
                                kipa).plan["kidneys"]
        assert kidney["side"] == "left" and kidney["status"] == "planned"
        return kidney["tumour"]["nephrometry"]

    on_vein = score((-17, -10, 12), 8)  # at the hilum's lip, against the vein, 5 mm from the artery
    assert on_vein["hilar"] == {"h": True, "main_artery_mm": pytest.approx(5, abs=1.5),
                                "main_vein_mm": pytest.approx(0.5, abs=0.6)}
    assert notation(on_vein) == f"{on_vein['score']}{on_vein['suffix']}h"
    assert "h (abuts the main renal vein)" in describe(on_vein)
    # a tributary joining the vein before the hilum does not end the main vein there
    assert score((-17, -10, 12), 8, tributary=True)["hilar"]["main_vein_mm"] == on_vein["hilar"]["main_vein_mm"]
    unknown = score((-17, -10, 12), 8, vein=False)
    assert unknown["hilar"]["h"] is None and unknown["hilar"]["main_vein_mm"] is None
    assert notation(unknown) == f"{unknown['score']}{unknown['suffix']}"
    assert "hilar (h) not scored: no main renal vein in the labels" in describe(unknown)
    on_artery = score((-22, 0, 8.5), 5, vein=False)  # in the sinus, 1 mm above the main artery
    assert on_artery["hilar"]["h"] is True and 0.5 <= on_artery["hilar"]["main_artery_mm"] <= 1.5
    upper_pole = score((20, 0, 36), 7)
    assert upper_pole["hilar"] == {"h": False, "main_artery_mm": pytest.approx(45, abs=4),
                                   "main_vein_mm": pytest.approx(45, abs=4)}
    assert "not hilar (main renal artery" in describe(upper_pole)


def test_an_accessory_artery_whose_branches_touch_the_main_arterys_inside_the_kidney_is_its_own_root() -> None:
    # the T-shaped main artery (from x = 2), a side branch leaving it outside the kidney
    # (x 9-12, running inferiorly out of view: a ureteric or gonadal branch) and a polar
    # accessory artery from x = 4, 8 mm above it, whose course inside the kidney crosses
    # the main artery's superior branch (x 39-42): one piece of label, one centerline
    labels = _t_tree()
    labels[0:21, 14:17, 9:12] = 3
    labels[30:33, 14:17, 4:56] = 3
    result = plan_labels(_volume(labels), KIPA)
    (kidney,) = result.plan["kidneys"]
    by_id = {b["id"]: b for b in kidney["branches"]}
    main, accessory = (by_id[r] for r in kidney["roots"])
    origin = np.array([10.0, -20.0, 300.0])  # the grid's origin, LPS mm (1 mm voxels)
    assert main["name"] == "main renal artery" and accessory["name"] == "accessory renal artery"
    assert np.allclose(np.subtract(main["start_mm"], origin)[[0, 2]], [3, 22], atol=2)   # x = 2, z 21-24
    assert np.allclose(np.subtract(accessory["start_mm"], origin)[[0, 2]], [5, 31], atol=2)  # x = 4, z 30-33
    assert accessory["territory_percent"] > 20 and main["territory_percent"] > 40
    # the side branch leaving the main artery outside the kidney is not an artery of its own
    assert any(b["root"] == main["id"] and b["end_mm"][2] - origin[2] < 3 for b in kidney["branches"])


def test_a_stub_of_artery_that_does_not_reach_the_kidney_is_no_accessory_artery() -> None:
    # a 4 mm cube of artery label 10 mm above the main trunk's medial end, far out of the
    # kidney (where a crop's edge cuts a vessel): a gap in the label, not an artery of its own
    labels = _t_tree()
    labels[30:34, 5:9, 2:6] = 3
    (kidney,) = plan_labels(_volume(labels), KIPA).plan["kidneys"]
    assert len(kidney["roots"]) == 1
    assert not any("accessory" in b["name"] for b in kidney["branches"])
    stub = next(b for b in kidney["branches"] if b["end_mm"][2] > 300 + 29)
    # too short to spread its label over: its diameter is the inscribed one, not volume / length
    assert stub["parent"] == kidney["roots"][0] and stub["diameter_mean_mm"] <= 4.0


def test_an_accessory_artery_passing_the_tumour_does_not_make_it_hilar() -> None:
    """R.E.N.A.L.'s h is for a tumour against the main renal artery or vein. Phantom
    62001's inferior polar accessory artery runs against its lower-pole tumour, 25 mm from
    the main artery by the generator's own shapes: not hilar."""
    from renalseg.phantom import synthesize_roi

    case = synthesize_roi(62001, tumour=True)
    truth = case.params["kidneys"][case.params["side"]]["tumour"]["main_vessel_gap_mm"]
    assert min(truth.values()) > 20
    (kidney,) = plan_labels(case.label, {1: "vein", **KIPA}).plan["kidneys"]
    by_id = {b["id"]: b for b in kidney["branches"]}
    accessory = by_id[kidney["roots"][1]]
    assert accessory["name"] == "accessory renal artery" and accessory["tumour_distance_mm"] < 2
    hilar = kidney["tumour"]["nephrometry"]["hilar"]
    assert hilar["h"] is False and hilar["main_artery_mm"] > 10
