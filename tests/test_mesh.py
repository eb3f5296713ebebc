"""Meshes: analytic volumes and areas, geometry for every orientation, files and CLI."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import trimesh
from conftest import LAS, LPS, OBLIQUE_30DEG, RAS
from typer.testing import CliRunner

from renalseg.cli.app import app
from renalseg.errors import InputError, UsageError
from renalseg.geometry import Geometry
from renalseg.io.image import read_image, write_image
from renalseg.mesh import export_meshes, label_to_mesh, mask_to_mesh, mesh_to_bytes, split_sides
from renalseg.volume import Volume


def cylinder(radius_mm=3.0, length_mm=30.0, spacing=0.5, direction=OBLIQUE_30DEG) -> Volume:
    """A flat-capped cylinder along z, centred between voxels to avoid symmetry luck."""
    n_in = int(2 * radius_mm / spacing) + 6
    shape = (int(length_mm / spacing) + 6, n_in, n_in)
    zz, yy, xx = np.indices(shape) * spacing
    centre = n_in * spacing / 2 + 0.13
    inside = ((yy - centre) ** 2 + (xx - centre + 0.07) ** 2 <= radius_mm ** 2)
    inside &= (zz >= 3 * spacing - spacing / 2) & (zz < 3 * spacing - spacing / 2 + length_mm)
    return Volume(inside.astype(np.uint8), Geometry(shape, (spacing,) * 3, (-60.0, 20.0, 410.0), direction))


def test_cylinder_volume_and_area_within_3_percent():
    r, length = 3.0, 30.0
    mesh = label_to_mesh(cylinder(r, length), label=1)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(np.pi * r * r * length, rel=0.03)
    assert mesh.area == pytest.approx(2 * np.pi * r * length + 2 * np.pi * r * r, rel=0.03)


def test_smoothed_volume_within_5_percent_of_voxels_for_thin_vessels():
    for radius in (1.0, 1.5):
        volume = cylinder(radius, 20.0, spacing=0.5)
        mesh = mask_to_mesh(volume, min_component_mm3=0)
        voxels = volume.array.sum() * volume.geometry.voxel_volume_mm3
        assert mesh.volume == pytest.approx(voxels, rel=0.05)
        assert mesh.is_watertight


@pytest.mark.parametrize("direction", [LPS, RAS, LAS, OBLIQUE_30DEG], ids=["LPS", "RAS", "LAS", "oblique"])
def test_mesh_overlays_the_mask_in_physical_space(tmp_path, direction):
    # a block of voxels, read back from NIfTI: the raw surface lies half a voxel outside
    # the outer voxel centres, along each index axis, wherever the axes point
    shape, spacing = (10, 12, 14), (0.8, 0.7, 2.5)
    array = np.zeros(shape, np.uint8)
    array[2:7, 3:9, 4:11] = 1
    path = write_image(Volume(array, Geometry(shape, spacing, (-120.0, 35.5, 900.0), direction)),
                       tmp_path / "labels.nii.gz")
    image = read_image(path)
    mesh = label_to_mesh(Volume.from_sitk(image), label=1, smoothing_iterations=0, min_component_mm3=0)
    assert mesh.is_watertight and mesh.volume > 0  # outward normals, also for mirrored LAS
    lo, hi = np.array([4, 3, 2]) - 0.5, np.array([10, 8, 6]) + 0.5  # x, y, z indices
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(
        (float(x), float(y), float(z))) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    axes = np.asarray(image.GetDirection()).reshape(3, 3)
    # extents along the image axes equal the voxel block's, in mm
    along = mesh.vertices @ axes
    expected = corners @ axes
    np.testing.assert_allclose(along.min(axis=0), expected.min(axis=0), atol=1e-4)
    np.testing.assert_allclose(along.max(axis=0), expected.max(axis=0), atol=1e-4)
    if direction != OBLIQUE_30DEG:  # axis-aligned: the world bounding boxes agree too
        np.testing.assert_allclose(mesh.bounds, [corners.min(axis=0), corners.max(axis=0)], atol=1e-4)
    np.testing.assert_allclose(mesh.center_mass, corners.mean(axis=0), atol=0.2)


def test_stl_header_space_and_ras_conversion():
    mesh = mask_to_mesh(cylinder(2.0, 10.0), min_component_mm3=0)
    lps = trimesh.load(io.BytesIO(data := mesh_to_bytes(mesh)), file_type="stl")
    assert data[:9] == b"SPACE=LPS" and len(data) == 84 + 50 * len(mesh.faces)
    assert lps.volume > 0
    ras_data = mesh_to_bytes(mesh, space="ras")
    assert ras_data[:9] == b"SPACE=RAS"
    ras = trimesh.load(io.BytesIO(ras_data), file_type="stl")
    np.testing.assert_allclose(ras.bounds[0], [-lps.bounds[1][0], -lps.bounds[1][1], lps.bounds[0][2]], atol=1e-3)
    assert ras.volume == pytest.approx(lps.volume, rel=1e-4)
    assert b"comment SPACE=LPS" in mesh_to_bytes(mesh, fmt="ply")
    assert mesh_to_bytes(mesh, fmt="obj").startswith(b"# SPACE=LPS")
    with pytest.raises(UsageError, match="Did you mean 'stl'"):
        mesh_to_bytes(mesh, fmt="stll")


def test_specks_dropped_and_empty_refused():
    volume = cylinder(2.0, 10.0)
    array = volume.array.copy()
    array[0, 0, 0] = 1  # 0.125 mm³ speck
    mesh = mask_to_mesh(volume.with_array(array), min_component_mm3=1.0)
    assert mesh.body_count == 1
    assert mask_to_mesh(volume.with_array(array), min_component_mm3=0).body_count == 2
    with pytest.raises(InputError, match="Label 2 is not in the label map"):
        label_to_mesh(volume, label=2)


def test_decimation_keeps_requested_fraction_or_says_what_is_missing(monkeypatch):
    volume = cylinder(2.0, 10.0)
    full = mask_to_mesh(volume)
    try:
        import fast_simplification  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="fast-simplification"):
            mask_to_mesh(volume, decimate=0.5)
    else:
        half = mask_to_mesh(volume, decimate=0.5)
        assert len(half.faces) == pytest.approx(len(full.faces) / 2, rel=0.1)
        assert half.volume == pytest.approx(full.volume, rel=0.05)
        assert half.is_watertight and half.volume > 0
    monkeypatch.setitem(sys.modules, "fast_simplification", None)  # import fails
    with pytest.raises(UsageError, match="pip install fast-simplification"):
        mask_to_mesh(volume, decimate=0.5)
    with pytest.raises(UsageError, match="0 < F"):
        mask_to_mesh(volume, decimate=1.5)


#: index x of the toy body's centre region: a field of view 220 mm across, as wide as a body
#: (a narrower one is taken for one kidney's crop, CROP_MAX_WIDTH_MM)
X = 80


def two_kidney_labels(direction=LPS) -> Volume:
    """Two separate tubes at the patient's left (+x LPS) and right, 20 mm either side of
    the field of view's centre."""
    shape, spacing = (30, 24, 2 * X + 60), (1.0, 1.0, 1.0)
    array = np.zeros(shape, np.uint8)
    array[5:25, 10:14, X + 8:X + 12] = 1   # low index x
    array[5:25, 10:14, X + 48:X + 52] = 1  # high index x
    return Volume(array, Geometry(shape, spacing, (-30.0 - X, 0.0, 0.0), direction))


def test_sides_follow_the_patient_not_the_array():
    # LPS: index x grows towards the patient's left; RAS: towards the right
    for direction, left_index_x in ((LPS, X + 48), (RAS, X + 8)):
        labels = two_kidney_labels(direction)
        sides = split_sides(labels.array == 1, labels.geometry)
        assert sides["left"].sum() == sides["right"].sum() == 320
        assert sides["left"][10, 11, left_index_x] and not sides["right"][10, 11, left_index_x]


def test_sides_from_report_rois():
    labels = two_kidney_labels()
    # deliberately put the ROI midline off-centre: ROIs win over the midline
    rois = [{"side": "right", "box_mm_lps": {"min": [-30.0, 0.0, 0.0], "max": [15.0, 23.0, 29.0]}},
            {"side": "left", "box_mm_lps": {"min": [16.0, 0.0, 0.0], "max": [29.0, 23.0, 29.0]}}]
    sides = split_sides(labels.array == 1, labels.geometry, rois)
    assert sides["left"].sum() == sides["right"].sum() == 320


def test_export_meshes_writes_files_and_tree(tmp_path):
    summary = export_meshes(two_kidney_labels(), tmp_path, label_names={1: "renal_artery"}, fmt="stl")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["renal_artery_left.stl", "renal_artery_left_centerline.mrk.json",
                     "renal_artery_left_centerline.vtp", "renal_artery_right.stl",
                     "renal_artery_right_centerline.mrk.json", "renal_artery_right_centerline.vtp", "tree.json"]
    tree = json.loads((tmp_path / "tree.json").read_text())
    assert tree["coordinate_space"] == "LPS" and tree["side_split"] == "midline"
    for side in ("left", "right"):
        stats = tree["trees"]["renal_artery"][side]
        assert stats["components"] == 1 and stats["end_points"] == 2
        assert stats["centerline_length_mm"] == pytest.approx(20.0, rel=0.05)
    assert all(m["watertight"] for m in summary["meshes"])
    assert (tmp_path / "renal_artery_left.stl").read_bytes()[:9] == b"SPACE=LPS"


def _segment_folder(root, name="case01"):
    folder = root / name
    write_image(two_kidney_labels(OBLIQUE_30DEG), folder / "labels.nii.gz")
    (folder / "labels.json").write_text(json.dumps({"0": "background", "1": "renal_artery"}))
    (folder / "report.json").write_text(json.dumps({"status": "ok"}))
    return folder


def test_cli_export_mesh(tmp_path):
    folder = _segment_folder(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["export-mesh", str(folder), "--out", str(tmp_path / "out"), "--format", "ply"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out" / "case01").iterdir())
    assert [n for n in written if "centerline" not in n] == [
        "renal_artery_left.ply", "renal_artery_right.ply", "tree.json"]
    again = runner.invoke(app, ["export-mesh", str(folder), "--out", str(tmp_path / "out")])
    assert again.exit_code == 1 and "--overwrite" in again.output
    bad = runner.invoke(app, ["export-mesh", str(folder), "--out", str(tmp_path / "o2"), "--space", "xyz"])
    assert bad.exit_code == 2
    missing = runner.invoke(app, ["export-mesh", str(tmp_path / "nope"), "--out", str(tmp_path / "o3")])
    assert missing.exit_code == 2


def _kidney_tumour_artery(labels: Volume) -> np.ndarray:
    """``two_kidney_labels``' tubes as arteries (KiPA22 3), with a kidney block and a tumour
    in its corner on the left side, the left artery running through the kidney."""
    array = labels.array.copy()
    array[6:24, 2:22, X + 40:X + 58] = 2   # a kidney block on the left side
    array[6:12, 2:8, X + 52:X + 58] = 4    # a tumour in its corner
    array[5:25, 10:14, X + 48:X + 52] = 3  # the left artery running through it
    array[array == 1] = 3
    return array


def test_cli_export_mesh_of_a_four_structure_map_lists_every_mesh(tmp_path):
    """What `segment` writes by default (vein, kidney, artery, tumour): export-mesh meshes each
    structure and its table shows the vessels' centerline and "–" for the solid ones, whose
    tree.json entry has no centerline, instead of failing on them."""
    labels = two_kidney_labels()
    array = _kidney_tumour_artery(labels)
    array[5:25, 17:20, X + 8:X + 11] = 1   # a vein on the right
    folder = tmp_path / "four"
    write_image(labels.with_array(array), folder / "labels.nii.gz")
    (folder / "labels.json").write_text(json.dumps(
        {"0": "background", "1": "renal_vein", "2": "kidney", "3": "renal_artery", "4": "tumour"}))
    (folder / "report.json").write_text(json.dumps({"status": "ok"}))
    result = CliRunner().invoke(app, ["export-mesh", str(folder), "--out", str(tmp_path / "out")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    written = {p.name for p in (tmp_path / "out" / "four").iterdir()}
    assert {"kidney_left.stl", "tumour_left.stl", "renal_artery_left.stl", "renal_vein_right.stl"} <= written
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")[3:8]]
            for line in result.output.splitlines() if line.count("│") >= 8}
    assert rows["kidney_left.stl"][2:] == rows["tumour_left.stl"][2:] == ["–", "–", "–"]
    assert float(rows["renal_artery_left.stl"][2]) > 15 and rows["renal_vein_right.stl"][2] != "–"
    # in RAS too: the vessels' points turn, the solid structures have none to turn
    ras = CliRunner().invoke(app, ["export-mesh", str(folder), "--out", str(tmp_path / "ras"), "--space", "ras"])
    assert ras.exit_code == 0, ras.output
    lps_tree, ras_tree = (json.loads((tmp_path / d / "four" / "tree.json").read_text())["trees"]
                          for d in ("out", "ras"))
    assert ras_tree["kidney"] == lps_tree["kidney"] and ras_tree["tumour"] == lps_tree["tumour"]
    assert ras_tree["renal_artery"]["left"]["end_points_mm"] == [
        [-x, -y, z] for x, y, z in lps_tree["renal_artery"]["left"]["end_points_mm"]]


def test_a_bug_in_one_study_does_not_end_an_export_mesh_batch(tmp_path, monkeypatch):
    """An unexpected error meshing one study is that study's failure: named on its red line as
    a bug, nothing of it left in --out, the next study meshed, exit 1 (--debug raises it)."""
    import renalseg.mesh

    first, second = _segment_folder(tmp_path, "case01"), _segment_folder(tmp_path, "case02")
    real = renalseg.mesh.export_meshes

    def broken_on_case01(volume, out_dir, **kwargs):
        if "case01" in str(out_dir):
            raise KeyError("centerline_length_mm")
        return real(volume, out_dir, **kwargs)

    monkeypatch.setattr(renalseg.mesh, "export_meshes", broken_on_case01)
    result = CliRunner().invoke(app, ["export-mesh", str(first), str(second), "--out", str(tmp_path / "out")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "case01: unexpected KeyError" in result.output and "a bug" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case02"]
    assert (tmp_path / "out" / "case02" / "renal_artery_left.stl").exists()
    debug = CliRunner().invoke(app, ["--debug", "export-mesh", str(first), "--out", str(tmp_path / "dbg")])
    assert isinstance(debug.exception, KeyError) and not (tmp_path / "dbg" / "case01").exists()


def test_real_aorta_mesh_overlays_the_dicom_ct():
    """The LAS-stored reference labels, meshed, land on the bright aorta of the DICOM CT."""
    from conftest import DICOM_FIXTURE, DICOM_REFERENCE_LABELS, require

    from renalseg.io.study import read_study

    ct = read_study(require(DICOM_FIXTURE)).volume
    labels = Volume.from_sitk(read_image(require(DICOM_REFERENCE_LABELS)))
    assert labels.geometry.orientation == "LAS" and ct.geometry.orientation == "LPS"

    def median_hu_inside(mesh):
        inner = mesh.vertices - 1.5 * mesh.vertex_normals  # 1.5 mm inside the wall
        index = np.rint(ct.geometry.world_to_index(inner)).astype(int)
        inside = (index >= 0).all(axis=1) & (index < np.array(ct.geometry.shape_xyz)).all(axis=1)
        return float(np.median(ct.array[index[inside, 2], index[inside, 1], index[inside, 0]]))

    aorta = label_to_mesh(labels, label=52)  # TotalSegmentator: 52 = aorta
    assert aorta.is_watertight and aorta.volume > 0
    assert median_hu_inside(aorta) > 120  # contrast-filled aorta (~150 HU)
    # the same voxels laid voxel for voxel on the CT grid (geometry ignored) miss it
    wrong = Volume(labels.array, ct.geometry)
    assert median_hu_inside(label_to_mesh(wrong, label=52)) < 60


def test_cli_export_mesh_uses_report_rois_and_ras(tmp_path):
    folder = _segment_folder(tmp_path, "case02")
    labels = Volume.from_sitk(read_image(folder / "labels.nii.gz"))
    index = np.argwhere(labels.array == 1)
    world = labels.geometry.index_to_world(index[:, ::-1])
    # one ROI around everything, called "left": the ROI decides, not the midline
    rois = [{"side": "left", "box_mm_lps": {"min": (world.min(0) - 5).tolist(), "max": (world.max(0) + 5).tolist()}}]
    (folder / "report.json").write_text(json.dumps({"status": "ok", "rois": rois}))
    result = CliRunner().invoke(app, ["export-mesh", str(folder / "labels.nii.gz"), "--out", str(tmp_path / "out"),
                                      "--space", "ras", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["studies"][0]
    assert summary["study_id"] == "case02" and summary["split"] == "roi" and summary["space"] == "RAS"
    assert [m["side"] for m in summary["meshes"]] == ["left"]
    stl = tmp_path / "out" / "case02" / "renal_artery_left.stl"
    assert stl.read_bytes()[:9] == b"SPACE=RAS"
    mesh = trimesh.load(stl)
    assert mesh.volume > 0
    # RAS: x and y negated relative to LPS world coordinates
    np.testing.assert_allclose(mesh.bounds[:, 2], [world[:, 2].min() - 0.5 * 1.0, world[:, 2].max() + 0.5], atol=0.6)
    assert -mesh.bounds[1, 0] == pytest.approx(world[:, 0].min(), abs=1.0)
    tree = json.loads((tmp_path / "out" / "case02" / "tree.json").read_text())
    assert tree["coordinate_space"] == "RAS"
    ends = np.asarray(tree["trees"]["renal_artery"]["left"]["end_points_mm"])
    assert len(ends) == 4 and (-ends[:, 0]).min() >= world[:, 0].min() - 1.0


def test_no_split_writes_one_mesh_per_label(tmp_path):
    labels = two_kidney_labels()
    array = labels.array.copy()
    array[5:25, 18:22, X + 28:X + 32] = 3  # a second label, e.g. a KiPA-style vein
    summary = export_meshes(labels.with_array(array), tmp_path, label_names={1: "renal_artery"}, split=False,
                            fmt="obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "label_3.obj", "renal_artery.obj", "renal_artery_centerline.mrk.json", "renal_artery_centerline.vtp",
        "tree.json"]  # a centerline for the artery only
    assert summary["split"] == "none"
    assert summary["trees"]["renal_artery"]["all"]["components"] == 2
    assert (tmp_path / "renal_artery.obj").read_text().startswith("# SPACE=LPS")


def test_voxels_touching_only_along_an_edge_still_give_a_watertight_mesh():
    # a noisy network output often holds voxels that share only an edge; marching cubes
    # would make that edge shared by four faces (non-manifold, not printable)
    rng = np.random.default_rng(3)
    array = rng.random((14, 16, 18)) > 0.8
    array[7, 4:12, 4:14] = True  # one large component joins most specks
    geometry = Geometry(array.shape, (0.7, 0.7, 1.0), (5.0, -3.0, 2.0), OBLIQUE_30DEG)
    mesh = mask_to_mesh(Volume(array.astype(np.uint8), geometry), smoothing_iterations=0, min_component_mm3=0.0)
    assert mesh.is_watertight
    assert mesh.volume > 0


def test_tree_json_describes_a_kidney_and_a_tumour_by_pieces_and_volume_not_a_skeleton(tmp_path):
    """A kidney's skeleton is a medial surface of thousands of chains, not a vessel tree:
    tree.json gives solid structures their components and volume only, and their meshes
    are written as before; the artery keeps its centerline."""
    labels = two_kidney_labels()
    array = _kidney_tumour_artery(labels)
    names = {1: "renal_vein", 2: "kidney", 3: "renal_artery", 4: "tumour"}
    summary = export_meshes(labels.with_array(array), tmp_path, label_names=names)
    tree = json.loads((tmp_path / "tree.json").read_text())["trees"]
    voxel_ml = labels.geometry.voxel_volume_mm3 / 1000.0
    assert tree["kidney"]["left"] == {"components": 1, "volume_ml": round(float((array == 2).sum()) * voxel_ml, 4)}
    assert tree["tumour"]["left"] == {"components": 1, "volume_ml": round(float((array == 4).sum()) * voxel_ml, 4)}
    assert tree["renal_artery"]["left"]["centerline_length_mm"] > 15
    assert {m["name"] for m in summary["meshes"]} == {"kidney", "tumour", "renal_artery"}


def test_one_kidneys_crop_is_not_cut_in_two_and_takes_its_side_from_its_vessels(tmp_path):
    """A KiPA22-style crop of one kidney (63 mm across, its centre at LPS x < 0) without a
    report.json: split at its centre, the kidney's artery would go half to each side. It is
    one kidney, whose vessels run to the patient's right (-x): the left one."""
    geometry = Geometry((20, 40, 90), (0.7, 0.7, 1.0), (-60.0, 0.0, 0.0), LPS)
    array = np.zeros(geometry.shape_zyx, np.uint8)
    array[2:18, 5:35, 50:85] = 2  # the kidney at the crop's +x end
    array[8:11, 10:13, 5:60] = 3  # its artery and vein towards -x, into the kidney
    array[8:12, 22:27, 5:55] = 1
    crop = Volume(array, geometry)
    for names, out in ((None, "kipa"), ({1: "renal_vein", 2: "kidney", 3: "renal_artery"}, "named")):
        summary = export_meshes(crop, tmp_path / out, label_names=names)
        assert {m["side"] for m in summary["meshes"]} == {"left"} and len(summary["meshes"]) == 3
        assert json.loads((tmp_path / out / "tree.json").read_text())["side_split"] == "crop: vessels"
    # nothing beyond the kidney to read a side from: the crop's centre says it, and tree.json says how
    summary = export_meshes(crop.with_array(np.where(array == 2, array, 0).astype(np.uint8)), tmp_path / "kidney")
    assert {m["side"] for m in summary["meshes"]} == {"right"}
    assert json.loads((tmp_path / "kidney" / "tree.json").read_text())["side_split"] == "crop: coordinates"
