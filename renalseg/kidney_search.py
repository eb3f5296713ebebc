"""Each kidney on its own: a wide head–foot search, a confidence, and where its vessels run.

:func:`renalseg.roi.locate_kidneys` registers the atlas to the study as a left–right
pair; real kidneys do not sit as a pair (ptosis, a large liver pushing the right
kidney 9 cm down, a single kidney, malrotation, a scan that stops mid-kidney). Here
each warped atlas kidney is searched for *alone*:

* :func:`search_one_kidney` slides it ±:data:`WIDE_SEARCH_Z_MM` head–foot (and
  ±:data:`SHIFT_SEARCH_XY_MM` in-plane) to where the study shows a fat-wrapped
  soft-tissue organ of its shape (:func:`~renalseg.registration.kidney_likeness_shift`,
  true in every contrast phase), with a light penalty per mm; the pair's placement
  wins only when nothing far away looks clearly more like a kidney;
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
           "search_one_kidney", "place_kidneys", "confidence_from_score", "vessel_reach"]

#: head–foot reach of the single-kidney search (mm): a kidney 12 cm below its usual
#: place is still found, starting from the pair's placement
WIDE_SEARCH_Z_MM = 150.0
#: in-plane reach (mm) of the same search
SHIFT_SEARCH_XY_MM = 45.0
#: score lost per mm of shift: in-plane (the registration is right there), head–foot
#: (kidneys do sit far from where the pair puts them)
WIDE_PENALTY_PER_MM: tuple[float, float, float] = (0.002, 0.002, 0.0006)
#: score lost per unit fraction out of view in the wide search: an organ cut by the
#: edge of the scan (the spleen's tip) otherwise scores on its visible part alone
OUT_OF_VIEW_PENALTY = 0.5
#: kidney-likeness (penalties included) a placement of the wide search needs to
#: replace the near one: phantom kidneys found 60–110 mm from the pair's place score
#: 0.20–0.26, the spleen's tip in an un-enhanced real CT without its left kidney 0.13
WIDE_MIN_SCORE = 0.16
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


def search_one_kidney(kidney: np.ndarray, hu: np.ndarray, fov: np.ndarray, *, spacing_mm: float,
                      narrow_radius_mm: tuple[float, float, float], narrow_penalty_per_mm: float,
                      min_in_view: float) -> tuple[tuple[int, int, int], float, str]:
    """Where one warped atlas kidney looks most like a kidney in the study.

    Args:
        kidney: the kidney's boolean mask on the working grid (as the pair placed it).
        hu, fov: the study's HU and field-of-view mask on that grid.
        spacing_mm: the grid's (isotropic) spacing.
        narrow_radius_mm, narrow_penalty_per_mm: the near search around the pair's
            placement (used when the wide one finds nothing clearly kidney-like).
        min_in_view: the wide search only scores places with this fraction in view.

    Returns:
        ``(shift_zyx, score, how)``: voxel shift, its kidney-likeness (NaN when nothing
        could be scored) and ``"pair"`` (near the pair's placement) or ``"alone"``
        (found far from it).
    """
    from renalseg.registration import kidney_likeness_shift

    narrow, narrow_score = kidney_likeness_shift(kidney, hu, fov, radius_mm=narrow_radius_mm,
                                                 penalty_per_mm=narrow_penalty_per_mm)
    wide, wide_score = kidney_likeness_shift(
        kidney, hu, fov, radius_mm=(SHIFT_SEARCH_XY_MM, SHIFT_SEARCH_XY_MM, WIDE_SEARCH_Z_MM),
        penalty_per_mm=WIDE_PENALTY_PER_MM, min_in_view=min_in_view, out_of_view_penalty=OUT_OF_VIEW_PENALTY)
    far = abs(wide[0]) * spacing_mm > narrow_radius_mm[2]
    if np.isfinite(wide_score) and wide_score >= WIDE_MIN_SCORE and (
            not np.isfinite(narrow_score) or wide_score > narrow_score):
        return wide, float(wide_score), "alone" if far else "pair"
    return narrow, float(narrow_score), "pair"


def place_kidneys(templates: dict[str, np.ndarray], hu: np.ndarray, fov: np.ndarray, *, spacing_mm: float,
                  narrow_radius_mm: tuple[float, float, float], narrow_penalty_per_mm: float,
                  min_in_view: float) -> dict[str, tuple[tuple[int, int, int], float, str]]:
    """:func:`search_one_kidney` for each side, then one consistency pass.

    When one kidney is found far from the pair's placement and the other is not, the
    pair's registration is suspect (a scan that stops mid-kidney, a low kidney that
    pulled the pair): the other kidney is searched again from its template moved by
    the same shift, and the better-scoring placement is kept. Returns ``side ->
    (shift_zyx, score, how)`` with ``how`` ``"alone"`` for a far placement.
    """
    kwargs = {"spacing_mm": spacing_mm, "narrow_radius_mm": narrow_radius_mm,
              "narrow_penalty_per_mm": narrow_penalty_per_mm, "min_in_view": min_in_view}
    placed = {side: search_one_kidney(mask, hu, fov, **kwargs) for side, mask in templates.items()}
    alone = [side for side, (_, _, how) in placed.items() if how == "alone"]
    if len(placed) == 2 and len(alone) == 1:
        other = next(side for side in placed if side != alone[0])
        moved = placed[alone[0]][0]
        shift, score, _ = search_one_kidney(np.roll(templates[other], moved, axis=(0, 1, 2)), hu, fov, **kwargs)
        if np.isfinite(score) and (not np.isfinite(placed[other][1]) or score > placed[other][1]):
            total = tuple(int(a + b) for a, b in zip(moved, shift))
            far = abs(total[0]) * spacing_mm > narrow_radius_mm[2]
            placed[other] = (total, float(score), "alone" if far else "pair")  # type: ignore[assignment]
    return placed


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
