"""Each kidney on its own: a wide head–foot search, a confidence, and where its vessels run.

:func:`renalseg.roi.locate_kidneys` registers the atlas to the study as a left–right
pair; real kidneys do not sit as a pair (ptosis, a large liver pushing the right
kidney 9 cm down, a single kidney, malrotation, a scan that stops mid-kidney). Here
each warped atlas kidney is searched for *alone*:

* :func:`place_kidneys` scores every place of each warped kidney ±:data:`SHIFT_SEARCH_XY_MM`
  in-plane and far head–foot for how much it looks like a fat-wrapped soft-tissue
  organ of its shape (:func:`~renalseg.registration.kidney_likeness_map`, true in
  every contrast phase); first it finds where *both* kidneys are together
  (:func:`common_shift`): the registration errs for both alike (on phantoms with few
  landmarks by 5–10 cm, when one kidney absent, low or cut by the scan caught the
  pair), while each kidney's place varies less around the other's; then each kidney
  near that, or up to ±:data:`WIDE_SEARCH_Z_MM` head–foot from it when something
  there looks clearly more like a kidney and is wrapped in fat on most sides
  (:func:`wrapped_in_fat`: the liver's edge is not); never with its centre within
  :data:`MIN_MIDLINE_DISTANCE_MM` of the body's midline (:func:`body_midline`), where
  the spine and the great vessels lie and, beside them, duodenum and bowel in fat that
  fit a kidney's template where one kidney is absent;
* :func:`confidence_from_score` turns that kidney-likeness (the fraction of the mask
  in soft tissue plus the fraction of its shell in fat, minus one) into a confidence
  in [0, 1]; below :data:`MIN_CONFIDENCE`, or with an implausible volume
  (:data:`PLAUSIBLE_VOLUME_ML`), the kidney is refused with a message naming it;
* :func:`vessel_reach` says how far each kidney's ROI must reach medially, forward and
  head–foot so that the renal artery from its aortic origin (accessory arteries
  included) and the renal vein to the IVC are inside.

No learned model: a small 3D network on a 4 mm grid was measured first (a 3-level
UNet, 8–32 channels, took 14 s per training step of two 96 × 96 × 64 patches on a
2-core AMD EPYC in float32), too slow to train to the acceptance bar here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["WIDE_SEARCH_Z_MM", "SHIFT_SEARCH_XY_MM", "MIN_CONFIDENCE", "PLAUSIBLE_VOLUME_ML",
           "VESSEL_CROSS_MIDLINE_MM", "VESSEL_ANTERIOR_MM", "ORIGIN_REACH_Z_MM",
           "MIN_WRAPPED_IN_FAT", "MIN_MIDLINE_DISTANCE_MM", "HORSESHOE_TURN_DEG", "KIDNEY_SHAPES", "AS_WARPED",
           "HORSESHOE_HALF", "HORSESHOE_MARGIN", "body_midline", "wrapped_in_fat", "common_shift", "kidney_shape",
           "isthmus_between", "place_kidneys", "confidence_from_score", "vessel_reach"]

#: head–foot reach of the single-kidney search (mm): a kidney 12 cm below its usual
#: place is still found, starting from the pair's common displacement (which is itself
#: at most this far from the pair's placement)
WIDE_SEARCH_Z_MM = 150.0
#: in-plane reach (mm) of the same search
SHIFT_SEARCH_XY_MM = 45.0
#: score lost per mm of shift from the pair's common displacement: in-plane (the
#: registration is right there), head–foot (kidneys do sit far from the pair's level)
WIDE_PENALTY_PER_MM: tuple[float, float, float] = (0.002, 0.002, 0.0006)
#: score lost per unit fraction out of view in the wide search: an organ cut by the
#: edge of the scan (the spleen's tip) otherwise scores on its visible part alone
OUT_OF_VIEW_PENALTY = 0.5
#: kidney-likeness (penalties included) a placement of the wide search needs to
#: replace the near one: phantom kidneys found 60–110 mm from the pair's place score
#: 0.20–0.26, the spleen's tip in an un-enhanced real CT without its left kidney 0.13
WIDE_MIN_SCORE = 0.16
#: score lost per mm (x, y, z) of the pair's common displacement from where the
#: registration put it: light, most of all head–foot (the registration's least
#: certain axis: on phantoms with few landmarks it erred by 5–10 cm), yet enough that
#: two blobs of bowel in fat 16 cm below a scan's cut kidneys do not win
COMMON_PENALTY_PER_MM: tuple[float, float, float] = (0.001, 0.001, 0.0005)
#: score lost per mm (x, y, z) of one kidney's own offset from the pair's common
#: displacement, when finding that displacement: kidneys sit within 1–2 cm of each
#: other's level, rarely (ptosis) 12 cm apart
OWN_PENALTY_PER_MM: tuple[float, float, float] = (0.003, 0.003, 0.0008)
#: kidney-likeness a kidney counts for, at least, when finding the common
#: displacement: an absent kidney, or one out of view, leaves it to the other
ABSENT_LIKENESS = 0.1
#: a kidney found far from the pair's common displacement must be wrapped in fat: the
#: median over its six faces (head, foot, front, back, either side) of the fraction of
#: a 6 mm layer in fat at least this; 40 held-out phantoms' kidneys: 0.37–0.83, the
#: real atlas CT's 0.54 and 0.75; a liver's edge with fat on one side only: 0.19–0.21
MIN_WRAPPED_IN_FAT = 0.3
#: how far (degrees) a horseshoe kidney's half is turned about the head–foot axis from
#: the warped atlas kidney: its hilum faces forward (incomplete rotation), the atlas
#: kidney's antero-medially
HORSESHOE_TURN_DEG = 80.0
#: across the middle 40% between two kidneys, an isthmus runs at least this far (mm) in
#: front of the more anterior kidney's centre (in front of the aorta: the spine, the
#: psoas muscles and the great vessels' back walls lie behind it)
ISTHMUS_IN_FRONT_MM = 30.0
AS_WARPED, HORSESHOE_HALF = "as warped", "horseshoe half"
#: the shapes a warped kidney is placed as (:func:`kidney_shape`): name -> (mirrored head
#: to foot, turned about the head–foot axis, degrees)
KIDNEY_SHAPES: dict[str, tuple[bool, float]] = {
    AS_WARPED: (False, 0.0),
    HORSESHOE_HALF: (True, HORSESHOE_TURN_DEG),
}
#: how much more kidney-like (summed over both) the two kidneys must be as a horseshoe
#: kidney's halves, level with each other and low, than where the search for a pair
#: put them, for the horseshoe to be taken
HORSESHOE_MARGIN = 0.05
#: a kidney's centre lies at least this far (mm) to the side of the body's midline: the
#: spine, the aorta and the IVC fill the middle (the real atlas CT's kidneys' centres
#: lie 72 and 74 mm from it, 40 held-out single-kidney phantoms' 62–75 mm), while what
#: lies there in fat (the duodenum, the IVC, bowel) can fit the warped kidney when one
#: kidney is absent. A horseshoe kidney's halves are placed by their own shape
MIN_MIDLINE_DISTANCE_MM = 30.0
#: kidney-likeness that maps to confidence 0 and 1
_SCORE_AT_ZERO, _SCORE_AT_ONE = 0.0, 0.35
#: below this confidence a kidney is refused (not kidney-like: MR, no fat, no tissue;
#: on 40 held-out phantoms true kidneys scored ≥ 0.48, the liver's edge where an
#: absent right kidney would be 0.41; the real atlas CT's kidneys 1.0)
MIN_CONFIDENCE = 0.42
#: a kidney outside this (ml, soft tissue of the refined kidney, tumour included) is
#: refused: normal adult kidneys are 50–400 ml, a 10 cm tumour adds up to ~520 ml
PLAUSIBLE_VOLUME_ML: tuple[float, float] = (25.0, 1100.0)
#: how far (mm) past the midline each ROI reaches: the aorta (left of the midline)
#: and the IVC (right of it) with their lateral walls
VESSEL_CROSS_MIDLINE_MM = 30.0
#: how far (mm) in front of the hila the ROI reaches (the left renal vein crosses in
#: front of the aorta, ~50 mm in front of the kidneys' centres)
VESSEL_ANTERIOR_MM = 60.0
#: head–foot reach (mm) around the renal arteries' usual level (the higher hilum):
#: main arteries leave the aorta within ~15 mm of it, accessory ones within ~40 mm more
ORIGIN_REACH_Z_MM = 58.0


def body_midline(hu: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Per axial slice, the x index of the body's middle (NaN where no body is in view).

    The body is the largest connected region above
    :data:`~renalseg.io.plausibility.AIR_BELOW_HU` in the slice (the table, the arms and
    air outside it left out); its middle is the centroid of that region,
    smoothed over 15 slices (a patient lies tilted a little, not bent).

    Example:
        >>> hu = np.full((3, 20, 40), -1000.0); hu[:, 5:15, 8:30] = 0.0; hu[:, 18:19, 0:40] = 100.0  # + a table
        >>> body_midline(hu, np.ones(hu.shape, bool)).tolist()
        [18.5, 18.5, 18.5]
    """
    from scipy import ndimage

    from renalseg.io.plausibility import AIR_BELOW_HU

    middle = np.full(hu.shape[0], np.nan)
    for z in range(hu.shape[0]):
        body = (hu[z] > AIR_BELOW_HU) & fov[z]
        if not body.any():
            continue
        pieces, count = ndimage.label(body)
        largest = int(np.argmax(np.bincount(pieces.ravel(), minlength=count + 1)[1:])) + 1
        middle[z] = float(np.nonzero(pieces == largest)[1].mean())
    seen = np.isfinite(middle)
    if not seen.any():
        return middle
    filled = np.interp(np.arange(middle.size), np.flatnonzero(seen), middle[seen])
    smooth = ndimage.median_filter(filled, size=15, mode="nearest")
    return np.where(seen, smooth, np.nan)


def _near_midline(template: np.ndarray, shape: tuple[int, ...], midline: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Over a shift map of ``shape`` (centred: no shift), where the shifted ``template``'s
    centre would lie within :data:`MIN_MIDLINE_DISTANCE_MM` of the body's midline."""
    zc, _, xc = np.argwhere(template).mean(axis=0)
    centre = np.asarray(shape) // 2
    z = np.clip(np.round(zc + np.arange(shape[0]) - centre[0]).astype(int), 0, midline.size - 1)
    x = xc + np.arange(shape[2]) - centre[2]
    distance = np.abs(x[None, :] - midline[z][:, None]) * spacing_mm  # (z, x); NaN midline: never near
    return np.broadcast_to((distance < MIN_MIDLINE_DISTANCE_MM)[:, None, :], shape)


def _best(score: np.ndarray) -> tuple[np.ndarray | None, float]:
    """Index and value of the largest finite entry (``(None, nan)`` when there is none)."""
    if not np.isfinite(score).any():
        return None, float("nan")
    best = np.unravel_index(int(np.nanargmax(score)), score.shape)
    return np.asarray(best), float(score[best])


def _reach_max(score: np.ndarray, step_cost: np.ndarray) -> np.ndarray:
    """``max_d score[i + d] - sum_k step_cost[k] * |d_k|`` for every index ``i`` (L1 cone).

    Separable: one forward and one backward pass along each axis.

    Example:
        >>> _reach_max(np.array([[[0.0, 0.0, 1.0, 0.0]]]), np.array([1.0, 1.0, 0.25])).ravel().tolist()
        [0.5, 0.75, 1.0, 0.75]
    """
    out = score.copy()
    for axis in range(3):
        moved = np.moveaxis(out, axis, 0)  # a view: the passes write into ``out``
        for i in range(1, moved.shape[0]):
            np.maximum(moved[i], moved[i - 1] - step_cost[axis], out=moved[i])
        for i in range(moved.shape[0] - 2, -1, -1):
            np.maximum(moved[i], moved[i + 1] - step_cost[axis], out=moved[i])
    return out


def wrapped_in_fat(kidney: np.ndarray, hu: np.ndarray, fov: np.ndarray, *, ring: int = 2) -> float:
    """Median over the mask's six faces of the fraction of a ``ring``-voxel layer in fat.

    A kidney sits in perirenal fat on (nearly) every side; the edge of the liver or the
    spleen has fat on one side and more of the organ on the others. Faces out of view
    do not count (NaN when none is in view).

    Example:
        >>> hu = np.full((12, 12, 12), -100.0); kidney = np.zeros(hu.shape, bool)
        >>> kidney[4:8, 4:8, 4:8] = True; hu[kidney] = 40.0
        >>> wrapped_in_fat(kidney, hu, np.ones(hu.shape, bool))
        1.0
        >>> hu[:, :, 6:] = 60.0                      # an organ's edge: tissue on one side and beyond
        >>> wrapped_in_fat(kidney, hu, np.ones(hu.shape, bool))
        0.5
    """
    from renalseg.registration import FAT_HU

    zz, yy, xx = np.nonzero(kidney)
    if zz.size == 0:
        return float("nan")
    lo = np.maximum(np.array([zz.min(), yy.min(), xx.min()]) - ring, 0)
    hi = np.array([zz.max(), yy.max(), xx.max()]) + ring + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    mask, seen = np.pad(kidney[box], ring), np.pad(fov[box], ring)
    fat = np.pad((hu[box] >= FAT_HU[0]) & (hu[box] < FAT_HU[1]), ring)
    fractions = []
    for axis in range(3):
        for step in (1, -1):
            face = np.zeros_like(mask)
            for k in range(1, ring + 1):
                face |= np.roll(mask, step * k, axis=axis)
            face &= ~mask & seen
            if face.any():
                fractions.append(float(fat[face].mean()))
    return float(np.median(fractions)) if fractions else float("nan")


def common_shift(scores: dict[str, np.ndarray], *, spacing_mm: float,
                 reach_mm: tuple[float, float, float] | None = None) -> np.ndarray:
    """Where both kidneys are, together: the pair's common displacement (map index, z y x).

    The atlas registration errs for both kidneys alike (a study with few landmarks
    head–foot, a pair correction caught by one absent, low or cut kidney), while each
    kidney's own place varies less around the pair's (its level by 1–2 cm; a dropped
    kidney by up to 12 cm). So the displacement ``c`` maximises the sum over both
    kidneys of the best kidney-likeness within reach of ``c`` (less
    :data:`OWN_PENALTY_PER_MM` per mm away from it, an L1 cone), each floored at
    :data:`ABSENT_LIKENESS` (an absent or unseen kidney does not drag ``c`` toward
    places mediocre for both), less :data:`COMMON_PENALTY_PER_MM` per mm of ``c``
    itself (the registration is a guide). Index ``radius`` (the map's centre) is no
    displacement.

    Args:
        scores: per side, the wide search's score map (:func:`place_kidneys`), NaN where
            unscored; all the same shape, centred on the pair's placement.
        spacing_mm: the grid's spacing.
        reach_mm: how far (x, y, z) ``c`` may lie from the map's centre (default: anywhere
            in the map).

    Example:
        >>> left = np.full((41, 3, 3), 0.05); right = left.copy()
        >>> left[2, 1, 1], right[2, 1, 1] = 0.3, 0.3    # both kidneys 54 mm below the pair's place
        >>> left[20, 1, 1] = 0.31                        # a spleen's edge where the pair put one
        >>> (common_shift({"left": left, "right": right}, spacing_mm=3.0) - [20, 1, 1]).tolist()
        [-18, 0, 0]
        >>> right[:] = 0.0                               # one kidney absent: the other decides
        >>> (common_shift({"left": left, "right": right}, spacing_mm=3.0) - [20, 1, 1]).tolist()
        [0, 0, 0]
    """
    from renalseg.registration import distance_penalty

    shape = next(iter(scores.values())).shape
    centre = np.asarray(shape) // 2
    step_cost = np.asarray(OWN_PENALTY_PER_MM[::-1]) * spacing_mm
    total = -distance_penalty(shape, centre, np.asarray(COMMON_PENALTY_PER_MM[::-1]), spacing_mm)
    for score in scores.values():
        reach = _reach_max(np.where(np.isfinite(score), score, -1.0), step_cost)
        total += np.maximum(reach, ABSENT_LIKENESS)
    if reach_mm is not None:
        limit = np.round(np.asarray(reach_mm[::-1]) / spacing_mm).astype(int)
        offsets = np.abs(np.indices(shape) - centre[:, None, None, None])
        total[np.any(offsets > limit[:, None, None, None], axis=0)] = -np.inf
    return np.asarray(np.unravel_index(int(np.argmax(total)), shape))


def _wrapped(template: np.ndarray, shift_zyx: np.ndarray, hu: np.ndarray, fov: np.ndarray) -> bool:
    """Whether ``template`` moved by ``shift_zyx`` is wrapped in fat (:data:`MIN_WRAPPED_IN_FAT`)."""
    moved = np.roll(template, tuple(int(v) for v in shift_zyx), axis=(0, 1, 2))
    wrapped = wrapped_in_fat(moved, hu, fov)
    return bool(np.isfinite(wrapped) and wrapped >= MIN_WRAPPED_IN_FAT)


def kidney_shape(template: np.ndarray, side: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The warped kidney mask as one of :data:`KIDNEY_SHAPES`, about its own centroid.

    ``"horseshoe half"`` mirrors it head to foot (the lower pole, not the upper, tilted
    towards the midline, the sagittal tilt mirrored) and turns it about the head–foot
    axis by :data:`HORSESHOE_TURN_DEG` so that its hilum faces forward, as each half of
    a horseshoe kidney lies.

    Args:
        template: boolean ``(Z, Y, X)`` mask on an isotropic LPS grid (x to the patient's
            left, y back, z up).
        side: ``"left"`` or ``"right"`` (which way the hilum turns forward).
        name: a key of :data:`KIDNEY_SHAPES`.

    Returns:
        ``(mask, matrix)``: the new mask, and the 4 × 4 map of a ``(z, y, x, 1)`` index in
        ``template`` to its place in ``mask`` (for the hilum).

    Example:
        >>> mask = np.zeros((9, 9, 9), bool); mask[2:7, 4, 4] = True; mask[5, 4, 3] = True  # hilum medial
        >>> moved, matrix = kidney_shape(mask, "left", "horseshoe half")
        >>> point = (matrix @ [5, 4, 3, 1])[:3].round(1).tolist(); point      # lower, and forward (-y)
        [3.3, 3.2, 3.7]
        >>> bool(moved[tuple(int(round(v)) for v in point)]), int(moved.sum()) == int(mask.sum())
        (True, True)
    """
    from scipy import ndimage

    mirrored, turn_deg = KIDNEY_SHAPES[name]
    if not mirrored and not turn_deg:
        return template, np.eye(4)
    points = np.argwhere(template)
    centre = points.mean(axis=0)
    # (x, y) -> turned by +angle for the left kidney (its hilum, medial at -x, towards -y), -angle for the right
    angle = np.radians(turn_deg) * (1.0 if side == "left" else -1.0)
    cos, sin = np.cos(angle), np.sin(angle)
    forward = np.array([[-1.0 if mirrored else 1.0, 0.0, 0.0], [0.0, cos, sin], [0.0, -sin, cos]])  # (z, y, x)
    matrix = np.eye(4)
    matrix[:3, :3] = forward
    matrix[:3, 3] = centre - forward @ centre
    inverse = np.linalg.inv(forward)
    # only the ball about the centre that holds the mask moves (a kidney's box, not the whole
    # search grid: 0.87 s a call on the grid, milliseconds on the box)
    reach = int(np.ceil(np.linalg.norm(points - centre, axis=1).max())) + 2
    lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
    hi = np.minimum(np.floor(centre).astype(int) + reach + 1, template.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    local = centre - lo
    moved = np.zeros(template.shape, bool)
    moved[box] = ndimage.affine_transform(template[box].astype(np.uint8), inverse, offset=local - inverse @ local,
                                          order=0, mode="constant", cval=0) > 0
    return moved, matrix


def place_kidneys(templates: dict[str, np.ndarray], hu: np.ndarray, fov: np.ndarray, *, spacing_mm: float,
                  narrow_radius_mm: tuple[float, float, float], narrow_penalty_per_mm: float,
                  min_in_view: float) -> dict[str, tuple[tuple[int, int, int], float, str, tuple | None, str]]:
    """Each warped atlas kidney moved to where it looks most like a kidney in the study.

    First both together (:func:`common_shift`: the pair's common displacement, robust to
    one kidney absent, low or cut by the scan; with one template, none), then each alone around that
    displacement: a near search (``narrow_radius_mm``, ``narrow_penalty_per_mm`` per
    mm) and a wide one (±:data:`SHIFT_SEARCH_XY_MM` in-plane from the pair's placement,
    ±:data:`WIDE_SEARCH_Z_MM` head–foot from the common displacement, itself at most
    that far from the pair's placement; :data:`WIDE_PENALTY_PER_MM`, only places at
    least ``min_in_view`` in view, :data:`OUT_OF_VIEW_PENALTY`); the wide one wins
    only when it scores at least :data:`WIDE_MIN_SCORE` and more than the near one, and
    its place is wrapped in fat (:func:`wrapped_in_fat`, :data:`MIN_WRAPPED_IN_FAT`).
    Neither search places a kidney's centre within :data:`MIN_MIDLINE_DISTANCE_MM` of the
    body's midline (:func:`body_midline`). Last, both kidneys are placed as the halves of
    a horseshoe kidney (:func:`kidney_shape`: mirrored head to foot, hilum forward; level
    with each other, low); that is taken where the two are :data:`HORSESHOE_MARGIN` more
    kidney-like together than the pair's placements.

    Args:
        templates: per side, the kidney's boolean mask on the working grid (as the pair
            placed it).
        hu, fov: the study's HU and field-of-view mask on that grid.
        spacing_mm: the grid's (isotropic) spacing.
        narrow_radius_mm, narrow_penalty_per_mm: the near search (x, y, z radius; score
            lost per mm).
        min_in_view: the wide search only scores places with this fraction in view.

    Returns:
        ``side -> (shift_zyx, score, how, near, shape)``: voxel shift from the pair's
        placement, its kidney-likeness less the penalties (NaN when nothing could be
        scored), ``"pair"`` (within ``narrow_radius_mm`` head–foot of the pair's
        placement) or ``"alone"`` (found farther), when the wide search won the near
        search's best ``(shift_zyx, score)`` it beat (else ``None``), and the shape
        placed (:data:`KIDNEY_SHAPES`: :data:`HORSESHOE_HALF` for both kidneys, or
        :data:`AS_WARPED`).
    """
    from renalseg.registration import distance_penalty, kidney_likeness_map

    if not templates:
        return {}
    # the pair's common displacement may reach WIDE_SEARCH_Z_MM head–foot, and each
    # kidney as far again from it
    radius_mm = (SHIFT_SEARCH_XY_MM, SHIFT_SEARCH_XY_MM, 2.0 * WIDE_SEARCH_Z_MM)
    near_scores: dict[str, np.ndarray] = {}
    wide_scores: dict[str, np.ndarray] = {}
    midline = body_midline(hu, fov)
    for side, template in templates.items():
        likeness, inside, shell = kidney_likeness_map(template, hu, fov, radius_mm=radius_mm)
        likeness[_near_midline(template, likeness.shape, midline, spacing_mm)] = np.nan
        near_scores[side] = np.where((inside > 0.5) & (shell > 0.5), likeness, np.nan)
        wide_scores[side] = np.where((inside > min_in_view) & (shell > min_in_view),
                                     likeness - OUT_OF_VIEW_PENALTY * (1.0 - inside), np.nan)
    shape = next(iter(wide_scores.values())).shape
    centre = np.asarray(shape) // 2
    # one kidney alone cannot tell the registration's error from its own place
    common = (common_shift(wide_scores, spacing_mm=spacing_mm, reach_mm=(SHIFT_SEARCH_XY_MM, SHIFT_SEARCH_XY_MM,
                                                                         WIDE_SEARCH_Z_MM))
              if len(templates) > 1 else centre)
    narrow = np.round(np.asarray(narrow_radius_mm[::-1]) / spacing_mm).astype(int)
    lo, hi = np.maximum(common - narrow, 0), np.minimum(common + narrow + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    near_penalty = distance_penalty(shape, common, np.full(3, narrow_penalty_per_mm), spacing_mm)
    wide_penalty = distance_penalty(shape, common, np.asarray(WIDE_PENALTY_PER_MM[::-1]), spacing_mm)
    reach_z = int(round(WIDE_SEARCH_Z_MM / spacing_mm))
    wide_penalty[np.abs(np.arange(shape[0]) - common[0]) > reach_z] = np.inf
    placed: dict[str, tuple[tuple[int, int, int], float, str, tuple | None, str]] = {}
    for side in templates:
        near_index, near_score = _best((near_scores[side] - near_penalty)[box])
        near_index = None if near_index is None else near_index + lo
        wide_index, wide_score = _best(wide_scores[side] - wide_penalty)
        beaten = None
        if wide_index is not None and wide_score >= WIDE_MIN_SCORE and (
                near_index is None or wide_score > near_score) and (
                np.array_equal(wide_index, near_index) or _wrapped(templates[side], wide_index - centre, hu, fov)):
            index, score = wide_index, wide_score
            if near_index is not None and not np.array_equal(wide_index, near_index):
                beaten = (tuple(int(v) for v in near_index - centre), near_score)
        elif near_index is not None:
            index, score = near_index, near_score
        else:
            index, score = centre, float("nan")
        shift = tuple(int(v) for v in index - centre)
        far = abs(shift[0]) * spacing_mm > narrow_radius_mm[2]
        placed[side] = (shift, score, "alone" if far else "pair", beaten if far else None,  # type: ignore[assignment]
                        AS_WARPED)
    if len(templates) == 2:
        halves = _horseshoe_halves(templates, hu, fov, spacing_mm=spacing_mm, radius_mm=radius_mm,
                                   min_in_view=min_in_view, narrow_z_mm=narrow_radius_mm[2])
        pair = sum(np.nan_to_num(placed[side][1], nan=0.0) for side in templates)
        if halves is not None and sum(score for _, score in halves.values()) >= pair + HORSESHOE_MARGIN:
            for side, (shift, score) in halves.items():
                far = abs(shift[0]) * spacing_mm > narrow_radius_mm[2]
                placed[side] = (shift, score, "alone" if far else "pair", None, HORSESHOE_HALF)
    return placed


def _horseshoe_halves(templates: dict[str, np.ndarray], hu: np.ndarray, fov: np.ndarray, *, spacing_mm: float,
                      radius_mm: tuple[float, float, float], min_in_view: float,
                      narrow_z_mm: float) -> dict[str, tuple[tuple[int, int, int], float]] | None:
    """Both kidneys as the two halves of a horseshoe kidney: each the best place of its
    horseshoe-half shape (:func:`kidney_shape`), the two level with each other (within
    ``narrow_z_mm``, they are joined) and no more than ``narrow_z_mm`` higher than the
    pair's place (a horseshoe kidney sits low); ``side -> (shift_zyx, score)``, or
    ``None`` where either half finds no place scoring :data:`WIDE_MIN_SCORE` wrapped in
    fat, or no isthmus joins the two (:func:`isthmus_between`).
    """
    from scipy import ndimage

    from renalseg.registration import kidney_likeness_map

    masks, scores = {}, {}
    for side, template in templates.items():
        masks[side] = kidney_shape(template, side, HORSESHOE_HALF)[0]
        likeness, inside, shell = kidney_likeness_map(masks[side], hu, fov, radius_mm=radius_mm)
        score = np.where((inside > min_in_view) & (shell > min_in_view),
                         likeness - OUT_OF_VIEW_PENALTY * (1.0 - inside), -np.inf)
        scores[side] = np.where(np.isnan(score), -np.inf, score)
    shape = next(iter(scores.values())).shape
    centre = np.asarray(shape) // 2
    above = centre[0] + int(round(narrow_z_mm / spacing_mm))  # not higher than the pair's place
    for score in scores.values():
        score[above + 1:] = -np.inf
    # per head–foot shift, each half's best; then the level both reach best within narrow_z_mm of each other
    per_level = {side: score.max(axis=(1, 2)) for side, score in scores.items()}
    reach = int(round(narrow_z_mm / spacing_mm))
    band = {side: ndimage.maximum_filter1d(level, size=2 * (reach // 2) + 1, mode="constant", cval=-np.inf)
            for side, level in per_level.items()}
    total = band["left"] + band["right"]
    if not np.isfinite(total).any():
        return None
    level = int(np.argmax(total))
    halves = {}
    for side, score in scores.items():  # each within half the reach of that level: at most narrow_z_mm apart
        z_lo, z_hi = max(level - reach // 2, 0), min(level + reach // 2 + 1, shape[0])
        window = np.full(shape, -np.inf)
        window[z_lo:z_hi] = score[z_lo:z_hi]
        index = np.asarray(np.unravel_index(int(np.argmax(window)), shape))
        best = float(window[tuple(index)])
        if best < WIDE_MIN_SCORE or not _wrapped(masks[side], index - centre, hu, fov):
            return None
        halves[side] = (tuple(int(v) for v in index - centre), best)
    placed = {side: np.roll(masks[side], halves[side][0], axis=(0, 1, 2)) for side in masks}
    return halves if isthmus_between(placed["left"], placed["right"], hu, fov) else None


def isthmus_between(left: np.ndarray, right: np.ndarray, hu: np.ndarray, fov: np.ndarray) -> bool:
    """Whether soft tissue joins two kidney masks (on the 3 mm working grid) across the body in front of them, below
    their middles: the isthmus of a horseshoe kidney (parenchyma, in front of the aorta
    and the IVC, joining the lower poles).

    Searched on the voxels in the soft-tissue range :data:`~renalseg.registration.KIDNEY_TISSUE_HU`
    (6-connected) between the two masks' centres from left to right, in front of their
    centres, and from their lowest voxel up to 40% of the way up the higher of them;
    across the middle 40%, only :data:`ISTHMUS_IN_FRONT_MM` in front of the more
    anterior centre. Normal kidneys are parted there by fat (perirenal,
    retroperitoneal), the great vessels and bowel lying in it.

    Example:
        >>> hu = np.full((20, 30, 60), -100.0); fov = np.ones(hu.shape, bool)
        >>> right = np.zeros(hu.shape, bool); right[2:18, 12:22, 5:15] = True
        >>> left = np.zeros(hu.shape, bool); left[2:18, 12:22, 45:55] = True
        >>> hu[right | left] = 40.0
        >>> isthmus_between(left, right, hu, fov)
        False
        >>> hu[3:7, 9:12, 10:50] = 40.0              # soft tissue just in front of them: not far enough
        >>> isthmus_between(left, right, hu, fov)
        False
        >>> hu[3:7, 2:5, 10:50] = 40.0; hu[3:7, 2:12, 10:15] = hu[3:7, 2:12, 45:50] = 40.0
        >>> isthmus_between(left, right, hu, fov)
        True
    """
    from scipy import ndimage

    from renalseg.registration import KIDNEY_TISSUE_HU, WORK_SPACING_MM

    if not left.any() or not right.any():
        return False
    zl, yl, xl = np.nonzero(left)
    zr, yr, xr = np.nonzero(right)
    low = min(zl.min(), zr.min())
    top = max(zl.min() + 0.4 * (zl.max() - zl.min()), zr.min() + 0.4 * (zr.max() - zr.min()))
    front = int(np.ceil(max(yl.mean(), yr.mean())))
    x_lo, x_hi = sorted((int(round(xl.mean())), int(round(xr.mean()))))
    box = (slice(int(low), int(top) + 1), slice(0, front + 1), slice(x_lo, x_hi + 1))
    tissue = (hu[box] >= KIDNEY_TISSUE_HU[0]) & (hu[box] <= KIDNEY_TISSUE_HU[1]) & fov[box]
    # across the middle, only well in front of the kidneys' centres: not through the
    # spine and the psoas muscles behind the great vessels
    middle = slice(int(round(0.3 * (x_hi - x_lo))), int(round(0.7 * (x_hi - x_lo))) + 1)
    behind = int(np.floor(min(yl.mean(), yr.mean()) - ISTHMUS_IN_FRONT_MM / WORK_SPACING_MM))
    tissue[:, max(behind, 0):, middle] = False
    pieces, _ = ndimage.label(tissue | left[box] | right[box])
    touching = [set(np.unique(pieces[mask[box] & (pieces > 0)])) for mask in (left, right)]
    return bool(touching[0] & touching[1])


def confidence_from_score(score: float) -> float:
    """Kidney-likeness mapped linearly to [0, 1] (NaN: 0).

    Example:
        >>> confidence_from_score(0.35), confidence_from_score(-0.2), confidence_from_score(float("nan"))
        (1.0, 0.0, 0.0)
    """
    if not np.isfinite(score):
        return 0.0
    return round(float(np.clip((score - _SCORE_AT_ZERO) / (_SCORE_AT_ONE - _SCORE_AT_ZERO), 0.0, 1.0)), 3)


def vessel_reach(side: str, hilum: np.ndarray, hila: dict[str, np.ndarray], pair_hila: dict[str, np.ndarray],
                 midline_x: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) LPS corners (mm) that the ``side`` kidney's ROI must also cover.

    Medially past the midline by :data:`VESSEL_CROSS_MIDLINE_MM` (the right ROI holds
    the aorta, the left one the IVC's wall), forward by :data:`VESSEL_ANTERIOR_MM`
    from the hilum, and head–foot :data:`ORIGIN_REACH_Z_MM` around the renal arteries'
    usual level: from below the higher hilum found to above the higher of the hila
    found and the hila where the atlas pair puts them (a low kidney keeps its
    artery's origin at the usual level).

    Args:
        side: "left" or "right".
        hilum: this kidney's hilum (LPS mm).
        hila: the hila (LPS mm) of the kidneys found, this one included.
        pair_hila: both hila where the registered atlas pair puts them.
        midline_x: LPS x of the body's midline.

    Example:
        >>> right, left = np.array([-40.0, 0, 0]), np.array([40.0, 0, 30])
        >>> lo, hi = vessel_reach("right", right, {"right": right, "left": left}, {"right": right, "left": left}, 0.0)
        >>> [float(v) for v in (hi[0], lo[1], lo[2], hi[2])]
        [30.0, -60.0, -28.0, 88.0]
    """
    found = max(float(point[2]) for point in hila.values())
    usual = max([found] + [float(point[2]) for point in pair_hila.values()])
    medial = midline_x + VESSEL_CROSS_MIDLINE_MM if side == "right" else midline_x - VESSEL_CROSS_MIDLINE_MM
    lo = np.array([min(hilum[0], medial), hilum[1] - VESSEL_ANTERIOR_MM, found - ORIGIN_REACH_Z_MM])
    hi = np.array([max(hilum[0], medial), hilum[1], usual + ORIGIN_REACH_Z_MM])
    return lo, hi
