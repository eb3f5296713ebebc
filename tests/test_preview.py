"""preview.png: thin-slab MIPs that bright bone/bowel outside the slab cannot saturate; outlines; marks."""

from __future__ import annotations

import numpy as np

from renalseg.pipeline import RoiView
from renalseg.preview import RESEARCH_NOTICE, mip_panels, render_preview


def _roi(with_plate: bool = True):
    hu = np.full((60, 80, 70), 20.0, np.float32)
    artery = np.zeros(hu.shape, bool)
    artery[10:50, 38:42, 30:34] = True  # a vessel in the middle (y ≈ 40)
    hu[artery] = 400.0
    if with_plate:
        hu[:, 5:8, :] = 1500.0  # a rib-like plate 23 mm in front of it: fills a whole-depth coronal MIP
    return hu, artery


def test_thin_slab_coronal_mip_is_not_saturated_by_bone_in_front():
    hu, artery = _roi()
    coronal, axial = mip_panels(hu, artery, (0.7, 0.7, 1.0))
    picture = np.asarray(coronal)
    white = (picture > 250).all(axis=2).mean()
    assert white < 0.05  # the whole-depth MIP would be white everywhere
    assert coronal.info["slab_mm"] <= 40.0
    whole = hu.max(axis=1)
    assert (whole >= 700).mean() == 1.0  # what the old preview showed: saturated


def test_kidney_and_tumour_outlined_and_the_picture_marked():
    hu, artery = _roi(with_plate=False)
    kidney = np.zeros(hu.shape, bool)
    kidney[5:55, 20:60, 10:60] = True
    tumour = np.zeros(hu.shape, bool)
    tumour[20:30, 30:40, 45:55] = True
    view = RoiView("left", hu, artery, (0.7, 0.7, 1.0), {"kidney": kidney, "tumour": tumour})
    picture = np.asarray(render_preview([view], title="case"))
    tan = (np.abs(picture.astype(int) - (200, 135, 90)).sum(axis=2) < 10).sum()
    purple = (np.abs(picture.astype(int) - (190, 90, 230)).sum(axis=2) < 10).sum()
    assert tan > 200 and purple > 50
    # the research-use notice at the foot (amber text), nothing there without it
    foot = picture[-22:]
    assert ((foot[..., 0] > 200) & (foot[..., 1] > 150) & (foot[..., 2] < 100)).sum() > 30
    bare = np.asarray(render_preview([view], title="case", notice=None))
    assert bare.shape[0] < picture.shape[0] and RESEARCH_NOTICE.startswith("Research use")


def test_the_vein_is_filled_in_blue_under_the_artery():
    """A vein beside the artery and crossing it: blue where only the vein is, red where the
    artery lies over it, so a surgeon tells the two apart on the preview."""
    hu, artery = _roi(with_plate=False)
    vein = np.zeros(hu.shape, bool)
    vein[:, 30:36, 20:26] = True                      # a rod of its own
    vein[28:32, 30:36, :] = True                      # and a band across everything
    plain = np.asarray(mip_panels(hu, artery, (0.7, 0.7, 1.0))[0]).astype(int)
    coronal = np.asarray(mip_panels(hu, artery, (0.7, 0.7, 1.0), outlines={"vein": vein})[0]).astype(int)
    red = (plain[..., 0] > plain[..., 2] + 80)
    blue = (coronal[..., 2] > coronal[..., 0] + 60)
    assert blue.sum() > 300                           # the vein shows
    assert not (blue & red).any()                     # the artery stays red on top of it
    picture = render_preview([RoiView("left", hu, artery, (0.7, 0.7, 1.0), {"vein": vein})], title="case")
    assert picture.size[0] > 0


def test_every_panel_has_a_scale_bar():
    hu, artery = _roi(with_plate=False)
    for panel in mip_panels(hu, artery, (0.7, 0.7, 1.0)):
        rows = np.asarray(panel)[-8:-5]
        bright_run = ((rows > 230).all(axis=2)).any(axis=0).sum()
        # 70 voxels × 0.7 mm = 49 mm wide: a 10 mm bar over 300 px is about 61 px
        assert 55 <= bright_run <= 70
