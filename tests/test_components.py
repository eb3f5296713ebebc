"""One definition of a connected component: report.json, tree.json and the mesh bodies agree."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import OBLIQUE_30DEG
from test_pipeline import threshold_segmenter

from renalseg.components import SPECK_MM3, count_pieces
from renalseg.geometry import Geometry
from renalseg.mesh import export_meshes
from renalseg.pipeline import SegmentConfig, segment_study
from renalseg.volume import Volume

HU_BRIGHT = 600


def _pieces_ct() -> tuple[Volume, np.ndarray]:
    """Bright rods meeting only at an edge and at a corner, plus one-voxel specks."""
    g = Geometry((40, 40, 40), (0.8, 0.8, 1.0), (-10.0, 20.0, 300.0), OBLIQUE_30DEG)
    mask = np.zeros(g.shape_zyx, bool)
    mask[5:15, 10:13, 10:13] = True        # rod A
    mask[15:25, 13:16, 13:16] = True       # rod B: touches A at one corner only
    mask[5:15, 25:28, 25:28] = True        # rod C
    mask[15:25, 28:31, 25:28] = True       # rod D: touches C along one edge only
    mask[32, 5, 5] = mask[35, 35, 35] = True  # two specks
    hu = np.where(mask, HU_BRIGHT, 0).astype(np.int16)
    return Volume(hu, g), mask


def test_corner_and_edge_contacts_are_one_component_everywhere(tmp_path):
    ct, mask = _pieces_ct()
    assert count_pieces(mask, ct.geometry.spacing_xyz_mm) == {"components": 2, "specks": 2,
                                                              "speck_volume_ml": 0.0013}
    result = segment_study(ct.to_sitk(), SegmentConfig(input_is_roi=True, side="left", min_component_mm3=0,
                                                        max_gap_mm=float("inf"), force=True),  # no value below 0 HU
                           segmenter=threshold_segmenter())
    labels = Volume.from_sitk(result.labels)
    assert np.array_equal(labels.array.astype(bool), mask)
    report = result.report["arteries"]["left"]
    summary = export_meshes(labels, tmp_path, label_names={3: "renal_artery"}, rois=result.report["rois"])
    tree = summary["trees"]["renal_artery"]["left"]
    (mesh,) = summary["meshes"]
    assert report["components"] == tree["components"] == mesh["bodies"] == 2
    assert report["specks"] == 2 and SPECK_MM3 == 5.0
    assert report["cleanup"] == {"far_pieces": 0, "far_ml": 0.0, "small_pieces": 0, "small_ml": 0.0,
                                 "bright_artery_ml": 0.0,  # rods of one HU: nothing over the artery ceiling
                                 "artery_ceiling_hu": pytest.approx(1.3 * HU_BRIGHT)}
    assert "26-connected" in result.report["component_definition"]


def test_report_says_what_cleanup_removed():
    ct, mask = _pieces_ct()
    result = segment_study(ct.to_sitk(), SegmentConfig(input_is_roi=True, side="left", min_component_mm3=1.0,
                                                        max_gap_mm=float("inf"), force=True),  # no value below 0 HU
                           segmenter=threshold_segmenter())
    cleanup = result.report["arteries"]["left"]["cleanup"]
    assert cleanup["small_pieces"] == 2 and cleanup["small_ml"] == 0.0013 and cleanup["far_pieces"] == 0
    assert result.report["arteries"]["left"]["specks"] == 0
    assert int((sitk.GetArrayFromImage(result.labels) == 3).sum()) == int(mask.sum()) - 2


def test_pieces_exactly_at_the_gap_stay_on_an_anisotropic_grid():
    """The gap is measured in mm on the grid's own spacing, up to and including it: the
    clean-up looks only inside the reference's box grown by the gap, so a piece at its
    edge must still be seen."""
    from renalseg.postprocess import keep_main_tree

    for gap_voxels, kept in ((4, True), (5, False)):  # 12 mm and 15 mm between voxel centres
        labels = np.zeros((20, 3, 3), np.uint8)
        labels[0:6, 1, 1] = 3
        labels[5 + gap_voxels, 1, 1] = 3
        out = keep_main_tree(labels, max_gap_mm=12.0, spacing_xyz_mm=(0.7, 0.7, 3.0))
        assert bool(out[5 + gap_voxels, 1, 1]) is kept
