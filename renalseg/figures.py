"""Per structure and side: what ``report.json``'s ``structures`` section says.

For each structure a label map holds (:mod:`renalseg.labels`) and each kidney side:
its volume (ml), its components and specks (:func:`renalseg.components.count_pieces`,
the project's one definition of a component) and, for the tumour, its largest
diameter (:func:`largest_diameter_mm`) over its pieces of at least
:data:`TUMOUR_MEASURED_MIN_ML`. Voxels are split into sides as
``export-mesh`` splits them (:func:`renalseg.mesh.split_sides`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from renalseg.components import STRUCTURE_26, count_pieces
from renalseg.geometry import Geometry
from renalseg.labels import STRUCTURE_KEYS, values_mask, values_of_kind

__all__ = ["TUMOUR_MEASURED_MIN_ML", "largest_diameter_mm", "structure_figures"]

#: tumour pieces smaller than this (ml; a ball about 6 mm across) are too small to
#: characterise on CT and mostly a network's specks: the tumour's largest diameter is not
#: measured on them (a 0.03 ml sliver 16 mm long on the demo's tumour-free kidney), and
#: ``renalseg plan`` leaves them out (``PlanConfig.min_tumour_piece_ml``)
TUMOUR_MEASURED_MIN_ML = 0.1

# the 8 corners of a voxel, in voxel units about its centre (x, y, z)
_CORNERS = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])


def largest_diameter_mm(mask: np.ndarray, geometry: Geometry) -> float:
    """The largest distance between two points of a mask's voxels (their cubes), in mm.

    The voxelised object's greatest extent in any direction: what a radiologist's
    longest-axis measurement approximates. Computed over the convex hull of the
    corners of the surface voxels, in world coordinates (so oblique and anisotropic
    grids measure right). 0 for an empty mask.

    Example:
        >>> g = Geometry((2, 3, 4), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> round(largest_diameter_mm(np.ones((2, 3, 4), bool), g), 3)  # sqrt(4² + 6² + 6²)
        9.381
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    surface = mask & ~ndimage.binary_erosion(mask)
    index_xyz = np.argwhere(surface)[:, ::-1].astype(float)
    corners = (index_xyz[:, None, :] + _CORNERS[None]).reshape(-1, 3)
    corners = np.unique(corners, axis=0)
    world = geometry.index_to_world(corners)
    try:
        world = world[ConvexHull(world).vertices]
    except QhullError:  # flat or tiny: every point is a candidate
        pass
    if len(world) > 4000:  # a hull this large is rare; bound the pairwise work
        world = world[np.linspace(0, len(world) - 1, 4000).astype(int)]
    difference = world[:, None, :] - world[None, :, :]
    return float(np.sqrt((difference ** 2).sum(-1)).max())


def _tumour_diameter(mask: np.ndarray, geometry: Geometry) -> tuple[float, float]:
    """The largest diameter over a side's tumour pieces of at least
    :data:`TUMOUR_MEASURED_MIN_ML` (each measured alone), and the volume (ml) of the piece
    that has it; (0, 0) when there is none."""
    pieces, count = ndimage.label(mask, structure=STRUCTURE_26)
    boxes = ndimage.find_objects(pieces)
    voxel_ml = geometry.voxel_volume_mm3 / 1000.0
    best, best_ml = 0.0, 0.0
    for number, box in enumerate(boxes, start=1):
        piece = pieces[box] == number
        if float(piece.sum()) * voxel_ml < TUMOUR_MEASURED_MIN_ML:
            continue
        sub = geometry.crop(tuple(s.start for s in box), tuple(s.stop - s.start for s in box))
        diameter = largest_diameter_mm(piece, sub)
        if diameter > best:
            best, best_ml = diameter, float(piece.sum()) * voxel_ml
    return round(best, 1), round(best_ml, 3)


def structure_figures(labels: np.ndarray, geometry: Geometry, names: Mapping[str, str],
                      rois: Sequence[dict] | None, sides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{structure: {side: {"volume_ml", "components", "specks", "speck_volume_ml"[, "largest_diameter_mm",
    "largest_diameter_piece_ml"]}}}``.

    Args:
        labels: integer ``(Z, Y, X)`` label map on ``geometry``.
        geometry: its grid.
        names: ``labels.json`` (value → name); the structures reported are those it names.
        rois: ``report.json``'s ``rois`` (to split sides), or ``None`` for the midline.
        sides: the sides to report (e.g. ``("right", "left")``).
    """
    from renalseg.mesh import split_sides
    from renalseg.tree import bounding_box

    voxel_ml = geometry.voxel_volume_mm3 / 1000.0
    midline_x = float(geometry.corners_world()[:, 0].mean())
    labels = np.asarray(labels)
    if labels.any():  # the labelled box only: a CT is ~60 M voxels, the structures a small part
        box = bounding_box(labels != 0)
        geometry = geometry.crop(tuple(s.start for s in box), tuple(s.stop - s.start for s in box))
        labels = labels[box]
    out: dict[str, dict[str, Any]] = {}
    for key in STRUCTURE_KEYS:
        values = values_of_kind(names, key)
        if not values:
            continue
        mask = values_mask(labels, values)
        parts = split_sides(mask, geometry, list(rois) if rois else None, midline_x=midline_x) if mask.any() else {}
        out[key] = {}
        for side in sides:
            part = parts.get(side, np.zeros((1, 1, 1), bool))
            entry: dict[str, Any] = {"volume_ml": round(float(part.sum()) * voxel_ml, 3),
                                     **count_pieces(part, geometry.spacing_xyz_mm)}
            if key == "tumour":  # and the volume of the piece that diameter is of (quality.TUMOUR_MIN_FILL)
                entry["largest_diameter_mm"], entry["largest_diameter_piece_ml"] = (
                    _tumour_diameter(part, geometry) if part.any() else (0.0, 0.0))
            out[key][side] = entry
    return out
