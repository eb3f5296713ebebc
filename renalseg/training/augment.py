"""Online patches with augmentation, and SynthSeg-style domain randomisation.

Every training sample is one patch drawn from a :class:`~renalseg.training.data.TrainingCase`:

1. a centre: with probability ``foreground_share`` a random voxel of the first
   foreground class (renal artery), with ``hard_negative_share`` a bright unlabelled
   voxel, with ``class_share`` a voxel of a foreground class drawn uniformly among
   those the case holds (nnU-Net's class-balanced oversampling: a rare class such as
   the tumour is centred as often as the kidney), with ``mimic_share`` a voxel of
   unlabelled tissue that looks like a tumour (spleen, bowel, renal cyst ... from a
   phantom's tissue map), each jittered by up to a quarter patch; else anywhere;
2. one affine resampling of the case around that centre, in millimetres so the
   anisotropic model spacing is respected: random mirroring on x, y and z and a
   rotation within ±``rotate_deg`` about each axis (the paper's augmentation);
3. intensities: either the case's own CT, or (domain randomisation, for phantoms
   with tissue maps) a new rendering of its tissue map with random per-tissue HU,
   random resolution (blur), random noise and a random smooth bias field (Billot
   et al., SynthSeg, Medical Image Analysis 2023);
4. (``thick_slices``) the patch as a scan of thick slices shows it: slabs of 1.5–5 mm
   averaged along z, then interpolated back linearly as ``renalseg segment`` resamples
   such a study to the model grid; the label keeps the full resolution;
5. (``noisy_scans``) the patch as a noisier scan shows it: 20–60 HU of noise added,
   correlated over half a voxel as a reconstruction correlates neighbours (the phantoms
   carry 8–25 HU, a thin low-dose scan 40 HU and more);
6. (``scanner_grids``) the patch as a scan on a coarser grid shows it (0.7–1.6 mm
   in-plane, 1–3 mm slices, 15–60 HU of white noise on its own voxels), resampled back as
   ``renalseg segment`` resamples a patient's scan; the label keeps the full resolution,
   except that with ``spare_thin_class`` that class's branches under 2 mm
   (:func:`thin_parts`) are left out of the loss (:data:`IGNORE_INDEX`): such a scan
   blurs them into its noise, and a reader would not label them on it;
7. normalisation as in the model card (clip HU, scale to [0, 1]), then intensity
   jitter: contrast, brightness, gamma, noise, blur.

All randomness comes from the ``numpy.random.Generator`` passed in, so a sample is a
pure function of its seed: that is what makes ``--resume`` exact and the
distributed run identical to a single process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from renalseg.components import physical_ball
from renalseg.training.data import IGNORE_INDEX, TrainingCase
from renalseg.weights import AUTHORS_NORMALIZATION, normalize_hu

__all__ = [
    "AugmentConfig",
    "domain_limits",
    "DEFAULT_NORMALIZATION",
    "patch_affine",
    "sample_patch",
    "randomise_domain",
    "simulate_thick_slices",
    "add_scan_noise",
    "NOISY_SCAN_HU",
    "simulate_scanner_grid",
    "thin_parts",
    "SCANNER_INPLANE_MM",
    "SCANNER_SLICE_MM",
    "SCANNER_NOISE_HU",
]

#: the model card's intensity normalisation (clip HU, then scale linearly to [0, 1])
DEFAULT_NORMALIZATION: dict[str, list[float]] = dict(AUTHORS_NORMALIZATION)


@dataclass(frozen=True)
class AugmentConfig:
    """What the online augmentation does (every field is a ``renalseg train`` option).

    Attributes:
        mirror: random flips on x, y and z (each with probability 0.5).
        rotate_deg: rotations drawn uniformly within ± this many degrees about each axis.
        intensity: contrast ×[0.75, 1.25], brightness ±0.05, gamma [0.7, 1.5],
            Gaussian noise σ ≤ 0.02 and (p = 0.2) blur σ ≤ 1 voxel, on the normalised scale.
        domain_randomisation: probability that a sample is re-rendered from its tissue
            map (only cases that have one); 0 turns it off.
        tissue_ranges_hu: per tissue class value, the (low, high) HU range a
            randomised tissue mean is drawn from (widened by half its width each side).
        tissue_limits_hu: per tissue class value, the (low, high) HU its widened range
            is clipped to (``renalseg.phantom.tissues.DOMAIN_LIMITS_HU``: a tumour stays
            solid and enhancing).
        thick_slices: probability that a patch is seen as a scan of thick slices
            (:func:`simulate_thick_slices`, slices drawn in ``THICK_SLICE_MM``); 0 turns
            it off.
        noisy_scans: probability that a patch gets added noise (:func:`add_scan_noise`,
            standard deviation drawn in ``NOISY_SCAN_HU``); 0 turns it off.
        scanner_grids: probability that a patch is seen as a scan on a coarser grid with
            its own noise (:func:`simulate_scanner_grid`, drawn in ``SCANNER_INPLANE_MM``,
            ``SCANNER_SLICE_MM`` and ``SCANNER_NOISE_HU``); 0 turns it off.
        spare_thin_class: in those coarse-grid patches, this class index's parts under
            2 mm across (:func:`thin_parts`) become :data:`IGNORE_INDEX` (no loss counts
            them); 0 labels them as usual.
    """

    mirror: bool = True
    rotate_deg: float = 10.0
    intensity: bool = True
    domain_randomisation: float = 0.0
    tissue_ranges_hu: dict[int, tuple[float, float]] = field(default_factory=dict)
    tissue_limits_hu: dict[int, tuple[float, float]] = field(default_factory=dict)
    thick_slices: float = 0.0
    noisy_scans: float = 0.0
    scanner_grids: float = 0.0
    spare_thin_class: int = 0

    def to_dict(self) -> dict:
        """JSON-ready copy (tissue keys as strings)."""
        data = asdict(self)
        for key in ("tissue_ranges_hu", "tissue_limits_hu"):
            data[key] = {str(k): list(v) for k, v in getattr(self, key).items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> AugmentConfig:
        """Inverse of :meth:`to_dict`.

        A run's saved ranges lack the tissue classes the phantoms gained after it began
        (``tumour_necrosis``); those take their default range, so the run resumes with the
        options it would be given today (its data, made before, holds none of them). So
        does a run saved before ``tissue_limits_hu`` existed: it resumes with today's limits
        (the remaining steps draw no fat- or fluid-like tumour).
        """
        from renalseg.phantom.tissues import TISSUE_IDS, TISSUE_RANGES_HU

        data = dict(data)
        ranges = {int(k): (float(v[0]), float(v[1])) for k, v in data.get("tissue_ranges_hu", {}).items()}
        if ranges:
            for name, default in TISSUE_RANGES_HU.items():
                ranges.setdefault(TISSUE_IDS[name], (float(default[0]), float(default[1])))
        data["tissue_ranges_hu"] = ranges
        saved = data.get("tissue_limits_hu")
        if saved is None:
            saved = domain_limits() if ranges else {}
        data["tissue_limits_hu"] = {int(k): (float(v[0]), float(v[1])) for k, v in saved.items()}
        return cls(**data)


def domain_limits() -> dict[int, tuple[float, float]]:
    """``renalseg.phantom.tissues.DOMAIN_LIMITS_HU`` by tissue class value (``tissue_limits_hu``)."""
    from renalseg.phantom.tissues import DOMAIN_LIMITS_HU, TISSUE_IDS

    return {TISSUE_IDS[name]: limit for name, limit in DOMAIN_LIMITS_HU.items()}


def _rotation(angles_rad: Sequence[float]) -> np.ndarray:
    """3 × 3 rotation in (z, y, x) coordinates: about z, then y, then x."""
    cz, sz = np.cos(angles_rad[0]), np.sin(angles_rad[0])
    cy, sy = np.cos(angles_rad[1]), np.sin(angles_rad[1])
    cx, sx = np.cos(angles_rad[2]), np.sin(angles_rad[2])
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])  # turns the (y, x) plane
    about_y = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])  # turns the (z, x) plane
    about_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])  # turns the (z, y) plane
    return about_z @ about_y @ about_x


def patch_affine(
    centre_zyx: Sequence[float],
    patch_zyx: Sequence[int],
    spacing_zyx_mm: Sequence[float],
    *,
    flips_zyx: Sequence[bool] = (False, False, False),
    angles_deg_zyx: Sequence[float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, offset)`` mapping patch voxel indices to case voxel indices.

    ``case_index = matrix @ patch_index + offset`` (``scipy.ndimage.affine_transform``
    convention); the patch centre lands on ``centre_zyx``. Rotation and mirroring act
    in millimetres about the centre.

    Example:
        >>> m, o = patch_affine((10, 20, 30), (4, 4, 4), (1.0, 0.7, 0.7))
        >>> (m @ np.array([1.5, 1.5, 1.5]) + o).tolist()
        [10.0, 20.0, 30.0]
    """
    spacing = np.asarray(spacing_zyx_mm, dtype=float)
    flips = np.diag([-1.0 if f else 1.0 for f in flips_zyx])
    rotation = _rotation(np.radians(np.asarray(angles_deg_zyx, dtype=float)))
    matrix = np.diag(1.0 / spacing) @ rotation @ flips @ np.diag(spacing)
    half = (np.asarray(patch_zyx, dtype=float) - 1.0) / 2.0
    offset = np.asarray(centre_zyx, dtype=float) - matrix @ half
    return matrix, offset


def _class_voxel(label: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A random voxel (z, y, x) of a foreground class drawn uniformly among those ``label`` holds.

    Found per draw (17 ms on a 5.4-million-voxel case on a 2-core AMD EPYC, beside the
    0.19 s the patch itself takes) rather than stored: an index of every class's voxels
    would hold the kidney's few hundred thousand per case.
    """
    counts = np.bincount(label.ravel())
    present = np.flatnonzero(counts[1:]) + 1
    if len(present) == 0:
        return None
    value = present[rng.integers(len(present))]
    flat = np.flatnonzero(label.ravel() == value)
    return np.asarray(np.unravel_index(flat[rng.integers(len(flat))], label.shape), dtype=float)


def _choose_centre(case: TrainingCase, patch_zyx: Sequence[int], rng: np.random.Generator,
                   foreground_share: float, hard_negative_share: float = 0.0,
                   class_share: float = 0.0, mimic_share: float = 0.0) -> np.ndarray:
    shape = np.asarray(case.image_hu.shape, dtype=float)
    patch = np.asarray(patch_zyx, dtype=float)
    has_foreground = case.foreground is not None and len(case.foreground) > 0
    has_negatives = hard_negative_share > 0 and case.hard_negatives is not None and len(case.hard_negatives) > 0
    has_classes = class_share > 0 and case.label is not None
    has_mimics = mimic_share > 0 and case.mimics is not None and len(case.mimics) > 0
    # one uniform draw picks the kind (and none when there is no choice: without hard
    # negatives, class-balanced centres or mimics the random stream is the same as
    # before they existed, so runs resume)
    u = rng.random() if has_foreground or has_negatives or has_classes or has_mimics else 1.0
    share = foreground_share if has_foreground else 0.0
    negatives = hard_negative_share if has_negatives else 0.0
    voxel = None
    if u < share:
        voxel = case.foreground[rng.integers(len(case.foreground))].astype(float)  # type: ignore[index]
    elif u < share + negatives:
        voxel = case.hard_negatives[rng.integers(len(case.hard_negatives))].astype(float)  # type: ignore[index]
    elif has_classes and u < share + negatives + class_share:
        voxel = _class_voxel(case.label, rng)  # type: ignore[arg-type]
    elif has_mimics and u < share + negatives + (class_share if has_classes else 0.0) + mimic_share:
        voxel = case.mimics[rng.integers(len(case.mimics))].astype(float)  # type: ignore[index]
    if voxel is not None:
        return voxel + rng.uniform(-patch / 4.0, patch / 4.0)
    lo = np.minimum((patch - 1) / 2.0, (shape - 1) / 2.0)
    hi = np.maximum(shape - 1 - (patch - 1) / 2.0, lo)
    return rng.uniform(lo, hi)


def _smooth_field(shape_zyx: Sequence[int], rng: np.random.Generator, *, control_points: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1]: a few control points upsampled cubically."""
    coarse = rng.uniform(-1.0, 1.0, size=(control_points,) * 3)
    zoom = [s / control_points for s in shape_zyx]
    field_ = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)
    return np.clip(field_[tuple(slice(0, s) for s in shape_zyx)], -1.0, 1.0).astype(np.float32)


def randomise_domain(
    tissue: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    tissue_ranges_hu: Mapping[int, tuple[float, float]],
    rng: np.random.Generator,
    tissue_limits_hu: Mapping[int, tuple[float, float]] | None = None,
) -> np.ndarray:
    """Render a tissue map with random contrast, resolution, noise and bias (HU).

    Per tissue class: a mean drawn uniformly from its range widened by half its
    width on each side (clipped to its ``tissue_limits_hu`` where it has one), plus
    within-tissue texture (σ up to 15 HU). Then a Gaussian point-spread function
    with FWHM drawn in [0.5, 2.5] mm per axis (random resolution), white noise σ in
    [5, 40] HU and an additive smooth bias field of amplitude up to 40 HU.

    Args:
        tissue: uint8 ``(Z, Y, X)`` tissue class values.
        spacing_zyx_mm: voxel spacing (z, y, x) in mm.
        tissue_ranges_hu: class value → (low, high) HU; classes not listed keep -1000.
        rng: the sample's random generator.
        tissue_limits_hu: class value → (low, high) HU the widened range is clipped to.

    Returns:
        float32 ``(Z, Y, X)`` in HU.
    """
    out = np.full(tissue.shape, -1000.0, dtype=np.float32)
    texture = rng.normal(0.0, 1.0, size=tissue.shape).astype(np.float32)
    for value in np.unique(tissue):
        lo, hi = tissue_ranges_hu.get(int(value), (-1000.0, -1000.0))
        width = hi - lo
        low, high = lo - width / 2.0, hi + width / 2.0
        if tissue_limits_hu and int(value) in tissue_limits_hu:
            limit = tissue_limits_hu[int(value)]
            low, high = max(low, limit[0]), min(high, limit[1])
        mean = rng.uniform(low, high)
        inside = tissue == value
        out[inside] = mean + texture[inside] * rng.uniform(0.0, 15.0)
    fwhm_mm = rng.uniform(0.5, 2.5, size=3)
    sigma_vox = fwhm_mm / 2.3548 / np.asarray(spacing_zyx_mm, dtype=float)
    out = ndimage.gaussian_filter(out, sigma_vox, mode="nearest")
    out += rng.normal(0.0, rng.uniform(5.0, 40.0), size=out.shape).astype(np.float32)
    out += _smooth_field(out.shape, rng) * rng.uniform(0.0, 40.0)
    return out.astype(np.float32)


#: slice thickness range (mm) of the thick-slice augmentation: routine portal-venous and
#: nephrographic abdominal CT is often reconstructed at 2–5 mm slices
THICK_SLICE_MM: tuple[float, float] = (1.5, 5.0)


def simulate_thick_slices(hu: np.ndarray, spacing_z_mm: float, slice_mm: float, phase: float) -> np.ndarray:
    """The patch as a scan with ``slice_mm`` slices shows it, back on the patch grid.

    Each slice averages a slab of ``slice_mm`` along z (a box profile, as a CT slice
    integrates its thickness); the slices, every ``slice_mm`` from ``phase`` × the
    thickness, are then interpolated linearly back onto the patch's z positions, as
    ``renalseg segment`` resamples a thick-slice study to the model grid. Noise falls
    with the averaging and becomes correlated along z, as in a thick-slice scan.

    Args:
        hu: float ``(Z, Y, X)`` patch in HU.
        spacing_z_mm: the patch's z spacing (mm).
        slice_mm: slice thickness and spacing to simulate (mm).
        phase: where the first slice centre falls, as a fraction of the thickness.

    Returns:
        float32 ``(Z, Y, X)``, the same shape.

    Example:
        >>> ramp = np.arange(12, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
        >>> out = simulate_thick_slices(ramp, 1.0, 3.0, 0.0)
        >>> out.shape, float(out[6, 0, 0])   # a ramp stays a ramp between slice centres
        ((12, 2, 2), 6.0)
    """
    return _coarsen_axis(hu, slice_mm / spacing_z_mm, phase, axis=0)


def _coarsen_axis(hu: np.ndarray, step: float, phase: float, axis: int) -> np.ndarray:
    """Slabs of ``step`` voxels averaged along ``axis``, sampled every ``step`` voxels from
    ``phase`` × ``step``, interpolated linearly back onto the patch's positions."""
    if step <= 1.0:
        return hu.astype(np.float32, copy=False)
    hu = np.moveaxis(hu.astype(np.float32, copy=False), axis, 0)
    slab = ndimage.uniform_filter1d(hu, size=max(1, round(step)), axis=0, mode="nearest")
    n = hu.shape[0]
    centres = np.arange(phase * step, n - 1 + step, step)  # slice centres in voxels, covering the patch
    low = np.clip(np.floor(centres).astype(int), 0, n - 1)
    high = np.clip(low + 1, 0, n - 1)
    w = (centres - low)[:, None, None].astype(np.float32)
    slices = slab[low] * (1 - w) + slab[high] * w  # (K, ...): each slice at its centre
    if len(centres) == 1:
        return np.moveaxis(np.repeat(slices, n, axis=0), 0, axis)
    position = np.clip((np.arange(n) - centres[0]) / step, 0.0, len(centres) - 1.0)
    below = np.minimum(np.floor(position).astype(int), len(centres) - 2)
    t = (position - below)[:, None, None].astype(np.float32)
    return np.moveaxis((slices[below] * (1 - t) + slices[below + 1] * t).astype(np.float32), 0, axis)


#: the scanner-grid augmentation's draws: in-plane voxel and slice spacing (mm) of the
#: simulated scan, and its white noise (HU standard deviation on its own voxels). Renal CTA
#: is reconstructed at 0.6-1 mm in-plane and 0.6-1.5 mm slices, abdominal CT up to 3 mm. A
#: scanner's noise is correlated by its kernel and falls less on resampling than white
#: noise does, so the band reaches past the 31-36 HU the real CT in tests/data measures on
#: its own voxels: at 1.5 mm, 15-60 HU of white noise reads 6-24 HU on the model grid,
#: where the real CT reads 18-19.5 HU
SCANNER_INPLANE_MM: tuple[float, float] = (0.7, 1.6)
SCANNER_SLICE_MM: tuple[float, float] = (1.0, 3.0)
SCANNER_NOISE_HU: tuple[float, float] = (15.0, 60.0)


def simulate_scanner_grid(hu: np.ndarray, spacing_zyx_mm: Sequence[float], scan_spacing_zyx_mm: Sequence[float],
                          noise_hu: float, rng: np.random.Generator) -> np.ndarray:
    """The patch as a scan on a coarser grid shows it, resampled back onto the patch grid.

    The scanner's noise is added first, white, scaled so that each scan voxel (a box of
    the patch's voxels) carries ``noise_hu``; then each axis is box-averaged and sampled
    at the scan's voxel centres (a random offset per axis) and interpolated back linearly,
    as :func:`simulate_thick_slices` does along z and as ``renalseg segment`` resamples a
    patient's scan onto the model grid, where the noise falls (36 HU of white noise at
    1.5 mm reads 15 HU; the real 1.5 mm CTA in tests/data, 36 HU on its voxels, 18 HU).

    Args:
        hu: float ``(Z, Y, X)`` patch in HU.
        spacing_zyx_mm: the patch's spacing (z, y, x) in mm.
        scan_spacing_zyx_mm: the simulated scan's spacing (z, y, x) in mm; an axis no
            coarser than the patch's is left as it is.
        noise_hu: the scan's noise on its own voxels (HU standard deviation).
        rng: the sample's random generator (noise and offsets).

    Returns:
        float32 ``(Z, Y, X)``, the same shape.

    Example:
        >>> flat = np.zeros((24, 32, 32), np.float32)
        >>> out = simulate_scanner_grid(flat, (1.0, 0.7, 0.7), (1.5, 1.4, 1.4), 30.0, np.random.default_rng(0))
        >>> out.shape, bool(5.0 < out.std() < 30.0)   # interpolated between scan voxels: less noise
        ((24, 32, 32), True)
    """
    steps = [max(1.0, float(c) / float(f)) for c, f in zip(scan_spacing_zyx_mm, spacing_zyx_mm)]
    boxes = [max(1, round(step)) for step in steps]
    out = hu.astype(np.float32) + rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(
        noise_hu * np.sqrt(np.prod(boxes)))
    for axis, step in enumerate(steps):
        out = _coarsen_axis(out, step, float(rng.random()), axis)
    return out


#: the diameter under which :func:`thin_parts` calls a vessel thin (the thin-branch
#: figure's band: interlobar and arcuate arteries)
THIN_DIAMETER_MM = 2.0


def thin_parts(mask: np.ndarray, spacing_zyx_mm: Sequence[float], diameter_mm: float = THIN_DIAMETER_MM) -> np.ndarray:
    """The voxels of ``mask`` in parts thinner than ``diameter_mm``: those a morphological
    opening by a ball of that diameter (the voxel offsets within its radius, in mm)
    removes. A vessel's lumen a ball of that size cannot fit in is thinner than it. The
    erosion takes the array's border for foreground: a thick vessel cut by the patch's
    edge stays thick there. Meant for the model grid: where every voxel side exceeds the
    radius, the ball is one voxel and nothing is thin.

    Example:
        >>> tubes = np.zeros((9, 20, 20), bool)
        >>> tubes[:, 3, 3] = True          # 0.7 mm across
        >>> tubes[:, 10:15, 10:15] = True  # 3.5 mm across
        >>> thin = thin_parts(tubes, (1.0, 0.7, 0.7))
        >>> bool(thin[:, 3, 3].all()), bool(thin[:, 10:15, 10:15].any())
        (True, False)
    """
    ball = physical_ball(diameter_mm / 2.0, spacing_zyx_mm)
    opened = ndimage.binary_dilation(ndimage.binary_erosion(mask, ball, border_value=1), ball)
    return mask & ~opened


#: added noise range (HU standard deviation) of the noisy-scan augmentation: the phantoms
#: carry 8-25 HU, the real CT in tests/data measures 31-36 HU at 1-2 mm voxels
NOISY_SCAN_HU: tuple[float, float] = (20.0, 60.0)


def add_scan_noise(hu: np.ndarray, sigma_hu: float, rng: np.random.Generator) -> np.ndarray:
    """``hu`` plus noise of standard deviation ``sigma_hu``, correlated over half a voxel.

    White noise smoothed by a Gaussian of 0.5 voxel on every axis, then scaled to
    ``sigma_hu``, as a scanner's reconstruction kernel correlates neighbouring voxels
    (``recipes/thick_slices.py --noise-hu`` makes held-out sets the same way).

    Example:
        >>> out = add_scan_noise(np.zeros((16, 32, 32), np.float32), 40.0, np.random.default_rng(0))
        >>> out.dtype, 36 < float(out.std()) < 44
        (dtype('float32'), True)
    """
    grain = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), 0.5)
    return (hu + grain * np.float32(sigma_hu / max(float(grain.std()), 1e-6))).astype(np.float32)


def _jitter_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mean = float(image.mean())
    image = (image - mean) * rng.uniform(0.75, 1.25) + mean + rng.uniform(-0.05, 0.05)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.7, 1.5)
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.02), size=image.shape)
    if rng.random() < 0.2:
        image = ndimage.gaussian_filter(image, rng.uniform(0.0, 1.0))
    return image.astype(np.float32)


def sample_patch(
    case: TrainingCase,
    patch_zyx: Sequence[int],
    rng: np.random.Generator,
    *,
    foreground_share: float = 0.5,
    hard_negative_share: float = 0.0,
    class_share: float = 0.0,
    mimic_share: float = 0.0,
    augment: AugmentConfig | None = None,
    normalization: Mapping[str, Sequence[float]] = DEFAULT_NORMALIZATION,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One augmented training patch from a case.

    Args:
        case: a case on the model grid.
        patch_zyx: patch size (z, y, x) in voxels; may exceed the case (padded with air).
        rng: this sample's generator (the only source of randomness).
        foreground_share: probability that the patch is centred near a foreground voxel.
        hard_negative_share: probability that it is centred near a hard negative
            (``case.hard_negatives``: bright unlabelled voxels).
        class_share: probability that it is centred near a voxel of a foreground class
            drawn uniformly among those the case holds.
        mimic_share: probability that it is centred near unlabelled tissue that looks
            like a tumour (``case.mimics``: spleen, bowel, cyst ... from the phantom's
            tissue map); the rest are uniform.
        augment: augmentation settings; ``None`` crops without any augmentation.
        normalization: the model card's normalisation.

    Returns:
        ``(image, label)``: float32 ``(Z, Y, X)`` normalised image and uint8
        ``(Z, Y, X)`` class indices (``None`` when the case has no label).

    Example:
        >>> from renalseg.geometry import Geometry
        >>> g = Geometry((8, 8, 8), (0.7, 0.7, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> case = TrainingCase("c", np.zeros((8, 8, 8), np.float32), g)
        >>> image, label = sample_patch(case, (4, 6, 6), np.random.default_rng(0))
        >>> image.shape, float(image.max()), label
        ((4, 6, 6), 0.5, None)
    """
    patch = tuple(int(p) for p in patch_zyx)
    spacing_zyx = tuple(reversed(case.geometry.spacing_xyz_mm))
    centre = _choose_centre(case, patch, rng, foreground_share, hard_negative_share, class_share, mimic_share)
    flips: Sequence[bool] = (False, False, False)
    angles: Sequence[float] = (0.0, 0.0, 0.0)
    if augment is not None and augment.mirror:
        flips = tuple(bool(f) for f in rng.random(3) < 0.5)
    if augment is not None and augment.rotate_deg > 0:
        angles = tuple(rng.uniform(-augment.rotate_deg, augment.rotate_deg, size=3).tolist())
    matrix, offset = patch_affine(centre, patch, spacing_zyx, flips_zyx=flips, angles_deg_zyx=angles)
    pure_crop = np.allclose(matrix, np.round(matrix)) and np.allclose(offset, np.round(offset))

    def resample(array: np.ndarray, order: int, cval: float) -> np.ndarray:
        if pure_crop:  # integer shift and flips: exact, no interpolation at all
            order = 0
        return ndimage.affine_transform(array, matrix, offset, output_shape=patch, order=order,
                                        mode="constant", cval=cval, prefilter=False)

    randomised = (augment is not None and augment.domain_randomisation > 0 and case.tissue is not None
                  and rng.random() < augment.domain_randomisation)
    if randomised:
        tissue = resample(case.tissue, 0, 0.0)  # type: ignore[arg-type]
        hu = randomise_domain(tissue, spacing_zyx, augment.tissue_ranges_hu, rng,  # type: ignore[union-attr]
                              augment.tissue_limits_hu)  # type: ignore[union-attr]
    else:
        hu = resample(case.image_hu, 1, -1024.0)
    if augment is not None and augment.thick_slices > 0 and rng.random() < augment.thick_slices:
        hu = simulate_thick_slices(hu, spacing_zyx[0], rng.uniform(*THICK_SLICE_MM), rng.random())
    if augment is not None and augment.noisy_scans > 0 and rng.random() < augment.noisy_scans:
        hu = add_scan_noise(hu, rng.uniform(*NOISY_SCAN_HU), rng)
    coarse = augment is not None and augment.scanner_grids > 0 and rng.random() < augment.scanner_grids
    if coarse:
        inplane = rng.uniform(*SCANNER_INPLANE_MM)
        hu = simulate_scanner_grid(hu, spacing_zyx, (rng.uniform(*SCANNER_SLICE_MM), inplane, inplane),
                                   rng.uniform(*SCANNER_NOISE_HU), rng)
    image = normalize_hu(hu, dict(normalization))
    if augment is not None and augment.intensity:
        image = _jitter_intensity(image, rng)
    label = None if case.label is None else resample(case.label, 0, 0.0).astype(np.uint8)
    if coarse and label is not None and augment.spare_thin_class:  # type: ignore[union-attr]
        label[thin_parts(label == augment.spare_thin_class, spacing_zyx)] = IGNORE_INDEX  # type: ignore[union-attr]
    return image, label
