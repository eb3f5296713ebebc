"""What renalseg calls a connected component: one definition for every figure.

A **component** of a structure is a set of its voxels joined through faces, edges or
corners (26-connectivity: a thin vessel running diagonally through the voxel grid is
one piece) whose volume is at least :data:`SPECK_MM3` (5 mm³, about ten voxels at
0.7 × 0.7 × 1 mm). Smaller pieces are **specks**: counted apart, not meshed and not
in ``tree.json``'s tree analysis.

The same definition gives ``report.json``'s ``components`` per side (with
``specks``), ``tree.json``'s ``components`` and the number of separate bodies in each
mesh (``export-mesh`` joins voxels that touch only at an edge or a corner before
marching cubes, so such a contact does not split a body), as long as ``export-mesh``
keeps its default ``--min-component-mm3`` (= :data:`SPECK_MM3`).

Example:
    >>> m = np.zeros((6, 6, 6), bool)
    >>> m[0:3, 0:3, 0:3] = True          # 27 voxels
    >>> m[3, 3, 3] = True                # touches the cube at a corner: same piece
    >>> m[5, 5, 0] = True                # 1 voxel on its own: a speck
    >>> count_pieces(m, (1.0, 1.0, 1.0))
    {'components': 1, 'specks': 1, 'speck_volume_ml': 0.001}
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["STRUCTURE_26", "SPECK_MM3", "CONNECTIVITY", "count_pieces", "physical_ball"]

#: neighbourhood of :func:`scipy.ndimage.label`: faces, edges and corners
STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
CONNECTIVITY = 26
#: pieces smaller than this (mm³) are specks, not components
SPECK_MM3 = 5.0


def count_pieces(mask: np.ndarray, spacing_xyz_mm: tuple[float, float, float], *,
                 speck_mm3: float = SPECK_MM3) -> dict:
    """Components and specks of a boolean ``(Z, Y, X)`` mask (see the module docstring).

    Returns:
        ``{"components": int, "specks": int, "speck_volume_ml": float}``.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return {"components": 0, "specks": 0, "speck_volume_ml": 0.0}
    hit = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
    box = tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hit)
    pieces, count = ndimage.label(mask[box], structure=STRUCTURE_26)
    voxel_mm3 = float(np.prod(spacing_xyz_mm))
    sizes_mm3 = np.bincount(pieces.ravel(), minlength=count + 1)[1:] * voxel_mm3
    small = sizes_mm3 < speck_mm3
    return {"components": int((~small).sum()), "specks": int(small.sum()),
            "speck_volume_ml": round(float(sizes_mm3[small].sum()) / 1000.0, 4)}


def physical_ball(radius_mm: float, spacing_zyx_mm) -> np.ndarray:  # noqa: ANN001 - any sequence of 3 floats
    """A structuring element: the voxel offsets within ``radius_mm`` of the centre on a
    grid of that spacing (a ball in millimetres, an ellipsoid in voxels).

    Example:
        >>> physical_ball(1.0, (2.0, 1.0, 1.0)).astype(int).sum(axis=0).tolist()
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """
    reach = [int(np.floor(radius_mm / s + 1e-9)) for s in spacing_zyx_mm]
    axes = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    return sum((a * float(s)) ** 2 for a, s in zip(axes, spacing_zyx_mm)) <= radius_mm ** 2 + 1e-9
