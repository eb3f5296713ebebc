"""``plan.png``: the surgical plan at a glance.

Per kidney, a coronal and an axial slice through the tumour (through the kidney's
centre when there is none), in the radiological convention of ``preview.png`` (the
patient's right on the viewer's left, superior and anterior at the top, physical
aspect ratio): territories coloured (the clamping candidates bright, each in its own
colour, the others faded), the tumour outlined in white, the arteries within 5 mm of
the slice in dark red; below, the clamping proposed (and the tumour's R.E.N.A.L. score,
:mod:`renalseg.nephrometry`) and a legend, the candidates
first, with each territory's name, its share of tumour + margin and its share of the
kidney, each swatch the colour drawn (slivers under 0.5% of the kidney on one line).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage

from renalseg.labels import values_mask
from renalseg.nephrometry import notation
from renalseg.plan import proposed_clamping
from renalseg.preview import _font
from renalseg.tree import bounding_box
from renalseg.volume import Volume, crop

__all__ = ["banner_text", "render_plan", "territory_colours"]

_PANEL_PX = 300
_PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                     [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [255, 187, 120],
                     [152, 223, 138], [174, 199, 232]], dtype=np.float32)
_KIDNEY_RGB = np.array([90, 90, 90], np.float32)
_ARTERY_RGB = np.array([150, 0, 0], np.float32)
#: territories under this share of the kidney (%), holding no more of the tumour and not
#: clamped, share one legend line
_LEGEND_MIN_PERCENT = 0.5
#: voxels shown around each kidney's territories
_MARGIN_VOXELS = 4


def _lps(volume: Volume) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """The array reoriented to LPS (an exact axis permutation/flip), its spacing (z, y, x)."""
    image = sitk.DICOMOrient(volume.to_sitk(), "LPS")
    return sitk.GetArrayFromImage(image), np.asarray(image.GetSpacing(), float)[::-1], image


def _colour(value: int, order: dict[int, int], highlighted: set[int]) -> np.ndarray:
    """A territory's colour as drawn: faded when other territories are the clamping candidates."""
    alpha = 1.0 if value in highlighted or not highlighted else 0.35
    return alpha * _PALETTE[order.get(value, 0) % len(_PALETTE)] + (1 - alpha) * _KIDNEY_RGB * 0.5


def _colour_order(values: list[int], highlighted: set[int]) -> dict[int, int]:
    """Palette places: the clamping candidates first, so that they never share a colour
    (up to the palette's 12), then the other territories.

    Example:
        >>> _colour_order([5, 6, 7, 8], {8, 6})
        {6: 0, 8: 1, 5: 2, 7: 3}
    """
    ordered = [v for v in values if v in highlighted] + [v for v in values if v not in highlighted]
    return {v: k for k, v in enumerate(ordered)}


def territory_colours(plan: dict, candidates: set[int]) -> dict[int, tuple[int, int, int]]:
    """Each territory's colour in ``plan.png`` (full strength), by its value: per kidney,
    the clamping candidates first in the palette (:func:`_colour_order`).

    Example:
        >>> plan = {"kidneys": [{"territories": [{"value": 5}, {"value": 6}]}]}
        >>> territory_colours(plan, {6})
        {5: (255, 127, 14), 6: (31, 119, 180)}
    """
    colours = {}
    for entry in plan["kidneys"]:
        values = [t["value"] for t in entry["territories"]]
        order = _colour_order(values, candidates & set(values))
        for value in values:
            colours[value] = tuple(int(c) for c in _PALETTE[order[value] % len(_PALETTE)])
    return colours


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:  # noqa: ANN001 - a PIL font
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word
    gets a line of its own).

    Example:
        >>> draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        >>> font = _font(12)
        >>> lines = _wrapped(draw, "clamp segmental 6, segmental 5, division 4 side branch 3", font, 120)
        >>> len(lines) > 1 and all(draw.textlength(line, font=font) <= 120 for line in lines)
        True
        >>> " ".join(lines)
        'clamp segmental 6, segmental 5, division 4 side branch 3'
    """
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _panel(territory: np.ndarray, picture: np.ndarray, artery_slab: np.ndarray, order: dict[int, int],
           highlighted: set[int], aspect: float) -> Image.Image:
    rgb = np.zeros(territory.shape + (3,), np.float32)
    rgb[picture == 1] = _KIDNEY_RGB
    for value in np.unique(territory[territory > 0]):
        rgb[territory == value] = _colour(int(value), order, highlighted)
    rgb[artery_slab] = _ARTERY_RGB
    tumour = picture == 3
    rim = tumour & ~ndimage.binary_erosion(tumour)
    rgb[rim] = 255
    image = Image.fromarray(rgb.astype(np.uint8))
    height = max(1, int(round(_PANEL_PX * aspect)))
    return image.resize((_PANEL_PX, height), Image.NEAREST)


def render_plan(result) -> Image.Image:  # noqa: ANN001 - a renalseg.plan.PlanResult
    """Draw ``plan.png`` for a :class:`~renalseg.plan.PlanResult`."""
    territories, labels = result.territories, result.labels
    if territories.array.any():  # the territories' box: a whole study's grid is mostly outside it
        box = bounding_box(territories.array > 0)
        start = tuple(max(b.start - _MARGIN_VOXELS, 0) for b in box)
        stop = (min(b.stop + _MARGIN_VOXELS, n) for b, n in zip(box, territories.array.shape))
        shape = tuple(b - a for a, b in zip(start, stop))
        territories, labels = crop(territories, start, shape), crop(labels, start, shape)  # type: ignore[arg-type]
    territory, spacing, _ = _lps(territories)
    picture, _, _ = _lps(labels)
    candidates = set(result.candidates)
    font, small = _font(15), _font(12)
    columns = []
    for entry in sorted(result.plan["kidneys"], key=lambda e: e["side"] != "right"):
        values = [t["value"] for t in entry["territories"]]
        highlighted = candidates & set(values)  # a kidney without candidates is drawn in full colour
        order = _colour_order(values, highlighted)
        mask = values_mask(territory, values)
        if not mask.any():
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        box = tuple(slice(max(b.start - _MARGIN_VOXELS, 0), min(b.stop + _MARGIN_VOXELS, n))
                    for b, n in zip(box, territory.shape))
        sub_t, sub_p = territory[box], picture[box]
        tumour = (sub_p == 3) & ndimage.binary_dilation(np.isin(sub_t, values), iterations=3)
        centre = np.argwhere(tumour).mean(axis=0) if tumour.any() else np.argwhere(np.isin(sub_t, values)).mean(axis=0)
        cz, cy, _ = (int(round(c)) for c in centre)
        slab = [max(1, int(round(5.0 / s))) for s in spacing]
        artery = sub_p == 2
        coronal_artery = artery[:, max(cy - slab[1], 0):cy + slab[1] + 1].any(axis=1)[::-1]
        axial_artery = artery[max(cz - slab[0], 0):cz + slab[0] + 1].any(axis=0)
        coronal = _panel(sub_t[::-1, cy], sub_p[::-1, cy], coronal_artery, order, highlighted,
                         sub_t.shape[0] * spacing[0] / (sub_t.shape[2] * spacing[2]))
        axial = _panel(sub_t[cz], sub_p[cz], axial_artery, order, highlighted,
                       sub_t.shape[1] * spacing[1] / (sub_t.shape[2] * spacing[2]))
        legend: list[tuple[np.ndarray | None, str]] = []
        tiny = [t for t in entry["territories"] if t["value"] not in highlighted
                and t["percent"] < _LEGEND_MIN_PERCENT and (t.get("tumour_percent") or 0.0) < _LEGEND_MIN_PERCENT]
        for t in sorted(entry["territories"], key=lambda t: order[t["value"]]):  # the candidates on top
            if t in tiny:
                continue
            share = t.get("tumour_percent")  # the territory's own share (its branch's tree may hold more)
            tumour_text = f", tumour {share:.0f}%" if share is not None else ""
            mark = "  << clamp" if t["value"] in highlighted else ""
            legend.append((_colour(t["value"], order, highlighted),
                           f"{t['name']}: kidney {t['percent']:.0f}%{tumour_text}{mark}"))
        if tiny:  # one line for the side branches' slivers, which only lengthen the legend
            legend.append((None, f"{len(tiny)} more, each under {_LEGEND_MIN_PERCENT:g}% of the kidney "
                                 f"({sum(t['percent'] for t in tiny):.1f}% in all; plan.json lists them)"))
        clamping = entry.get("clamping")
        if clamping:
            names, cost = proposed_clamping(clamping)
            summary = (f"clamp {', '.join(names)}: {cost['ischaemic_ml']:.0f} ml ({cost['ischaemic_percent']:.0f}%) "
                       "ischaemic" + (" (main-artery clamping)" if clamping["strategy"] == "main" else ""))
            if clamping["strategy"] == "selective" and clamping.get("fewest"):
                fewest = clamping["fewest"]
                summary += (f"; fewest clamps: {', '.join(fewest['names'])}, {fewest['ischaemic_ml']:.0f} ml "
                            f"({fewest['ischaemic_percent']:.0f}%)")
        else:
            summary = entry["status"].replace("_", " ")
        score = (entry.get("tumour") or {}).get("nephrometry")
        if score:
            summary += f"; R.E.N.A.L. {notation(score)} ({score['complexity']})"
        columns.append((entry["side"], coronal, axial, legend, summary))
    if not columns:
        image = Image.new("RGB", (2 * _PANEL_PX, 60), "black")
        ImageDraw.Draw(image).text((8, 20), "no territories to show (no kidney label)", fill="white", font=font)
        return _with_verdict(image, result.plan)
    column_px = _PANEL_PX + 180
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    columns = [(side, coronal, axial, legend, _wrapped(measure, summary, small, column_px - 12))
               for side, coronal, axial, legend, summary in columns]
    legend_h = max(16 * len(c[4]) + 4 + 16 * len(c[3]) for c in columns) + 22
    height = 24 + max(c[1].height + c[2].height for c in columns) + 8 + legend_h
    canvas = Image.new("RGB", (column_px * len(columns), height), "black")
    draw = ImageDraw.Draw(canvas)
    for k, (side, coronal, axial, legend, summary) in enumerate(columns):
        x0 = k * column_px
        draw.text((x0 + 6, 4), f"{side} kidney: coronal (top), axial (below); R on the left", fill="white", font=font)
        canvas.paste(coronal, (x0, 24))
        canvas.paste(axial, (x0, 24 + coronal.height + 4))
        y = 24 + coronal.height + axial.height + 12
        for line in summary:
            draw.text((x0 + 6, y), line, fill=(255, 255, 120), font=small)
            y += 16
        y += 4
        for colour, text in legend:
            if colour is not None:
                draw.rectangle([x0 + 6, y + 2, x0 + 18, y + 12], fill=tuple(int(c) for c in colour))
            draw.text((x0 + 24, y), text, fill="white", font=small)
            y += 16
    return _with_verdict(canvas, result.plan)


def banner_text(plan: dict) -> str | None:
    """The strip over ``plan.png``: ``renalseg segment``'s verdict on the labels, when
    known, a kidney it located none of (the picture has no column for it, and a surgeon
    must not take the patient for one with a single kidney), and the tumour planned when
    it was given (``--tumour``, ``--tumour-at``) rather than segmented; ``None`` when there
    is none of these.

    Example:
        >>> banner_text({"study": {"segment_verdict": "ok", "tumour": "a sphere 38 mm across at LPS (1, 2, 3) mm"}})
        'labels from renalseg segment, quality: ok; tumour planned: a sphere 38 mm across at LPS (1, 2, 3) mm'
        >>> banner_text({"study": {"segment_verdict": "check", "not_located": {"left": "..."}}}).split("; ")[-1]
        'left kidney not located by renalseg segment, so not planned'
    """
    study = plan.get("study") or {}
    verdict, given = study.get("segment_verdict"), study.get("tumour")
    parts = []
    if verdict is not None:
        parts.append(f"labels from renalseg segment, quality: {verdict}")
        if verdict != "ok":
            parts.append("check them against the images before using this plan (notes in plan.json)")
    for side in sorted(study.get("not_located") or {}):
        parts.append(f"{side} kidney not located by renalseg segment, so not planned")
    if given:
        parts.append(f"tumour planned: {given}")
    return "; ".join(parts) or None


def _with_verdict(picture: Image.Image, plan: dict) -> Image.Image:
    """``picture`` under a strip saying :func:`banner_text`, coloured by the verdict (grey
    when there is none)."""
    from renalseg.preview import add_banner

    text = banner_text(plan)
    if text is None:
        return picture
    return add_banner(picture, text, (plan.get("study") or {}).get("segment_verdict") or "")
