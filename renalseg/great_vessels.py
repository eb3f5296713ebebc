"""The aorta and the IVC at a kidney ROI's medial edge: the roots of the renal vessel trees.

Neither is a labelled class (KiPA22 labels the renal artery, renal vein, kidney and
tumour), so they are found from the CT itself, on the ROI's model grid (z → superior,
y → posterior, x → the patient's left): the great vessels are the bright, long, tube-
calibred pieces in the ROI's medial half. Bright is ≥ ``min_hu`` (both vessels
are ≥ 120 HU in arterial and portal-venous phases alike, so brightness does not
tell them apart); long is at least ``min_length_mm`` of the ROI's height; tube-calibred
is a median axial cross-section of ``area_mm2`` (a 11-36 mm wide vessel; the vertebral
body and the liver are wider, small vessels narrower). Of two such pieces the one
more to the patient's left is the aorta and the other the IVC (the IVC lies right of
the aorta in normal anatomy; a left-sided IVC or a situs inversus is then swapped,
and the topology clean-up would be wrong: the report says which was found). With
one or no piece nothing is returned, and :func:`renalseg.postprocess.reassign_by_topology`
leaves the vessels alone (the shipped kidney ROIs seldom hold both vessels: the
wider ROI of the localisation does).

Example (two tubes in the medial half of a right-kidney ROI; the left one is the aorta):
    >>> hu = np.full((40, 30, 30), -100.0, np.float32)
    >>> hu[:, 10:18, 24:30] = 300; hu[:, 10:18, 16:22] = 200
    >>> found = find_great_vessels(hu, (1.5, 1.5, 2.0), side="right")
    >>> int(found["aorta"][0, 12, 25]), int(found["ivc"][0, 12, 18])
    (1, 1)
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from renalseg.components import STRUCTURE_26

__all__ = ["find_great_vessels", "GREAT_VESSEL_MIN_HU"]

log = logging.getLogger(__name__)

#: the aorta and the IVC are at least this bright with contrast in any phase the models read
GREAT_VESSEL_MIN_HU: float = 120.0


def find_great_vessels(hu: np.ndarray, spacing_xyz_mm: tuple[float, float, float], *, side: str,
                       min_hu: float = GREAT_VESSEL_MIN_HU, min_length_mm: float = 30.0,
                       area_mm2: tuple[float, float] = (95.0, 1000.0)) -> dict[str, np.ndarray]:
    """``{"aorta": mask, "ivc": mask}`` (bool, the grid of ``hu``), or ``{}`` when not both are found.

    Args:
        hu: float ``(Z, Y, X)`` CT of one ROI on its model grid (x → the patient's left).
        spacing_xyz_mm: its spacing (x, y, z) mm.
        side: the kidney's side: its medial half is larger x (right kidney) or smaller x (left).
        min_hu, min_length_mm, area_mm2: see the module docstring.
    """
    if side not in ("left", "right"):
        return {}
    bright = np.asarray(hu) >= min_hu
    pieces, count = ndimage.label(bright, structure=STRUCTURE_26)
    width = bright.shape[2]
    pixel_mm2 = float(spacing_xyz_mm[0] * spacing_xyz_mm[1])
    candidates = []
    boxes = ndimage.find_objects(pieces)
    for number, box in enumerate(boxes, start=1):
        piece = pieces[box] == number
        slices = piece.any(axis=(1, 2))
        if slices.sum() * spacing_xyz_mm[2] < min_length_mm:
            continue
        area = float(np.median(piece.sum(axis=(1, 2))[slices])) * pixel_mm2
        if not area_mm2[0] <= area <= area_mm2[1]:
            continue
        x_mean = float(np.nonzero(piece)[2].mean()) + box[2].start
        if (x_mean < width / 2) == (side == "right"):  # not in the medial half
            continue
        candidates.append((int(piece.sum()), x_mean, number))
    if len(candidates) < 2:
        log.info("great vessels: %d tube(s) in the %s ROI's medial half; topology clean-up off", len(candidates),
                 side)
        return {}
    two = sorted(candidates, reverse=True)[:2]
    aorta, ivc = sorted(two, key=lambda c: -c[1])  # larger x = more to the patient's left
    return {"aorta": pieces == aorta[2], "ivc": pieces == ivc[2]}
