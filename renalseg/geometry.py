"""Image grid geometry in patient LPS millimetres, the ITK way.

Arrays are numpy ``(z, y, x)``; physical vectors are ITK ``(x, y, z)``. The direction
matrix is stored row-major as ITK returns it: its *columns* are the directions of the
x, y and z index axes in LPS. A voxel index ``(i, j, k)`` (x, y, z order) maps to

    point_lps = origin + D @ (spacing * (i, j, k))

This module is the single place that knows the mapping; everything else (crops,
ROIs, meshes) goes through it, and every resampling of an image onto another grid
goes through :func:`resample_to_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from renalseg.errors import GeometryError

__all__ = ["Geometry", "IDENTITY_DIRECTION", "assert_same_grid", "orientation_code", "resample_to_grid"]

#: the direction of a patient-aligned grid: index x, y, z along LPS x, y, z
IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # (towards -, towards +) in LPS


def orientation_code(direction: tuple[float, ...] | np.ndarray) -> str:
    """Three letters naming where each index axis (x, y, z) points in the patient.

    The nibabel / 3D Slicer convention: the identity direction in LPS is ``"LPS"``;
    a NIfTI stored RAS reads as ``"RAS"``.

    Example:
        >>> orientation_code((1, 0, 0, 0, 1, 0, 0, 0, 1))
        'LPS'
        >>> orientation_code((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        'RAS'
    """
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    letters = []
    for column in matrix.T:
        axis = int(np.argmax(np.abs(column)))
        letters.append(_AXIS_LETTERS[axis][1 if column[axis] > 0 else 0])
    return "".join(letters)


@dataclass(frozen=True)
class Geometry:
    """Size, spacing, origin and direction of a 3D grid (LPS, mm).

    Args:
        shape_zyx: number of voxels along z, y, x (numpy order).
        spacing_xyz_mm: voxel size along the x, y, z index axes, in mm.
        origin_xyz_mm: LPS position of the centre of voxel (0, 0, 0), in mm.
        direction: 9 values, row-major 3 × 3 matrix whose columns are the x, y, z
            index-axis directions in LPS (as ``SimpleITK.Image.GetDirection()``).

    Raises:
        GeometryError: non-positive sizes or spacings, or a direction that is not
            orthonormal.

    Example:
        >>> g = Geometry((2, 3, 4), (0.5, 0.5, 2.0), (10.0, 0.0, -5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> g.index_to_world([[2, 0, 1]]).tolist()
        [[11.0, 0.0, -3.0]]
        >>> g.crop((1, 0, 2), (1, 3, 2)).origin_xyz_mm
        (11.0, 0.0, -3.0)
    """

    shape_zyx: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape_zyx)
        spacing = tuple(float(s) for s in self.spacing_xyz_mm)
        origin = tuple(float(o) for o in self.origin_xyz_mm)
        direction = tuple(float(d) for d in np.asarray(self.direction, dtype=float).ravel())
        if len(shape) != 3 or min(shape) < 1:
            raise GeometryError(f"Grid shape must be 3 positive sizes (z, y, x); got {self.shape_zyx}.")
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise GeometryError(f"Spacing must be 3 positive numbers in mm; got {self.spacing_xyz_mm}.")
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise GeometryError(f"Origin must be 3 finite numbers in mm; got {self.origin_xyz_mm}.")
        if len(direction) != 9:
            raise GeometryError(f"Direction must have 9 values; got {len(direction)}.")
        matrix = np.asarray(direction).reshape(3, 3)
        if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-4):
            raise GeometryError(
                f"Direction {direction} is not orthonormal; the image header is damaged."
            )
        object.__setattr__(self, "shape_zyx", shape)
        object.__setattr__(self, "spacing_xyz_mm", spacing)
        object.__setattr__(self, "origin_xyz_mm", origin)
        object.__setattr__(self, "direction", direction)

    # -- conversions ---------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        """The geometry of a 3D SimpleITK image."""
        if image.GetDimension() != 3:
            raise GeometryError(f"Expected a 3D image; got {image.GetDimension()}D.")
        size_xyz = image.GetSize()
        return cls(
            shape_zyx=(size_xyz[2], size_xyz[1], size_xyz[0]),
            spacing_xyz_mm=image.GetSpacing(),
            origin_xyz_mm=image.GetOrigin(),
            direction=image.GetDirection(),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set spacing, origin and direction of ``image`` (same size) in place; return it."""
        size_xyz = tuple(reversed(self.shape_zyx))
        if tuple(image.GetSize()) != size_xyz:
            raise GeometryError(f"Image size {image.GetSize()} does not match grid {size_xyz} (x, y, z).")
        image.SetSpacing(self.spacing_xyz_mm)
        image.SetOrigin(self.origin_xyz_mm)
        image.SetDirection(self.direction)
        return image

    # -- derived -------------------------------------------------------------------
    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        return (self.shape_zyx[2], self.shape_zyx[1], self.shape_zyx[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """3 × 3 array; column ``a`` is the LPS direction of index axis ``a`` (x, y, z)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def affine_lps(self) -> np.ndarray:
        """4 × 4 matrix mapping homogeneous (i, j, k, 1) index (x, y, z) to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix * np.asarray(self.spacing_xyz_mm)[None, :]
        affine[:3, 3] = self.origin_xyz_mm
        return affine

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_xyz_mm))

    @property
    def orientation(self) -> str:
        """Orientation code such as ``"LPS"`` or ``"RAS"`` (see :func:`orientation_code`)."""
        return orientation_code(self.direction)

    def index_to_world(self, index_xyz: np.ndarray | list) -> np.ndarray:
        """Map continuous indices ``(N, 3)`` in (x, y, z) order to LPS mm ``(N, 3)``."""
        index = np.atleast_2d(np.asarray(index_xyz, dtype=float))
        return index @ self.affine_lps[:3, :3].T + np.asarray(self.origin_xyz_mm)

    def world_to_index(self, point_xyz_mm: np.ndarray | list) -> np.ndarray:
        """Map LPS points ``(N, 3)`` in mm to continuous (x, y, z) indices ``(N, 3)``."""
        points = np.atleast_2d(np.asarray(point_xyz_mm, dtype=float))
        inverse = np.linalg.inv(self.affine_lps[:3, :3])
        return (points - np.asarray(self.origin_xyz_mm)) @ inverse.T

    def corners_world(self) -> np.ndarray:
        """LPS positions ``(8, 3)`` of the centres of the 8 corner voxels."""
        last = np.asarray(self.shape_xyz) - 1
        corners = np.array([[i, j, k] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])])
        return self.index_to_world(corners)

    def crop(self, start_zyx: tuple[int, int, int], shape_zyx: tuple[int, int, int]) -> Geometry:
        """The geometry of the sub-grid starting at voxel ``start_zyx`` (may lie outside)."""
        start_xyz = [start_zyx[2], start_zyx[1], start_zyx[0]]
        origin = tuple(float(v) for v in self.index_to_world([start_xyz])[0])
        return Geometry(tuple(shape_zyx), self.spacing_xyz_mm, origin, self.direction)

    def with_spacing(self, spacing_xyz_mm: tuple[float, float, float]) -> Geometry:
        """A grid covering the same physical extent at another spacing, same corner voxel.

        The new grid starts at the same first-voxel *edge* and has
        ``round(extent / spacing)`` voxels (at least one) per axis.
        """
        spacing_new = np.asarray(spacing_xyz_mm, dtype=float)
        spacing_old = np.asarray(self.spacing_xyz_mm)
        extent = np.asarray(self.shape_xyz) * spacing_old
        size_xyz = np.maximum(1, np.round(extent / spacing_new)).astype(int)
        # keep the outer edge of voxel 0 in place: centre shifts by (new - old) / 2
        shift_index_old = (spacing_new - spacing_old) / 2 / spacing_old
        origin = self.index_to_world([shift_index_old])[0]
        return Geometry(
            (int(size_xyz[2]), int(size_xyz[1]), int(size_xyz[0])),
            tuple(spacing_new.tolist()),
            tuple(origin.tolist()),
            self.direction,
        )

    def is_same_grid(self, other: Geometry, *, atol: float = 1e-4) -> bool:
        """True when shape matches exactly and spacing/origin/direction within ``atol``."""
        return (
            self.shape_zyx == other.shape_zyx
            and np.allclose(self.spacing_xyz_mm, other.spacing_xyz_mm, atol=atol, rtol=0)
            and np.allclose(self.origin_xyz_mm, other.origin_xyz_mm, atol=atol, rtol=0)
            and np.allclose(self.direction, other.direction, atol=atol, rtol=0)
        )

    def describe(self) -> str:
        """One line: shape (x × y × z), spacing, origin, orientation."""
        sx, sy, sz = self.shape_xyz
        spacing = " × ".join(f"{s:.4g}" for s in self.spacing_xyz_mm)
        origin = ", ".join(f"{o:.2f}" for o in self.origin_xyz_mm)
        return f"{sx} × {sy} × {sz} voxels, spacing {spacing} mm, origin ({origin}) mm, {self.orientation}"


def assert_same_grid(
    a: Geometry, b: Geometry, *, atol: float = 1e-4, names: tuple[str, str] = ("first", "second")
) -> None:
    """Raise :class:`GeometryError` naming both grids unless they agree within ``atol``.

    Example:
        >>> g = Geometry((1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> assert_same_grid(g, g)
    """
    if a.is_same_grid(b, atol=atol):
        return
    raise GeometryError(
        f"{names[0]} and {names[1]} are on different grids:\n"
        f"  {names[0]}: {a.describe()}\n  {names[1]}: {b.describe()}\n"
        "Resample one onto the other (e.g. `renalseg evaluate --resample`) or check that the "
        "files belong together."
    )


def resample_to_grid(image: sitk.Image, grid: Geometry | sitk.Image, *, interpolator: int,
                     default_value: float, pixel_type: int = sitk.sitkUnknown,
                     transform: sitk.Transform | None = None) -> sitk.Image:
    """``image`` resampled onto ``grid`` in physical (LPS mm) space.

    Args:
        image: a 3D SimpleITK image, any grid.
        grid: the output grid, or an image whose grid it is (its pixels are not read).
        interpolator: a SimpleITK interpolator, e.g. ``sitk.sitkLinear`` for HU and
            probabilities, ``sitk.sitkNearestNeighbor`` for labels and masks.
        default_value: the value of output voxels that fall outside ``image``.
        pixel_type: the output pixel type; ``sitk.sitkUnknown`` keeps ``image``'s.
        transform: maps output points to ``image`` points (default: the identity).

    Returns:
        A SimpleITK image on ``grid``.

    Example:
        >>> g = Geometry((1, 1, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> ramp = g.apply_to(sitk.GetImageFromArray(np.arange(4, dtype=np.float32).reshape(1, 1, 4)))
        >>> half = Geometry((1, 1, 3), (1.0, 1.0, 1.0), (1.5, 0.0, 0.0), g.direction)
        >>> out = resample_to_grid(ramp, half, interpolator=sitk.sitkLinear, default_value=-1.0)
        >>> sitk.GetArrayFromImage(out).ravel().tolist()
        [1.5, 2.5, -1.0]
    """
    if isinstance(grid, sitk.Image):
        grid = Geometry.from_sitk(grid)
    return sitk.Resample(
        image, list(grid.shape_xyz), transform if transform is not None else sitk.Transform(), interpolator,
        list(grid.origin_xyz_mm), list(grid.spacing_xyz_mm), list(grid.direction), float(default_value), pixel_type,
    )
