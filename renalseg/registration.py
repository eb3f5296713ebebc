"""Atlas-to-study registration for kidney localisation (SimpleITK).

The shipped atlas is a real abdomen–pelvis CT (3 mm, un-enhanced) with both kidneys
labelled (1 = right, 2 = left), from TotalSegmentator (Wasserthal et al. 2023,
CC BY 4.0). Registration runs in three steps, at 6 and 3 mm:

1. **Initial translation that trusts no origin or field of view.** Both images are
   put on LPS-aligned grids (6 mm), HU clamped to ``CLAMP_HU``, and every 3D shift is
   scored at once by masked normalised cross-correlation in the Fourier domain
   (Padfield 2012), mildly weighted toward larger overlap. Real files place the same
   anatomy hundreds of mm apart; this finds it anyway, including a study that
   overlaps the atlas only partly (head–foot). Then both atlas kidneys are slid
   along the study's whole head–foot extent to where it shows two fat-wrapped
   soft-tissue organs of their shape (:func:`kidney_likeness_shift`), which rescues
   studies with few landmarks along z; used only when that place looks like kidneys.
2. **Similarity, then affine** registration with Mattes mutual information
   (contrast-agnostic: the atlas is un-enhanced, studies are often arterial or
   portal-venous), two resolution levels, random sampling with a fixed seed so the
   result is reproducible. Sampling is limited to the study's field of view near the
   atlas kidneys.
3. **Plausibility checks** on the result (scale, shear, reflection, metric): a
   registration that went astray raises :class:`RegistrationError` instead of
   returning a box in the wrong place.

Transforms follow ITK's convention: they map *study* (fixed) points to *atlas*
(moving) points, so ``resample_to_grid(atlas_labels, study_grid, transform=transform, ...)``
warps the labels onto the study.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.errors import InputError, RegistrationError
from renalseg.geometry import IDENTITY_DIRECTION, Geometry, resample_to_grid

__all__ = [
    "ATLAS_DIR",
    "ATLAS_CT_NAME",
    "ATLAS_LABELS_NAME",
    "ATLAS_LABEL_VALUES",
    "CLAMP_HU",
    "WORK_SPACING_MM",
    "Atlas",
    "Registration",
    "load_atlas",
    "shipped_atlas",
    "to_lps_grid",
    "initial_translation",
    "masked_ncc_map",
    "kidney_likeness_map",
    "distance_penalty",
    "kidney_likeness_shift",
    "KIDNEY_TISSUE_HU",
    "FAT_HU",
    "register_atlas",
]

log = logging.getLogger(__name__)

#: the atlas shipped inside the package
ATLAS_DIR: Path = Path(__file__).resolve().parent / "data" / "atlas"
ATLAS_CT_NAME = "atlas_ct.nii.gz"
ATLAS_LABELS_NAME = "atlas_kidneys.nii.gz"
#: label value of each kidney in an atlas label map (patient sides)
ATLAS_LABEL_VALUES: dict[str, int] = {"right": 1, "left": 2}
#: HU window used for registration: lung/air −400, fat ~−100, soft tissue, bone/contrast 300
CLAMP_HU: tuple[float, float] = (-400.0, 300.0)
#: working resolution of registration (the atlas resolution)
WORK_SPACING_MM = 3.0
#: resolution of the exhaustive translation search
SEARCH_SPACING_MM = 6.0
#: margin around the atlas kidneys where the registration metric is sampled
_FOCUS_MARGIN_MM = 60.0
#: plausible range of the singular values of the study→atlas linear part
_SCALE_RANGE = (1 / 1.5, 1.5)
_MAX_ANISOTROPY = 1.6
#: Mattes MI (negative, lower is better) above this carries no information
_MAX_METRIC = -0.05
_AIR_HU = -1024.0
#: HU range of kidney-like tissue in any phase (un-enhanced ~30, medulla ~70, cortex ~200)
KIDNEY_TISSUE_HU: tuple[float, float] = (-30.0, 400.0)
#: HU range of fat (perirenal fat wraps each kidney)
FAT_HU: tuple[float, float] = (-250.0, -30.0)
#: after the translation search, both atlas kidneys are looked for together (in-plane
#: within this, mm; and anywhere head–foot) where the study shows two fat-wrapped
#: soft-tissue organs of their shape: studies with few landmarks along z (phantoms;
#: no lungs, no pelvis) need it
INIT_PAIR_SEARCH_MM: tuple[float, float] = (30.0, 30.0)
#: in-plane only: along z the translation search is no guide in such studies
INIT_PAIR_PENALTY_PER_MM: tuple[float, float, float] = (0.002, 0.002, 0.0)
#: below this kidney-likeness the pair search is not trusted (phantom and real kidneys:
#: 0.09–0.7; the best pair in a chest CTA that ends at the kidneys: −0.27)
PAIR_MIN_SCORE = 0.05
#: the finest level samples this fraction of `sampling` (it has 8× the voxels)
_FINE_SAMPLING = 0.25


@dataclass(frozen=True, eq=False)
class Atlas:
    """One atlas: CT (HU) and kidney labels on the same grid, LPS-aligned.

    Attributes:
        name: where it came from (folder name), for messages.
        ct: float32 HU image, LPS-aligned direction.
        labels: uint8 label image on the same grid (1 right kidney, 2 left kidney).
        hilum_lps: per side, the LPS point (mm, x y z) of the kidney's hilum: the
            medial edge of the kidney at its mid-height.
        centre_lps: per side, the kidney's centroid (mm).
        volume_ml: per side, the labelled kidney volume.
    """

    name: str
    ct: sitk.Image
    labels: sitk.Image
    hilum_lps: dict[str, np.ndarray]
    centre_lps: dict[str, np.ndarray]
    volume_ml: dict[str, float]

    @functools.cached_property
    def clamped(self) -> sitk.Image:
        """``ct`` clamped to :data:`CLAMP_HU` (the registration's moving image)."""
        return sitk.Clamp(self.ct, sitk.sitkFloat32, *CLAMP_HU)

    @functools.cached_property
    def search(self) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
        """(clamped array, FOV mask, reference image) at the search resolution."""
        hu, fov = to_lps_grid(self.ct, WORK_SPACING_MM)
        return _search_arrays(hu, fov)

    def kidney_box_lps(self, margin_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) LPS corner of the box around both kidneys, grown by ``margin_mm``."""
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(self.labels)
        points = []
        for value in ATLAS_LABEL_VALUES.values():
            x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(value)
            for i in (x0 - 0.5, x0 + sx - 0.5):
                for j in (y0 - 0.5, y0 + sy - 0.5):
                    for k in (z0 - 0.5, z0 + sz - 0.5):
                        points.append(self.labels.TransformContinuousIndexToPhysicalPoint((i, j, k)))
        points_array = np.asarray(points)
        return points_array.min(axis=0) - margin_mm, points_array.max(axis=0) + margin_mm


def load_atlas(directory: Path | str) -> Atlas:
    """Read an atlas folder holding ``atlas_ct.nii.gz`` and ``atlas_kidneys.nii.gz``.

    Args:
        directory: the folder (same layout as ``renalseg/data/atlas``).

    Returns:
        The atlas reoriented to LPS (an exact axis flip/permutation, no resampling).

    Raises:
        InputError: missing files, grids that differ, or a kidney label absent.
    """
    from renalseg.io.image import read_image

    directory = Path(directory)
    ct_path, label_path = directory / ATLAS_CT_NAME, directory / ATLAS_LABELS_NAME
    for path in (ct_path, label_path):
        if not path.is_file():
            raise InputError(
                f"Atlas folder {directory}: {path.name} is missing. An atlas folder holds "
                f"{ATLAS_CT_NAME} (CT in HU) and {ATLAS_LABELS_NAME} (1 right kidney, 2 left kidney)."
            )
    ct = read_image(ct_path)
    labels = read_image(label_path)
    same = (ct.GetSize() == labels.GetSize()
            and np.allclose(ct.GetSpacing(), labels.GetSpacing(), atol=1e-4)
            and np.allclose(ct.GetOrigin(), labels.GetOrigin(), atol=1e-3)
            and np.allclose(ct.GetDirection(), labels.GetDirection(), atol=1e-4))
    if not same:
        raise InputError(
            f"Atlas folder {directory}: {ATLAS_CT_NAME} and {ATLAS_LABELS_NAME} are on different grids "
            f"(sizes {ct.GetSize()} vs {labels.GetSize()}); the labels must be drawn on the CT's grid."
        )
    ct = sitk.Cast(sitk.DICOMOrient(ct, "LPS"), sitk.sitkFloat32)
    labels = sitk.Cast(sitk.DICOMOrient(labels, "LPS"), sitk.sitkUInt8)
    if not np.allclose(ct.GetDirection(), np.eye(3).ravel(), atol=1e-3):
        raise InputError(
            f"Atlas folder {directory}: the atlas is oblique (direction {ct.GetDirection()}); "
            "resample it onto an axis-aligned grid first."
        )
    array = sitk.GetArrayViewFromImage(labels)
    spacing = np.asarray(labels.GetSpacing())
    hilum: dict[str, np.ndarray] = {}
    centre: dict[str, np.ndarray] = {}
    volume: dict[str, float] = {}
    for side, value in ATLAS_LABEL_VALUES.items():
        zz, yy, xx = np.nonzero(array == value)
        if zz.size == 0:
            raise InputError(
                f"Atlas folder {directory}: no {side} kidney (label {value}) in {ATLAS_LABELS_NAME}."
            )
        volume[side] = float(zz.size * np.prod(spacing) / 1000.0)
        centre[side] = np.asarray(labels.TransformContinuousIndexToPhysicalPoint(
            (float(xx.mean()), float(yy.mean()), float(zz.mean()))))
        # hilum: medial edge (toward the patient's midline) of the kidney's middle third
        lo, hi = np.percentile(zz, [33, 67])
        mid = (zz >= lo) & (zz <= hi)
        medial_is_plus_x = side == "right"  # LPS: +x is the patient's left, toward the midline
        x_edge = xx[mid].max() if medial_is_plus_x else xx[mid].min()
        hilum[side] = np.asarray(labels.TransformContinuousIndexToPhysicalPoint(
            (float(x_edge), float(yy[mid].mean()), float(zz[mid].mean()))))
    return Atlas(directory.name, ct, labels, hilum, centre, volume)


@functools.lru_cache(maxsize=1)
def shipped_atlas() -> Atlas:
    """The atlas shipped in ``renalseg/data/atlas`` (read once per process)."""
    return load_atlas(ATLAS_DIR)


def to_lps_grid(image: sitk.Image, spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """Resample ``image`` onto an LPS-aligned isotropic grid covering its extent.

    Integer block-averaging (``BinShrink``) first, so fine scans are low-pass
    filtered before linear resampling.

    Args:
        image: a 3D CT in HU, any spacing and direction.
        spacing_mm: the target isotropic spacing.

    Returns:
        ``(hu, fov)``: float32 HU on the new grid (air outside the field of view) and a
        uint8 mask, 1 where the grid lies inside the original field of view.
    """
    spacing = np.asarray(image.GetSpacing())
    factors = [max(1, int(np.floor(spacing_mm / s + 1e-6))) for s in spacing]
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    size = np.asarray(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(
        (float(i * (size[0] - 1)), float(j * (size[1] - 1)), float(k * (size[2] - 1))))
        for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    count = np.maximum(1, np.floor((hi - lo) / spacing_mm + 1e-6).astype(int) + 1)
    grid = Geometry((int(count[2]), int(count[1]), int(count[0])), (spacing_mm,) * 3, tuple(lo.tolist()),
                    IDENTITY_DIRECTION)
    hu = resample_to_grid(sitk.Cast(image, sitk.sitkFloat32), grid, interpolator=sitk.sitkLinear,
                          default_value=_AIR_HU, pixel_type=sitk.sitkFloat32)
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    fov = resample_to_grid(ones, grid, interpolator=sitk.sitkNearestNeighbor, default_value=0,
                           pixel_type=sitk.sitkUInt8)
    return hu, fov


def _search_arrays(work_hu: sitk.Image, fov: sitk.Image) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """Clamped array, boolean FOV mask and reference image at SEARCH_SPACING_MM."""
    factor = max(1, int(round(SEARCH_SPACING_MM / work_hu.GetSpacing()[0])))
    shrunk = sitk.BinShrink(sitk.Cast(work_hu, sitk.sitkFloat32), [factor] * 3)
    array = np.clip(sitk.GetArrayFromImage(shrunk), *CLAMP_HU)
    mask = sitk.GetArrayFromImage(sitk.BinShrink(sitk.Cast(fov, sitk.sitkFloat32), [factor] * 3)) > 0.99
    return array, mask, shrunk


def masked_ncc_map(study: np.ndarray, study_mask: np.ndarray, atlas: np.ndarray,
                   atlas_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masked normalised cross-correlation for every integer shift (Padfield 2012).

    Shift ``s`` pairs study voxel ``p`` with atlas voxel ``p - s``; only voxels inside
    both masks count. Computed with FFTs (``scipy.fft``) in one pass for all shifts.
    Written here rather than using ``skimage.registration.phase_cross_correlation``
    because localisation needs the whole score map (to weigh overlap), not only its
    maximum.

    Args:
        study, study_mask: array ``(Z, Y, X)`` and its boolean validity mask.
        atlas, atlas_mask: array ``(Z', Y', X')`` and its mask.

    Returns:
        ``(ncc, overlap)``, each of shape ``(Z + Z' - 1, Y + Y' - 1, X + X' - 1)``:
        index ``k`` is shift ``s = k - (atlas.shape - 1)``; ``overlap`` counts the
        voxels in both masks; ``ncc`` is −1 where undefined.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=(6, 7, 8)); b = a[1:5, 2:6, 3:8]
        >>> ncc, n = masked_ncc_map(a, np.ones(a.shape, bool), b, np.ones(b.shape, bool))
        >>> k = np.unravel_index(np.argmax(np.where(n >= 40, ncc, -1)), ncc.shape)
        >>> (np.asarray(k) - (np.asarray(b.shape) - 1)).tolist()  # a[p] == b[p - s]
        [1, 2, 3]
    """
    from scipy import fft

    out_shape = [a + b - 1 for a, b in zip(study.shape, atlas.shape)]
    fft_shape = [fft.next_fast_len(n, real=True) for n in out_shape]
    crop = tuple(slice(0, n) for n in out_shape)
    m1, m2 = study_mask.astype(np.float64), atlas_mask.astype(np.float64)
    f, g = study.astype(np.float64) * m1, atlas.astype(np.float64) * m2
    flip = (slice(None, None, -1),) * 3

    def spectrum(array: np.ndarray) -> np.ndarray:
        return fft.rfftn(array, fft_shape, workers=-1)

    def correlate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return fft.irfftn(a * b, fft_shape, workers=-1)[crop]

    s_m1, s_f, s_ff = spectrum(m1), spectrum(f), spectrum(f * f)
    s_m2, s_g, s_gg = spectrum(m2[flip]), spectrum(g[flip]), spectrum((g * g)[flip])
    overlap = np.round(correlate(s_m1, s_m2))
    count = np.maximum(overlap, 1.0)
    sum_f, sum_g = correlate(s_f, s_m2), correlate(s_m1, s_g)
    var_f = np.maximum(correlate(s_ff, s_m2) - sum_f ** 2 / count, 0.0)
    var_g = np.maximum(correlate(s_m1, s_gg) - sum_g ** 2 / count, 0.0)
    covariance = correlate(s_f, s_g) - sum_f * sum_g / count
    denominator = np.sqrt(var_f * var_g)
    valid = (overlap >= 2) & (denominator > 1e-9 * count)
    ncc = np.full(overlap.shape, -1.0)
    ncc[valid] = covariance[valid] / denominator[valid]
    return ncc, overlap


def initial_translation(study_hu: sitk.Image, study_fov: sitk.Image, atlas: Atlas, *,
                        min_overlap: float = 0.05, overlap_weight: float = 0.25) -> np.ndarray:
    """The translation (mm, LPS x y z) that best lays the atlas onto the study.

    Scores every shift at once by masked normalised cross-correlation at
    :data:`SEARCH_SPACING_MM` (:func:`masked_ncc_map`), so neither the origins nor the
    fields of view need agree. The score is ``ncc × overlap_fraction ** overlap_weight``:
    a mild preference for shifts that overlay more of the two images, so a study with
    few landmarks along z (no lungs, no pelvis) is not matched by a sliver at its edge,
    while a study that truly overlaps the atlas only partly (e.g. a chest CTA ending at
    the kidneys' upper poles) still is.

    Args:
        study_hu: the study on an LPS-aligned grid (see :func:`to_lps_grid`).
        study_fov: its field-of-view mask.
        atlas: the atlas.
        min_overlap: shifts overlapping less than this fraction of the largest
            possible overlap are not considered.
        overlap_weight: exponent of the overlap fraction in the score.

    Returns:
        ``d`` such that atlas point ``p`` corresponds to study point ``p + d``.
    """
    study_array, study_mask, study_ref = _search_arrays(study_hu, study_fov)
    atlas_array, atlas_mask, atlas_ref = atlas.search
    if study_mask.sum() < 8:
        raise InputError("The study's field of view is too small to localise anything (< 8 voxels at 6 mm).")
    ncc, overlap = masked_ncc_map(study_array, study_mask, atlas_array, atlas_mask)
    fraction = overlap / max(float(overlap.max()), 1.0)
    score = np.where(fraction >= min_overlap, ncc * fraction ** overlap_weight, -np.inf)
    best = np.unravel_index(int(np.argmax(score)), score.shape)
    shift_zyx = np.asarray(best) - (np.asarray(atlas_array.shape) - 1)
    spacing = np.asarray(study_ref.GetSpacing())
    return (np.asarray(study_ref.GetOrigin()) - np.asarray(atlas_ref.GetOrigin())
            + shift_zyx[::-1] * spacing)


def kidney_likeness_map(kidney: np.ndarray, hu: np.ndarray, fov: np.ndarray, *,
                        radius_mm: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How much ``kidney``, shifted by every voxel shift within ``radius_mm``, looks like a kidney in ``hu``.

    A kidney is soft tissue wrapped in perirenal fat in every contrast phase. The
    kidney-likeness of a shift is the fraction of the shifted mask in the soft-tissue
    range :data:`KIDNEY_TISSUE_HU` plus the fraction of a 6 mm shell around it in the
    fat range :data:`FAT_HU`, minus one, both counted over the voxels in the field of
    view only. Lung or bowel gas is not fat, so organs in air do not score. All shifts
    are scored at once by FFT correlation (``scipy.fft``, the three indicators' spectra
    computed once for both masks).

    Args:
        kidney: boolean mask ``(Z, Y, X)`` on the 3 mm kidney grid (one or both kidneys).
        hu: study HU on that grid; fov: boolean field-of-view mask.
        radius_mm: search radius along x, y, z.

    Returns:
        ``(likeness, inside_in_view, shell_in_view)``, each of shape ``2 * radius + 1``
        (z, y, x; index ``k`` is the shift ``k - radius`` voxels): the kidney-likeness
        (NaN where nothing of the mask is in view) and the fractions of the mask and
        of its shell in the field of view.

    Example:
        >>> hu = np.full((20, 20, 20), -100.0); hu[8:12, 9:13, 10:14] = 40.0
        >>> kidney = np.zeros(hu.shape, bool); kidney[8:12, 8:12, 8:12] = True
        >>> likeness, inside, shell = kidney_likeness_map(kidney, hu, np.ones(hu.shape, bool),
        ...                                               radius_mm=(6.0, 6.0, 6.0))
        >>> best = np.unravel_index(np.nanargmax(likeness), likeness.shape)
        >>> [int(v) - 2 for v in best], round(float(inside.min()), 3)     # index 2 is no shift
        ([0, 1, 2], 1.0)
    """
    from scipy import fft, ndimage

    radius = np.round(np.asarray(radius_mm[::-1]) / WORK_SPACING_MM).astype(int)  # (z, y, x)
    ring = 2
    zz, yy, xx = np.nonzero(kidney)
    lo = np.array([zz.min(), yy.min(), xx.min()]) - ring
    hi = np.array([zz.max(), yy.max(), xx.max()]) + ring + 1
    pad = int(radius.max()) + ring + 1
    kidney_p = np.pad(kidney, pad)
    inside = kidney_p[lo[0] + pad:hi[0] + pad, lo[1] + pad:hi[1] + pad, lo[2] + pad:hi[2] + pad]
    shell = ndimage.binary_dilation(inside, ndimage.generate_binary_structure(3, 1), iterations=ring) & ~inside
    window = tuple(slice(a + pad - r, b + pad + r) for a, b, r in zip(lo, hi, radius))
    view = np.pad(fov, pad)[window].astype(np.float64)
    hu_w = np.pad(hu, pad, constant_values=-1024.0)[window]
    tissue = ((hu_w >= KIDNEY_TISSUE_HU[0]) & (hu_w <= KIDNEY_TISSUE_HU[1])) * view
    fat = ((hu_w >= FAT_HU[0]) & (hu_w < FAT_HU[1])) * view
    # circular correlation on a grid at least the window's size is exact on the valid part
    shape = [fft.next_fast_len(int(n), real=True) for n in view.shape]
    valid = tuple(slice(k - 1, w) for k, w in zip(inside.shape, view.shape))
    flip = (slice(None, None, -1),) * 3
    spectra = {name: fft.rfftn(array, shape) for name, array in (("view", view), ("tissue", tissue), ("fat", fat))}

    def correlate(names: tuple[str, ...], mask: np.ndarray) -> list[np.ndarray]:
        kernel = fft.rfftn(mask[flip].astype(np.float64), shape)
        return [fft.irfftn(spectra[name] * kernel, shape)[valid] for name in names]

    inside_view, inside_tissue = correlate(("view", "tissue"), inside)
    shell_view, shell_fat = correlate(("view", "fat"), shell)
    with np.errstate(invalid="ignore", divide="ignore"):
        likeness = inside_tissue / inside_view + shell_fat / shell_view - 1.0
    likeness[(inside_view < 0.5) | (shell_view < 0.5)] = np.nan
    return likeness, np.clip(inside_view / inside.sum(), 0.0, 1.0), np.clip(shell_view / shell.sum(), 0.0, 1.0)


def distance_penalty(shape: tuple[int, ...], centre: np.ndarray, per_mm_zyx: np.ndarray,
                     spacing_mm: float) -> np.ndarray:
    """Score lost at each index of a shift map for its distance from ``centre``.

    The L2 norm of the offset in mm, each axis weighted by ``per_mm_zyx`` (z, y, x).

    Example:
        >>> distance_penalty((1, 1, 3), np.array([0, 0, 1]), np.array([1.0, 1.0, 0.5]), 3.0).ravel().tolist()
        [1.5, 0.0, 1.5]
    """
    offsets = (np.indices(shape) - np.asarray(centre)[:, None, None, None]) * spacing_mm
    return np.sqrt(((offsets * np.asarray(per_mm_zyx)[:, None, None, None]) ** 2).sum(axis=0))


def kidney_likeness_shift(kidney: np.ndarray, hu: np.ndarray, fov: np.ndarray, *,
                  radius_mm: tuple[float, float, float], penalty_per_mm: float | tuple[float, float, float],
                  min_in_view: float = 0.5, out_of_view_penalty: float = 0.0) -> tuple[tuple[int, int, int], float]:
    """Voxel shift (z, y, x) that makes ``kidney`` look most like kidneys in ``hu``.

    The score of a shift is its kidney-likeness (:func:`kidney_likeness_map`: soft
    tissue inside, fat around, in the field of view) less ``penalty_per_mm`` per mm of
    shift (the registration is roughly right).

    Args:
        kidney: boolean mask ``(Z, Y, X)`` on the 3 mm kidney grid (one or both kidneys).
        hu: study HU on that grid; fov: boolean field-of-view mask.
        radius_mm: search radius along x, y, z.
        penalty_per_mm: score lost per mm of shift (one value, or one per axis x, y, z).
        min_in_view: shifts leaving less of the mask (or of its shell) than this in
            view are not scored.
        out_of_view_penalty: score lost per unit fraction of the mask out of view (a
            place half out of view otherwise scores on its visible half alone).

    Returns:
        ``(shift, score)``: the best shift in voxels (``(0, 0, 0)`` when nothing can be
        scored) and its score.
    """
    radius = np.round(np.asarray(radius_mm[::-1]) / WORK_SPACING_MM).astype(int)  # (z, y, x)
    likeness, inside_view, shell_view = kidney_likeness_map(kidney, hu, fov, radius_mm=radius_mm)
    score = np.where((inside_view > min_in_view) & (shell_view > min_in_view), likeness, np.nan)
    if out_of_view_penalty:
        score = score - out_of_view_penalty * (1.0 - inside_view)
    weights_zyx = np.broadcast_to(np.asarray(penalty_per_mm, dtype=float), (3,))[::-1]
    score = score - distance_penalty(score.shape, radius, weights_zyx, WORK_SPACING_MM)
    if not np.isfinite(score).any():
        return (0, 0, 0), float("nan")
    best = np.unravel_index(int(np.nanargmax(score)), score.shape)
    return tuple(int(b - r) for b, r in zip(best, radius)), float(score[best])  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class Registration:
    """Result of :func:`register_atlas`.

    Attributes:
        transform: study→atlas affine transform (ITK convention).
        metric: final Mattes mutual information (negative; lower is better).
        singular_values: of the linear part (scale in each principal direction).
        initial_translation_mm: the translation search's answer (atlas→study).
    """

    transform: sitk.AffineTransform
    metric: float
    singular_values: tuple[float, float, float]
    initial_translation_mm: tuple[float, float, float]

    def atlas_to_study(self, points_lps: np.ndarray) -> np.ndarray:
        """Map atlas points ``(N, 3)`` (mm) into the study's space."""
        inverse = self.transform.GetInverse()
        return np.asarray([inverse.TransformPoint(tuple(float(v) for v in p))
                           for p in np.atleast_2d(points_lps)])


def _run_stage(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, transform: sitk.Transform,
               *, seed: int, iterations: int, sampling: float) -> float:
    method = sitk.ImageRegistrationMethod()
    # one thread (here and, below, for all Execute runs): multi-threaded metric sums differ in
    # the last bits from run to run and the optimiser amplifies that
    method.SetNumberOfThreads(1)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads seed 0 as "seed from the wall clock": shift so every seed is fixed
    method.SetMetricSamplingPercentagePerLevel([sampling, sampling * _FINE_SAMPLING], seed + 1)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    # gradients on the fly at the sampled points: far cheaper than gradient images
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-2, numberOfIterations=iterations, relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(transform, inPlace=True)
    # the method's own thread count does not reach everything Execute runs: with the global
    # default above one, the same seed gave ROIs up to 6 mm apart from call to call
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as err:  # ITK refuses degenerate inputs (e.g. no intensity spread)
        raise RegistrationError(
            f"Atlas registration did not converge: SimpleITK stopped with "
            f"{str(err).strip().splitlines()[-1][:200]!r}. Check that the study is an abdominal CT in HU."
        ) from err
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    log.debug("registration stage %s: metric %.4f after %d iterations (%s)",
              transform.GetName(), method.GetMetricValue(), method.GetOptimizerIteration(),
              method.GetOptimizerStopConditionDescription())
    return float(method.GetMetricValue())


def _pair_correction(study_hu: sitk.Image, study_fov: sitk.Image, atlas: Atlas,
                     translation: np.ndarray) -> np.ndarray:
    """Extra translation (mm) that puts both atlas kidneys on kidney-like tissue.

    The two atlas kidneys, translated, are slid together along the whole head–foot
    extent of the study (and ±30 mm in-plane, lightly penalised) and scored by
    :func:`kidney_likeness_shift`, at places where they are (nearly) whole in view. The best place is used only when it looks like a
    pair of kidneys (score ≥ :data:`PAIR_MIN_SCORE`); otherwise the translation
    search stands, so a study without kidneys does not get them pulled into view.
    """
    spacing = np.asarray(study_hu.GetSpacing())
    size = np.asarray(study_hu.GetSize())
    z_centre = study_hu.GetOrigin()[2] + spacing[2] * (size[2] - 1) / 2.0
    kidney_z = (atlas.centre_lps["right"][2] + atlas.centre_lps["left"][2]) / 2.0
    start = np.array([translation[0], translation[1], z_centre - kidney_z])  # kidneys mid-study
    shift = sitk.TranslationTransform(3, tuple(float(v) for v in -start))
    labels = resample_to_grid(atlas.labels, study_hu, transform=shift, interpolator=sitk.sitkNearestNeighbor,
                              default_value=0, pixel_type=sitk.sitkUInt8)
    kidneys = sitk.GetArrayFromImage(labels) > 0
    if not kidneys.any():
        return np.zeros(3)
    reach_z = spacing[2] * size[2] / 2.0
    (dz, dy, dx), score = kidney_likeness_shift(
        kidneys, sitk.GetArrayFromImage(study_hu), sitk.GetArrayViewFromImage(study_fov) > 0,
        radius_mm=(INIT_PAIR_SEARCH_MM[0], INIT_PAIR_SEARCH_MM[1], reach_z),
        penalty_per_mm=INIT_PAIR_PENALTY_PER_MM, min_in_view=0.9)
    log.debug("best kidney pair %s voxels from mid-study, score %.3f", (dz, dy, dx), score)
    if not np.isfinite(score) or score < PAIR_MIN_SCORE:
        return np.zeros(3)
    found = start + np.array([dx, dy, dz], dtype=float) * spacing
    return found - translation


def register_atlas(study_hu: sitk.Image, study_fov: sitk.Image, atlas: Atlas, *, seed: int = 0,
                   iterations: int = 100, sampling: float = 0.1) -> Registration:
    """Register ``atlas`` to a study already on an LPS-aligned working grid.

    Args:
        study_hu: the study from :func:`to_lps_grid` (HU, float32, ~3 mm).
        study_fov: its field-of-view mask.
        atlas: the atlas to register.
        seed: seed of the metric's random sampling (same seed, same result).
        iterations: optimiser iterations per stage and level.
        sampling: fraction of the masked fixed voxels sampled per iteration.

    Returns:
        The study→atlas affine transform and its quality figures.

    Raises:
        RegistrationError: the metric or the transform is implausible (did not converge).
    """
    fixed = sitk.Clamp(study_hu, sitk.sitkFloat32, *CLAMP_HU)
    in_view = sitk.GetArrayViewFromImage(fixed)[sitk.GetArrayViewFromImage(study_fov) > 0]
    if in_view.size == 0 or float(np.std(in_view)) < 20.0:
        raise RegistrationError(
            f"Atlas registration cannot start: the study's intensities hardly vary (standard deviation "
            f"{float(np.std(in_view)) if in_view.size else 0.0:.1f} HU within {CLAMP_HU[0]:.0f}…{CLAMP_HU[1]:.0f} "
            "HU, expected > 20 for a CT with air, fat, soft tissue and bone). Check that the file is a CT "
            "in Hounsfield units.")
    translation = initial_translation(study_hu, study_fov, atlas)
    translation = translation + _pair_correction(study_hu, study_fov, atlas, translation)
    # sample only the study's field of view near where the atlas kidneys landed
    lo, hi = atlas.kidney_box_lps(_FOCUS_MARGIN_MM)
    focus = sitk.Image(study_fov.GetSize(), sitk.sitkUInt8)
    focus.CopyInformation(study_fov)
    index_lo = np.floor(np.asarray(study_fov.TransformPhysicalPointToContinuousIndex((lo + translation).tolist())))
    index_hi = np.ceil(np.asarray(study_fov.TransformPhysicalPointToContinuousIndex((hi + translation).tolist())))
    size = np.asarray(study_fov.GetSize())
    index_lo = np.clip(index_lo, 0, size).astype(int)
    index_hi = np.clip(index_hi + 1, 0, size).astype(int)
    focus_array = sitk.GetArrayFromImage(focus)
    focus_array[index_lo[2]:index_hi[2], index_lo[1]:index_hi[1], index_lo[0]:index_hi[0]] = 1
    focus_array &= sitk.GetArrayViewFromImage(study_fov)
    if focus_array.sum() < 200:
        focus_array = sitk.GetArrayFromImage(study_fov)
    mask = sitk.GetImageFromArray(focus_array)
    mask.CopyInformation(study_fov)

    centre = (atlas.centre_lps["right"] + atlas.centre_lps["left"]) / 2.0
    similarity = sitk.Similarity3DTransform()
    similarity.SetCenter(tuple(float(v) for v in centre + translation))
    similarity.SetTranslation(tuple(float(v) for v in -translation))
    _run_stage(fixed, atlas.clamped, mask, similarity, seed=seed, iterations=iterations, sampling=sampling)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(similarity.GetCenter())
    affine.SetMatrix(similarity.GetMatrix())
    affine.SetTranslation(similarity.GetTranslation())
    metric = _run_stage(fixed, atlas.clamped, mask, affine, seed=seed, iterations=iterations, sampling=sampling)

    matrix = np.asarray(affine.GetMatrix()).reshape(3, 3)
    singular = np.linalg.svd(matrix, compute_uv=False)
    result = Registration(affine, metric, tuple(float(s) for s in singular),
                          tuple(float(t) for t in translation))
    problems = []
    if np.linalg.det(matrix) <= 0:
        problems.append("the transform mirrors the patient")
    if singular.min() < _SCALE_RANGE[0] or singular.max() > _SCALE_RANGE[1]:
        problems.append(
            f"its scale factors {np.round(1 / singular, 2).tolist()} leave the plausible range "
            f"{round(1 / _SCALE_RANGE[1], 2)}–{round(1 / _SCALE_RANGE[0], 2)}")
    if singular.max() / singular.min() > _MAX_ANISOTROPY:
        problems.append(f"it shears/stretches one axis {singular.max() / singular.min():.2f}× "
                        f"more than another (at most {_MAX_ANISOTROPY} expected)")
    if not np.isfinite(metric) or metric > _MAX_METRIC:
        problems.append(f"the similarity of study and atlas is too weak (Mattes MI {metric:.3f}, "
                        f"expected below {_MAX_METRIC})")
    if problems:
        raise RegistrationError(
            f"Atlas registration ({atlas.name}) did not converge: " + "; ".join(problems) + ". "
            "Check that the study is an abdominal CT in HU with a sound geometry, or pass "
            "--atlas with an atlas closer to this study.")
    return result
