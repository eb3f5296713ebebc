"""Kidney regions of interest (ROIs) and ``locate_kidneys``.

A :class:`KidneyROI` is a box around one kidney on the *model grid*: spacing from
the model card, direction LPS-aligned (identity), 152 × 152 voxels in-plane and Z
slices covering the whole kidney and its hilum. The network always sees arrays in
patient orientation (z → superior, y → posterior, x → left), whatever the study's
own orientation; the study-voxel box (``start_zyx``/``shape_zyx``) is the bounding
box of that grid in the study's own indices, used to paste results back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from renalseg.geometry import Geometry

__all__ = ["KidneyROI", "MODEL_SPACING_XYZ_MM", "ROI_INPLANE_VOXELS"]

#: default model grid spacing (x, y, z) in mm; the model card is authoritative
MODEL_SPACING_XYZ_MM: tuple[float, float, float] = (0.7, 0.7, 1.0)
#: ROI size in-plane on the model grid (paper: 152 × 152 × Z)
ROI_INPLANE_VOXELS: int = 152


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
    """

    side: Literal["left", "right"]
    grid: Geometry
    start_zyx: tuple[int, int, int]
    shape_zyx: tuple[int, int, int]
    kidney_volume_ml: float
    truncated: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

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
            "notes": list(self.notes),
        }
