"""From shapes to a CT image: partial-volume painting, texture, PSF, noise.

:class:`Canvas` paints :mod:`~renalseg.phantom.shapes` into a mean-HU image and a
tissue map on an LPS-aligned grid. Each paint call is one tissue: the *coverage* of
every voxel (the fraction of it inside the union of the shapes) mixes the tissue's
HU with what lies below (painter's order, so nested structures come last), and the
voxel takes the tissue id when it is at least half covered.

Coverage is computed analytically from the signed distance ``d`` (mm) at the voxel
centre: ``clip(1/2 - d / h, 0, 1)`` with ``h`` the mean voxel size, which is what
box-filter supersampling converges to for a locally flat boundary; tubes and
ellipsoids are shrunk by the ramp's known curvature excess (``Shape.ramp_corrected``)
so the painted intensity integrates to the true volume. Thin shapes (vessels about a
voxel across) are really supersampled: the same rule at 2 × 2 × 2 sub-voxels,
averaged down. Against exact 3–4× supersampling the total painted intensity agrees
within 0.5% and the boundary voxels within ~2.5% of the contrast on average
(tests/test_phantom.py). Along such thin
vessels the voxel holding the centreline is also given the tissue, so a one-voxel
vessel stays connected in the tissue map as an annotator would draw it.

:func:`finish_image` then adds smooth per-tissue texture, blurs with a Gaussian
point-spread function and adds slightly correlated noise; :func:`render_tissues`
does the same from a tissue map alone (for SynthSeg-style domain randomisation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy import ndimage as ndi

from renalseg.errors import GeometryError, UsageError, suggest
from renalseg.geometry import Geometry
from renalseg.phantom.shapes import Intersection, Shape, Tube
from renalseg.phantom.tissues import TEXTURE_HU, TISSUES
from renalseg.volume import Volume

__all__ = ["Canvas", "render_tissues", "finish_image", "smooth_field", "HU_MIN", "HU_MAX"]

HU_MIN, HU_MAX = -1024, 3071
#: the coarse signed-distance grid: at most this spacing, and this many samples per feature
COARSE_MAX_MM, COARSE_PER_FEATURE = 2.0, 5.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


class Canvas:
    """A mean-HU image and a tissue map being painted on an LPS-aligned grid.

    Args:
        geometry: the grid; its direction must be the identity (LPS-aligned).
        background_tissue: tissue id everywhere before painting.
        background_hu: HU everywhere before painting.

    Example:
        >>> from renalseg.phantom.shapes import Ellipsoid
        >>> g = Geometry((20, 20, 20), (1.0, 1.0, 1.0), (-10.0, -10.0, -10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> canvas = Canvas(g, background_tissue=1, background_hu=-100.0)
        >>> canvas.paint(5, 200.0, [Ellipsoid((0, 0, 0), np.eye(3), (5, 5, 5))])
        >>> int(canvas.tissue[10, 10, 10]), float(canvas.hu[10, 10, 10])
        (5, 200.0)
        >>> round(float((canvas.hu + 100).sum() / 300), 1), round(4 / 3 * np.pi * 125, 1)  # partial volume
        (524.0, 523.6)
    """

    def __init__(self, geometry: Geometry, *, background_tissue: int = 0, background_hu: float = -1000.0) -> None:
        if not np.allclose(geometry.direction, np.eye(3).ravel(), atol=1e-6):
            raise GeometryError(f"A phantom canvas must be LPS-aligned; got {geometry.orientation}.")
        self.geometry = geometry
        self.hu = np.full(geometry.shape_zyx, background_hu, dtype=np.float32)
        self.tissue = np.full(geometry.shape_zyx, background_tissue, dtype=np.uint8)
        sx, sy, sz = geometry.spacing_xyz_mm
        ox, oy, oz = geometry.origin_xyz_mm
        nz, ny, nx = geometry.shape_zyx
        self.x = (ox + sx * np.arange(nx)).astype(np.float32)
        self.y = (oy + sy * np.arange(ny)).astype(np.float32)
        self.z = (oz + sz * np.arange(nz)).astype(np.float32)
        self.spacing = np.array([sx, sy, sz])
        self.h_mm = float(np.mean(self.spacing))

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices (z, y, x) of the voxels whose centres lie in the LPS box, or None."""
        origin = np.asarray(self.geometry.origin_xyz_mm)
        lo = np.floor((np.asarray(lo_mm) - origin) / self.spacing).astype(int)
        hi = np.ceil((np.asarray(hi_mm) - origin) / self.spacing).astype(int) + 1
        shape_xyz = self.geometry.shape_xyz
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, shape_xyz)
        if (hi <= lo).any():
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))

    def coverage(self, shape: Shape, sl: tuple[slice, slice, slice]) -> np.ndarray:
        """Fraction (0–1) of each voxel in ``sl`` inside ``shape``, float32."""
        z = self.z[sl[0]][:, None, None]
        y = self.y[sl[1]][None, :, None]
        x = self.x[sl[2]][None, None, :]
        if not shape.thin:
            shape = shape.ramp_corrected(self.h_mm)
            d = self._coarse_sdf(shape, sl)
            if d is None:
                d = shape.sdf(x, y, z)
            return np.clip(0.5 - d * (1.0 / self.h_mm), 0.0, 1.0).astype(np.float32)
        quarter = self.spacing / 4.0
        shape = shape.ramp_corrected(self.h_mm / 2.0)
        total = None
        for ox in (-quarter[0], quarter[0]):
            for oy in (-quarter[1], quarter[1]):
                for oz in (-quarter[2], quarter[2]):
                    d = shape.sdf(x + np.float32(ox), y + np.float32(oy), z + np.float32(oz))
                    c = np.clip(0.5 - d * (2.0 / self.h_mm), 0.0, 1.0)
                    total = c if total is None else total + c
        return (total * 0.125).astype(np.float32)

    def _coarse_sdf(self, shape: Shape, sl: tuple[slice, slice, slice]) -> np.ndarray | None:
        """The signed distance of a smooth shape on a coarser grid, interpolated (or None).

        A signed distance is 1-Lipschitz and smooth away from the medial axis, so for
        shapes several mm across, sampling it every ``feature / 5`` mm (at most 2 mm)
        and interpolating trilinearly costs up to 20 times less than evaluating every
        voxel; against exact 3 × 3 × 3 supersampling the painted intensity stays
        within 0.3% in total and 2.5% of the contrast on average along the boundary
        (tests/test_phantom.py).
        """
        n = [s.stop - s.start for s in sl]
        target = min(COARSE_MAX_MM, shape.feature_mm() / COARSE_PER_FEATURE)
        spacing_zyx = self.spacing[::-1]
        steps = [max(1, int(target // sp)) for sp in spacing_zyx]
        if max(steps) == 1 or int(np.prod(n)) < 8000:
            return None
        coarse_idx = []
        for size, step in zip(n, steps):
            idx = np.arange(0, size, step)
            if idx[-1] != size - 1:
                idx = np.append(idx, size - 1)
            coarse_idx.append(idx)
        z = self.z[sl[0]][coarse_idx[0]][:, None, None]
        y = self.y[sl[1]][coarse_idx[1]][None, :, None]
        x = self.x[sl[2]][coarse_idx[2]][None, None, :]
        d = np.asarray(shape.sdf(x, y, z), dtype=np.float32)
        d = np.broadcast_to(d, tuple(len(i) for i in coarse_idx))
        for axis in (2, 1, 0):  # the largest expansion (z) last
            d = _interpolate_axis(d, coarse_idx[axis], n[axis], axis)
        return d

    def paint(self, tissue_id: int, hu: float, shapes: Iterable[Shape], *,
              centrelines: Iterable[np.ndarray] = ()) -> None:
        """Paint the union of ``shapes`` as one tissue (partial volume, painter's order).

        Args:
            tissue_id: id in :data:`TISSUES` given to voxels at least half covered.
            hu: mean HU of the tissue.
            shapes: the shapes; tubes are evaluated piece by piece on tight boxes.
            centrelines: (N, 3) LPS polylines of thin vessels whose voxels must carry
                the tissue even when less than half covered (connectivity).
        """
        pieces: list[Shape] = []
        for shape in shapes:
            # tubes go piece by piece on tight boxes: a piece's cost grows with its box
            # times its segment count; thick ones in longer pieces (coarse evaluation)
            tube = shape.shape if isinstance(shape, Intersection) else shape
            if isinstance(tube, Tube):
                coarse_mm = min(COARSE_MAX_MM, tube.feature_mm() / COARSE_PER_FEATURE)
                coarse = not tube.thin and coarse_mm >= 2 * self.spacing.max()
                parts = tube.pieces(12 if coarse else 6)
                if isinstance(shape, Intersection):
                    parts = [Intersection(part, shape.within) for part in parts]
                pieces.extend(parts)
            else:
                pieces.append(shape)
        boxes = []
        for piece in pieces:
            sl = self.box(*piece.bbox_mm())
            if sl is not None:
                boxes.append((piece, sl))
        if boxes:
            lo = [min(sl[a].start for _, sl in boxes) for a in range(3)]
            hi = [max(sl[a].stop for _, sl in boxes) for a in range(3)]
            union = tuple(slice(a, b) for a, b in zip(lo, hi))
            buffer = np.zeros([b - a for a, b in zip(lo, hi)], dtype=np.float32)
            for piece, sl in boxes:
                sub = tuple(slice(s.start - u.start, s.stop - u.start) for s, u in zip(sl, union))
                np.maximum(buffer[sub], self.coverage(piece, sl), out=buffer[sub])
            hu_view = self.hu[union]
            hu_view += buffer * (np.float32(hu) - hu_view)
            tissue_view = self.tissue[union]
            tissue_view[buffer >= 0.5] = tissue_id
        for line in centrelines:
            self.force(tissue_id, line)

    def force(self, tissue_id: int, polyline_mm: np.ndarray) -> None:
        """Give ``tissue_id`` to every voxel that a polyline passes through."""
        points = _densify(np.asarray(polyline_mm, float), 0.3 * float(self.spacing.min()))
        index = np.round((points - np.asarray(self.geometry.origin_xyz_mm)) / self.spacing).astype(int)
        inside = np.all((index >= 0) & (index < np.asarray(self.geometry.shape_xyz)), axis=1)
        index = index[inside]
        self.tissue[index[:, 2], index[:, 1], index[:, 0]] = tissue_id


def _interpolate_axis(values: np.ndarray, sample_idx: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` from samples at integer ``sample_idx`` to ``size`` points.

    Example:
        >>> _interpolate_axis(np.array([0.0, 4.0], np.float32), np.array([0, 4]), 5, 0).tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0]
    """
    if len(sample_idx) == size:
        return np.ascontiguousarray(values)
    if len(sample_idx) == 1:
        return np.repeat(values, size, axis=axis)
    fine = np.arange(size)
    j = np.clip(np.searchsorted(sample_idx, fine, side="right") - 1, 0, len(sample_idx) - 2)
    f = ((fine - sample_idx[j]) / (sample_idx[j + 1] - sample_idx[j])).astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = size
    lo = np.take(values, j, axis=axis)
    hi = np.take(values, j + 1, axis=axis)
    hi -= lo
    hi *= f.reshape(shape)
    hi += lo
    return hi


def _densify(polyline: np.ndarray, step_mm: float) -> np.ndarray:
    """Points along a polyline (M, 3) at most ``step_mm`` apart."""
    out = [polyline[:1]]
    for a, b in zip(polyline[:-1], polyline[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step_mm)))
        t = np.arange(1, n + 1)[:, None] / n
        out.append(a + t * (b - a))
    return np.concatenate(out)


def _coarse_field(shape_zyx: tuple[int, int, int], spacing_xyz_mm: tuple[float, float, float],
                  correlation_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance smooth noise on a coarse grid, already upsampled in y and x.

    Returns the (cz, ny, nx) array and the z indices (fine grid) of its cz planes.
    """
    spacing_zyx = np.asarray(spacing_xyz_mm, float)[::-1]
    cell = max(correlation_mm / 2.0, float(spacing_zyx.max()))
    idx = []
    for n, s in zip(shape_zyx, spacing_zyx):
        count = int(min(n, max(2, np.ceil((n - 1) * s / cell) + 1)))
        idx.append(np.unique(np.round(np.linspace(0, n - 1, count)).astype(int)))
    coarse = rng.standard_normal(tuple(len(i) for i in idx)).astype(np.float32)
    coarse = ndi.gaussian_filter(coarse, 1.0, mode="wrap")
    coarse /= max(float(coarse.std()), 1e-6)
    coarse = _interpolate_axis(coarse, idx[2], shape_zyx[2], 2)
    coarse = _interpolate_axis(coarse, idx[1], shape_zyx[1], 1)
    return coarse, idx[0]


def smooth_field(shape_zyx: tuple[int, int, int], spacing_xyz_mm: tuple[float, float, float],
                 correlation_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field of unit standard deviation, float32 ``(z, y, x)``.

    Drawn on a coarse grid (about ``correlation_mm / 2`` per cell), smoothed and
    interpolated up linearly.

    Example:
        >>> f = smooth_field((20, 30, 40), (0.7, 0.7, 1.0), 4.0, np.random.default_rng(0))
        >>> f.shape, f.dtype.name
        ((20, 30, 40), 'float32')
    """
    coarse, zi = _coarse_field(shape_zyx, spacing_xyz_mm, correlation_mm, rng)
    return _interpolate_axis(coarse, zi, shape_zyx[0], 0)


def _gaussian_l2(sigma: float, truncate: float) -> float:
    """L2 norm of scipy's normalised 1D Gaussian kernel (noise gain of the blur)."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return 1.0
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float(np.sqrt((w**2).sum()))


def _blur_and_noise(hu: np.ndarray, geometry: Geometry, psf_fwhm_mm: float, noise_sigma_hu: float,
                    rng: np.random.Generator) -> np.ndarray:
    """White noise, then the Gaussian PSF over image and noise together.

    As in a real scanner, the noise is shaped by the same reconstruction blur (slight
    spatial correlation); it is scaled before the blur so that its standard
    deviation after the blur is ``noise_sigma_hu``.
    """
    spacing_zyx = np.asarray(geometry.spacing_xyz_mm, float)[::-1]
    sigmas = psf_fwhm_mm * _FWHM_TO_SIGMA / spacing_zyx if psf_fwhm_mm > 0 else np.zeros(3)
    if noise_sigma_hu > 0:
        gain = float(np.prod([_gaussian_l2(s, 3.0) for s in sigmas]))
        noise = rng.standard_normal(hu.shape, dtype=np.float32)
        noise *= np.float32(noise_sigma_hu / gain)
        hu += noise
        del noise
    if psf_fwhm_mm > 0:
        ndi.gaussian_filter(hu, sigmas, truncate=3.0, output=hu)  # line-buffered: in place is safe
    return hu


def finish_image(hu: np.ndarray, tissue: np.ndarray, geometry: Geometry, *, psf_fwhm_mm: float,
                 noise_sigma_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Texture, PSF and noise on a mean-HU image; int16 HU ``(z, y, x)``.

    Args:
        hu: float32 mean HU (z, y, x), modified in place.
        tissue: uint8 tissue ids on the same grid (selects each voxel's texture strength).
        geometry: the grid (for the PSF size in voxels).
        psf_fwhm_mm: full width at half maximum of the Gaussian point-spread function.
        noise_sigma_hu: standard deviation of the added noise.
        rng: the case's random generator.
    """
    amplitude = np.full(256, 2.0, dtype=np.float32)
    for tid, name in TISSUES.items():
        amplitude[tid] = TEXTURE_HU.get(name, 2.0)
    # texture plane by plane: interpolating the smooth field in z is fused with adding it,
    # so no second full-size float array is needed
    coarse, zi = _coarse_field(hu.shape, geometry.spacing_xyz_mm, 4.0, rng)
    nz = hu.shape[0]
    j = np.clip(np.searchsorted(zi, np.arange(nz), side="right") - 1, 0, max(len(zi) - 2, 0))
    for k in range(nz):
        if len(zi) == 1:
            plane = coarse[0]
        else:
            f = np.float32((k - zi[j[k]]) / (zi[j[k] + 1] - zi[j[k]]))
            plane = coarse[j[k]] + f * (coarse[j[k] + 1] - coarse[j[k]])
        hu[k] += amplitude[tissue[k]] * plane
    hu = _blur_and_noise(hu, geometry, psf_fwhm_mm, noise_sigma_hu, rng)
    np.rint(hu, out=hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return hu.astype(np.int16)


def render_tissues(tissues: Volume, intensities_hu: Mapping[str, float], *, psf_fwhm_mm: float,
                   noise_sigma_hu: float, rng: np.random.Generator) -> Volume:
    """Render a CT image from a tissue map at grid resolution.

    Each tissue gets its mean HU, then a Gaussian PSF and slightly correlated noise.
    Meant for SynthSeg-style domain randomisation: draw random ``intensities_hu``
    per structure and render many images of one anatomy.

    Args:
        tissues: uint8 tissue ids (see :data:`TISSUES`), any geometry.
        intensities_hu: tissue name -> mean HU; every tissue present must be listed.
        psf_fwhm_mm: Gaussian PSF full width at half maximum, mm (0: no blur).
        noise_sigma_hu: noise standard deviation, HU (0: no noise).
        rng: random generator (noise).

    Returns:
        int16 HU volume on the tissue map's grid.

    Raises:
        UsageError: a tissue present in the map has no intensity, or an unknown name.

    Example:
        >>> g = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> t = Volume(np.ones((4, 4, 4), np.uint8), g)
        >>> img = render_tissues(t, {"fat": -100}, psf_fwhm_mm=0.8, noise_sigma_hu=0,
        ...                      rng=np.random.default_rng(0))
        >>> img.array.dtype.name, int(img.array.mean())
        ('int16', -100)
    """
    names = set(TISSUES.values())
    for name in intensities_hu:
        if name not in names:
            raise UsageError(
                f"Unknown tissue {name!r}.{suggest(name, names)} Valid names: {', '.join(sorted(names))}."
            )
    lut = np.full(256, np.nan, dtype=np.float32)
    for tid, name in TISSUES.items():
        if name in intensities_hu:
            lut[tid] = float(intensities_hu[name])
    present = np.unique(tissues.array)
    missing = [TISSUES.get(int(t), str(int(t))) for t in present if np.isnan(lut[int(t)])]
    if missing:
        raise UsageError(f"No intensity given for tissue(s) {', '.join(missing)} present in the map.")
    hu = lut[tissues.array]
    hu = _blur_and_noise(hu, tissues.geometry, psf_fwhm_mm, noise_sigma_hu, rng)
    np.rint(hu, out=hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return tissues.with_array(hu.astype(np.int16))
