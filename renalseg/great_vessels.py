"""The aorta and the IVC beside a kidney ROI: the roots of the renal vessel trees.

Neither is a labelled class (KiPA22 labels the renal artery, renal vein, kidney and
tumour), so they are found from the CT itself, on the ROI's model grid (z → superior,
y → posterior, x → the patient's left):

1. bright: ≥ ``min_hu`` after a Gaussian of ``smooth_mm`` against noise (both vessels
   are ≥ 100 HU with contrast in the arterial, portal-venous and nephrographic phases,
   so brightness does not tell them apart);
2. branches cut off: an opening with a ball of ``branch_radius_mm`` (two Euclidean
   distance transforms) removes every tube narrower than twice that (the renal
   arteries, 4-8 mm, and veins, 8-12 mm), which otherwise join the aorta and the IVC
   to the kidney, and the kidney to everything else bright, in one piece;
3. tube cross-sections: in each axial slice, the opened blobs of a great vessel's area
   (``area_mm2``: 11-36 mm wide; the vertebral body and the liver are wider, small
   vessels narrower) that are round (they fill at least 55% of their bounding box, an
   ellipse 79%);
4. long: cross-sections stacked into pieces at least ``min_length_mm`` tall, and not
   bone: a piece whose brightest 5% pass ``max_hu`` is bone when its median is under
   :data:`BONE_MEDIAN_SHARE` of them (a cortex around marrow; a bright lumen, as at 70-80
   kVp, is as bright throughout);
5. a pair: the aorta and the IVC run side by side, their centres 15-50 mm apart from
   left to right and at most 35 mm front to back, for at least ``min_length_mm``
   together. One of them is the longest tube in the ROI (the great vessels cross it
   from top to bottom; a kidney bright enough to pass is shorter); of its partners the
   one beside it the longest is taken (none: nothing is returned); of the two,
   the one more to the patient's left is the aorta (the IVC lies right of the aorta in
   normal anatomy; a left-sided IVC or a situs inversus is then swapped, and the
   topology clean-up would be wrong: the report says which was found).

Without such a pair nothing is returned, and :func:`renalseg.postprocess.reassign_by_topology`
leaves the vessels alone. Each returned mask is its tube followed over the ROI's whole
height (:func:`_track`) and grown by the opening's radius within the bright voxels: the
vessel's own lumen and the first few millimetres of its branches.

Example (two tubes beside a right kidney ROI; the one on the patient's left is the aorta):
    >>> hu = np.full((40, 40, 60), -100.0, np.float32)
    >>> yy, xx = np.mgrid[:40, :60]
    >>> hu[:, (yy - 20) ** 2 + (xx - 45) ** 2 <= 36] = 300  # 18 mm wide at 1.5 mm
    >>> hu[:, (yy - 20) ** 2 + (xx - 28) ** 2 <= 36] = 200
    >>> found = find_great_vessels(hu, (1.5, 1.5, 2.0), side="right")
    >>> int(found["aorta"][0, 20, 45]), int(found["ivc"][0, 20, 28])
    (1, 1)
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

__all__ = ["find_great_vessels", "GREAT_VESSEL_MIN_HU", "GREAT_VESSEL_MAX_HU", "BONE_MEDIAN_SHARE",
           "AORTA_ALONE_MIN_HU"]

log = logging.getLogger(__name__)

#: the aorta and the IVC are at least this bright with contrast in any phase the models read
GREAT_VESSEL_MIN_HU: float = 100.0

#: a tube whose 95th percentile is brighter may be bone (its cortex, 700-1500 HU): the
#: vertebrae and the pelvis make tubes too. A CTA's aorta is 250-600 HU at 100-120 kVp, but
#: 600-1000 HU at 70-80 kVp or on low-keV dual-energy images, so brightness alone does not
#: decide it (:data:`BONE_MEDIAN_SHARE`)
GREAT_VESSEL_MAX_HU: float = 700.0

#: ... and is bone where its median is under this share of that 95th percentile: a cortex
#: around darker marrow (0.14-0.39 on the real CTs in tests/data), where a lumen is as
#: bright throughout (0.86 for the real CTA's aorta; 0.96 for phantom aortas of 770-840 HU)
BONE_MEDIAN_SHARE: float = 0.6

#: a left kidney's ROI without an aorta-IVC pair: its longest medial tube is taken for the
#: aorta alone where its median is at least this (an arterial-phase aorta, 250-600 HU, the
#: IVC not yet enhanced; not a portal-venous vessel, about 150-210 HU, which may be the IVC).
#: Only for the verdict's look behind the aorta (:func:`renalseg.quality.artery_behind_aorta_ml`):
#: the topology check needs the pair
AORTA_ALONE_MIN_HU: float = 200.0

#: the search grid's spacing (mm) at most: coarser voxels of the ROI grid are sampled
COARSE_MM: float = 1.4


def _opened(mask: np.ndarray, radius_mm: float, sampling_zyx: tuple[float, float, float]) -> np.ndarray:
    """Morphological opening of ``mask`` with a ball of ``radius_mm`` (anisotropic voxels).

    Two exact Euclidean distance transforms, whose cost does not grow with the radius,
    instead of an erosion and a dilation with a voxelised ball (about 270 voxels for
    5 mm on the 1.4 × 1.4 × 1 mm search grid).
    """
    core = ndimage.distance_transform_edt(mask, sampling=sampling_zyx) > radius_mm
    if not core.any():
        return core
    return (ndimage.distance_transform_edt(~core, sampling=sampling_zyx) <= radius_mm) & mask


def _cross_sections(opened: np.ndarray, pixel_mm2: float, area_mm2: tuple[float, float]) -> np.ndarray:
    """The round blobs of a great vessel's area in each axial slice of ``opened``."""
    keep = np.zeros_like(opened)
    for z in range(opened.shape[0]):
        blobs, count = ndimage.label(opened[z])
        if not count:
            continue
        areas = np.bincount(blobs.ravel(), minlength=count + 1) * pixel_mm2
        for number, box in enumerate(ndimage.find_objects(blobs), start=1):
            height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
            if (area_mm2[0] <= areas[number] <= area_mm2[1] and max(height, width) <= 2.5 * min(height, width)
                    and areas[number] >= 0.55 * height * width * pixel_mm2):
                keep[z][box] |= blobs[box] == number
    return keep


def find_great_vessels(hu: np.ndarray, spacing_xyz_mm: tuple[float, float, float], *, side: str | None = None,
                       min_hu: float = GREAT_VESSEL_MIN_HU, max_hu: float = GREAT_VESSEL_MAX_HU,
                       min_length_mm: float = 30.0,
                       area_mm2: tuple[float, float] = (95.0, 1000.0),
                       branch_radius_mm: float = 5.0, smooth_mm: float = 1.0,
                       aorta_alone_min_hu: float | None = None) -> dict[str, np.ndarray]:
    """``{"aorta": mask, "ivc": mask}`` (bool, the grid of ``hu``), or ``{}`` when no pair is found.

    With ``aorta_alone_min_hu``, where no pair is found but the ROI's longest medial tube
    has a median of at least that (an aorta in the arterial phase, the IVC not yet
    enhanced enough to be a tube), ``{"aorta": mask}`` alone.

    Args:
        hu: float ``(Z, Y, X)`` CT of one ROI on its model grid (x → the patient's left).
        spacing_xyz_mm: its spacing (x, y, z) mm.
        side: the kidney's side, when known: the longest tube and the pair's midpoint
            must then lie in the ROI's medial half (larger x for a right kidney, smaller
            for a left one). ``None`` (an ROI whose side is a guess) looks anywhere.
        min_hu, max_hu, min_length_mm, area_mm2, branch_radius_mm: see the module docstring.
        smooth_mm: σ of the Gaussian the CT is smoothed with before the threshold (noise
            would leave holes in a vessel's lumen that the opening then widens).
    """
    if side not in ("left", "right", None):
        return {}
    full_spacing = np.asarray(spacing_xyz_mm, dtype=float)[::-1]  # z, y, x
    smoothed = ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), tuple(smooth_mm / full_spacing))
    # the search runs on a grid of about COARSE_MM (the great vessels are ≥ 11 mm wide):
    # a quarter of the voxels of a 0.7 mm grid, and its distance transforms 4× faster
    step = tuple(int(max(1, COARSE_MM // v)) for v in full_spacing)
    bright = smoothed[::step[0], ::step[1], ::step[2]] >= min_hu
    raw = np.asarray(hu)[::step[0], ::step[1], ::step[2]]
    dz, dy, dx = (float(v) for v in full_spacing * step)
    opened = _opened(bright, branch_radius_mm, (dz, dy, dx))
    pieces, _ = ndimage.label(_cross_sections(opened, dx * dy, area_mm2))
    width = bright.shape[2]
    tubes = []
    for number, box in enumerate(ndimage.find_objects(pieces), start=1):
        piece = pieces[box] == number
        slices = np.nonzero(piece.any(axis=(1, 2)))[0] + box[0].start
        if len(slices) * dz < min_length_mm:
            continue
        values = raw[box][piece]
        top = np.percentile(values, 95)
        if top > max_hu and np.median(values) < BONE_MEDIAN_SHARE * top:  # bone: its cortex around the marrow
            continue
        _, y, x = np.nonzero(piece)
        tubes.append((number, set(slices.tolist()), (x.mean() + box[2].start) * dx, (y.mean() + box[1].start) * dy))

    def medial(x_mm: float) -> bool:
        return side is None or (x_mm / dx < width / 2) != (side == "right")

    best, best_length = None, 0.0
    longest = [t for t in tubes if medial(t[2])]
    if longest:  # the longest tube is one of the two: the kidney's own bright poles are shorter
        a = max(longest, key=lambda t: len(t[1]))
        for b in tubes:
            together = len(a[1] & b[1]) * dz
            if (b is not a and 15.0 <= abs(a[2] - b[2]) <= 50.0 and abs(a[3] - b[3]) <= 35.0
                    and medial((a[2] + b[2]) / 2) and min_length_mm <= together and best_length < together):
                best, best_length = (a, b), together
    sampling = (dz, dy, dx)

    def in_lumen(coarse: np.ndarray) -> np.ndarray:
        """A search-grid mask on the ROI's grid, within the bright voxels (the lumen's edge
        the smoothing shaved off included)."""
        full = (smoothed >= min_hu) | (np.asarray(hu) >= min_hu)
        return full & _upsampled(coarse, step, full.shape)

    if best is None:
        log.info("great vessels: no aorta-IVC pair among %d long tube(s) in the %s ROI; topology clean-up off",
                 len(tubes), side or "unsided")
        if aorta_alone_min_hu is not None and longest:
            alone = pieces == max(longest, key=lambda t: len(t[1]))[0]
            if np.median(raw[alone]) >= aorta_alone_min_hu:
                to_aorta = ndimage.distance_transform_edt(~_track(alone, opened, sampling), sampling=sampling)
                return {"aorta": in_lumen(to_aorta <= branch_radius_mm)}
        return {}
    aorta, ivc = sorted(best, key=lambda t: -t[2])  # larger x = more to the patient's left
    tracks = {name: _track(pieces == tube[0], opened, sampling) for name, tube in (("aorta", aorta), ("ivc", ivc))}
    to_aorta = ndimage.distance_transform_edt(~tracks["aorta"], sampling=sampling)
    to_ivc = ndimage.distance_transform_edt(~tracks["ivc"], sampling=sampling)
    coarse = {"aorta": (to_aorta <= branch_radius_mm) & (to_aorta <= to_ivc),
              "ivc": (to_ivc <= branch_radius_mm) & (to_ivc < to_aorta)}
    return {name: in_lumen(mask) for name, mask in coarse.items()}


def _upsampled(mask: np.ndarray, step: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` of a strided grid (``array[::step]``) back on the full grid, each voxel repeated."""
    for axis, k in enumerate(step):
        mask = np.repeat(mask, k, axis=axis)
    return mask[tuple(slice(0, n) for n in shape)]


def _track(piece: np.ndarray, opened: np.ndarray, sampling_zyx: tuple[float, float, float]) -> np.ndarray:
    """The vessel of ``piece`` over the whole ROI height, not only where its cross-section was round.

    Where a branch, the vertebra or a bowel loop touches a great vessel its cross-section
    is not round and the piece stops; the renal arteries and veins leave just there, so
    the root would miss them. The piece's centre is followed slice by slice (interpolated
    across gaps, held beyond its ends) and in every slice the opened voxels within 1.5 ×
    the piece's median radius + 2 mm of that centre are the vessel.
    """
    dz, dy, dx = sampling_zyx
    z_in = np.nonzero(piece.any(axis=(1, 2)))[0]
    centres = np.array([np.argwhere(piece[z]).mean(axis=0) for z in z_in])  # (y, x) voxels
    areas = piece.sum(axis=(1, 2))[z_in] * dy * dx
    reach_mm = 1.5 * float(np.sqrt(np.median(areas) / np.pi)) + 2.0
    all_z = np.arange(piece.shape[0])
    cy, cx = np.interp(all_z, z_in, centres[:, 0]), np.interp(all_z, z_in, centres[:, 1])
    yy, xx = np.mgrid[:piece.shape[1], :piece.shape[2]]
    out = np.zeros_like(piece)
    for z in all_z:
        near = ((yy - cy[z]) * dy) ** 2 + ((xx - cx[z]) * dx) ** 2 <= reach_mm ** 2
        out[z] = opened[z] & near
    return out | piece
