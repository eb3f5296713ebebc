"""``preview.png``: the pictures a clinician glances at to check a result.

Both follow the radiological convention: the patient's right on the viewer's left,
superior at the top (coronal), anterior at the top (axial), and say which side is
which.

- :func:`render_preview` (``renalseg segment``): for each kidney ROI, a coronal and
  an axial **thin-slab** maximum intensity projection (MIP) of the CT (window
  −100 … 700 HU, so contrast-filled arteries and cortex stand out) with the segmented
  artery overlaid in red and, when the label map has them, the renal vein filled in
  blue under it (so artery and vein are told apart at a glance) and the kidney (tan)
  and tumour (purple) outlined. The slab is only as thick as the artery tree (and the
  kidney) along the projection, plus 5 mm, at most 40 mm: ribs, spine and
  contrast-filled bowel in front of or behind the kidney no longer saturate the view.
  Pixels are drawn with their physical aspect ratio; every panel has a scale bar and
  orientation letters (R/L and S/I or A/P) and says which side and slab it shows;
  the picture is marked for research use. The right kidney's column comes first.
- :func:`render_locate_preview` (``renalseg locate``): the kidney ROIs' boxes on a
  coronal and an axial slice (window −160 … 340 HU), each in its colour and
  labelled with its side. Both views are resampled onto an LPS-aligned grid, so the
  picture looks the same whatever the study's own orientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from renalseg.geometry import IDENTITY_DIRECTION, Geometry, resample_to_grid
from renalseg.labels import BY_KEY
from renalseg.study import unpack_study

if TYPE_CHECKING:
    from renalseg.roi import KidneyROI
    from renalseg.study import Study
    from renalseg.volume import Volume

__all__ = ["render_preview", "mip_panels", "render_locate_preview", "slab_range", "RESEARCH_NOTICE", "add_banner"]

_WINDOW_HU = (-100.0, 700.0)
_PANEL_PX = 300  # width of one panel in pixels
_ARTERY_RGB = np.array([255, 40, 40], dtype=np.float32)
_ALPHA = 0.65
_LOCATE_COLOURS = {"right": (255, 80, 80), "left": (80, 200, 255)}
_LOCATE_WINDOW_HU = (-160.0, 340.0)  # soft-tissue window that still shows enhancing kidneys


def _grey(hu: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """float32 grey levels in [0, 255] of ``hu`` under the window (lo, hi) HU."""
    lo, hi = window_hu
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0


def _mark_sides(draw: ImageDraw.ImageDraw, right_xy: tuple[int, int], left_xy: tuple[int, int],
                colour: tuple[int, int, int], font: ImageFont.ImageFont | None = None) -> None:
    """"R" and "L" at the patient's right (the viewer's left) and left."""
    draw.text(right_xy, "R", fill=colour, font=font)
    draw.text(left_xy, "L", fill=colour, font=font)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


# the kidney in its registry colour; the tumour lighter than its registry purple, to show on dark CT
_OUTLINE_RGB = {"kidney": BY_KEY["kidney"].rgb, "tumour": (190, 90, 230)}
#: structures drawn filled (under the artery) rather than outlined
_FILLED_RGB = {"vein": (60, 130, 255)}
_SLAB_MARGIN_MM = 5.0
_SLAB_MAX_MM = 40.0
_TEXT = (240, 240, 240)
_LETTERS = (120, 200, 255)
#: the default mark on every preview
RESEARCH_NOTICE = "Research use only: not for clinical decisions."


def _to_rgb(mip_hu: np.ndarray, artery: np.ndarray, outlines: dict[str, np.ndarray] | None = None) -> np.ndarray:
    rgb = np.repeat(_grey(mip_hu, _WINDOW_HU)[..., None], 3, axis=2)
    drawn = outlines or {}
    for kind in _FILLED_RGB.keys() & drawn.keys():  # filled first, so the artery lies over them
        rgb[drawn[kind]] = (1 - _ALPHA) * rgb[drawn[kind]] + _ALPHA * np.asarray(_FILLED_RGB[kind], np.float32)
    rgb[artery] = (1 - _ALPHA) * rgb[artery] + _ALPHA * _ARTERY_RGB
    for kind, mask in drawn.items():
        if kind in _FILLED_RGB:
            continue
        edge = mask & ~_erode(mask)
        rgb[edge] = np.asarray(_OUTLINE_RGB.get(kind, (255, 255, 0)), np.float32)
    return rgb.astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, border_value=0)


def slab_range(masks: Sequence[np.ndarray], axis: int, spacing_mm: float, *, margin_mm: float = _SLAB_MARGIN_MM,
               max_mm: float = _SLAB_MAX_MM) -> tuple[int, int]:
    """The index range ``[lo, hi)`` along ``axis`` that a thin-slab MIP projects.

    The extent of the masks along the axis plus ``margin_mm`` each side, at most
    ``max_mm`` thick (then centred on the first mask's mean position); the whole axis
    when the masks are empty.

    Example:
        >>> m = np.zeros((10, 100, 10), bool); m[:, 40:50, :] = True
        >>> slab_range([m], 1, 1.0)
        (35, 55)
        >>> m[:, 0:100, :] = True
        >>> slab_range([m], 1, 1.0)
        (30, 70)
    """
    size = masks[0].shape[axis] if masks else 0
    occupied = np.zeros(size, bool)
    for mask in masks:
        occupied |= mask.any(axis=tuple(a for a in range(3) if a != axis))
    hit = np.nonzero(occupied)[0]
    if not len(hit):
        return 0, size
    margin = int(round(margin_mm / spacing_mm))
    lo, hi = int(hit[0]) - margin, int(hit[-1]) + 1 + margin
    limit = max(1, int(round(max_mm / spacing_mm)))
    if hi - lo > limit:
        # centred on the artery (the first mask), or on everything when it is empty
        first = masks[0] if masks[0].any() else np.logical_or.reduce(masks)
        weights = first.sum(axis=tuple(a for a in range(3) if a != axis)).astype(float)
        centre = int(round(float(np.average(np.arange(size), weights=weights))))
        lo, hi = centre - limit // 2, centre - limit // 2 + limit
    return max(0, lo), min(size, hi)


def _round_length_mm(extent_mm: float) -> float:
    """The first round length (1, 2, 5 × 10^k mm) of at least 15 % of ``extent_mm``.

    Example:
        >>> _round_length_mm(100.0), _round_length_mm(30.0)
        (20.0, 5.0)
    """
    target = 0.15 * extent_mm
    for exponent in range(-1, 4):
        for step in (1.0, 2.0, 5.0):
            if step * 10.0 ** exponent >= target:
                return step * 10.0 ** exponent
    return 1000.0


def _decorate(panel: Image.Image, *, mm_per_px: float, letters: tuple[str, str, str, str],
              font: ImageFont.ImageFont) -> None:
    """Scale bar (bottom left) and orientation letters (left, right, top, bottom edges)."""
    draw = ImageDraw.Draw(panel)
    w, h = panel.size
    left, right, top, bottom = letters
    draw.text((3, h // 2 - 7), left, fill=_LETTERS, font=font)
    draw.text((w - 12, h // 2 - 7), right, fill=_LETTERS, font=font)
    draw.text((w // 2 - 4, 2), top, fill=_LETTERS, font=font)
    draw.text((w // 2 - 4, h - 16), bottom, fill=_LETTERS, font=font)
    length_mm = _round_length_mm(w * mm_per_px)
    bar_px = max(1, int(round(length_mm / mm_per_px)))
    y = h - 8
    draw.rectangle((6, y, 6 + bar_px, y + 2), fill=_TEXT)
    draw.text((6, y - 15), f"{length_mm:g} mm", fill=_TEXT, font=font)


def mip_panels(hu: np.ndarray, artery: np.ndarray, spacing_xyz_mm: Sequence[float], *,
               outlines: dict[str, np.ndarray] | None = None) -> list[Image.Image]:
    """Coronal and axial thin-slab MIPs of one ROI with the artery overlaid.

    Args:
        hu: ``(Z, Y, X)`` CT in HU on a patient-oriented grid (z → superior,
            y → posterior, x → the patient's left).
        artery: bool ``(Z, Y, X)`` artery mask on the same grid.
        spacing_xyz_mm: grid spacing (x, y, z), for the aspect ratio and the slab.
        outlines: ``{"vein": mask, "kidney": mask, "tumour": mask}`` (optional): the vein
            filled in blue under the artery, the others outlined.

    Returns:
        [coronal, axial] RGB images, each ``_PANEL_PX`` wide, with a scale bar and
        orientation letters; ``info["slab_mm"]`` holds the slab thickness.

    Example:
        >>> hu = np.zeros((20, 30, 40)); artery = np.zeros_like(hu, bool); artery[5:15, 10, 20] = True
        >>> [p.size[0] for p in mip_panels(hu, artery, (0.7, 0.7, 1.0))]
        [300, 300]
    """
    sx, sy, sz = (float(s) for s in spacing_xyz_mm)
    outlines = {k: np.asarray(v, bool) for k, v in (outlines or {}).items() if np.asarray(v).any()}
    masks = [artery, *outlines.values()]
    font = _font(13)
    panels = []
    # coronal: project along y (posterior) inside the slab; rows superior first
    # axial: project along z (superior) inside the slab; rows anterior first
    for axis, row_mm, slab_mm, letters in ((1, sz, sy, ("R", "L", "S", "I")), (0, sy, sz, ("R", "L", "A", "P"))):
        lo, hi = slab_range(masks, axis, slab_mm)
        window = [slice(None)] * 3
        window[axis] = slice(lo, hi)
        region = tuple(window)
        flip = (slice(None, None, -1),) if axis == 1 else (slice(None),)
        rgb = _to_rgb(hu[region].max(axis=axis)[flip], artery[region].any(axis=axis)[flip],
                      {k: m[region].any(axis=axis)[flip] for k, m in outlines.items()})
        width_mm = rgb.shape[1] * sx
        height_px = max(1, int(round(_PANEL_PX * rgb.shape[0] * row_mm / width_mm)))
        panel = Image.fromarray(rgb, "RGB").resize((_PANEL_PX, height_px), Image.Resampling.BILINEAR)
        _decorate(panel, mm_per_px=width_mm / _PANEL_PX, letters=letters, font=font)
        panel.info["slab_mm"] = round((hi - lo) * slab_mm, 1)
        panels.append(panel)
    return panels


def render_preview(views: Sequence, *, title: str | None = None, notice: str | None = RESEARCH_NOTICE,
                   subtitle: str | None = None) -> Image.Image:
    """One picture with a column per ROI (right kidney first), coronal over axial thin-slab MIP.

    Args:
        views: :class:`renalseg.pipeline.RoiView` objects (``side``, ``hu``,
            ``artery``, ``spacing_xyz_mm`` and optional ``outlines``).
        title: a heading, e.g. the study id.
        notice: the research-use mark, drawn at the foot of the picture (``None``: none).
        subtitle: an extra line under the title (e.g. a quality verdict).

    Returns:
        An RGB ``PIL.Image`` (save it with ``.save("preview.png")``).
    """
    ordered = sorted(views, key=lambda v: 0 if v.side == "right" else 1)
    columns = [(v.side, mip_panels(v.hu, v.artery, v.spacing_xyz_mm, outlines=getattr(v, "outlines", None)))
               for v in ordered]
    margin, caption = 12, 22
    header = (34 if title else 8) + (22 if subtitle else 0)
    footer = 24 if notice else 0
    col_height = max(sum(p.size[1] + caption for p in panels) for _, panels in columns) if columns else 0
    width = margin + len(columns) * (_PANEL_PX + margin)
    height = header + col_height + margin + footer
    canvas = Image.new("RGB", (max(width, _PANEL_PX + 2 * margin), height), (16, 16, 16))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(18), _font(14)
    outlined = sorted({k for v in ordered for k, m in (getattr(v, "outlines", None) or {}).items() if m.any()})
    if title:
        drawn = [kind for kind in outlined if kind != "vein"]
        legend = (", veins (blue)" if "vein" in outlined else "") + (
            f", {' and '.join(drawn)} (outline{'s' if len(drawn) > 1 else ''})" if drawn else "")
        draw.text((margin, 8), f"{title}: renal arteries (red){legend}", fill=_TEXT, font=big)
    if subtitle:
        draw.text((margin, header - 22), subtitle, fill=_TEXT, font=small)
    for index, (side, panels) in enumerate(columns):
        x0 = margin + index * (_PANEL_PX + margin)
        y = header
        for panel, view_name in zip(panels, ("coronal", "axial")):
            draw.text((x0, y + 3), f"{side.upper()} kidney, {view_name} MIP, {panel.info['slab_mm']:g} mm slab",
                      fill=(255, 220, 120), font=small)
            y += caption
            canvas.paste(panel, (x0, y))
            y += panel.size[1]
    if notice:
        draw.text((margin, height - footer + 2), notice, fill=(255, 200, 60), font=small)
    return canvas


def _lps_image(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` resampled onto an LPS-aligned isotropic grid covering its extent."""
    size = np.asarray(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(
        (float(i * (size[0] - 1)), float(j * (size[1] - 1)), float(k * (size[2] - 1))))
        for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    count = np.maximum(1, np.floor((hi - lo) / spacing_mm).astype(int) + 1)
    grid = Geometry((int(count[2]), int(count[1]), int(count[0])), (spacing_mm,) * 3, tuple(lo.tolist()),
                    IDENTITY_DIRECTION)
    return resample_to_grid(sitk.Cast(image, sitk.sitkFloat32), grid, interpolator=sitk.sitkLinear,
                            default_value=-1024.0, pixel_type=sitk.sitkFloat32)


def _draw_outline(view: Image.Image, silhouette: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Paint the boundary pixels of ``silhouette`` (rows × columns of ``view``) in ``colour``."""
    if not silhouette.any():
        return
    inner = np.zeros_like(silhouette)
    inner[1:-1, 1:-1] = (silhouette[1:-1, 1:-1] & silhouette[:-2, 1:-1] & silhouette[2:, 1:-1]
                         & silhouette[1:-1, :-2] & silhouette[1:-1, 2:])
    pixels = np.asarray(view).copy()
    pixels[silhouette & ~inner] = colour
    view.paste(Image.fromarray(pixels))


def render_locate_preview(study: Study | Volume | sitk.Image, rois: Sequence[KidneyROI], *,
                          spacing_mm: float = 1.5, height_px: int = 360) -> Image.Image:
    """A picture of the ROIs on a coronal and an axial slice through the kidneys.

    Args:
        study: the study the ROIs were located in.
        rois: :func:`~renalseg.roi.locate_kidneys`'s result (may be empty).
        spacing_mm: resolution of the views.
        height_px: height of the output picture.

    Returns:
        RGB image: coronal view (left) and axial view (right), boxes labelled R/L and,
        inside each box, the outline of the kidney found (its mask projected along the
        view, so a kidney off the slice shown is outlined too); ``info["panels"]``
        holds each view's column range.

    Example:
        >>> from renalseg.volume import Volume
        >>> g = Geometry((20, 30, 40), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> render_locate_preview(Volume(np.zeros((20, 30, 40), np.int16), g), []).size[1]
        360
    """
    image, _ = unpack_study(study)
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

    def to_rgb(plane: np.ndarray) -> Image.Image:
        return Image.fromarray(_grey(plane, _LOCATE_WINDOW_HU).astype(np.uint8)).convert("RGB")

    coronal = to_rgb(array[::-1, cy, :])   # rows: superior first
    axial = to_rgb(array[cz, :, :])         # rows: anterior first
    n_z = array.shape[0]
    for roi in rois:
        if roi.mask is not None:
            colour = _LOCATE_COLOURS.get(roi.side, (255, 255, 0))
            on_view = sitk.GetArrayFromImage(sitk.Resample(roi.mask.to_sitk(), lps, sitk.Transform(),
                                                           sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
            _draw_outline(coronal, on_view.any(axis=1)[::-1], colour)
            _draw_outline(axial, on_view.any(axis=0), colour)
    draw_c, draw_a = ImageDraw.Draw(coronal), ImageDraw.Draw(axial)
    for roi in rois:
        lo, hi = (to_index(p) for p in roi.box_mm_lps)
        colour = _LOCATE_COLOURS.get(roi.side, (255, 255, 0))
        label = ("R" if roi.side == "right" else "L") + (" (cut)" if roi.truncated else "")
        box_c = (lo[0], n_z - 1 - hi[2], hi[0], n_z - 1 - lo[2])
        box_a = (lo[0], lo[1], hi[0], hi[1])
        for draw, box in ((draw_c, box_c), (draw_a, box_a)):
            draw.rectangle(box, outline=colour, width=2)
            draw.text((box[0] + 3, box[1] + 2), label, fill=colour)
    for view, text in ((coronal, "coronal"), (axial, "axial")):
        draw = ImageDraw.Draw(view)
        draw.text((3, 2), text, fill=(255, 255, 0))
        _mark_sides(draw, (3, view.height // 2), (view.width - 10, view.height // 2), (255, 255, 0))

    def scaled(view: Image.Image) -> Image.Image:
        width = max(1, round(view.width * height_px / max(1, view.height)))
        return view.resize((width, height_px), Image.BILINEAR)

    left, right = scaled(coronal), scaled(axial)
    out = Image.new("RGB", (left.width + right.width + 4, height_px), (0, 0, 0))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + 4, 0))
    out.info["panels"] = {"coronal": (0, left.width), "axial": (left.width + 4, out.width)}
    return out


#: banner colours per quality verdict (renalseg.quality.VERDICTS)
_BANNER_RGB = {"ok": (30, 110, 50), "check": (150, 110, 0), "unreliable": (160, 30, 30)}


def add_banner(picture: Image.Image, text: str, verdict: str, *, width_chars: int = 0) -> Image.Image:
    """``picture`` with a coloured strip on top that says ``text`` (the quality verdict).

    Args:
        picture: e.g. :func:`render_preview`'s result.
        text: one line, wrapped to the picture's width.
        verdict: ``ok`` (green), ``check`` (amber) or ``unreliable`` (red).
        width_chars: wrap width in characters (0: from the picture's width).

    Example:
        >>> add_banner(Image.new("RGB", (300, 100)), "quality: ok (late arterial phase)", "ok").size
        (300, 124)
    """
    import textwrap

    font = _font(14)
    lines = textwrap.wrap(text, width=width_chars or max(20, picture.width // 8)) or [""]
    height = 8 + 16 * len(lines)
    out = Image.new("RGB", (picture.width, picture.height + height), _BANNER_RGB.get(verdict, (90, 90, 90)))
    draw = ImageDraw.Draw(out)
    for index, line in enumerate(lines):
        draw.text((8, 4 + 16 * index), line, fill=(255, 255, 255), font=font)
    out.paste(picture, (0, height))
    return out
