"""``preview.png``: what a clinician glances at to check a segmentation.

For each kidney ROI, a coronal and an axial maximum intensity projection (MIP) of
the CT (window −100 … 700 HU, so contrast-filled arteries and cortex stand out) with
the segmented artery overlaid in red. Images follow the radiological convention:
the patient's right on the viewer's left, superior at the top (coronal), anterior
at the top (axial); pixels are drawn with their physical aspect ratio. The right
kidney's column comes first, and every panel says which side it shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_preview", "mip_panels"]

_WINDOW_HU = (-100.0, 700.0)
_PANEL_PX = 300  # width of one panel in pixels
_ARTERY_RGB = np.array([255, 40, 40], dtype=np.float32)
_ALPHA = 0.65


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _to_rgb(mip_hu: np.ndarray, artery: np.ndarray) -> np.ndarray:
    lo, hi = _WINDOW_HU
    gray = np.clip((mip_hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[artery] = (1 - _ALPHA) * rgb[artery] + _ALPHA * _ARTERY_RGB
    return rgb.astype(np.uint8)


def mip_panels(hu: np.ndarray, artery: np.ndarray, spacing_xyz_mm: Sequence[float]) -> list[Image.Image]:
    """Coronal and axial MIPs of one ROI with the artery overlaid.

    Args:
        hu: ``(Z, Y, X)`` CT in HU on a patient-oriented grid (z → superior,
            y → posterior, x → the patient's left).
        artery: bool ``(Z, Y, X)`` artery mask on the same grid.
        spacing_xyz_mm: grid spacing (x, y, z), for the aspect ratio.

    Returns:
        [coronal, axial] RGB images, each ``_PANEL_PX`` wide.

    Example:
        >>> hu = np.zeros((20, 30, 40)); artery = np.zeros_like(hu, bool); artery[5:15, 10, 20] = True
        >>> [p.size[0] for p in mip_panels(hu, artery, (0.7, 0.7, 1.0))]
        [300, 300]
    """
    sx, sy, sz = (float(s) for s in spacing_xyz_mm)
    coronal = _to_rgb(hu.max(axis=1)[::-1], artery.any(axis=1)[::-1])  # rows: superior first
    axial = _to_rgb(hu.max(axis=0), artery.any(axis=0))  # rows: anterior first
    panels = []
    for rgb, row_mm in ((coronal, sz), (axial, sy)):
        width_mm = rgb.shape[1] * sx
        height_px = max(1, int(round(_PANEL_PX * rgb.shape[0] * row_mm / width_mm)))
        panels.append(Image.fromarray(rgb, "RGB").resize((_PANEL_PX, height_px), Image.Resampling.BILINEAR))
    return panels


def render_preview(views: Sequence, *, title: str | None = None) -> Image.Image:
    """One picture with a column per ROI (right kidney first), coronal over axial MIP.

    Args:
        views: :class:`renalseg.pipeline.RoiView` objects (``side``, ``hu``,
            ``artery``, ``spacing_xyz_mm``).
        title: a heading, e.g. the study id.

    Returns:
        An RGB ``PIL.Image`` (save it with ``.save("preview.png")``).
    """
    ordered = sorted(views, key=lambda v: 0 if v.side == "right" else 1)
    columns = [(v.side, mip_panels(v.hu, v.artery, v.spacing_xyz_mm)) for v in ordered]
    margin, header, caption = 12, 34 if title else 8, 22
    col_height = max(sum(p.size[1] + caption for p in panels) for _, panels in columns) if columns else 0
    width = margin + len(columns) * (_PANEL_PX + margin)
    height = header + col_height + margin
    canvas = Image.new("RGB", (max(width, _PANEL_PX + 2 * margin), height), (16, 16, 16))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(18), _font(14)
    if title:
        draw.text((margin, 8), f"{title}: renal arteries (red)", fill=(240, 240, 240), font=big)
    for index, (side, panels) in enumerate(columns):
        x0 = margin + index * (_PANEL_PX + margin)
        y = header
        for panel, view_name in zip(panels, ("coronal MIP", "axial MIP")):
            draw.text((x0, y + 3), f"{side.upper()} kidney, {view_name}", fill=(255, 220, 120), font=small)
            y += caption
            canvas.paste(panel, (x0, y))
            # orientation markers: patient's right on the viewer's left
            draw.text((x0 + 4, y + 4), "R", fill=(120, 200, 255), font=small)
            draw.text((x0 + _PANEL_PX - 14, y + 4), "L", fill=(120, 200, 255), font=small)
            y += panel.size[1]
    return canvas
