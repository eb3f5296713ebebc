"""Kidney regions of interest (ROIs) and ``locate_kidneys``.

A :class:`KidneyROI` is a box around one kidney on the *model grid*: spacing from
the model card, direction LPS-aligned (identity), 152 × 152 voxels in-plane and Z
slices covering the whole kidney and its hilum. The network always sees arrays in
patient orientation (z → superior, y → posterior, x → left), whatever the study's
own orientation; the study-voxel box (``start_zyx``/``shape_zyx``) is the bounding
box of that grid in the study's own indices, used to paste results back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import SimpleITK as sitk

from renalseg.errors import InputError, NoKidneyFoundError, RegistrationError, UsageError, suggest
from renalseg.geometry import IDENTITY_DIRECTION, Geometry, resample_to_grid
from renalseg.study import unpack_study

if TYPE_CHECKING:
    from renalseg.study import Study
    from renalseg.volume import Volume

__all__ = ["KidneyROI", "ROI_INPLANE_VOXELS", "MASS_TISSUE_FRACTION", "locate_kidneys", "crop_to_roi"]

log = logging.getLogger(__name__)

#: smallest ROI size in-plane on the model grid (paper: 152 × 152 × Z); wider where
#: the renal vessels need it
ROI_INPLANE_VOXELS: int = 152
#: in-plane margin (mm) around the kidney and its vessels when the ROI must grow
ROI_MARGIN_MM = 3.0


@dataclass(frozen=True)
class KidneyROI:
    """One kidney's region of interest.

    Attributes:
        side: ``"left"`` or ``"right"``, the *patient's* side (from LPS x), never array order.
        grid: the ROI on the model grid (LPS-aligned direction, model spacing).
        start_zyx: first study voxel of the box covering ``grid`` (may be < 0).
        shape_zyx: size of that box in study voxels (may reach past the image:
            those voxels are padded with air when cropping).
        kidney_volume_ml: estimated kidney volume.
        truncated: the kidney touches the edge of the field of view (hilum still in view).
        notes: human-readable remarks (e.g. why it was flagged).
        method: how it was found (``"atlas pair"``: near where the registered atlas
            pair puts it; ``"atlas pair + single-kidney search"``: found on its own
            far from there; ``"given"``: made by hand).
        confidence: 0–1, how kidney-like the place is (soft tissue wrapped in fat).
        truncated_pole: ``"lower"``/``"upper"`` (``"side"``) when ``truncated``.
        mask: the kidney's mask (uint8, 3 mm LPS grid), or None.
    """

    side: Literal["left", "right"]
    grid: Geometry
    start_zyx: tuple[int, int, int]
    shape_zyx: tuple[int, int, int]
    kidney_volume_ml: float
    truncated: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    method: str = "given"
    confidence: float = 1.0
    truncated_pole: str | None = None
    mask: Volume | None = field(default=None, repr=False, compare=False)

    @property
    def box_mm_lps(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(min corner, max corner) of the ROI grid's voxel centres, LPS mm."""
        corners = self.grid.corners_world()
        return tuple(corners.min(axis=0).tolist()), tuple(corners.max(axis=0).tolist())  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """JSON-ready description for ``report.json``."""
        lo, hi = self.box_mm_lps
        return {
            "side": self.side,
            "box_voxels_zyx": {"start": list(self.start_zyx), "shape": list(self.shape_zyx)},
            "box_mm_lps": {"min": list(lo), "max": list(hi)},
            "model_grid": {
                "shape_zyx": list(self.grid.shape_zyx),
                "spacing_xyz_mm": list(self.grid.spacing_xyz_mm),
                "origin_xyz_mm": list(self.grid.origin_xyz_mm),
                "direction": list(self.grid.direction),
            },
            "kidney_volume_ml": round(float(self.kidney_volume_ml), 1),
            "truncated": self.truncated,
            "truncated_pole": self.truncated_pole,
            "method": self.method,
            "confidence": self.confidence,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------
# locate_kidneys
# --------------------------------------------------------------------------------------

#: a field of view shorter than this (head–foot) cannot hold a kidney with its hilum
MIN_FOV_Z_MM = 50.0
#: margin added around the kidney head–foot
Z_MARGIN_MM = 10.0
#: how far beyond the warped atlas kidney the study's own tissue may extend it
REFINE_MARGIN_MM = 9.0
#: ... and head–foot, where kidney lengths vary most (100–130 mm) and leaking into a
#: neighbouring organ only lengthens the ROI
REFINE_MARGIN_Z_MM = 24.0
#: how far (mm) a kidney placed as one half of a horseshoe kidney grows its ROI beyond
#: its extent: the mirrored, turned atlas kidney fits such a half roughly, and the
#: isthmus joins its lower pole in front of the great vessels
HORSESHOE_MARGIN_MM = 12.0
#: how far (mm; x, y, z) the study's own intensities may move the warped atlas kidneys
#: together; the head–foot position is the least certain after registration (it rests
#: on a few organs' outlines: the spine looks much the same at every level)
PAIR_SEARCH_MM: tuple[float, float, float] = (30.0, 30.0, 45.0)
PAIR_PENALTY_PER_MM = 0.0015
#: then each kidney alone
SHIFT_SEARCH_MM: tuple[float, float, float] = (18.0, 18.0, 24.0)
SHIFT_PENALTY_PER_MM = 0.004
#: plausible kidney volume (ml) after registration
KIDNEY_VOLUME_RANGE_ML: tuple[float, float] = (40.0, 500.0)
#: below this fraction in view a kidney is refused even with its hilum in view
MIN_FRACTION_IN_VIEW = 0.6
#: below this fraction of soft tissue where the kidney should be, it counts as absent
#: (fat filling an empty renal fossa: ~0.03; a kidney a few mm off: > 0.4)
MIN_TISSUE_FRACTION = 0.3
#: a place this much soft tissue is kept, however little fat wraps it, where the other
#: kidney is kidney-like (so the study is a CT whose kidneys sit in fat; an MR-like
#: image is all "soft tissue"): a kidney whose large tumour fills its perirenal fat
#: scores as not kidney-like (70–100 mm tumours on phantoms: 0.90 and 0.97 soft tissue,
#: confidence 0.15 and 0.37; the real atlas CT's right kidney inside a 12–30 mm mantle of
#: tumour: confidence 0.00–0.31)
MASS_TISSUE_FRACTION = 0.9
#: below this fraction in view the kidney counts as cut (flagged ``truncated``)
FULL_FRACTION_IN_VIEW = 0.97
_SIDES = ("left", "right")


def _lps_extent(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) LPS corner (mm) of the voxel centres of ``image``."""
    geometry = Geometry.from_sitk(image)
    corners = geometry.corners_world()
    return corners.min(axis=0), corners.max(axis=0)


def _outside_phrase(point: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[float, str]:
    """How far (mm) and where a point lies outside the LPS box [lo, hi]."""
    words = (("to the patient's right of", "to the patient's left of"),
             ("in front of", "behind"),
             ("below", "above"))
    best = (0.0, "beyond the (oblique) edge of")
    for axis in range(3):
        if point[axis] < lo[axis] and lo[axis] - point[axis] > best[0]:
            best = (float(lo[axis] - point[axis]), words[axis][0])
        if point[axis] > hi[axis] and point[axis] - hi[axis] > best[0]:
            best = (float(point[axis] - hi[axis]), words[axis][1])
    return best


def _tissue_fraction(tissue: np.ndarray, in_view: np.ndarray) -> float:
    """The fraction of the placed kidney's voxels in view that are soft tissue (0 when none is in view)."""
    return float((tissue & in_view).sum() / max(int(in_view.sum()), 1))


def _absent_reason(side: str, tissue: np.ndarray, in_view: np.ndarray) -> str | None:
    """Why the kidney counts as absent (too little soft tissue where it should be), or None."""
    from renalseg.registration import KIDNEY_TISSUE_HU

    fraction = _tissue_fraction(tissue, in_view)
    if fraction >= MIN_TISSUE_FRACTION:
        return None
    return (f"no kidney tissue where the {side} kidney should be: only {fraction:.0%} of that region is in "
            f"the soft-tissue range {KIDNEY_TISSUE_HU[0]:.0f}…{KIDNEY_TISSUE_HU[1]:.0f} HU (absent kidney, "
            "e.g. after nephrectomy?)")


def _grid_like(lo: np.ndarray, hi: np.ndarray, spacing_mm: float) -> Geometry:
    """The LPS-aligned grid covering [lo, hi] (mm) at ``spacing_mm``."""
    count = np.maximum(1, np.ceil((hi - lo) / spacing_mm).astype(int) + 1)
    return Geometry((int(count[2]), int(count[1]), int(count[0])), (spacing_mm,) * 3, tuple(float(v) for v in lo),
                    IDENTITY_DIRECTION)


def _place_axis(lo: float, hi: float, span_mm: float, medial_sign: int) -> tuple[float, bool]:
    """First voxel-centre coordinate of a ``span_mm`` interval covering [lo, hi].

    The spare room goes 65 % to the medial side (``medial_sign`` +1: toward +,
    −1: toward −, 0: centred), where the renal vessels leave the hilum. Returns
    ``(start, fits)``.
    """
    slack = span_mm - (hi - lo)
    if slack < 0:
        return (lo + hi) / 2.0 - span_mm / 2.0, False
    share_low = {1: 0.35, -1: 0.65, 0: 0.5}[medial_sign]
    return lo - share_low * slack, True


def _inplane_count(extent_mm: float, spacing_mm: float) -> int:
    """ROI voxels along one in-plane axis: :data:`ROI_INPLANE_VOXELS` when the extent
    fits, else the extent plus :data:`ROI_MARGIN_MM` on each side.

    Example:
        >>> _inplane_count(100.0, 0.7), _inplane_count(150.0, 0.7)
        (152, 224)
    """
    if extent_mm <= (ROI_INPLANE_VOXELS - 1) * spacing_mm:
        return ROI_INPLANE_VOXELS
    return int(np.ceil((extent_mm + 2 * ROI_MARGIN_MM) / spacing_mm)) + 1


def _study_box(image: sitk.Image, grid: Geometry) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Study-voxel bounding box (start_zyx, shape_zyx) of the grid's corner voxel centres."""
    study = Geometry.from_sitk(image)
    index = study.world_to_index(grid.corners_world())
    lo = np.floor(index.min(axis=0) + 1e-6).astype(int)
    hi = np.ceil(index.max(axis=0) - 1e-6).astype(int)
    shape = hi - lo + 1
    return (int(lo[2]), int(lo[1]), int(lo[0])), (int(shape[2]), int(shape[1]), int(shape[0]))


def locate_kidneys(
    study: Study | Volume,
    *,
    spacing_xyz_mm: tuple[float, float, float] | None = None,
    atlases: list[Path] | None = None,
    seed: int = 0,
    sides: tuple[str, ...] = ("left", "right"),
    on_progress: Callable[[int, int, str], None] | None = None,
    refused: dict[str, str] | None = None,
) -> list[KidneyROI]:
    """Find each kidney's region of interest: atlas registration, then each kidney alone.

    The shipped atlas CT (plus any ``atlases``) is registered to the study
    (:mod:`renalseg.registration`: translation search that trusts no origin, then
    similarity and affine Mattes-MI registration at 3 mm); the atlas kidney labels
    are warped onto the study (majority vote over atlases) and moved together to
    where the study shows two kidneys. Then both are placed where the study shows
    them together (the registration's error is common to both; one absent, low or
    cut kidney does not decide it), and each is looked for on its own from there
    (:mod:`renalseg.kidney_search`: ±150 mm head–foot, so a kidney far below the
    other is found), gets a confidence from how kidney-like the place is (soft
    tissue wrapped in fat, in any contrast phase), is refused when implausible (a
    place at least :data:`MASS_TISSUE_FRACTION` soft tissue is kept, with a note, where
    the other kidney is kidney-like: a large tumour can fill a kidney's fat), and its
    extent is refined from the study's own soft-tissue voxels nearby. Its ROI on the
    model grid covers the kidney and, medially, the renal artery from its
    aortic origin and the renal vein to the IVC (at least 152 × 152 voxels in-plane;
    wider where the vessels need it; sliding windows tile it).

    Args:
        study: a :class:`~renalseg.study.Study` or :class:`~renalseg.volume.Volume` in HU.
        spacing_xyz_mm: the model grid spacing (x, y, z) in mm, from the card of the
            weights that will segment the ROIs (:func:`renalseg.segment_study` passes its
            model's). ``None`` reads the shipped weights' card
            (:func:`renalseg.weights.read_card`: a small JSON file, no torch), because
            ``locate_kidneys(study)`` and ``renalseg locate`` load no model, yet their ROIs
            must lie on the grid the shipped model segments. The card, not this module,
            owns the grid.
        atlases: extra atlas folders (``atlas_ct.nii.gz`` + ``atlas_kidneys.nii.gz``).
        seed: seed of the registration's random sampling (same seed, same ROIs).
        sides: which kidneys to look for (``"left"``, ``"right"``).
        on_progress: called as ``on_progress(step, total, description)``.
        refused: if given, filled with ``side -> reason`` for each requested kidney
            not returned (absent, out of view, implausible).

    Returns:
        One :class:`KidneyROI` per usable kidney, right first, then left. One kidney
        only (the other absent or refused) logs a warning.

    Raises:
        NoKidneyFoundError: no requested kidney is usable; the message says, for each
            kidney, why (not in the field of view, cut with its hilum outside, ...).
        RegistrationError: the atlas registration did not converge.
        UsageError: an unknown side.
        ModelError: ``spacing_xyz_mm`` is ``None`` and the shipped weights' card is missing.
    """
    from scipy import ndimage

    from renalseg.volume import Volume
    from renalseg.kidney_search import (
        MIN_CONFIDENCE,
        PLAUSIBLE_VOLUME_ML,
        WIDE_SEARCH_Z_MM,
        HORSESHOE_HALF,
        confidence_from_score,
        kidney_shape,
        place_kidneys,
        vessel_reach,
    )
    from renalseg.registration import (
        ATLAS_LABEL_VALUES,
        KIDNEY_TISSUE_HU,
        WORK_SPACING_MM,
        kidney_likeness_shift,
        load_atlas,
        register_atlas,
        shipped_atlas,
        to_lps_grid,
    )

    for side in sides:
        if side not in _SIDES:
            raise UsageError(f"Unknown side {side!r}; choose from {', '.join(_SIDES)}.{suggest(side, _SIDES)}")
    if spacing_xyz_mm is None:
        from renalseg.weights import DEFAULT_WEIGHTS_PATH, read_card

        spacing_xyz_mm = read_card(DEFAULT_WEIGHTS_PATH).spacing_xyz_mm
    if len(spacing_xyz_mm) != 3 or min(spacing_xyz_mm) <= 0:
        raise UsageError(f"spacing_xyz_mm must be 3 positive numbers; got {spacing_xyz_mm}.")
    image, name = unpack_study(study)
    if image.GetDimension() != 3:
        raise InputError(f"{name}: expected a 3D CT; got a {image.GetDimension()}D image.")
    atlas_list = [shipped_atlas()] + [load_atlas(path) for path in (atlases or [])]
    total = 3 + len(atlas_list)
    step = 0

    def progress(description: str) -> None:
        nonlocal step
        step += 1
        if on_progress is not None:
            on_progress(step, total, description)

    fov_lo, fov_hi = _lps_extent(image)
    extent_z = float(fov_hi[2] - fov_lo[2] + Geometry.from_sitk(image).spacing_xyz_mm[2])
    if extent_z < MIN_FOV_Z_MM:
        raise NoKidneyFoundError(
            f"{name}: no kidney in the field of view: it spans only {extent_z:.0f} mm head to foot, "
            f"while a kidney with its hilum needs at least {MIN_FOV_Z_MM:.0f} mm (an adult kidney is "
            "100–130 mm long), so neither the left nor the right kidney can be in view. Use a scan "
            "that covers the abdomen from above the kidneys to below them."
        )

    hu, fov = to_lps_grid(image, WORK_SPACING_MM)  # block-averages before any float copy
    progress("resampled to 3 mm")
    registrations = []
    for atlas in atlas_list:
        registrations.append(register_atlas(hu, fov, atlas, seed=seed))
        progress(f"registered atlas {len(registrations)} of {len(atlas_list)}")

    # one 3 mm grid around where the atlas kidneys landed (may reach past the study),
    # tall enough for each kidney's own head–foot search
    landed = []
    for atlas, registration in zip(atlas_list, registrations):
        lo, hi = atlas.kidney_box_lps(30.0 + max(PAIR_SEARCH_MM) + max(SHIFT_SEARCH_MM))
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        landed.append(registration.atlas_to_study(corners))
    landed_points = np.concatenate(landed)
    reach = np.array([0.0, 0.0, 2.0 * WIDE_SEARCH_Z_MM])  # the pair's common displacement, then each kidney
    kidney_grid = _grid_like(landed_points.min(axis=0) - reach, landed_points.max(axis=0) + reach, WORK_SPACING_MM)
    warped = [resample_to_grid(atlas.labels, kidney_grid, transform=registration.transform,
                               interpolator=sitk.sitkNearestNeighbor, default_value=0, pixel_type=sitk.sitkUInt8)
              for atlas, registration in zip(atlas_list, registrations)]
    if len(warped) == 1:
        votes = warped[0]
    else:
        votes = sitk.LabelVoting(warped, 0)  # ties count as background: majority only
    labels = sitk.GetArrayFromImage(votes)
    grid_hu = sitk.GetArrayFromImage(resample_to_grid(hu, kidney_grid, interpolator=sitk.sitkLinear,
                                                      default_value=-1024.0, pixel_type=sitk.sitkFloat32))
    grid_fov = sitk.GetArrayFromImage(resample_to_grid(fov, kidney_grid, interpolator=sitk.sitkNearestNeighbor,
                                                       default_value=0, pixel_type=sitk.sitkUInt8)) > 0
    voxel_ml = WORK_SPACING_MM ** 3 / 1000.0
    # move both warped kidneys together to where the study shows two fat-wrapped
    # soft-tissue organs of their shape (only when registration put them in view)
    pair_shift_mm = np.zeros(3)
    both = labels > 0
    if both.any() and (both & grid_fov).sum() >= 0.5 * both.sum():
        pair_shift, _ = kidney_likeness_shift(both, grid_hu, grid_fov, radius_mm=PAIR_SEARCH_MM,
                                              penalty_per_mm=PAIR_PENALTY_PER_MM)
        if any(pair_shift):
            labels = np.roll(labels, pair_shift, axis=(0, 1, 2))
            pair_shift_mm = np.asarray(pair_shift[::-1], dtype=float) * WORK_SPACING_MM
            log.debug("both kidneys moved by %s mm to match the study's own tissue", pair_shift_mm.tolist())
    progress("warped atlas kidneys")

    centroids = {}
    for side, value in ATLAS_LABEL_VALUES.items():
        zz, yy, xx = np.nonzero(labels == value)
        if zz.size:
            centroids[side] = kidney_grid.index_to_world([[xx.mean(), yy.mean(), zz.mean()]])[0]
    if "left" in centroids and "right" in centroids and centroids["left"][0] <= centroids["right"][0]:
        raise RegistrationError(
            f"{name}: atlas registration did not converge: the warped left kidney lies to the patient's "
            "right of the right kidney. Check the image orientation (direction cosines) of the study.")
    pair_hila = {side: np.mean([reg.atlas_to_study(atlas.hilum_lps[side])[0]
                                for atlas, reg in zip(atlas_list, registrations)], axis=0) + pair_shift_mm
                 for side in _SIDES}

    study_geometry = Geometry.from_sitk(image)
    size_xyz = np.asarray(study_geometry.shape_xyz)
    found: dict[str, dict] = {}
    refusals: dict[str, str] = {}
    tissue = (grid_hu >= KIDNEY_TISSUE_HU[0]) & (grid_hu <= KIDNEY_TISSUE_HU[1]) & grid_fov
    ball = ndimage.generate_binary_structure(3, 1)
    # both kidneys are placed whichever are asked for: each tells where the other is
    placements = place_kidneys({side: labels == ATLAS_LABEL_VALUES[side] for side in _SIDES
                                if (labels == ATLAS_LABEL_VALUES[side]).any()},
                               grid_hu, grid_fov, spacing_mm=WORK_SPACING_MM, narrow_radius_mm=SHIFT_SEARCH_MM,
                               narrow_penalty_per_mm=SHIFT_PENALTY_PER_MM, min_in_view=MIN_FRACTION_IN_VIEW)
    for side in ("right", "left"):
        if side not in sides:
            continue
        value = ATLAS_LABEL_VALUES[side]
        kidney = labels == value
        expected_ml = float(kidney.sum() * voxel_ml)
        hilum = pair_hilum = pair_hila[side]
        if not KIDNEY_VOLUME_RANGE_ML[0] <= expected_ml <= KIDNEY_VOLUME_RANGE_ML[1]:
            raise RegistrationError(
                f"{name}: atlas registration did not converge: the warped {side} kidney measures "
                f"{expected_ml:.0f} ml, outside the plausible {KIDNEY_VOLUME_RANGE_ML[0]:.0f}–"
                f"{KIDNEY_VOLUME_RANGE_ML[1]:.0f} ml.")
        # each kidney on its own: far along z where the pair could not reach (ptosis,
        # a large liver), near the pair's placement otherwise
        shift_zyx, score, how, beaten, shape = placements[side]
        wide = how == "alone"
        # the shape that fits the study best (a horseshoe kidney's half: mirrored, turned), its hilum with it
        template, matrix = kidney_shape(kidney, side, shape)
        hilum_index = matrix @ np.append(kidney_grid.world_to_index([hilum])[0][::-1], 1.0)
        hilum = kidney_grid.index_to_world([hilum_index[2::-1]])[0]
        kidney = template
        if wide:
            kidney = np.roll(kidney, shift_zyx, axis=(0, 1, 2))
            hilum = hilum + np.asarray(shift_zyx[::-1], dtype=float) * WORK_SPACING_MM
            log.debug("%s kidney found alone %s mm from the pair's placement", side,
                      (np.asarray(shift_zyx[::-1]) * WORK_SPACING_MM).tolist())
        in_view = kidney & grid_fov
        fraction = float(in_view.sum() / kidney.sum())
        hilum_index = study_geometry.world_to_index([hilum])[0]
        hilum_in_view = bool(np.all(hilum_index >= -0.5) and np.all(hilum_index <= size_xyz - 0.5))
        if fraction < 0.02 or in_view.sum() * voxel_ml < 3.0:
            distance, where = _outside_phrase(hilum, fov_lo, fov_hi)
            refusals[side] = (f"the {side} kidney is not in the field of view, at most its tip: its hilum "
                              f"lies outside it (the atlas places the hilum {distance:.0f} mm {where} the "
                              "scanned region)")
            continue
        if not hilum_in_view:
            distance, where = _outside_phrase(hilum, fov_lo, fov_hi)
            refusals[side] = (f"the {side} kidney is cut by the field of view: by the registered atlas at most "
                              f"{fraction:.0%} of it is in view and its hilum lies outside it ({distance:.0f} mm "
                              f"{where} the scanned region), so its renal artery cannot be traced")
            continue
        if fraction < MIN_FRACTION_IN_VIEW:
            refusals[side] = (f"the {side} kidney is cut by the field of view: only {fraction:.0%} of it is in "
                              f"view (at least {MIN_FRACTION_IN_VIEW:.0%} needed)")
            continue

        why_absent = _absent_reason(side, tissue, in_view)
        if why_absent:
            refusals[side] = why_absent
            continue
        # refine from the study's own intensities: (1) move the warped kidney to the
        # nearby spot where it best looks like a kidney (tissue inside, fat around:
        # true in every contrast phase); (2) add the soft-tissue component that
        # overlaps it most, within REFINE_MARGIN_MM (in-plane) / REFINE_MARGIN_Z_MM of it
        if not wide and any(shift_zyx) and np.isfinite(score):
            kidney = np.roll(kidney, shift_zyx, axis=(0, 1, 2))
            hilum = hilum + np.asarray(shift_zyx[::-1], dtype=float) * WORK_SPACING_MM
            in_view = kidney & grid_fov
            fraction = float(in_view.sum() / kidney.sum())
            log.debug("%s kidney moved by %s mm to match the study's own tissue", side,
                      (np.asarray(shift_zyx[::-1]) * WORK_SPACING_MM).tolist())
        why_absent = _absent_reason(side, tissue, in_view)
        if why_absent:
            refusals[side] = why_absent
            continue
        confidence = confidence_from_score(score)
        solid = _tissue_fraction(tissue, in_view)
        mass_note = None
        other = placements.get("left" if side == "right" else "right")
        other_kidney_like = other is not None and confidence_from_score(other[1]) >= MIN_CONFIDENCE
        if confidence < MIN_CONFIDENCE and solid >= MASS_TISSUE_FRACTION and other_kidney_like:
            mass_note = (f"kept though little fat wraps it (confidence {confidence:.2f}): {solid:.0%} of the place is "
                         "soft tissue, as a kidney whose large tumour fills its perirenal fat is, and as the liver "
                         "or the spleen filling an empty renal fossa is; check that a kidney is there")
        elif confidence < MIN_CONFIDENCE:
            refusals[side] = (f"nothing kidney-like where the {side} kidney should be: soft tissue wrapped in fat "
                              f"scores {score:.2f} there (confidence {confidence:.2f}, at least "
                              f"{MIN_CONFIDENCE:.2f} needed; is this a CT in HU?)")
            continue
        reach_mm = int(round(REFINE_MARGIN_MM / WORK_SPACING_MM))
        near = ndimage.binary_dilation(kidney, ball, iterations=reach_mm)
        reach_z = int(round((REFINE_MARGIN_Z_MM - REFINE_MARGIN_MM) / WORK_SPACING_MM))
        if reach_z > 0:
            near = ndimage.binary_dilation(near, np.ones((3, 1, 1), bool), iterations=reach_z)
        candidate = ndimage.binary_opening(tissue & near, ball)
        components, count = ndimage.label(candidate)
        extent = kidney.copy()
        mask = kidney & tissue
        volume_ml = float((tissue & in_view).sum() * voxel_ml)
        if count:
            overlap = np.bincount(components[kidney], minlength=count + 1)
            overlap[0] = 0
            best = components == int(np.argmax(overlap))
            if overlap.max() > 0:
                extent |= best
                mask = best
                shell = ndimage.binary_dilation(kidney, ball)
                volume_ml = float((best & shell).sum() * voxel_ml)
        also = None
        if wide and beaten is not None and confidence_from_score(beaten[1]) >= MIN_CONFIDENCE:
            # the place near the pair's also looks like a kidney (a large tumour lowers a
            # kidney's likeness there): the ROI holds both, so neither is cut off
            extent |= np.roll(template, beaten[0], axis=(0, 1, 2))
            also = (f"a place near where the atlas pair puts it, "
                    f"{abs(shift_zyx[0] - beaten[0][0]) * WORK_SPACING_MM:.0f} mm from this one, also looks like a "
                    f"kidney (confidence {confidence_from_score(beaten[1]):.2f}): the ROI holds both places")
        mask_ml = float(mask.sum() * voxel_ml)
        if not PLAUSIBLE_VOLUME_ML[0] <= mask_ml <= PLAUSIBLE_VOLUME_ML[1]:
            refusals[side] = (f"the {side} kidney found measures {mask_ml:.0f} ml, far outside a kidney's "
                              f"50–400 ml (accepted {PLAUSIBLE_VOLUME_ML[0]:.0f}–{PLAUSIBLE_VOLUME_ML[1]:.0f} ml "
                              "with a tumour); not used")
            continue
        if shape == HORSESHOE_HALF:
            extent = ndimage.binary_dilation(extent, ball, iterations=int(round(HORSESHOE_MARGIN_MM / WORK_SPACING_MM)))
            also = "; ".join(filter(None, [also, (
                "the study fits both kidneys best as the two halves of a horseshoe kidney (low, lower poles joined in "
                f"front of the great vessels, hila forward); the ROI reaches {HORSESHOE_MARGIN_MM:.0f} mm further "
                "around this half")]))
        also = "; ".join(filter(None, [mass_note, also])) or None
        found[side] = {"kidney": kidney, "extent": extent, "mask": mask, "hilum": hilum, "fraction": fraction,
                       "volume_ml": volume_ml, "confidence": confidence, "also": also,
                       "method": "atlas pair + single-kidney search" if wide else "atlas pair"}

    rois: list[KidneyROI] = []
    hila = {side: entry["hilum"] for side, entry in found.items()}
    midline_x = float(np.mean([point[0] for point in (hila if len(hila) == 2 else pair_hila).values()]))
    for side, entry in found.items():
        kidney, extent, hilum, fraction = entry["kidney"], entry["extent"], entry["hilum"], entry["fraction"]
        zz, yy, xx = np.nonzero(extent)
        half = WORK_SPACING_MM / 2.0
        lo = kidney_grid.index_to_world([[xx.min(), yy.min(), zz.min()]])[0] - half
        hi = kidney_grid.index_to_world([[xx.max(), yy.max(), zz.max()]])[0] + half
        lo = np.minimum(lo, hilum - 5.0)
        hi = np.maximum(hi, hilum + 5.0)
        # the renal artery from its aortic origin, the renal vein to the IVC
        vessel_lo, vessel_hi = vessel_reach(side, hilum, hila, pair_hila, midline_x)
        lo, hi = np.minimum(lo, vessel_lo), np.maximum(hi, vessel_hi)

        notes: list[str] = []
        spacing = np.asarray(spacing_xyz_mm, dtype=float)
        medial = 1 if side == "right" else -1  # LPS: the midline is toward +x from the right kidney
        count_xy = [_inplane_count(hi[a] - lo[a], spacing[a]) for a in (0, 1)]
        start_x, _ = _place_axis(lo[0], hi[0], (count_xy[0] - 1) * spacing[0], medial)
        start_y, _ = _place_axis(lo[1], hi[1], (count_xy[1] - 1) * spacing[1], 0)
        z_lo, z_hi = lo[2] - Z_MARGIN_MM, hi[2] + Z_MARGIN_MM
        count_z = int(np.ceil((z_hi - z_lo) / spacing[2])) + 1
        grid = Geometry((count_z, count_xy[1], count_xy[0]), tuple(spacing.tolist()),
                        (float(start_x), float(start_y), float(z_lo)), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        truncated = fraction < FULL_FRACTION_IN_VIEW
        pole = None
        if truncated:
            outside = kidney & ~grid_fov
            oz, oy, ox = np.nonzero(outside)
            centre_out = kidney_grid.index_to_world([[ox.mean(), oy.mean(), oz.mean()]])[0]
            _, where = _outside_phrase(centre_out, fov_lo, fov_hi)
            pole = {"below": "lower", "above": "upper"}.get(where, "side")
            notes.append(f"kidney cut by the field of view: about {1 - fraction:.0%} of it lies {where} the "
                         "scanned region (hilum in view); the ROI is padded with air there")
        if entry["method"] != "atlas pair":
            offset = hilum - pair_hila[side]
            notes.append(f"found on its own {abs(offset[2]):.0f} mm {'below' if offset[2] < 0 else 'above'} "
                         "where the atlas pair puts it")
        if entry["also"]:
            notes.append(entry["also"])
        mz, my, mx = np.nonzero(entry["mask"])
        mask_start = np.array([mz.min(), my.min(), mx.min()])
        mask_array = entry["mask"][mz.min():mz.max() + 1, my.min():my.max() + 1, mx.min():mx.max() + 1]
        mask_volume = Volume(mask_array.astype(np.uint8), kidney_grid.crop(tuple(int(v) for v in mask_start),
                                                                     mask_array.shape))
        start_zyx, shape_zyx = _study_box(image, grid)
        rois.append(KidneyROI(side=side, grid=grid, start_zyx=start_zyx, shape_zyx=shape_zyx,  # type: ignore[arg-type]
                              kidney_volume_ml=entry["volume_ml"], truncated=truncated, notes=tuple(notes),
                              method=entry["method"], confidence=entry["confidence"], truncated_pole=pole,
                              mask=mask_volume))
    progress("placed ROIs")

    if refused is not None:
        refused.update(refusals)
    if not rois:
        reasons = "; ".join(refusals.values()) if refusals else "no kidney requested"
        raise NoKidneyFoundError(
            f"{name}: no usable kidney: {reasons}. Use a scan that covers both kidneys from above "
            "to below, with the renal hila in view.")
    for reason in refusals.values():
        log.warning("%s: only %s kidney localised: %s.", name,
                    " and ".join(r.side for r in rois), reason)
    return rois


def crop_to_roi(study: Study | Volume, roi: KidneyROI, *, pad_hu: float = -1024.0) -> Volume:
    """The study resampled (linear) onto ``roi.grid``, in HU; air outside the study.

    Args:
        study: the study the ROI was located in.
        roi: one of :func:`locate_kidneys`'s results.
        pad_hu: value for voxels outside the study's field of view.

    Returns:
        float32 :class:`~renalseg.volume.Volume` of shape ``roi.grid.shape_zyx``,
        patient-oriented (z → superior, y → posterior, x → left).
    """
    from renalseg.volume import Volume

    image, _ = unpack_study(study)
    resampled = resample_to_grid(sitk.Cast(image, sitk.sitkFloat32), roi.grid, interpolator=sitk.sitkLinear,
                                 default_value=pad_hu, pixel_type=sitk.sitkFloat32)
    return Volume.from_sitk(resampled)
