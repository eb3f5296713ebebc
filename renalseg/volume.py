"""A numpy array with its geometry, and the exact crop/paste pair.

SimpleITK conversion lives in exactly two functions: :meth:`Volume.from_sitk` and
:meth:`Volume.to_sitk`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from renalseg.errors import GeometryError
from renalseg.geometry import Geometry

__all__ = ["Volume", "crop", "paste"]


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D array ``(z, y, x)`` on a :class:`Geometry` (LPS mm).

    Example:
        >>> g = Geometry((2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> v = Volume(np.zeros((2, 3, 4), np.int16), g)
        >>> Volume.from_sitk(v.to_sitk()).geometry == g
        True
    """

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or tuple(self.array.shape) != self.geometry.shape_zyx:
            raise GeometryError(
                f"Array shape {self.array.shape} does not match grid shape {self.geometry.shape_zyx} (z, y, x)."
            )

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """Copy a 3D scalar SimpleITK image into a Volume (geometry kept exactly)."""
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise GeometryError(
                f"Expected a scalar image; got {image.GetNumberOfComponentsPerPixel()} components per voxel."
            )
        return cls(sitk.GetArrayFromImage(image), Geometry.from_sitk(image))

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with this array (copied) and geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array), isVector=False)
        return self.geometry.apply_to(image)

    def with_array(self, array: np.ndarray) -> Volume:
        """Same grid, another array of the same shape."""
        return Volume(array, self.geometry)


def crop(volume: Volume, start_zyx: tuple[int, int, int], shape_zyx: tuple[int, int, int], *,
         pad_value: float = 0) -> Volume:
    """The sub-volume of ``shape_zyx`` voxels starting at ``start_zyx``.

    The box may reach outside the volume (a kidney near the edge of the field of
    view): those voxels get ``pad_value``. The result's geometry is the matching
    sub-grid, so ``paste(crop(v, ...))`` into ``v`` is an exact inverse.

    Example:
        >>> g = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> v = Volume(np.arange(64).reshape(4, 4, 4), g)
        >>> c = crop(v, (-1, 1, 1), (2, 2, 2), pad_value=-1)
        >>> c.array[0].tolist(), c.geometry.origin_xyz_mm
        ([[-1, -1], [-1, -1]], (1.0, 1.0, -1.0))
        >>> bool((paste(v, crop(v, (1, 1, 1), (2, 2, 2))).array == v.array).all())
        True
    """
    start = np.asarray(start_zyx, dtype=int)
    shape = np.asarray(shape_zyx, dtype=int)
    if (shape < 1).any():
        raise GeometryError(f"Crop shape must be positive; got {tuple(shape_zyx)}.")
    out = np.full(tuple(shape), pad_value, dtype=volume.array.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + shape, volume.array.shape)
    if (src_hi > src_lo).all():
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = volume.array[
            tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
        ]
    return Volume(out, volume.geometry.crop(tuple(start.tolist()), tuple(shape.tolist())))


def paste(target: Volume, patch: Volume, *, atol: float = 1e-4) -> Volume:
    """Write ``patch`` into a copy of ``target`` where their grids overlap.

    ``patch`` must be a sub-grid of ``target`` (same spacing and direction, origin on
    a voxel of ``target``), as produced by :func:`crop`. Parts outside are dropped.

    Raises:
        GeometryError: the patch is not on the target's grid.
    """
    tg, pg = target.geometry, patch.geometry
    if not (np.allclose(tg.spacing_xyz_mm, pg.spacing_xyz_mm, atol=atol, rtol=0)
            and np.allclose(tg.direction, pg.direction, atol=atol, rtol=0)):
        raise GeometryError(
            f"Cannot paste: spacing/direction differ.\n  target: {tg.describe()}\n  patch: {pg.describe()}"
        )
    start_xyz = tg.world_to_index([pg.origin_xyz_mm])[0]
    rounded = np.round(start_xyz)
    if not np.allclose(start_xyz, rounded, atol=1e-3):
        raise GeometryError(
            f"Cannot paste: patch origin lies between voxels of the target (index {start_xyz})."
        )
    start = np.asarray([rounded[2], rounded[1], rounded[0]], dtype=int)
    shape = np.asarray(patch.array.shape)
    out = target.array.copy()
    lo = np.maximum(start, 0)
    hi = np.minimum(start + shape, out.shape)
    if (hi > lo).all():
        src_lo = lo - start
        src_hi = src_lo + (hi - lo)
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = patch.array[
            tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
        ]
    return Volume(out, tg)
