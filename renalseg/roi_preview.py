"""``preview.png`` for ``renalseg locate``: the kidney ROIs on a coronal and an axial view.

Both views are resampled onto an LPS-aligned grid (radiological convention: the
patient's right on the left of the picture, anterior up in the axial view, head up in
the coronal view), so the picture looks the same whatever the study's own
orientation. Each ROI's box is drawn in its colour and labelled with its side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

from renalseg.roi import KidneyROI

if TYPE_CHECKING:
    from renalseg.study import Study
    from renalseg.volume import Volume

__all__ = ["render_locate_preview"]

_COLOURS = {"right": (255, 80, 80), "left": (80, 200, 255)}
_WINDOW_HU = (-160.0, 340.0)  # soft-tissue window that still shows enhancing kidneys


def _lps_image(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` resampled onto an LPS-aligned isotropic grid covering its extent."""
    size = np.asarray(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(
        (float(i * (size[0] - 1)), float(j * (size[1] - 1)), float(k * (size[2] - 1))))
        for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    count = np.maximum(1, np.floor((hi - lo) / spacing_mm).astype(int) + 1)
    reference = sitk.Image([int(c) for c in count], sitk.sitkFloat32)
    reference.SetSpacing([spacing_mm] * 3)
    reference.SetOrigin(lo.tolist())
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(),
                         sitk.sitkLinear, -1024.0, sitk.sitkFloat32)


def _to_rgb(plane: np.ndarray) -> Image.Image:
    lo, hi = _WINDOW_HU
    grey = (np.clip((plane - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def render_locate_preview(study: Study | Volume | sitk.Image, rois: Sequence[KidneyROI], *,
                          spacing_mm: float = 1.5, height_px: int = 360) -> Image.Image:
    """A picture of the ROIs on a coronal and an axial slice through the kidneys.

    Args:
        study: the study the ROIs were located in.
        rois: :func:`~renalseg.roi.locate_kidneys`'s result (may be empty).
        spacing_mm: resolution of the views.
        height_px: height of the output picture.

    Returns:
        RGB image: coronal view (left) and axial view (right), boxes labelled R/L;
        ``info["panels"]`` holds each view's column range.

    Example:
        >>> from renalseg.geometry import Geometry
        >>> from renalseg.volume import Volume
        >>> g = Geometry((20, 30, 40), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> render_locate_preview(Volume(np.zeros((20, 30, 40), np.int16), g), []).size[1]
        360
    """
    from renalseg.roi import _as_image

    image, _ = _as_image(study)
    lps = _lps_image(image, spacing_mm)
    array = sitk.GetArrayViewFromImage(lps)  # (z, y, x), LPS-aligned
    origin = np.asarray(lps.GetOrigin())

    def to_index(point_lps: np.ndarray) -> np.ndarray:
        return (np.asarray(point_lps) - origin) / spacing_mm  # (x, y, z) continuous

    if rois:
        centres = np.array([np.mean(roi.box_mm_lps, axis=0) for roi in rois])
        centre = to_index(centres.mean(axis=0))
    else:
        centre = (np.asarray(lps.GetSize()) - 1) / 2.0
    cx, cy, cz = (int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, lps.GetSize()))

    coronal = _to_rgb(array[::-1, cy, :])   # rows: superior first
    axial = _to_rgb(array[cz, :, :])         # rows: anterior first
    n_z = array.shape[0]
    draw_c, draw_a = ImageDraw.Draw(coronal), ImageDraw.Draw(axial)
    for roi in rois:
        lo, hi = (to_index(p) for p in roi.box_mm_lps)
        colour = _COLOURS.get(roi.side, (255, 255, 0))
        label = ("R" if roi.side == "right" else "L") + (" (cut)" if roi.truncated else "")
        box_c = (lo[0], n_z - 1 - hi[2], hi[0], n_z - 1 - lo[2])
        box_a = (lo[0], lo[1], hi[0], hi[1])
        for draw, box in ((draw_c, box_c), (draw_a, box_a)):
            draw.rectangle(box, outline=colour, width=2)
            draw.text((box[0] + 3, box[1] + 2), label, fill=colour)
    for view, text in ((coronal, "coronal"), (axial, "axial")):
        draw = ImageDraw.Draw(view)
        draw.text((3, 2), text, fill=(255, 255, 0))
        # the patient's right is on the viewer's left (radiological convention)
        draw.text((3, view.height // 2), "R", fill=(255, 255, 0))
        draw.text((view.width - 10, view.height // 2), "L", fill=(255, 255, 0))

    def scaled(view: Image.Image) -> Image.Image:
        width = max(1, round(view.width * height_px / max(1, view.height)))
        return view.resize((width, height_px), Image.BILINEAR)

    left, right = scaled(coronal), scaled(axial)
    out = Image.new("RGB", (left.width + right.width + 4, height_px), (0, 0, 0))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + 4, 0))
    out.info["panels"] = {"coronal": (0, left.width), "axial": (left.width + 4, out.width)}
    return out
