"""Topology clean-up on hand-built trees: artery pieces belong to the aorta's tree, vein pieces to the IVC's."""

from __future__ import annotations

import numpy as np

from renalseg.great_vessels import find_great_vessels
from renalseg.postprocess import reassign_by_topology

ARTERY, VEIN = 3, 1
SPACING = (1.0, 1.0, 1.0)


def _scene():
    """Aorta (x 50-57) and IVC (x 30-37) along z; an artery branch from the aorta, an 'artery' piece on the IVC."""
    shape = (40, 30, 64)
    aorta = np.zeros(shape, bool); aorta[:, 10:18, 50:58] = True
    ivc = np.zeros(shape, bool); ivc[:, 10:18, 30:38] = True
    labels = np.zeros(shape, np.uint8)
    labels[20:23, 12:15, 40:49] = ARTERY      # branch 1 mm from the aorta's wall: stays
    labels[5:8, 12:15, 20:29] = ARTERY        # 1 mm from the IVC's wall: contradicts its class
    labels[30:33, 12:15, 2:8] = ARTERY        # 22 mm from both: on no tree
    labels[10:13, 20:23, 38:41] = VEIN        # touches the IVC: stays
    return labels, aorta, ivc


def _probabilities(labels):
    """The network: 0.6 artery / 0.3 vein on artery voxels, 0.8 vein on vein voxels, background elsewhere."""
    p = {v: np.zeros(labels.shape, np.float32) for v in (0, 1, 2, 3, 4)}
    p[ARTERY][labels == ARTERY] = 0.6; p[VEIN][labels == ARTERY] = 0.3; p[0][labels == ARTERY] = 0.1
    p[VEIN][labels == VEIN] = 0.8; p[0][labels == VEIN] = 0.2
    p[0][labels == 0] = 1.0
    return p


def test_artery_piece_on_the_ivc_moves_to_vein_and_one_on_the_aorta_stays():
    labels, aorta, ivc = _scene()
    out, changes = reassign_by_topology(labels, roots={ARTERY: aorta, VEIN: ivc}, probabilities=_probabilities(labels),
                                        max_gap_mm=5.0, spacing_xyz_mm=SPACING)
    assert (out[20:23, 12:15, 40:49] == ARTERY).all()            # attached to the aorta: stays
    assert (out[5:8, 12:15, 20:29] == VEIN).all()                # attached to the IVC: the vein, its next class
    assert not out[30:33, 12:15, 2:8].any()                      # on neither tree: dropped
    assert (out[10:13, 20:23, 38:41] == VEIN).all()
    assert changes[ARTERY] == {"reassigned_pieces": 1, "reassigned_ml": 0.081, "dropped_pieces": 1,
                               "dropped_ml": 0.054, "kept_at_kidney_pieces": 0, "kept_at_kidney_ml": 0.0}
    assert changes[VEIN] == {"reassigned_pieces": 0, "reassigned_ml": 0.0, "dropped_pieces": 0, "dropped_ml": 0.0,
                             "kept_at_kidney_pieces": 0, "kept_at_kidney_ml": 0.0}


def test_a_sure_vessel_piece_against_the_kidney_stays_off_its_tree():
    """At the hilum the renal vein runs beside the artery into the kidney: a vein piece the
    network is sure of, cut off from the IVC by a gap, touching the kidney, stays vein; an
    unsure one there, or a sure one away from the kidney, is still reassigned or dropped."""
    labels, aorta, ivc = _scene()
    kidney = np.zeros(labels.shape, bool); kidney[15:35, 5:25, 0:10] = True
    labels[kidney] = 2
    labels[22:25, 12:15, 10:20] = VEIN       # against the kidney, 2 mm below the artery branch's level
    labels[24:27, 12:15, 21:30] = ARTERY     # an artery piece the vein piece touches, off every tree
    labels[0:3, 24:27, 10:20] = VEIN         # sure, but 12 mm from the kidney and off the IVC's tree
    p = _probabilities(labels)
    p[VEIN][22:25, 12:15, 10:20] = 0.9
    p[VEIN][0:3, 24:27, 10:20] = 0.9
    out, changes = reassign_by_topology(labels, roots={ARTERY: aorta, VEIN: ivc}, probabilities=p, max_gap_mm=5.0,
                                        spacing_xyz_mm=SPACING, kidney=kidney)
    assert (out[22:25, 12:15, 10:20] == VEIN).all()
    assert not (out[0:3, 24:27, 10:20] == VEIN).any()
    assert changes[VEIN]["kept_at_kidney_pieces"] == 1 and changes[VEIN]["kept_at_kidney_ml"] == 0.09
    p[VEIN][22:25, 12:15, 10:20] = 0.6      # the network unsure of it: no longer kept
    unsure, _ = reassign_by_topology(labels, roots={ARTERY: aorta, VEIN: ivc}, probabilities=p, max_gap_mm=5.0,
                                     spacing_xyz_mm=SPACING, kidney=kidney)
    assert not (unsure[22:25, 12:15, 10:20] == VEIN).any()


def test_a_chain_of_pieces_reaches_the_root_and_no_vein_probability_drops():
    labels, aorta, ivc = _scene()
    labels[20:23, 12:15, 30:38] = ARTERY  # a piece 2 mm beyond the branch: on the aorta's tree through it
    labels[20:23, 12:15, 30:38][:, :, 0] = 0
    p = _probabilities(labels)
    p[VEIN][labels == ARTERY] = 0.0  # the network gave the vein nothing there
    out, changes = reassign_by_topology(labels, roots={ARTERY: aorta, VEIN: ivc}, probabilities=p,
                                        max_gap_mm=5.0, spacing_xyz_mm=SPACING)
    assert (out[20:23, 12:15, 31:38] == ARTERY).all()
    assert not out[5:8, 12:15, 20:29].any()  # its next class is background: dropped
    assert changes[ARTERY]["reassigned_pieces"] == 1


def test_without_probabilities_the_piece_moves_whole_and_without_a_root_nothing_changes():
    labels, aorta, ivc = _scene()
    out, _ = reassign_by_topology(labels, roots={ARTERY: aorta, VEIN: ivc}, probabilities=None, max_gap_mm=5.0,
                                  spacing_xyz_mm=SPACING)
    assert (out[5:8, 12:15, 20:29] == VEIN).all()
    same, changes = reassign_by_topology(labels, roots={ARTERY: np.zeros_like(aorta), VEIN: ivc},
                                         probabilities=None, max_gap_mm=5.0, spacing_xyz_mm=SPACING)
    assert np.array_equal(same[labels == ARTERY], labels[labels == ARTERY]) and ARTERY not in changes


def _great_vessel_scene(aorta_hu=160.0, ivc_hu=190.0):
    """A right-kidney ROI at 1 mm: a round aorta (20 mm) on the patient's left of an oval IVC
    (24 × 16 mm), a 6 mm renal artery leaving the aorta and a kidney-bright block it joins."""
    shape = (60, 60, 110)
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    aorta = (yy - 30) ** 2 + (xx - 80) ** 2 <= 10 ** 2
    ivc = ((yy - 32) / 8.0) ** 2 + ((xx - 50) / 12.0) ** 2 <= 1
    artery = ((zz - 30) ** 2 + (yy - 40) ** 2 <= 9) & (xx >= 8) & (xx <= 72)
    kidney = (zz >= 15) & (zz < 45) & (yy >= 20) & (yy < 50) & (xx < 12)
    hu = np.full(shape, -100.0, np.float32)
    hu[kidney] = 180.0; hu[artery] = 300.0; hu[aorta] = aorta_hu; hu[ivc] = ivc_hu
    return hu, aorta & (zz >= 0), ivc & (zz >= 0), artery & ~ivc


def test_great_vessels_found_by_position_not_brightness():
    hu, aorta, ivc, artery = _great_vessel_scene()  # portal-venous: the IVC brighter than the aorta
    found = find_great_vessels(hu, SPACING, side="right")
    for name, truth in (("aorta", aorta), ("ivc", ivc)):
        overlap = (found[name] & truth).sum()
        assert overlap / truth.sum() >= 0.95 and overlap / found[name].sum() >= 0.9, name
    assert not found["aorta"][:, :, :64].any()  # the renal artery is not the aorta beyond its first 6 mm
    assert find_great_vessels(hu, SPACING)["aorta"].sum() == found["aorta"].sum()  # side unknown: looked for anywhere
    assert find_great_vessels(hu, SPACING, side="left") == {}  # the medial half of a left ROI holds neither
    hu[ivc] = -100.0
    assert find_great_vessels(hu, SPACING, side="right") == {}  # one tube: which is it? not guessed


def test_great_vessels_found_through_noise_and_a_bright_neighbour_touching_them():
    """CT noise (σ 25 HU) would leave holes in a thresholded lumen; a bowel loop full of
    contrast against the IVC over 10 slices merges with it there. Neither loses a root."""
    hu, aorta, ivc, _ = _great_vessel_scene(aorta_hu=350.0, ivc_hu=130.0)  # arterial: the IVC barely enhanced
    hu[20:30, 12:40, 30:40] = 400.0  # bowel contrast against the IVC's right wall
    hu += np.random.default_rng(0).normal(0.0, 25.0, hu.shape).astype(np.float32)
    found = find_great_vessels(hu, SPACING, side="right")
    for name, truth in (("aorta", aorta), ("ivc", ivc)):
        assert (found[name] & truth).sum() / truth.sum() >= 0.9, name
        assert (found[name] & truth).any(axis=(1, 2)).all(), f"{name}: a slice without its root"


def test_a_great_vessel_as_bright_as_a_low_kvp_aorta_is_a_vessel_and_bone_as_bright_is_not():
    """At 70-80 kVp, or on low-keV dual-energy images, the aorta is 600-1000 HU: as bright as
    a bone's cortex, but as bright throughout. Bone's tube is a bright cortex round darker
    marrow, and is never a root."""
    hu, aorta, ivc, _ = _great_vessel_scene(aorta_hu=850.0, ivc_hu=450.0)
    hu += np.random.default_rng(1).normal(0.0, 30.0, hu.shape).astype(np.float32)
    found = find_great_vessels(hu, SPACING, side="right")
    for name, truth in (("aorta", aorta), ("ivc", ivc)):
        assert (found[name] & truth).sum() / truth.sum() >= 0.95, name
    zz, yy, xx = np.mgrid[:hu.shape[0], :hu.shape[1], :hu.shape[2]]
    radius = np.hypot(yy - 30, xx - 80)
    hu[aorta] = np.where(radius[aorta] >= 8, 1100.0, 250.0)  # a vertebra-like tube in the aorta's place
    assert find_great_vessels(hu, SPACING, side="right") == {}


def test_no_great_vessels_in_a_real_unenhanced_ct():
    """The kidney atlas CT (real, un-enhanced, 3 mm; TotalSegmentator, CC BY 4.0): nothing
    but bone reaches 100 HU, and bone (its cortex above 700 HU) is not taken for a vessel."""
    import SimpleITK as sitk

    from renalseg.registration import ATLAS_CT_NAME, ATLAS_DIR
    from renalseg.volume import Volume

    ct = Volume.from_sitk(sitk.DICOMOrient(sitk.ReadImage(str(ATLAS_DIR / ATLAS_CT_NAME)), "LPS"))
    assert (ct.array >= 300).sum() > 10_000  # the spine and the pelvis are in view
    assert find_great_vessels(ct.array.astype(np.float32), ct.geometry.spacing_xyz_mm) == {}


def test_the_aorta_alone_is_found_only_when_asked_and_bright_as_an_arterial_aorta():
    """Early in the arterial phase the IVC is not yet enhanced and no pair is found; the
    aorta alone, bright as an arterial aorta, is then still the aorta (for the verdict's
    look behind it). A lone tube as faint as a portal-venous vessel is not taken for it."""
    hu, aorta, ivc, _ = _great_vessel_scene(aorta_hu=350.0, ivc_hu=40.0)
    assert find_great_vessels(hu, SPACING, side="right") == {}
    found = find_great_vessels(hu, SPACING, side="right", aorta_alone_min_hu=200.0)
    assert set(found) == {"aorta"} and (found["aorta"] & aorta).sum() / aorta.sum() >= 0.95
    assert not (found["aorta"] & ivc).any()
    faint, _, _, _ = _great_vessel_scene(aorta_hu=170.0, ivc_hu=40.0)
    assert find_great_vessels(faint, SPACING, side="right", aorta_alone_min_hu=200.0) == {}
