"""When not to trust a result: contrast phase, scan quality and the network's uncertainty.

Every ``report.json`` of ``renalseg segment`` gets a ``quality`` block::

    {"phase": "portal_venous", "phase_hu": {...}, "spacing_ok": true, "noise_hu": 14.2,
     "uncertainty": {"right": {...}, "left": {...}}, "warnings": ["portal-venous phase: ..."],
     "verdict": "unreliable"}

The verdict is ``ok``, ``check`` (look at the preview before using the tree) or
``unreliable`` (the study is outside what the weights were validated on, or the
network is unsure); each warning says why in plain words. Nothing here changes the
label map.

**Contrast phase** (:func:`measure_phase_hu`, :func:`classify_phase`) is read from the
study's own intensities where localisation found the kidneys: the study is resampled
at about 2 mm over the kidney ROIs and the region medial to them (where the aorta,
the IVC and the portal vein run), smoothed, and

* the **great vessels** are the vertical tubes that survive a minimum filter over a
  square of ±4 mm in-plane and ±12 mm head to foot: the aorta and the IVC run the
  whole height, while the vertebral bodies (discs every few cm), the renal arteries
  (horizontal, 5–7 mm), ribs and bowel loops do not survive. The aorta is the
  brightest such tube on the patient's left of the midline between the kidneys, the
  IVC the brightest on the right, the portal vein the brightest in front of them
  (one ROI, or an input that is an ROI: the brightest tube, and the next one);
* the **kidney**: in the core of each ROI the renal cortex is the 95th percentile of
  the soft tissue (in every contrast phase the cortex is the brightest parenchyma
  there); the kidney is the largest blob within 45 HU of it, its holes in each slice
  filled; the medulla is that region's 15th percentile, and excreted contrast the
  volume above 300 HU in it that is neither a vertical tube nor bone.

The phases and what tells them apart (HU of the aorta A, the brightest vein V, the
cortex C and the medulla M):

====================  =============================================================
non-contrast          nothing enhances: A and C below ~90 HU
early arterial        A ≫ kidney, strong corticomedullary difference, veins unenhanced (V < ~105)
late arterial         A ≫ kidney, corticomedullary difference, veins enhancing (V ≥ ~105)
portal-venous         A no brighter than the kidney and veins; cortex still above medulla
nephrographic         A ≈ veins ≈ kidney, kidney homogeneous (C ≈ M)
delayed (excretory)   contrast in the collecting systems (≥ 1 ml above 300 HU)
====================  =============================================================

**Scan quality** (:func:`measure_scan`): in-plane spacing and slice thickness against
the limits of the model card, image noise (local HU standard deviation in fat and
muscle, on the study's own voxels), truncation (the kidney ROI at the edge of the field
of view) and metal (voxels above 2500 HU near the kidneys, which streak).

**The labels themselves** per side (:func:`kidney_label_facts`): a kidney label taller
than any kidney, brighter than parenchyma, or lying mostly away from the kidneys that
localisation found from the study's own intensities is wrong, and the kidney and tumour
labels are then ``unreliable``, as they are where segment removed over 1 ml of kidney or
tumour label brighter than parenchyma (:func:`renalseg.postprocess.drop_bright_parenchyma`);
an artery label brighter than contrast can make an artery holds bone or calcification
(``check``). A kidney or tumour label cut by its
ROI's edge, with scan beyond it (:func:`roi_edges_reached`), may go on outside the
region segmented (``check``).

**Uncertainty** (:func:`artery_uncertainty`) per kidney: the share of the candidate
artery voxels (probability ≥ 0.25) whose probability lies in [0.25, 0.75], the
agreement of the mirrored passes when TTA runs (:class:`MirrorAgreement`), the number
of disconnected pieces, and the centerline length and branch count of the tree against
the range the validation phantoms give.

The thresholds and what the weights were validated on come from the model card's
``limits`` block (:func:`limits_from_card`); a card without it gets
:data:`DEFAULT_LIMITS`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from renalseg.errors import ModelError, suggest
from renalseg.geometry import IDENTITY_DIRECTION, Geometry, resample_to_grid
from renalseg.kidney_search import MIN_CONFIDENCE

__all__ = [
    "PHASES",
    "PHASE_WORDS",
    "VERDICTS",
    "DEFAULT_LIMITS",
    "QualityLimits",
    "limits_from_card",
    "ScanQuality",
    "assess_scan",
    "measure_phase_hu",
    "classify_phase",
    "measure_scan",
    "artery_uncertainty",
    "kidney_label_facts",
    "roi_edges_reached",
    "KIDNEY_MAX_HEIGHT_MM",
    "KIDNEY_MAX_MEDIAN_HU",
    "KIDNEY_AORTA_SHARE",
    "KIDNEY_MIN_LOCATED_SHARE",
    "ARTERY_MAX_LUMEN_HU",
    "ARTERY_MIN_ML",
    "ARTERY_BEHIND_AORTA_CHECK_ML",
    "artery_behind_aorta_ml",
    "TUMOUR_MIN_FILL",
    "ball_ml",
    "tumour_too_thin",
    "MirrorAgreement",
    "mirror_sets",
    "judge",
    "verdict_line",
]

log = logging.getLogger(__name__)

#: the contrast phases, in the order contrast reaches them
PHASES: tuple[str, ...] = ("non_contrast", "early_arterial", "late_arterial", "portal_venous", "nephrographic",
                           "delayed")
#: how each phase is written for a reader
PHASE_WORDS: dict[str, str] = {
    "non_contrast": "non-contrast", "early_arterial": "early arterial", "late_arterial": "late arterial",
    "portal_venous": "portal-venous", "nephrographic": "nephrographic", "delayed": "delayed (excretory)",
    "unknown": "unknown",
}
#: the verdicts, from best to worst
VERDICTS: tuple[str, ...] = ("ok", "check", "unreliable")

_SURVEY_VOXELS = 700_000        # the survey grid's size target (its spacing follows)
_SURVEY_MIN_SPACING_MM = 1.2
_TUBE_HALF_INPLANE_MM = 4.0     # vertical tubes: minimum over ±4 mm in-plane ...
_TUBE_HALF_Z_MM = 20.0          # ... and ±20 mm head to foot (a vertebra and its disc)
_TOP_ML = 1.5                   # a vessel's HU: median over (at most) its brightest 1.5 ml of lumen
_MEDIAL_REACH_MM = 110.0        # one kidney: the great vessels lie up to this far medial of its centre
_METAL_HU = 2500.0
#: an adult kidney is 10-13 cm long head to foot, about 15 cm at most: a kidney label
#: taller than this lies on other structures as well (held-out phantoms: 89-131 mm as written)
KIDNEY_MAX_HEIGHT_MM = 170.0
#: renal parenchyma enhances to about 300 HU at most (the cortex in the arterial phase): a
#: kidney label whose median is brighter lies on bone or contrast-filled vessels
#: (held-out phantoms: medians 140-273 HU as written)
KIDNEY_MAX_MEDIAN_HU = 350.0
#: ... or, in a study whose aorta is brighter, this share of the aorta's HU: at 70-80 kVp or
#: on low-keV dual-energy images every iodine-enhanced tissue is brighter (the aorta 600-1000
#: HU, a kidney label's median 430 HU on a phantom drawn with iodine at twice the default's
#: attenuation), while a label on the contrast-filled vessels is as bright as the aorta
KIDNEY_AORTA_SHARE = 0.7
# (segment already removes each kidney or tumour piece brighter still, over
# :func:`renalseg.postprocess.parenchyma_ceiling_hu`: 400 HU or 0.8 of the aorta; these
# bounds judge what is left, a side's whole label, and so sit lower)
#: at 100-120 kVp contrast-filled arteries stay below about 800 HU even in a dense bolus: an artery label whose
#: brightest tenth (``artery_hu``) is brighter holds bone, calcification, metal or excreted contrast (held-out
#: phantoms as written: 155-503 HU; the real chest CTA crop in tests/data: 1261 HU)
#: (or, in a study whose aorta is brighter, the brightest contrast its arteries can hold:
#: :func:`renalseg.postprocess.artery_ceiling_hu` of the aorta's HU)
ARTERY_MAX_LUMEN_HU = 900.0
#: artery label taken away in the kidney as brighter than contrast in the study's arteries
#: (:func:`renalseg.postprocess.drop_bright_artery`, ``bright_artery_in_kidney_ml``) from
#: which the verdict asks for a check: a stone about 4-5 mm across. What the rule takes
#: outside the kidney (on 10 held-out arterial crops without stones or excreted contrast
#: at most 0.055 ml, calcified plaques and the aorta's edge) is counted in report.json only
#: (docs/validation.md, "Stones and excreted contrast")
BRIGHT_ARTERY_CHECK_ML = 0.05
#: kidney and tumour label removed as brighter than renal parenchyma can be
#: (:func:`renalseg.postprocess.drop_bright_parenchyma`, ``bright_removed_ml``) from which the
#: verdict is ``unreliable``: the network took vessels or bone for kidney, and what it kept
#: is suspect too (50 held-out crops: none removed; the real CTA crop in tests/data: 247 ml)
BRIGHT_PARENCHYMA_UNRELIABLE_ML = 1.0
#: the kidney that localisation found from the study's own intensities (``KidneyROI.mask``,
#: 3 mm grid), grown by this margin, should hold most of the network's kidney label ...
KIDNEY_LOCATED_MARGIN_MM = 3.0
#: ... at least this share of it (the true kidneys of 8 whole-abdomen phantoms, tumours of up
#: to 390 ml included: 0.88-0.99; the network's on the benchmark phantom: 0.93-0.97; on the
#: real un-enhanced atlas CT, where it labels no kidney voxel right: 0.41 and 0)
KIDNEY_MIN_LOCATED_SHARE = 0.5
#: a kidney or tumour label that reaches a face of its ROI, with at least this much scan
#: beyond the face, may continue outside the region segmented (an ROI placed off the
#: kidney, a large exophytic tumour)
ROI_EDGE_BEYOND_MM = 5.0
#: ... reaching it means at least this many of its voxels lie within 1.5 voxels of the face
ROI_EDGE_MIN_VOXELS = 10
#: a tumour piece holding less than this share of a ball as wide as its largest diameter is
#: no renal tumour's outline (``check``): the report's largest diameter misstates the
#: tumour's size. The phantoms' 180 true tumours fill 0.14-0.98 (median 0.61); on the 22
#: portal-venous held-out crops the default weights' longest piece fills less than this in
#: 5 of the 11 tumour cases, whose diameters are 21 mm too large (median; -16 to +27), and
#: in none of the other 33 crops (docs/validation.md, Quality verdict)
TUMOUR_MIN_FILL = 0.1


def ball_ml(diameter_mm: float) -> float:
    """The volume (ml) of a ball of that diameter.

    Example:
        >>> round(ball_ml(40.0), 1)
        33.5
    """
    return float(np.pi / 6.0 * diameter_mm ** 3 / 1000.0)


def tumour_too_thin(figures: dict) -> bool:
    """Whether a side's tumour figures (``report.json``'s ``structures.tumour.<side>``) have a
    longest piece too thin to be a tumour's outline (under :data:`TUMOUR_MIN_FILL` of a
    ball as wide): its ``largest_diameter_mm`` is then no measure of the tumour's size.

    Example:
        >>> tumour_too_thin({"largest_diameter_mm": 60.0, "largest_diameter_piece_ml": 4.0})
        True
        >>> tumour_too_thin({"largest_diameter_mm": 30.0, "largest_diameter_piece_ml": 9.0})
        False
    """
    diameter, piece_ml = figures.get("largest_diameter_mm") or 0.0, figures.get("largest_diameter_piece_ml")
    return bool(diameter > 0 and piece_ml is not None and piece_ml < TUMOUR_MIN_FILL * ball_ml(diameter))


_FACES = (("right", "left"), ("anterior", "posterior"), ("inferior", "superior"))  # LPS x, y, z: low, high


# -- limits (from the model card) -----------------------------------------------------------


@dataclass(frozen=True)
class QualityLimits:
    """What the weights were validated on and the verdict's thresholds (the card's ``limits``).

    Attributes:
        phases: contrast phases the weights were validated on (others: ``unreliable``).
        check_phases: validated phases where the held-out figures are lower than in the
            others (the four-structure weights' portal-venous phase): ``check``.
        inplane_spacing_mm: validated in-plane spacing range (min, max).
        slice_thickness_mm: validated slice spacing range (min, max).
        noise_sd_hu: validated noise range (HU standard deviation in fat).
        spacing_unreliable_factor: beyond ``factor`` × the validated maximum spacing
            the verdict is ``unreliable`` (between: ``check``).
        noise_unreliable_factor: the same for noise.
        min_artery_contrast_hu: the aorta must be this much brighter than the renal
            cortex, else the arteries cannot be told from the kidney (``unreliable``).
        uncertain_share_check: the share of candidate artery voxels with probability
            in [0.25, 0.75] above which a kidney gets ``check``...
        uncertain_share_unreliable: ... and above which ``unreliable``.
        tta_dice_check: below this Dice between the plain and the mirrored passes, ``check``.
        max_pieces: more disconnected artery pieces than this per kidney: ``check``.
        tree_length_mm: centerline length range (per kidney) on the validation phantoms.
        branch_points: branch point count range (per kidney) on the validation phantoms.
        validated_on: free description of the validation data.
    """

    phases: tuple[str, ...] = ("early_arterial", "late_arterial")
    check_phases: tuple[str, ...] = ()
    inplane_spacing_mm: tuple[float, float] = (0.5, 1.0)
    slice_thickness_mm: tuple[float, float] = (0.5, 1.25)
    noise_sd_hu: tuple[float, float] = (5.0, 30.0)
    spacing_unreliable_factor: float = 2.0
    noise_unreliable_factor: float = 2.0
    min_artery_contrast_hu: float = 60.0
    tree_length_mm: tuple[float, float] = (150.0, 2000.0)
    uncertain_share_check: float = 0.35
    uncertain_share_unreliable: float = 0.6
    max_pieces: int = 60
    tta_dice_check: float = 0.8
    branch_points: tuple[int, int] = (4, 200)
    validated_on: str = "defaults (the model card has no limits block)"

    def to_dict(self) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(self))


#: the limits of a card without a ``limits`` block
DEFAULT_LIMITS = QualityLimits()


def json_ready(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python numbers (recursively)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def limits_from_card(limits: Mapping[str, Any] | None) -> QualityLimits:
    """The card's ``limits`` block as :class:`QualityLimits`; missing keys keep the defaults.

    The block holds ``validated_on`` (phases, spacing and noise ranges, a description)
    and ``thresholds`` (the other fields); see ``weights/dpa_densebiasnet.json``.

    Raises:
        ModelError: an unknown key or phase (with the valid ones), or a malformed value.

    Example:
        >>> limits_from_card(None) == DEFAULT_LIMITS
        True
        >>> limits_from_card({"validated_on": {"phases": ["late_arterial"]}}).phases
        ('late_arterial',)
    """
    if not limits:
        return DEFAULT_LIMITS
    fields = {f.name for f in dataclasses.fields(QualityLimits)}
    values: dict[str, Any] = {}
    for block in ("validated_on", "thresholds"):
        part = dict(limits.get(block) or {})
        if block == "validated_on" and "description" in part:
            values["validated_on"] = str(part.pop("description"))
        for key, value in part.items():
            if key not in fields:
                raise ModelError(f"model card limits.{block}: unknown key {key!r}." + suggest(key, sorted(fields))
                                 + f" Valid: {', '.join(sorted(fields))}.")
            values[key] = value
    unknown = sorted(set(limits) - {"validated_on", "thresholds"})
    if unknown:
        raise ModelError(f"model card limits: unknown block(s) {', '.join(unknown)}; expected validated_on "
                         "and thresholds.")
    try:
        for key, value in list(values.items()):
            default = getattr(DEFAULT_LIMITS, key)
            if isinstance(default, tuple):
                values[key] = tuple(str(v) if key.endswith("phases") else type(default[0])(v) for v in value)
            elif not isinstance(default, str):
                values[key] = type(default)(value)
    except (TypeError, ValueError) as err:
        raise ModelError(f"model card limits: malformed value ({err}).") from err
    for key in ("phases", "check_phases"):
        bad = [p for p in values.get(key, ()) if p not in PHASES]
        if bad:
            raise ModelError(f"model card limits: {key}: unknown phase {bad[0]!r}; valid: "
                             f"{', '.join(PHASES)}." + suggest(bad[0], PHASES))
    return dataclasses.replace(DEFAULT_LIMITS, **values)


# -- contrast phase ----------------------------------------------------------------------------


def _roi_box(roi: Any) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = roi.box_mm_lps
    return np.asarray(lo, float), np.asarray(hi, float)


def _image_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    corners = Geometry.from_sitk(image).corners_world()
    return corners.min(axis=0), corners.max(axis=0)


def _survey_grid(lo: np.ndarray, hi: np.ndarray) -> Geometry:
    """An LPS-aligned grid over [lo, hi] (mm) with about ``_SURVEY_VOXELS`` voxels."""
    extent = np.maximum(hi - lo, 1.0)
    spacing = max(_SURVEY_MIN_SPACING_MM, float(np.cbrt(np.prod(extent) / _SURVEY_VOXELS)))
    count = np.maximum(1, np.floor(extent / spacing).astype(int) + 1)
    return Geometry((int(count[2]), int(count[1]), int(count[0])), (spacing,) * 3, tuple(lo.tolist()),
                    IDENTITY_DIRECTION)


def _top_median(values: np.ndarray, ranking: np.ndarray, count: int) -> float | None:
    """Median of ``values`` at the ``count`` highest ``ranking`` entries (None when empty)."""
    if values.size == 0:
        return None
    count = int(min(max(count, 1), values.size))
    top = np.argpartition(ranking, values.size - count)[values.size - count:]
    return float(np.median(values[top]))


def survey_grid(image: sitk.Image, rois: Sequence[Any], *, input_is_roi: bool = False) -> Geometry:
    """The LPS grid (about 2 mm) over the kidney ROIs and the region medial to them, inside the image."""
    if not rois:
        raise ValueError("the quality survey needs at least one kidney ROI")
    boxes = [_roi_box(roi) for roi in rois]
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    sides = {roi.side for roi in rois}
    if not input_is_roi and len(sides) == 1:  # reach medially to the great vessels
        centre_x = float(np.mean([(b[0][0] + b[1][0]) / 2 for b in boxes]))
        if "right" in sides:
            hi[0] = max(hi[0], centre_x + _MEDIAL_REACH_MM)
        else:
            lo[0] = min(lo[0], centre_x - _MEDIAL_REACH_MM)
    image_lo, image_hi = _image_box(image)
    return _survey_grid(np.maximum(lo, image_lo), np.minimum(hi, image_hi))


def measure_phase_hu(image: sitk.Image, rois: Sequence[Any], *, input_is_roi: bool = False) -> dict[str, Any]:
    """The HU behind the phase call, measured where localisation found the kidneys.

    Args:
        image: the study in HU (any grid and orientation).
        rois: the kidney ROIs (:class:`renalseg.roi.KidneyROI`: ``side`` and ``box_mm_lps``).
        input_is_roi: the image is itself one kidney ROI crop: search all of it.

    Returns:
        ``aorta``, ``ivc``, ``portal_vein`` (median HU of each vessel's brightest
        1.5 ml of vertical tube; ``None`` where none was found), ``renal_cortex``,
        ``renal_medulla`` (95th percentile of the soft tissue in the ROIs' cores, and
        15th percentile of the kidney found there), ``corticomedullary_hu`` (cortex minus
        the 15th percentile of the kidney within 90 HU of the cortex: lesions left out),
        ``excreted_ml`` (volume above 300 HU in those cores that is no vertical
        tube: contrast in the collecting system), ``survey_spacing_mm``.
    """
    from scipy import ndimage

    grid = survey_grid(image, rois, input_is_roi=input_is_roi)
    boxes = [_roi_box(roi) for roi in rois]
    sides = {roi.side for roi in rois}
    hu = sitk.GetArrayFromImage(resample_to_grid(image, grid, interpolator=sitk.sitkLinear, default_value=-1024.0,
                                                 pixel_type=sitk.sitkFloat32))
    spacing = grid.spacing_xyz_mm[0]
    smooth = ndimage.gaussian_filter(hu, 1.0)
    half_xy = max(1, int(round(_TUBE_HALF_INPLANE_MM / spacing)))
    half_z = max(1, int(round(_TUBE_HALF_Z_MM / spacing)))
    # (past the survey's ends a tube is not known to go on: air there, not a reflection)
    tube = ndimage.minimum_filter(smooth, size=(2 * half_z + 1, 1, 1), mode="constant", cval=-1024.0)
    tube = ndimage.minimum_filter(tube, size=(1, 2 * half_xy + 1, 2 * half_xy + 1))
    voxel_ml = spacing ** 3 / 1000.0
    top = int(round(_TOP_ML / voxel_ml))

    # voxel-centre coordinates (LPS mm) along each axis of the survey
    xs = grid.origin_xyz_mm[0] + spacing * np.arange(grid.shape_zyx[2])
    ys = grid.origin_xyz_mm[1] + spacing * np.arange(grid.shape_zyx[1])
    centres = np.array([(b[0] + b[1]) / 2 for b in boxes])
    column_tube = tube.max(axis=0)            # (y, x): each column's best tube value
    column_z = tube.argmax(axis=0)
    # bone: marrow (smoothed > 80 HU) enclosed, in a slice, by dense cortex (> 250 HU): the
    # vertebral bodies and ribs, whose marrow is as bright as contrast-filled blood (a vessel
    # above 250 HU is solid and encloses nothing; a calyx ring encloses sinus fat or urine);
    # a column that is marrow or cortex in a quarter of its slices is no vessel
    slab = np.ones((1, 3, 3), bool)
    dense = ndimage.binary_closing(hu > 250.0, slab)
    marrow = ndimage.binary_fill_holes(dense, slab) & ~dense & (smooth > 80.0)
    bone = ndimage.binary_dilation(marrow, slab, iterations=2)
    bone |= dense & ndimage.binary_dilation(bone, slab)
    # and a vessel is about as bright all along as its tube value says (within −15 HU … +40 HU or 20 %
    # of it in 70 % of the slices ±40 mm around its best one), while a vertebral column's
    # tube value is its discs', and bowel, stomach and organs change from slice to slice
    reach = int(round(40.0 / spacing))
    window = np.clip(column_z[None] + np.arange(-reach, reach + 1)[:, None, None], 0, hu.shape[0] - 1)
    along = np.take_along_axis(smooth, window, axis=0)
    steady = ((along >= column_tube - 15.0) & (along <= column_tube + np.maximum(40.0, 0.2 * column_tube))
              ).mean(axis=0) >= 0.7
    # ... or steady around its own level, the box's minimum within 100 HU or 30% of it: with
    # noise that minimum falls far under a lumen (the aorta of a noisy kidney crop: 70-93 HU)
    level = np.median(along, axis=0)
    band = np.maximum(20.0, 0.1 * np.abs(level))
    steady |= ((np.abs(along - level) <= band).mean(axis=0) >= 0.7) & (column_tube >= level - np.maximum(
        100.0, 0.3 * np.abs(level)))
    plausible = (column_tube < 1500.0) & (bone.mean(axis=0) < 0.25) & steady
    out: dict[str, Any] = {"aorta": None, "ivc": None, "portal_vein": None}
    x_grid, y_grid = np.meshgrid(xs, ys)
    if input_is_roi or len(sides) == 1:
        region = plausible.copy()
        if not input_is_roi:
            centre = centres.mean(axis=0)
            medial = 1.0 if "right" in sides else -1.0
            region &= medial * (x_grid - centre[0]) >= 35.0
        aorta_region, ivc_region, portal_region = region, region, region
    else:
        x_mid, y_c = float(centres[:, 0].mean()), float(centres[:, 1].mean())
        # in front of the vertebral bodies (which lie about level with the kidneys' centres)
        band = (y_grid >= y_c - 70.0) & (y_grid <= y_c - 15.0) & plausible
        aorta_region = band & (x_grid >= x_mid - 5.0) & (x_grid <= x_mid + 40.0)
        ivc_region = band & (x_grid >= x_mid - 50.0) & (x_grid <= x_mid - 5.0)
        portal_region = ivc_region

    def vessel(region: np.ndarray, exclude: np.ndarray | None = None) -> tuple[float | None, np.ndarray | None]:
        mask = region if exclude is None else region & ~exclude
        if not mask.any():
            return None, None
        values = column_tube[mask]
        ys_idx, xs_idx = np.nonzero(mask)
        best = int(np.argmax(values))
        yx = np.array([ys_idx[best], xs_idx[best]])
        # the vessel's brightest voxels: the tube voxels within 12 mm in-plane of its best column
        near = ((np.arange(tube.shape[1])[:, None] - yx[0]) ** 2
                + (np.arange(tube.shape[2])[None, :] - yx[1]) ** 2) <= (12.0 / spacing) ** 2
        column_mask = near & mask
        z0 = int(column_z[yx[0], yx[1]])
        z_lo, z_hi = max(0, z0 - int(40 / spacing)), z0 + int(40 / spacing) + 1
        sub_tube = tube[z_lo:z_hi][:, column_mask]
        sub_hu = smooth[z_lo:z_hi][:, column_mask]
        # its lumen: the voxels whose tube value is close to the best one (not a fixed volume:
        # a thin or partly hidden vessel would take fat into the median)
        best_tube = float(values[best])
        lumen = sub_tube >= best_tube - max(40.0, 0.2 * abs(best_tube))
        return _top_median(sub_hu[lumen], sub_tube[lumen], top), near

    out["aorta"], aorta_near = vessel(aorta_region)
    if input_is_roi or len(sides) == 1:
        out["ivc"], _ = vessel(ivc_region, aorta_near)
    else:
        out["ivc"], ivc_near = vessel(ivc_region, aorta_near)
        if out["ivc"] is not None and ivc_near is not None:
            # the portal vein lies in front of the IVC (anterior: lower LPS y)
            y_ivc = float(y_grid[ivc_near].mean())
            out["portal_vein"], _ = vessel(portal_region & (y_grid < y_ivc - 15.0), aorta_near | ivc_near)

    # the kidneys: in each ROI's core (central 70 % head to foot, 60 % front to back and,
    # medial-lateral, the lateral 60 %: the ROI's spare room is medial), the cortex is the
    # 95th percentile of the soft tissue; the kidney is the largest blob within 45 HU of it
    # (every contrast phase makes the cortex the brightest parenchyma there), its holes in
    # each slice filled (medulla, sinus); the medulla is the 15th percentile of that region
    zs = grid.origin_xyz_mm[2] + spacing * np.arange(grid.shape_zyx[0])
    vertical = tube > 250.0
    core = np.zeros(hu.shape, bool)
    for roi, (b_lo, b_hi) in zip(rois, boxes):
        span = b_hi - b_lo
        c_lo, c_hi = b_lo + span * np.array([0.0, 0.2, 0.15]), b_hi - span * np.array([0.0, 0.2, 0.15])
        if not input_is_roi:
            if roi.side == "right":
                c_hi[0] = b_lo[0] + 0.6 * span[0]
            else:
                c_lo[0] = b_hi[0] - 0.6 * span[0]
        core |= (((zs >= c_lo[2]) & (zs <= c_hi[2]))[:, None, None]
                 & ((ys >= c_lo[1]) & (ys <= c_hi[1]))[None, :, None]
                 & ((xs >= c_lo[0]) & (xs <= c_hi[0]))[None, None, :])
    soft = core & (smooth > -30.0) & (smooth < 300.0) & ~vertical & ~bone
    values = smooth[soft]
    out["renal_cortex"] = out["renal_medulla"] = None
    out["excreted_ml"] = 0.0
    if values.size >= 50:
        cortex = float(np.percentile(values, 95))
        blobs, count = ndimage.label(soft & (smooth >= cortex - 45.0))
        sizes = np.bincount(blobs.ravel(), minlength=count + 1)
        sizes[0] = 0
        kidney = blobs == int(np.argmax(sizes))
        disk = np.zeros((1, 7, 7), bool)
        disk[0] = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3
        region = ndimage.binary_fill_holes(ndimage.binary_closing(kidney, disk), slab)
        inner = ndimage.binary_erosion(region & (smooth > -30.0), slab, iterations=2) & (smooth < 300.0)
        inside = smooth[inner]
        out["renal_cortex"] = cortex
        out["renal_medulla"] = float(np.percentile(inside, 15)) if inside.size >= 50 else cortex
        # the corticomedullary difference without lesions (cysts, hypodense tumours, far darker than
        # any enhancing medulla that could be mistaken for an even nephrogram)
        parenchyma = inside[inside >= cortex - 90.0]
        out["corticomedullary_hu"] = round(cortex - float(np.percentile(parenchyma, 15)), 1) \
            if parenchyma.size >= 50 else None
        # excreted contrast: above 300 HU inside that region, no vertical tube, no bone
        out["excreted_ml"] = round(float((region & (hu > 300.0) & ~vertical & ~bone).sum() * voxel_ml), 2)
    out["survey_spacing_mm"] = round(spacing, 2)
    for key in ("aorta", "ivc", "portal_vein", "renal_cortex", "renal_medulla"):
        if out[key] is not None:
            out[key] = round(float(out[key]), 1)
    return out


def classify_phase(hu: Mapping[str, Any]) -> tuple[str, str]:
    """The contrast phase from :func:`measure_phase_hu`'s HU, and the evidence in words.

    Example:
        >>> classify_phase({"aorta": 420, "ivc": 70, "portal_vein": 80, "renal_cortex": 190,
        ...                 "renal_medulla": 60, "excreted_ml": 0})[0]
        'early_arterial'
        >>> classify_phase({"aorta": 180, "ivc": 175, "portal_vein": 200, "renal_cortex": 190,
        ...                 "renal_medulla": 150, "excreted_ml": 0})[0]
        'portal_venous'
        >>> classify_phase({"aorta": 40, "ivc": 38, "renal_cortex": 42, "renal_medulla": 30, "excreted_ml": 0})[0]
        'non_contrast'
    """
    cortex = hu.get("renal_cortex")
    medulla = hu.get("renal_medulla")
    aorta = hu.get("aorta")
    if cortex is None and aorta is None:
        return "unknown", "neither the aorta nor a kidney could be measured"
    aorta_v = float(aorta) if aorta is not None else float(cortex)  # type: ignore[arg-type]
    cortex_v = float(cortex) if cortex is not None else aorta_v
    medulla_v = float(medulla) if medulla is not None else cortex_v
    veins = [float(v) for v in (hu.get("ivc"), hu.get("portal_vein")) if v is not None]
    vein = max(veins) if veins else None
    excreted = float(hu.get("excreted_ml") or 0.0)
    difference = float(hu["corticomedullary_hu"]) if hu.get("corticomedullary_hu") is not None \
        else cortex_v - medulla_v
    facts = f"aorta {aorta_v:.0f} HU, renal cortex {cortex_v:.0f}, medulla {medulla_v:.0f}" + (
        f", brightest vein {vein:.0f}" if vein is not None else "")
    if max(aorta_v, cortex_v) < 95.0:
        return "non_contrast", f"nothing enhances ({facts})"
    if excreted >= 0.5 and aorta_v < 220.0 and difference < 30.0:
        return "delayed", f"contrast in the collecting system ({excreted:.1f} ml above 300 HU; {facts})"
    if aorta_v >= cortex_v + 50.0 and aorta_v >= 220.0:
        if vein is None or vein < 105.0:
            return "early_arterial", f"arteries bright, veins not yet enhanced ({facts})"
        return "late_arterial", f"arteries bright, veins enhancing ({facts})"
    if difference >= 12.5:
        return "portal_venous", f"arteries no brighter than kidney and veins; cortex still above medulla ({facts})"
    return "nephrographic", f"kidney evenly enhanced, arteries no brighter than it ({facts})"


# -- scan quality ------------------------------------------------------------------------------


def _local_sd(plane_stack: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    mean = ndimage.uniform_filter(plane_stack, size=(1, size, size))
    mean_sq = ndimage.uniform_filter(plane_stack * plane_stack, size=(1, size, size))
    return mean, np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def measure_scan(image: sitk.Image, rois: Sequence[Any], limits: QualityLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Spacing, noise, truncation and metal, on the study's own voxels around the kidneys.

    Noise is the median local standard deviation (7 × 7 in-plane voxels) where the
    whole window is fat (−200 … −40 HU) or muscle (20 … 80 HU), on about 24 slices of
    each ROI's box; a window counts as one tissue when its mean lies in the range and its
    spread is under twice the median spread of such windows (one across an edge spreads
    more).

    Returns:
        ``inplane_spacing_mm``, ``slice_thickness_mm``, ``spacing_ok`` (within the
        validated ranges), ``noise_hu`` (fat, else muscle), ``noise_sd_hu`` (``fat``,
        ``muscle``), ``truncated`` (sides whose ROI or kidney reaches past the field of
        view), ``metal_ml``.
    """
    geometry = Geometry.from_sitk(image)
    sx, sy, sz = geometry.spacing_xyz_mm
    inplane, thickness = max(sx, sy), sz
    array = sitk.GetArrayViewFromImage(image)
    fat_sd: list[np.ndarray] = []
    muscle_sd: list[np.ndarray] = []
    truncated: list[str] = []
    metal_voxels = 0
    for roi in rois:
        start = np.asarray(roi.start_zyx, int)
        stop = start + np.asarray(roi.shape_zyx, int)
        # the kidney cut (localisation says so), or its ROI past the scan by more than twice its
        # own margins (10 mm head to foot, 15 mm in-plane): the hilum or a pole may be cut
        overshoot_mm = np.maximum(np.maximum(-start, 0), np.maximum(stop - np.asarray(array.shape), 0)) * \
            np.asarray(geometry.spacing_xyz_mm)[::-1]
        if getattr(roi, "truncated", False) or (overshoot_mm > np.array([20.0, 30.0, 30.0])).any():
            truncated.append(roi.side)
        lo, hi = np.maximum(start, 0), np.minimum(stop, array.shape)
        if not (hi > lo).all():
            continue
        step = max(1, (hi[0] - lo[0]) // 24)  # ~24 slices per ROI are plenty for a median
        block = np.asarray(array[lo[0]:hi[0]:step, lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
        metal_voxels += int((block > _METAL_HU).sum()) * step
        mean, sd = _local_sd(block, 7)
        # windows whose mean lies in the tissue's range; those across an edge are dropped below
        fat_sd.append(sd[(mean > -200.0) & (mean < -40.0)])
        muscle_sd.append(sd[(mean > 20.0) & (mean < 80.0)])

    def median(parts: list[np.ndarray]) -> float | None:
        """The median spread of the windows entirely in one tissue.

        A window across an edge spreads far more than the noise; a fixed cap on the spread
        would also cut the noisy tail of a noisy scan's windows and bias its median low (a
        60 HU cap read 62-64 HU of noise as 56), so the cap is twice the median of all.
        """
        values = np.concatenate(parts) if parts else np.zeros(0)
        values = values[values < 2.0 * np.median(values)] if values.size else values
        return round(float(np.median(values)), 1) if values.size >= 200 else None

    fat_noise, muscle_noise = median(fat_sd), median(muscle_sd)
    noise = fat_noise if fat_noise is not None else muscle_noise
    spacing_ok = (inplane <= limits.inplane_spacing_mm[1] + 1e-6
                  and thickness <= limits.slice_thickness_mm[1] + 1e-6)
    return {
        "inplane_spacing_mm": round(float(inplane), 3),
        "slice_thickness_mm": round(float(thickness), 3),
        "spacing_ok": bool(spacing_ok),
        "noise_hu": noise,
        "noise_sd_hu": {"fat": fat_noise, "muscle": muscle_noise},
        "truncated": truncated,
        "metal_ml": round(metal_voxels * geometry.voxel_volume_mm3 / 1000.0, 2),
    }


# -- the network's uncertainty -----------------------------------------------------------------


class MirrorAgreement:
    """A predictor wrapper that measures how well the mirrored TTA passes agree.

    :func:`renalseg.inference.sliding_window` calls the predictor once per mirroring
    of each batch, the plain pass first, in the order of
    :func:`mirror_sets`; this wrapper flips each mirrored output
    back and accumulates its artery overlap with the plain pass.

    Args:
        predict: the predictor to wrap.
        flips: the mirrorings, plain first (``mirror_sets((0, 1, 2))``).
        channel: the artery channel.

    Example:
        >>> from renalseg.inference import sliding_window
        >>> x = np.zeros((8, 8, 8), np.float32); x[2:5, 3, 3] = 1
        >>> wrapper = MirrorAgreement(lambda b: np.concatenate([1 - b, b], 1), mirror_sets((0, 1, 2)))
        >>> _ = sliding_window(x, wrapper, window_zyx=(8, 8, 8), mirror_axes=(0, 1, 2))
        >>> wrapper.dice()
        1.0
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], flips: Sequence[tuple[int, ...]], *,
                 channel: int = 1) -> None:
        self.predict = predict
        self.flips = list(flips)
        self.channel = channel
        self._calls = 0
        self._plain: np.ndarray | None = None
        self._overlap = 0
        self._total = 0

    def __getattr__(self, name: str) -> Any:  # device, max_batch, ... of the wrapped predictor
        return getattr(self.__dict__["predict"], name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        output = np.asarray(self.predict(batch))
        axes = self.flips[self._calls % len(self.flips)]
        self._calls += 1
        mask = np.flip(output[:, self.channel], tuple(a + 1 for a in axes)) >= 0.5 if axes else \
            output[:, self.channel] >= 0.5
        if not axes:
            self._plain = mask
        elif self._plain is not None and self._plain.shape == mask.shape:
            self._overlap += 2 * int((mask & self._plain).sum())
            self._total += int(mask.sum()) + int(self._plain.sum())
        return output

    def dice(self) -> float | None:
        """Mean Dice of the mirrored passes' artery masks against the plain pass (None: no TTA)."""
        if self._calls <= 1 or len(self.flips) <= 1:
            return None
        return round(self._overlap / self._total, 4) if self._total else 1.0


def _skeleton_stats(mask: np.ndarray, spacing_xyz_mm: Sequence[float]) -> tuple[float, int]:
    """(centerline length mm, branch points) of a mask, roughly: a 3D thinning at half
    resolution (2 × 2 × 2 maximum: thin branches survive, 8 × less work), counted."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    if not mask.any():
        return 0.0, 0
    region = ndimage.find_objects(mask.astype(np.uint8))[0]
    sub = mask[region]
    pad = [(0, (-n) % 2) for n in sub.shape]
    sub = np.pad(sub, pad)
    coarse = sub.reshape(sub.shape[0] // 2, 2, sub.shape[1] // 2, 2, sub.shape[2] // 2, 2).any(axis=(1, 3, 5))
    skeleton = skeletonize(coarse).astype(bool)
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant")
    neighbours = np.where(skeleton, neighbours - 1, 0)
    _, branch_points = ndimage.label(neighbours >= 3, structure=np.ones((3, 3, 3)))
    step_mm = 2.0 * float(np.mean(spacing_xyz_mm))
    return round(float(skeleton.sum() * step_mm), 1), int(branch_points)


#: angles round the aorta seen from its centre in an axial plane (0°: towards the patient's
#: left, 90°: straight back, 180°: towards the right): behind it and past straight back to
#: its right, where a left renal vein crosses to the IVC and no renal artery runs (a left one
#: runs out to the left, at most about 80° on held-out phantoms; a right one leaves the
#: right side, at least about 150°) ...
BEHIND_AORTA_DEG = (95.0, 135.0)
#: ... within this distance (mm) of the aortic wall
BEHIND_AORTA_REACH_MM = 12.0
#: artery label there (ml) from which the verdict asks for a check: a left renal vein behind
#: the aorta taken for artery (docs/validation.md, "A left renal vein behind the aorta")
ARTERY_BEHIND_AORTA_CHECK_ML = 0.05


def artery_behind_aorta_ml(artery: np.ndarray, aorta: np.ndarray, geometry: Geometry) -> float:
    """Artery label (ml) behind the aorta and past straight back to its right (:data:`BEHIND_AORTA_DEG`),
    within :data:`BEHIND_AORTA_REACH_MM` of its wall.

    The aorta's centre and radius at each height are the deepest point of its mask there
    and that depth (the mask holds the first millimetres of its branches, which would pull
    a centroid), in patient LPS millimetres, so any grid orientation.

    Example (a tube round the aorta's back, and a renal artery leaving its left side):
        >>> yy, xx = np.mgrid[:40, :40]
        >>> aorta = np.broadcast_to((yy - 15) ** 2 + (xx - 20) ** 2 <= 36, (3, 40, 40))
        >>> artery = np.zeros((3, 40, 40), bool); artery[:, 14:17, 27:40] = True
        >>> grid = Geometry((3, 40, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY_DIRECTION)
        >>> artery_behind_aorta_ml(artery, aorta, grid)
        0.0
        >>> artery[:, 23:26, 12:29] = True
        >>> artery_behind_aorta_ml(artery, aorta, grid) > 0
        True
    """
    from scipy import ndimage

    aorta = np.asarray(aorta, dtype=bool)
    artery_zyx = np.argwhere(artery)
    if not len(artery_zyx) or not aorta.any():
        return 0.0
    voxel_mm3 = float(np.prod(geometry.spacing_xyz_mm))
    band_mm = max(float(v) for v in geometry.spacing_xyz_mm)  # an axial band holds at least one slice
    inside = np.argwhere(aorta)
    lo = np.maximum(inside.min(axis=0) - 1, 0)  # the depth inside the mask only needs its box and a rim
    box = tuple(slice(a, b) for a, b in zip(lo, inside.max(axis=0) + 2))
    depth = ndimage.distance_transform_edt(aorta[box], sampling=tuple(geometry.spacing_xyz_mm)[::-1])[
        tuple((inside - lo).T)]
    walls = geometry.index_to_world(inside[:, ::-1].astype(float))
    bottom = walls[:, 2].min()

    def band_of(world: np.ndarray) -> np.ndarray:
        return np.floor((world[:, 2] - bottom) / band_mm + 0.5).astype(int)

    wall_band = band_of(walls)
    order = np.lexsort((-depth, wall_band))  # by band, deepest first
    bands, first = np.unique(wall_band[order], return_index=True)
    deepest = order[first]
    points = geometry.index_to_world(artery_zyx[:, ::-1].astype(float))
    band = band_of(points)
    at = np.clip(np.searchsorted(bands, band), 0, len(bands) - 1)
    dx, dy = points[:, 0] - walls[deepest, 0][at], points[:, 1] - walls[deepest, 1][at]  # LPS: +y posterior
    angle = np.degrees(np.arctan2(dy, dx))
    behind = ((bands[at] == band) & (np.hypot(dx, dy) <= depth[deepest][at] + BEHIND_AORTA_REACH_MM)
              & (BEHIND_AORTA_DEG[0] <= angle) & (angle <= BEHIND_AORTA_DEG[1]))
    return round(float(behind.sum()) * voxel_mm3 / 1000.0, 4)


def artery_uncertainty(probability: np.ndarray, artery: np.ndarray, spacing_xyz_mm: Sequence[float], *,
                       hu: np.ndarray | None = None, pieces: int | None = None,
                       tta_dice: float | None = None) -> dict[str, Any]:
    """The network's own doubt about one kidney's arteries.

    Args:
        probability: float ``(Z, Y, X)`` artery probability on the model grid.
        artery: bool ``(Z, Y, X)`` final artery mask on the same grid.
        spacing_xyz_mm: the grid's spacing.
        hu: float ``(Z, Y, X)`` CT on the same grid: gives ``artery_hu``, the 90th
            percentile HU of the segmented arteries (their lumen; edge voxels blur lower).
        pieces: disconnected artery pieces (``None``: those of at least 5 mm³ are counted).
        tta_dice: :meth:`MirrorAgreement.dice`, when TTA ran.

    Returns:
        ``uncertain_share`` (of the voxels with probability ≥ 0.25, the share below
        0.75), ``mean_probability`` (over the artery), ``tta_dice``, ``pieces``,
        ``tree_length_mm``, ``branch_points`` and ``artery_hu``.

    Example:
        >>> p = np.zeros((10, 10, 10), np.float32); p[2:8, 5, 5] = 0.9; p[2:8, 6, 5] = 0.5
        >>> artery_uncertainty(p, p >= 0.5, (1.0, 1.0, 1.0))["uncertain_share"]
        0.5
    """
    from scipy import ndimage

    count = int(np.count_nonzero(probability >= 0.25))
    unsure = count - int(np.count_nonzero(probability > 0.75))
    if pieces is None:  # pieces of at least 5 mm³ (specks say little about the tree)
        box = ndimage.find_objects(artery.astype(np.uint8))
        labelled, found = ndimage.label(artery[box[0]] if box else artery, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(labelled.ravel(), minlength=found + 1)[1:] * float(np.prod(spacing_xyz_mm))
        pieces = int((sizes >= 5.0).sum())
    length, branches = _skeleton_stats(artery, spacing_xyz_mm)
    return {
        "uncertain_share": round(unsure / count, 4) if count else 1.0,
        "mean_probability": round(float(probability[artery].mean()), 4) if artery.any() else 0.0,
        "tta_dice": tta_dice,
        "pieces": int(pieces),
        "tree_length_mm": length,
        "branch_points": branches,
        "artery_hu": round(float(np.percentile(hu[artery], 90)), 1) if hu is not None and artery.any() else None,
    }


def _located_on(masks: Sequence[Any], geometry: Geometry) -> np.ndarray:
    """The union of localisation's kidney masks, grown by :data:`KIDNEY_LOCATED_MARGIN_MM`, on ``geometry``."""
    from scipy import ndimage

    from renalseg.volume import Volume

    union = np.zeros(geometry.shape_zyx, bool)
    for mask in masks:
        spacing = np.asarray(mask.geometry.spacing_xyz_mm, dtype=float)
        steps = int(np.ceil(KIDNEY_LOCATED_MARGIN_MM / spacing.min()))
        grown = np.pad(mask.array.astype(bool), steps)
        if steps:
            grown = ndimage.binary_dilation(grown, iterations=steps)
        padded = mask.geometry.crop((-steps,) * 3, grown.shape)  # the mask's grid, grown by ``steps``
        on_grid = resample_to_grid(Volume(grown.astype(np.uint8), padded).to_sitk(), geometry,
                                   interpolator=sitk.sitkNearestNeighbor, default_value=0, pixel_type=sitk.sitkUInt8)
        union |= sitk.GetArrayViewFromImage(on_grid).astype(bool)
    return union


def kidney_label_facts(kidney: np.ndarray, geometry: Geometry, hu: np.ndarray | None = None, *,
                       located: Sequence[Any] = ()) -> dict[str, Any]:
    """Whether one side's kidney label can be a kidney: its size, height, median HU, place.

    Where the input is not what the weights know (another body region, an organ the
    phantoms do not draw), the network may call bone, the aorta or the heart "kidney"; the
    kidney and tumour labels, and a plan built on them, are then wrong while the verdict
    on the arteries alone may be ``ok``. Two facts a reader can check on any CT:
    the label's head-to-foot height (a kidney is at most about 15 cm) and its median HU
    (renal parenchyma stays below about 300 HU in every contrast phase). Where
    localisation found the kidneys from the study's intensities (a whole study, not
    ``--input-is-roi``), a third: the share of the label lying within
    :data:`KIDNEY_LOCATED_MARGIN_MM` of them, two independent findings that should agree.

    Args:
        kidney: bool ``(Z, Y, X)`` kidney label of one side on ``geometry``.
        geometry: its grid (any direction: the height is measured along the patient's
            head-foot axis).
        hu: the CT on the same grid, or ``None`` (no median).
        located: localisation's kidney masks (``KidneyROI.mask`` volumes, any grid).

    Returns:
        ``volume_ml``, ``height_mm`` (0 for an empty label), ``median_hu`` (``None``
        without ``hu`` or label) and ``located_share`` (``None`` without ``located``).

    Example:
        >>> from renalseg.geometry import Geometry
        >>> g = Geometry((200, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> kidney = np.zeros(g.shape_zyx, bool); kidney[10:130, 1:3, 1:3] = True
        >>> kidney_label_facts(kidney, g, np.full(g.shape_zyx, 180.0))
        {'volume_ml': 0.48, 'height_mm': 120.0, 'median_hu': 180.0, 'located_share': None}
    """
    count = int(np.count_nonzero(kidney))
    if not count:
        return {"volume_ml": 0.0, "height_mm": 0.0, "median_hu": None, "located_share": None}
    up = geometry.affine_lps[2, :3]  # mm towards the head per step of the x, y, z index
    if np.allclose(up[:2], 0.0):  # axial slices: the labelled planes say it
        planes = np.nonzero(kidney.any(axis=(1, 2)))[0]
        extent = float(planes[-1] - planes[0]) * abs(float(up[2]))
    else:  # tilted: every labelled voxel
        heights = np.argwhere(kidney)[:, ::-1].astype(float) @ up
        extent = float(heights.max() - heights.min())
    height = extent + float(np.abs(up).sum())  # plus one voxel's own reach
    return {"volume_ml": round(count * geometry.voxel_volume_mm3 / 1000.0, 2),
            "height_mm": round(height, 1),
            "median_hu": round(float(np.median(hu[kidney])), 1) if hu is not None else None,
            "located_share": (round(np.count_nonzero(kidney & _located_on(located, geometry)) / count, 3)
                              if located else None)}


def roi_edges_reached(mask: np.ndarray, geometry: Geometry, roi_grid: Geometry, study: Geometry) -> list[str]:
    """The faces of a kidney ROI that ``mask`` (a side's kidney and tumour label) reaches
    where the scan goes on past them, by the patient's directions (``"inferior"``, ...).

    The ROI is placed around the kidney localisation found and reaches past it (10 mm
    head to foot, 152 voxels in-plane); a label that meets its edge was cut there: the
    ROI missed part of the kidney, or a tumour grows out of it. Where the scan itself
    ends, ``truncated`` says so instead.

    Args:
        mask: bool ``(Z, Y, X)`` on ``geometry`` (the ROI's box on the study's grid).
        geometry: the mask's grid.
        roi_grid: the ROI on the model grid (LPS-aligned).
        study: the whole study's grid.

    Example:
        >>> box = Geometry((10, 20, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> study = Geometry((40, 40, 40), (1.0, 1.0, 1.0), (-10.0, -10.0, -10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> mask = np.zeros(box.shape_zyx, bool); mask[0:5, 5:15, 5:15] = True
        >>> roi_edges_reached(mask, box, box, study)
        ['inferior']
    """
    if not mask.any():
        return []
    points = geometry.index_to_world(np.argwhere(mask)[:, ::-1])
    corners = roi_grid.corners_world()
    low, high = corners.min(axis=0), corners.max(axis=0)
    study_corners = study.corners_world()
    study_low, study_high = study_corners.min(axis=0), study_corners.max(axis=0)
    reach = 1.5 * np.maximum(np.asarray(roi_grid.spacing_xyz_mm), np.abs(geometry.direction_matrix
                                                                         * geometry.spacing_xyz_mm).max(axis=1))
    faces = []
    for axis in range(3):
        for side, (at, beyond) in enumerate(((low[axis], low[axis] - study_low[axis]),
                                             (high[axis], study_high[axis] - high[axis]))):
            near = np.count_nonzero(np.abs(points[:, axis] - at) <= reach[axis])
            if beyond >= ROI_EDGE_BEYOND_MM and near >= ROI_EDGE_MIN_VOXELS:
                faces.append(_FACES[axis][side])
    return faces


# -- one study ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanQuality:
    """What a study's own pixels say, before the network runs (see :func:`assess_scan`).

    Attributes:
        phase: one of :data:`PHASES`, or ``"unknown"``.
        evidence: the phase call in words, with the HU behind it.
        phase_hu: :func:`measure_phase_hu`'s result.
        scan: :func:`measure_scan`'s result.
        roi_only: the study is one kidney ROI crop (``--input-is-roi``): the aorta may
            be out of view, so the phase rests on the kidney and the segmented arteries.
    """

    phase: str
    evidence: str
    phase_hu: dict[str, Any]
    scan: dict[str, Any]
    roi_only: bool = False


def assess_scan(image: sitk.Image, rois: Sequence[Any], limits: QualityLimits = DEFAULT_LIMITS, *,
                input_is_roi: bool = False) -> ScanQuality:
    """Contrast phase and scan quality of one study around its kidney ROIs."""
    phase_hu = measure_phase_hu(image, rois, input_is_roi=input_is_roi)
    phase, evidence = classify_phase(phase_hu)
    return ScanQuality(phase, evidence, phase_hu, measure_scan(image, rois, limits), roi_only=input_is_roi)


# -- the verdict -------------------------------------------------------------------------------


#: an artery label under this (ml) on a side is no renal artery: a main renal artery alone
#: holds about 0.5 ml; held-out single-kidney phantoms' empty sides got 0-0.005 ml
ARTERY_MIN_ML = 0.05


def _missing_structures(kidney_ml: Mapping[str, float] | None,
                        artery_ml: Mapping[str, float] | None) -> dict[str, tuple[str, str]]:
    """Side -> (what is missing there, what else it may be) for each side localisation
    placed a kidney on whose kidney label is empty, or whose artery label is while its
    kidney label is not (``None``: that structure was not written)."""
    missing: dict[str, tuple[str, str]] = {}
    for side in dict.fromkeys([*(kidney_ml or {}), *(artery_ml or {})]):
        if kidney_ml is not None and side in kidney_ml and kidney_ml[side] <= 0.0:
            missing[side] = ("the network labelled no kidney where localisation placed it", "the network missed it")
        elif artery_ml is not None and side in artery_ml and artery_ml[side] < ARTERY_MIN_ML and (
                kidney_ml is None or (kidney_ml.get(side) or 0.0) > 0.0):
            missing[side] = (f"no renal artery was found for it ({artery_ml[side]:.2g} ml labelled)",
                             "the artery is missed")
    return missing


def judge(scan_quality: ScanQuality, uncertainty: Mapping[str, Mapping[str, Any]],
          limits: QualityLimits = DEFAULT_LIMITS, *,
          kidneys: Mapping[str, Mapping[str, Any]] | None = None,
          artery_ml: Mapping[str, float] | None = None,
          kidney_ml: Mapping[str, float] | None = None,
          located_confidence: Mapping[str, float] | None = None,
          not_located: Mapping[str, str] | None = None, arteries: bool = True,
          tumours: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The ``quality`` block of ``report.json``: verdict and plain-language warnings.

    Each finding is ``check`` (look before using the tree) or ``unreliable`` (outside
    what the weights were validated on, or the network unsure); the verdict is the
    worst finding, ``ok`` when there is none. ``kidneys`` (side → :func:`kidney_label_facts`)
    makes a kidney label taller than :data:`KIDNEY_MAX_HEIGHT_MM`, with a median above
    :data:`KIDNEY_MAX_MEDIAN_HU` (or :data:`KIDNEY_AORTA_SHARE` of a brighter study's aorta), or
    with less than :data:`KIDNEY_MIN_LOCATED_SHARE` of it
    near the kidneys localisation found ``unreliable``, as does a side's ``bright_removed_ml`` of
    at least :data:`BRIGHT_PARENCHYMA_UNRELIABLE_ML` (kidney or tumour label segment removed as
    brighter than parenchyma); they are reported as ``kidney_labels``.
    With ``kidneys`` (a model that labels kidney and tumour) the spacing and noise warnings
    also say a tumour may be labelled where there is none: on held-out phantoms at 3-5 mm
    slices or about 45 HU of noise the default weights labelled 9-20 ml of tumour in
    kidneys without one (docs/validation.md, "Thick slices" and "Noise").
    ``artery_ml`` and ``kidney_ml`` (side → the written label's volume, for each side
    localisation placed a kidney on) make a side ``check`` where the network labelled no
    kidney, or a kidney and no artery at all: the tree the surgeon came for is missing
    there, and where the other side has one, what localisation placed there may not be a
    kidney (on held-out single-kidney phantoms the empty side's find mostly got one or
    the other: docs/validation.md, Localisation). ``located_confidence`` (side → the ROI's
    localisation confidence) makes a side ``check`` whose kidney localisation kept below
    :data:`renalseg.kidney_search.MIN_CONFIDENCE`: a place of solid tissue with little fat
    around it, kept because a kidney whose large tumour fills its perirenal fat looks so
    (:data:`renalseg.roi.MASS_TISSUE_FRACTION`), as does the liver or the spleen filling an
    empty renal fossa. An ``uncertainty`` side's ``artery_behind_aorta_ml``
    (:func:`artery_behind_aorta_ml`) of at least :data:`ARTERY_BEHIND_AORTA_CHECK_ML` is a
    ``check``: a left renal vein passing behind the aorta taken for artery. ``not_located``
    (side → why localisation gave no ROI for a kidney asked for) makes that side ``check``:
    nothing of it is in the labels or a plan built on them, and a kidney refused as not
    kidney-like may be the one whose large tumour the plan is for. ``arteries=False`` (no
    artery written: ``--structures kidney,tumour``, say) leaves out what judges the artery
    alone: a phase in which the weights find less of the tree, the arteries' contrast against
    the kidney (``uncertainty`` is then empty), and the words on spacing and phase speak of
    the kidney and tumour labels. ``tumours`` (side → ``report.json``'s ``structures.tumour``
    entry) makes a side ``check`` whose longest tumour piece (of at least
    :data:`renalseg.figures.TUMOUR_MEASURED_MIN_ML`) fills less than :data:`TUMOUR_MIN_FILL`
    of a ball as wide: a thin, ragged piece whose diameter is not the tumour's size.

    Example:
        >>> scan = {"spacing_ok": True, "inplane_spacing_mm": 0.7, "slice_thickness_mm": 1.0, "noise_hu": 15,
        ...         "truncated": [], "metal_ml": 0}
        >>> venous = ScanQuality("portal_venous", "", {"aorta": 180, "renal_cortex": 185}, scan)
        >>> result = judge(venous, {})
        >>> result["verdict"], result["warnings"][0][:58]
        ('unreliable', 'portal-venous phase: the arteries are no brighter than the')
        >>> judge(ScanQuality("late_arterial", "", {"aorta": 380, "renal_cortex": 200}, scan), {})["verdict"]
        'ok'
    """
    phase, phase_hu, scan, evidence = (scan_quality.phase, scan_quality.phase_hu, scan_quality.scan,
                                       scan_quality.evidence)
    findings: list[tuple[str, str]] = []
    words = PHASE_WORDS.get(phase, phase)
    validated = ", ".join(PHASE_WORDS[p] for p in limits.phases)
    aorta, cortex = phase_hu.get("aorta"), phase_hu.get("renal_cortex")
    # a bright aorta (70-80 kVp, low-keV images) makes every enhanced tissue brighter
    lumen_max_hu, kidney_max_hu = ARTERY_MAX_LUMEN_HU, KIDNEY_MAX_MEDIAN_HU
    if aorta is not None:
        from renalseg.postprocess import artery_ceiling_hu

        lumen_max_hu = max(lumen_max_hu, artery_ceiling_hu(float(aorta)))
        kidney_max_hu = max(kidney_max_hu, KIDNEY_AORTA_SHARE * float(aorta))
    arteries_hu = [float(u["artery_hu"]) for u in uncertainty.values() if u.get("artery_hu") is not None]
    if phase == "unknown":
        findings.append(("check", f"contrast phase unknown ({evidence}); check that the arteries are the "
                                  "brightest structures near the kidneys"))
    elif phase not in limits.phases and scan_quality.roi_only and cortex is not None and arteries_hu \
            and min(arteries_hu) - cortex >= 2 * limits.min_artery_contrast_hu:
        findings.append(("check", f"contrast phase unclear in a kidney crop without the aorta (the kidney alone "
                                  f"looks {words}), but the segmented arteries ({min(arteries_hu):.0f} HU) are "
                                  f"clearly brighter than the renal cortex ({cortex:.0f} HU)"))
    elif phase not in limits.phases and not arteries:
        findings.append(("unreliable", f"{words} phase: the weights were validated on {validated} phase only; "
                                       "the kidney and tumour labels are unreliable"))
    elif not arteries:
        pass  # what follows judges the artery labels, and none were written
    elif phase not in limits.phases:
        if phase == "non_contrast":
            detail = "the arteries are not enhanced and cannot be told from the tissue around them"
        elif phase == "delayed":
            detail = "contrast in the collecting system is as bright as arteries, and the arteries are faint"
        else:
            detail = "the arteries are no brighter than the kidney and the veins"
        findings.append(("unreliable", f"{words} phase: {detail}; artery labels are unreliable (the weights "
                                       f"were validated on {validated} phase only)"))
    elif phase in limits.check_phases:
        # phantoms drawn as portal-venous CT: 97% of the sub-2 mm centerline inside the kidney under
        # 1 SD above the parenchyma (benchmarks/bench_artery_visibility.py); the nephrographic
        # phase's parenchyma is brighter still (held-out: 14% of that centerline found, as portal-venous)
        unseen = ("; in this phase the branches inside the kidney are no brighter than the parenchyma, so for the "
                  "interlobar arteries an arterial-phase CTA is needed"
                  ) if phase in ("portal_venous", "nephrographic") else ""
        findings.append(("check", f"{words} phase: the weights find less of the renal artery tree here than in "
                                  "the arterial phase (the model card's held-out figures); check the segmental "
                                  f"and smaller branches against the images{unseen}"))
    elif aorta is not None and cortex is not None and aorta - cortex < limits.min_artery_contrast_hu:
        findings.append(("unreliable", f"the aorta ({aorta:.0f} HU) is barely brighter than the renal cortex "
                                       f"({cortex:.0f} HU): the arteries cannot be told from the kidney"))
    elif cortex is not None and arteries_hu and min(arteries_hu) - cortex < limits.min_artery_contrast_hu:
        findings.append(("unreliable", f"the segmented arteries ({min(arteries_hu):.0f} HU) are barely brighter "
                                       f"than the renal cortex ({cortex:.0f} HU): they may be kidney or veins"))
    # held-out phantoms at 3-5 mm slices or 45 HU of noise: 9-20 ml of tumour in kidneys without one
    tumour_too = ", and tumour labelled in a kidney that has none" if kidneys else ""
    inplane, thickness = scan.get("inplane_spacing_mm"), scan.get("slice_thickness_mm")
    for value, (_, top), what in ((thickness, limits.slice_thickness_mm, "slice spacing"),
                                  (inplane, limits.inplane_spacing_mm, "in-plane spacing")):
        if value is None or value <= top + 1e-6:
            continue
        level = "unreliable" if value > limits.spacing_unreliable_factor * top else "check"
        blurred = ("segmental and interlobar arteries (1–3 mm) are blurred or missed" if arteries
                   else "small tumours and the kidney's edges are blurred")
        findings.append((level, f"{what} {value:.2g} mm is coarser than the {top:g} mm the weights were validated "
                                f"on: {blurred}{tumour_too}"))
    noise = scan.get("noise_hu")
    if noise is not None and noise > limits.noise_sd_hu[1]:
        level = "unreliable" if noise > limits.noise_unreliable_factor * limits.noise_sd_hu[1] else "check"
        findings.append((level, f"noisy image (SD {noise:.0f} HU in fat; validated up to "
                                f"{limits.noise_sd_hu[1]:g} HU): {'thin branches' if arteries else 'edges'} may be "
                                f"missed or invented{tumour_too}"))
    for side in scan.get("truncated") or ():
        findings.append(("check", f"the {side} kidney reaches the edge of the scan: arteries there may be cut"))
    if (scan.get("metal_ml") or 0) >= 0.05:
        findings.append(("check", f"metal near the kidneys ({scan['metal_ml']:.2f} ml above {_METAL_HU:.0f} HU): "
                                  "streak artefacts may break or add branches"))
    for side, u in uncertainty.items():
        share = u.get("uncertain_share")
        if share is not None and share > limits.uncertain_share_check:
            level = "unreliable" if share > limits.uncertain_share_unreliable else "check"
            findings.append((level, f"{side} kidney: the network is unsure of {share:.0%} of its artery voxels "
                                    "(probability 0.25–0.75)"))
        if u.get("artery_hu") is not None and u["artery_hu"] > lumen_max_hu:
            findings.append(("check", f"{side} kidney: the brightest tenth of the artery label is above "
                                      f"{u['artery_hu']:.0f} HU, brighter than contrast in an artery (at most about "
                                      f"{lumen_max_hu:.0f} HU in this study): it holds bone, calcification, metal or "
                                      "excreted contrast"))
        if (u.get("bright_artery_in_kidney_ml") or 0) >= BRIGHT_ARTERY_CHECK_ML:
            findings.append(("check", f"{side} kidney: {u['bright_artery_in_kidney_ml']:.2f} ml the network called "
                                      "artery in the kidney was brighter than contrast in this study's arteries (above "
                                      f"{u['artery_ceiling_hu']:.0f} HU): a stone or contrast excreted into the "
                                      "collecting system; it was left out of the artery. Check the branches in the "
                                      "renal sinus against the images"))
        if (u.get("artery_behind_aorta_ml") or 0) >= ARTERY_BEHIND_AORTA_CHECK_ML:
            findings.append(("check", f"{side} kidney: {u['artery_behind_aorta_ml']:.2f} ml labelled artery lies "
                                      "behind the aorta, towards its right, where no renal artery runs: a left renal "
                                      "vein passing behind the aorta (retroaortic or circumaortic) may have been taken "
                                      "for artery, and the renal artery lost beside it. Check the vessels behind the "
                                      "aorta against the images"))
        if u.get("tta_dice") is not None and u["tta_dice"] < limits.tta_dice_check:
            findings.append(("check", f"{side} kidney: mirrored passes agree only to Dice {u['tta_dice']:.2f}"))
        if u.get("pieces", 0) > limits.max_pieces:
            findings.append(("check", f"{side} kidney: the tree falls apart into {u['pieces']} pieces"))
        length, branches = u.get("tree_length_mm"), u.get("branch_points")
        if length is not None and not limits.tree_length_mm[0] <= length <= limits.tree_length_mm[1]:
            findings.append(("check", f"{side} kidney: artery tree {length:.0f} mm long, outside the "
                                      f"{limits.tree_length_mm[0]:.0f}–{limits.tree_length_mm[1]:.0f} mm of the "
                                      "validation phantoms"))
        elif branches is not None and not limits.branch_points[0] <= branches <= limits.branch_points[1]:
            findings.append(("check", f"{side} kidney: {branches} branch points, outside the "
                                      f"{limits.branch_points[0]}–{limits.branch_points[1]} of the validation "
                                      "phantoms"))
    for side, facts in (kidneys or {}).items():
        height, median, share = facts.get("height_mm") or 0.0, facts.get("median_hu"), facts.get("located_share")
        why = None
        if height > KIDNEY_MAX_HEIGHT_MM:
            why = (f"{side} kidney label spans {height:.0f} mm head to foot, taller than any adult kidney (10-13 cm, "
                   "about 15 cm at most): it lies on other structures too (is this an abdominal CT?)")
        elif median is not None and median > kidney_max_hu:
            why = (f"{side} kidney label has a median of {median:.0f} HU, brighter than renal parenchyma in this "
                   f"study can be (at most about {kidney_max_hu:.0f} HU): it lies on bone or contrast-filled vessels")
        elif (facts.get("bright_removed_ml") or 0) >= BRIGHT_PARENCHYMA_UNRELIABLE_ML:
            why = (f"{side} kidney: {facts['bright_removed_ml']:.1f} ml the network labelled kidney or tumour was as "
                   f"bright as contrast-filled vessels or bone (median {facts['bright_removed_median_hu']:.0f} HU, "
                   f"above the {facts['parenchyma_ceiling_hu']:.0f} HU renal parenchyma reaches in this study) and "
                   "was removed: the network misread this scan")
        elif share is not None and share < KIDNEY_MIN_LOCATED_SHARE:
            why = (f"{side} kidney label: {1 - share:.0%} of it lies more than {KIDNEY_LOCATED_MARGIN_MM:g} mm from "
                   "the kidneys localisation found from the study's own intensities; the network is the likelier "
                   "of the two to be wrong")
        if why:
            findings.append(("unreliable", f"{why}; do not use the kidney and tumour labels, or a plan built on "
                                           "them, without looking"))
        edges = facts.get("roi_edges") or []
        if edges:
            findings.append(("check", f"{side} kidney: the kidney or tumour label reaches the "
                                      f"{' and '.join(edges)} edge of the region segmented, with scan beyond it: "
                                      "the kidney or a tumour may go on outside it; check the images there"))
    for side, tumour in (tumours or {}).items():
        if tumour_too_thin(tumour):
            diameter, piece_ml = tumour["largest_diameter_mm"], tumour["largest_diameter_piece_ml"]
            findings.append(("check", f"{side} kidney: the tumour label's longest piece is {diameter:.0f} mm across "
                                      f"but holds {piece_ml:.1f} ml, {piece_ml / ball_ml(diameter):.0%} of a ball that "
                                      "wide: thinner than a renal tumour, so it is not one tumour's outline (false "
                                      "tumour along the kidney's rim or a vessel, or part of a tumour); do not read the "
                                      "tumour's size from it, and check the tumour against the images"))
    for side, confidence in (located_confidence or {}).items():
        if confidence is not None and confidence < MIN_CONFIDENCE:
            findings.append(("check", f"{side} kidney: localisation found little fat around it (confidence "
                                      f"{confidence:.2f}) and kept it as solid tissue, as a kidney whose large tumour "
                                      "fills its perirenal fat is; the liver or the spleen filling an empty renal "
                                      "fossa looks the same: check that a kidney is there before using that side's "
                                      "labels or a plan built on them"))
    for side, why in (not_located or {}).items():
        findings.append(("check", f"{side} kidney: not segmented, as localisation found none ({why.rstrip('.')}); "
                                  "nothing of that side is in the labels or a plan built on them. If the patient has "
                                  f"a {side} kidney (a large tumour can make one look unlike a kidney), check the "
                                  "images there"))
    missing = _missing_structures(kidney_ml, artery_ml)
    for side, what in missing.items():
        others = [other for other in (artery_ml or {}) if other not in missing]  # kidney and artery there
        if others:
            has = "both" if kidney_ml is not None else "one"
            why = (f", though the {others[0]} kidney has {has}: {what[1]}, or what localisation placed there is not "
                   "a kidney (in a single kidney's empty renal fossa the spleen, bowel or pancreas lie in fat); "
                   "check the images before using that side's labels or a plan built on them")
        else:
            why = "; check the images"
        findings.append(("check", f"{side} kidney: {what[0]}{why}"))
    verdict = "ok"
    for level, _ in findings:
        if VERDICTS.index(level) > VERDICTS.index(verdict):
            verdict = level
    findings.sort(key=lambda f: -VERDICTS.index(f[0]))
    return json_ready({
        "verdict": verdict,
        "phase": phase,
        "phase_evidence": evidence,
        "phase_hu": dict(phase_hu),
        "spacing_ok": scan.get("spacing_ok"),
        "noise_hu": noise,
        "scan": dict(scan),
        "uncertainty": {side: dict(u) for side, u in uncertainty.items()},
        "kidney_labels": {side: dict(facts) for side, facts in (kidneys or {}).items()},
        "warnings": [text for _, text in findings],
        "limits": limits.to_dict(),
    })


def mirror_sets(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the axes, the empty one first: the order sliding_window predicts them in."""
    from renalseg.inference import _mirror_sets

    return _mirror_sets(mirror_axes)


def verdict_line(quality: Mapping[str, Any]) -> str:
    """One line for a reader: the verdict and its first reason (or the phase when all is well).

    Example:
        >>> verdict_line({"verdict": "ok", "phase": "late_arterial", "warnings": []})
        'quality: ok (late arterial phase)'
        >>> verdict_line({"verdict": "check", "phase": "late_arterial", "warnings": ["noisy image", "cut"]})
        'quality: check: noisy image (+1 more in report.json)'
    """
    warnings = quality.get("warnings") or []
    if not warnings:
        phase = PHASE_WORDS.get(str(quality.get("phase")), str(quality.get("phase")))
        return f"quality: {quality.get('verdict')} ({phase} phase)"
    more = f" (+{len(warnings) - 1} more in report.json)" if len(warnings) > 1 else ""
    return f"quality: {quality.get('verdict')}: {warnings[0]}{more}"
