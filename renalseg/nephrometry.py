"""The R.E.N.A.L. nephrometry score of a kidney tumour, from the kidney and tumour labels.

Kutikov and Uzzo (J Urol 2009;182:844-53) score a renal mass for partial nephrectomy on
four features of 1-3 points each, plus a letter; surgeons quote the sum (4-6 low,
7-9 moderate, 10-12 high complexity). Each feature is measured here on the labels, in
the patient's frame, with the figures it was read from:

* **R** (radius): the tumour's largest diameter (:func:`renalseg.figures.largest_diameter_mm`):
  ≤ 40 mm 1, 40-70 mm 2, ≥ 70 mm 3.
* **E** (exophytic/endophytic): the share of the tumour outside the kidney's convex
  outline (the convex hull of the parenchyma, the outline the tumour bulges from):
  ≥ 50% 1, under 50% 2, none (under :data:`ENDOPHYTIC_MAX_SHARE`) 3.
* **N** (nearness to the collecting system or sinus): the shortest distance from the
  tumour to the renal sinus: ≥ 7 mm 1, 4-7 mm 2, ≤ 4 mm 3. The sinus is what the
  parenchyma's convex hull holds that is neither kidney nor tumour, at least
  :data:`SINUS_MIN_DEPTH_MM` inside the hull (the hilum's fat and vessels; a shallow dip
  in the surface is not sinus), its largest piece grown back by that depth (its thin
  ends), once the vessels that run in the parenchyma are closed over
  (:data:`VESSEL_CLOSING_MM`).
* **A** (anterior/posterior): ``a`` or ``p`` where the tumour's centre lies in front of
  or behind the kidney's coronal mid-plane by more than :data:`AP_NEUTRAL_SHARE` of the
  kidney's half-thickness, ``x`` otherwise.
* **L** (location to the polar lines): the polar lines are the sinus's upper and lower
  ends along the kidney's long axis. The tumour entirely beyond one 1; crossing one with
  at most half of it between them 2; more than half between them, or across the kidney's
  axial mid-plane, 3.

The hilar suffix ``h``: the tumour abuts the main renal artery or vein, its wall within
:data:`HILAR_CONTACT_MM` of the tumour (no fat plane CT resolves between them), outside
the kidney or in the hilum's mouth (:data:`HILAR_MAX_DEPTH_MM`). The main vessels are the
caller's to give, as centerlines with their radii (``renalseg plan``: the artery tree's
main branches, and the renal vein from its medial end to where it divides);
``h`` is scored when either touches the tumour, or when both are known and neither does.
On labels from ``renalseg segment`` the score is as good as the tumour label, which finds
part of each tumour (docs/validation.md): score a tumour drawn or corrected by hand
(``renalseg plan --tumour FILE``) or given by its centre and diameter (``--tumour-at``).
Agreement with the phantoms' truth is in docs/validation.md, "R.E.N.A.L. nephrometry".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError, cKDTree

from renalseg.components import STRUCTURE_26, physical_ball
from renalseg.geometry import Geometry
from renalseg.tree import bounding_box

__all__ = ["ENDOPHYTIC_MAX_SHARE", "SINUS_MIN_DEPTH_MM", "VESSEL_CLOSING_MM", "AP_NEUTRAL_SHARE", "HILAR_CONTACT_MM",
           "HILAR_MAX_DEPTH_MM", "kidney_outline", "kidney_frame", "renal_score", "hilar", "notation", "complexity", "describe",
           "SEGMENTED_CAVEAT"]

#: a tumour with less than this share outside the kidney's convex outline is endophytic
#: (the outline of voxel centres leaves a surface voxel's half outside)
ENDOPHYTIC_MAX_SHARE = 0.05

#: the sinus lies at least this deep inside the parenchyma's convex hull
SINUS_MIN_DEPTH_MM = 4.0

#: vessels in the parenchyma (interlobar arteries and veins, up to about twice this
#: across) are closed over before the sinus is looked for: the tree would carry the
#: sinus out to the cortex
VESSEL_CLOSING_MM = 2.0

#: a tumour centre within this share of the kidney's half-thickness of its coronal
#: mid-plane is neither anterior nor posterior (``x``)
AP_NEUTRAL_SHARE = 0.15

#: a main renal vessel whose wall comes this close to the tumour abuts it (``h``): two
#: to three voxels of the model grid, under the fat plane CT shows between two structures
HILAR_CONTACT_MM = 2.0

#: the main vessels count up to this deep inside the kidney's convex outline (the hilum's
#: mouth): deeper, what a label map's tree calls its main artery is the sinus's divisions
#: (on 40 phantoms without a hilar tumour, h given wrongly to 4 with the whole main artery,
#: to 1 with this; the 40 with one unchanged: benchmarks/bench_hilar.py)
HILAR_MAX_DEPTH_MM = 5.0


def complexity(score: int) -> str:
    """Kutikov and Uzzo's bands of the sum.

    Example:
        >>> [complexity(s) for s in (5, 8, 11)]
        ['low', 'moderate', 'high']
    """
    return "low" if score <= 6 else "moderate" if score <= 9 else "high"


def kidney_frame(points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, long axis (pointing superior) and half-length of a kidney, from its voxels'
    positions (LPS mm).

    Example:
        >>> points = np.array([[0.0, 0.0, z] for z in range(-50, 51)] + [[5.0, 0.0, 0.0], [-5.0, 0.0, 0.0]])
        >>> centre, axis, half = kidney_frame(points)
        >>> np.round(axis, 3).tolist(), round(half)
        ([0.0, 0.0, 1.0], 50)
    """
    centre = points_mm.mean(axis=0)
    axis = np.linalg.svd(points_mm - centre, full_matrices=False)[2][0]
    if axis[2] < 0:
        axis = -axis
    half = float(np.percentile(np.abs((points_mm - centre) @ axis), 99)) or 1.0
    return centre, axis, half


def _hull_mask(shape_zyx: tuple[int, ...], spacing_zyx: np.ndarray, hull: ConvexHull, tolerance: float
               ) -> np.ndarray:
    """The grid's voxels within ``tolerance`` of the hull (its coordinates: index × spacing).

    Row by row: along x each row of voxels meets a convex body in one interval, whose ends
    the faces give at once. About 40 times faster than testing every voxel against every
    face, or than ``skimage.morphology.convex_hull_image`` (45 s on a 120 × 150 × 150
    box; a 216 × 152 × 152 box here: 0.2 s against 8 s, 2-core AMD EPYC).
    """
    normals, offsets = hull.equations[:, :3], hull.equations[:, 3] - tolerance
    z, y = np.arange(shape_zyx[0]) * spacing_zyx[0], np.arange(shape_zyx[1]) * spacing_zyx[1]
    x = np.arange(shape_zyx[2]) * spacing_zyx[2]
    ax = normals[:, 2]
    up, down, flat = ax > 1e-9, ax < -1e-9, np.abs(ax) <= 1e-9
    mask = np.zeros(shape_zyx, bool)
    for start in range(0, shape_zyx[0], 16):
        rest = (offsets + normals[:, 0] * z[start:start + 16, None, None]
                + normals[:, 1] * y[None, :, None])  # (z, y, faces): ax · x + rest <= 0 inside
        upper = (-rest[..., up] / ax[up]).min(axis=-1) if up.any() else np.full(rest.shape[:2], np.inf)
        lower = (-rest[..., down] / ax[down]).max(axis=-1) if down.any() else np.full(rest.shape[:2], -np.inf)
        rows = (rest[..., flat] <= 0).all(axis=-1)
        mask[start:start + 16] = (x >= lower[..., None]) & (x <= upper[..., None]) & rows[..., None]
    return mask


def kidney_outline(kidney: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray | None:
    """The kidney's convex outline: the voxels within half a voxel of the convex hull of
    its surface voxels' centres (in millimetres along the array's axes: membership needs
    no direction); ``None`` for a kidney too flat or small to have one.

    Example:
        >>> k = np.zeros((9, 9, 9), bool); k[2:7, 2:7, 2:7] = True; k[4, 4, 2:5] = False  # a dent
        >>> outline = kidney_outline(k, np.ones(3))
        >>> bool(outline[4, 4, 2]), int(outline.sum()), bool(outline[0, 0, 0])
        (True, 125, False)
    """
    surface = kidney & ~ndimage.binary_erosion(kidney, STRUCTURE_26)
    try:
        hull = ConvexHull(np.argwhere(surface) * spacing_zyx)
        hull = ConvexHull(hull.points[hull.vertices], qhull_options="C0.5")  # faces merged within 0.5 mm
    except QhullError:
        return None
    return _hull_mask(kidney.shape, spacing_zyx, hull, 0.5 * float(np.max(spacing_zyx)))


def hilar(tumour_mm: np.ndarray, main_vessels: Mapping[str, tuple[np.ndarray, np.ndarray] | None],
          half_voxel_mm: float) -> dict:
    """Whether a tumour abuts the main renal artery or vein (Kutikov and Uzzo's ``h``).

    Args:
        tumour_mm: the tumour's voxel centres (LPS mm; its surface voxels suffice).
        main_vessels: ``"artery"`` and ``"vein"``, each the main vessel's centerline
            points (LPS mm) and inscribed radii (mm), or ``None`` where it is not known.
        half_voxel_mm: half the grid's smallest voxel: a voxel centre lies that far inside
            its label's surface.

    Returns:
        ``{"h": True | False | None, "main_artery_mm", "main_vein_mm"}``: the gap (mm)
        between each vessel's wall and the tumour's surface, 0 where they touch, ``None``
        where the vessel is not known; ``h`` is ``None`` where neither touches and one is
        not known.

    Example:
        >>> tumour = np.array([[x, y, z] for x in range(10) for y in range(10) for z in range(10)], float)
        >>> vein = (np.array([[12.0, 5.0, z] for z in range(10)]), np.full(10, 1.5))  # wall 1 mm from the surface
        >>> artery = (np.array([[30.0, 5.0, z] for z in range(10)]), np.full(10, 2.0))
        >>> hilar(tumour, {"artery": artery, "vein": vein}, 0.5)
        {'h': True, 'main_artery_mm': 18.5, 'main_vein_mm': 1.0}
        >>> hilar(tumour, {"artery": artery, "vein": None}, 0.5)["h"] is None
        True
    """
    tree = cKDTree(np.asarray(tumour_mm, float))
    gaps: dict[str, float | None] = {}
    for name in ("artery", "vein"):
        vessel = main_vessels.get(name)
        if vessel is None or len(vessel[0]) == 0:
            gaps[name] = None
            continue
        points, radius = np.asarray(vessel[0], float), np.asarray(vessel[1], float)
        gap = float(np.min(tree.query(points)[0] - radius)) - half_voxel_mm
        gaps[name] = round(max(gap, 0.0), 1)
    known = [gap for gap in gaps.values() if gap is not None]
    touching = any(gap <= HILAR_CONTACT_MM for gap in known)
    h = True if touching else False if len(known) == len(gaps) else None
    return {"h": h, "main_artery_mm": gaps["artery"], "main_vein_mm": gaps["vein"]}


def _outside_sinus(vessel: tuple[np.ndarray, np.ndarray] | None, grid: Geometry, depth_inside: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """A main vessel's centerline points no deeper than :data:`HILAR_MAX_DEPTH_MM` inside
    the kidney's convex outline (``depth_inside`` on ``grid``); all of them where none is."""
    if vessel is None:
        return None
    points, radius = np.asarray(vessel[0], float), np.asarray(vessel[1], float)
    index = np.round(grid.world_to_index(points)[:, ::-1]).astype(int)
    in_box = np.all((index >= 0) & (index < np.array(depth_inside.shape)), axis=1)
    deep = np.zeros(len(points), bool)
    deep[in_box] = depth_inside[tuple(index[in_box].T)] > HILAR_MAX_DEPTH_MM
    return (points[~deep], radius[~deep]) if (~deep).any() else (points, radius)


def notation(score: Mapping) -> str:
    """The score as surgeons write it: the sum, a/p/x, and ``h`` when hilar.

    Example:
        >>> notation({"score": 10, "suffix": "a", "hilar": {"h": True}}), notation({"score": 7, "suffix": "x"})
        ('10ah', '7x')
    """
    return f"{score['score']}{score['suffix']}" + ("h" if (score.get("hilar") or {}).get("h") else "")


def renal_score(kidney: np.ndarray, tumour: np.ndarray, geometry: Geometry, *,
                sinus: np.ndarray | None = None,
                main_vessels: Mapping[str, tuple[np.ndarray, np.ndarray] | None] | None = None) -> dict | None:
    """The R.E.N.A.L. score of ``tumour`` on ``kidney`` (bool arrays on ``geometry``).

    Args:
        kidney: the kidney's parenchyma (tumour not included).
        tumour: one tumour (its voxels; pieces are scored together).
        geometry: the arrays' grid (oblique and anisotropic grids measure right).
        sinus: the renal sinus and collecting system where known (a phantom's truth,
            another tool's label); default: found from the kidney's outline.
        main_vessels: the main renal artery's and vein's centerlines and radii, as
            :func:`hilar` takes them; without them the hilar suffix is not scored.

    Returns:
        ``{"score", "suffix", "complexity", "R": {"points", "diameter_mm"}, "E": {"points",
        "exophytic_percent"}, "N": {"points", "distance_mm"}, "A": "a" | "p" | "x",
        "L": {"points", "between_polar_lines_percent", "crosses_midline"}, "hilar": None | {"h",
        "main_artery_mm", "main_vein_mm"}}`` (:func:`hilar`; ``suffix`` is a/p/x, :func:`notation`
        adds ``h``);
        ``None`` without a tumour, or a kidney too small or flat to have an outline or
        without a sinus (a kidney label cut short above or below its hilum).
    """
    from renalseg.figures import largest_diameter_mm

    kidney, tumour = np.asarray(kidney, bool) & ~np.asarray(tumour, bool), np.asarray(tumour, bool)
    if not tumour.any() or kidney.sum() < 50:
        return None
    spacing_zyx = np.asarray(geometry.spacing_xyz_mm, float)[::-1]
    reach = np.ceil(2 * SINUS_MIN_DEPTH_MM / spacing_zyx).astype(int) + 1
    tight = bounding_box(kidney | tumour)
    lo = np.maximum([b.start for b in tight] - reach, 0)
    hi = np.minimum([b.stop for b in tight] + reach, kidney.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    kidney, tumour = kidney[box], tumour[box]
    given_sinus = None if sinus is None else np.asarray(sinus, bool)[box]
    sub = geometry.crop(tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo))

    in_hull = kidney_outline(kidney, spacing_zyx)
    if in_hull is None:
        return None
    exophytic = float((tumour & ~in_hull).sum() / tumour.sum())
    depth = ndimage.distance_transform_edt(in_hull, sampling=spacing_zyx)  # inside the outline, mm

    if given_sinus is None:  # the vessels running in the parenchyma are not sinus: closed over first
        ball = physical_ball(VESSEL_CLOSING_MM, spacing_zyx)
        radius = np.array(ball.shape) // 2
        solid = ndimage.binary_closing(np.pad(kidney | tumour, radius[:, None]), ball)[
            tuple(slice(r, r + n) for r, n in zip(radius, kidney.shape))]
        pieces, count = ndimage.label(in_hull & ~solid & (depth >= SINUS_MIN_DEPTH_MM), STRUCTURE_26)
        sinus = (pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))) if count else np.zeros_like(kidney)
        if sinus.any():  # its ends, thinner than the depth asked of its core, grown back
            sinus = in_hull & ~solid & (ndimage.distance_transform_edt(~sinus, sampling=spacing_zyx)
                                        <= SINUS_MIN_DEPTH_MM)
    else:
        sinus = given_sinus
    if not sinus.any():
        return None
    distance = float(ndimage.distance_transform_edt(~sinus, sampling=spacing_zyx)[tumour].min())

    # the patient's frame: the kidney's long axis (pointing superior) and its centre
    kidney_world = sub.index_to_world(np.argwhere(kidney)[:, ::-1].astype(float))
    centre, axis, _ = kidney_frame(kidney_world)
    tumour_world = sub.index_to_world(np.argwhere(tumour)[:, ::-1].astype(float))
    half_thickness = float(np.percentile(np.abs(kidney_world[:, 1] - centre[1]), 99)) or 1.0
    offset = float(centre[1] - tumour_world[:, 1].mean()) / half_thickness  # anterior is -y in LPS
    side = "a" if offset > AP_NEUTRAL_SHARE else "p" if offset < -AP_NEUTRAL_SHARE else "x"

    height = (tumour_world - centre) @ axis
    sinus_height = (sub.index_to_world(np.argwhere(sinus)[:, ::-1].astype(float)) - centre) @ axis
    upper, lower = float(sinus_height.max()), float(sinus_height.min())
    between = float(((height <= upper) & (height >= lower)).mean())
    crosses_midline = bool(height.min() < 0 < height.max())
    location = 1 if between == 0 else 3 if between > 0.5 or crosses_midline else 2

    diameter = largest_diameter_mm(tumour, sub)
    touch = None
    if main_vessels is not None:  # their part in the hilum's mouth or outside the kidney
        surface = tumour & ~ndimage.binary_erosion(tumour, STRUCTURE_26)
        touch = hilar(sub.index_to_world(np.argwhere(surface)[:, ::-1].astype(float)),
                      {name: _outside_sinus(vessel, sub, depth) for name, vessel in main_vessels.items()},
                      0.5 * float(spacing_zyx.min()))
    points = {"R": 1 if diameter <= 40 else 2 if diameter < 70 else 3,
              "E": 1 if exophytic >= 0.5 else 2 if exophytic >= ENDOPHYTIC_MAX_SHARE else 3,
              "N": 1 if distance >= 7 else 2 if distance > 4 else 3, "L": location}
    score = sum(points.values())
    return {"score": score, "suffix": side, "complexity": complexity(score),
            "R": {"points": points["R"], "diameter_mm": round(diameter, 1)},
            "E": {"points": points["E"], "exophytic_percent": round(100 * exophytic, 1)},
            "N": {"points": points["N"], "distance_mm": round(distance, 1)},
            "A": side,
            "L": {"points": location, "between_polar_lines_percent": round(100 * between, 1),
                  "crosses_midline": crosses_midline},
            "hilar": touch}


#: what a report adds to a score read from ``renalseg segment``'s tumour label
SEGMENTED_CAVEAT = ("scored on the segmented tumour, which finds part of a tumour and little of what bulges out of "
                    "the kidney: a guide only; score the tumour drawn by hand (plan --tumour FILE) or given by its "
                    "centre and diameter (--tumour-at X,Y,Z --tumour-diameter-mm D)")


def _hilar_words(touch: Mapping | None) -> str:
    if touch is None:
        return "hilar (h) not scored"
    gaps = {"main renal artery": touch.get("main_artery_mm"), "main renal vein": touch.get("main_vein_mm")}
    if touch.get("h"):
        touching = [n for n, g in gaps.items() if g is not None and g <= HILAR_CONTACT_MM]
        return "h (abuts the " + " and the ".join(touching) + ")"
    known = ", ".join(f"{n} {g:g} mm" for n, g in gaps.items() if g is not None)
    if touch.get("h") is False:
        return f"not hilar ({known} from it)"
    missing = " or ".join(n for n, g in gaps.items() if g is None)
    return f"hilar (h) not scored: no {missing} in the labels" + (f" ({known} from it)" if known else "")


def describe(score: dict, *, segmented: bool = False) -> str:
    """One line a report can print: the sum, the letter, the band, and each feature with
    the figure it was read from; with ``segmented``, :data:`SEGMENTED_CAVEAT`.

    Example:
        >>> print(describe({"score": 8, "suffix": "p", "complexity": "moderate",
        ...                 "R": {"points": 2, "diameter_mm": 45.0}, "E": {"points": 1, "exophytic_percent": 62.0},
        ...                 "N": {"points": 3, "distance_mm": 1.2},
        ...                 "L": {"points": 2, "between_polar_lines_percent": 30.0, "crosses_midline": False},
        ...                 "hilar": {"h": True, "main_artery_mm": 6.5, "main_vein_mm": 0.0}}))
        ... # doctest: +ELLIPSIS
        R.E.N.A.L. 8ph (moderate): R 2 (45 mm across), E 1 (62% outside the kidney's outline), N 3 (1.2 mm ...
    """
    location = f"{score['L']['between_polar_lines_percent']:g}% between the polar lines"
    if score["L"].get("crosses_midline"):
        location += ", across the kidney's mid-plane"
    return (f"R.E.N.A.L. {notation(score)} ({score['complexity']}): "
            f"R {score['R']['points']} ({score['R']['diameter_mm']:g} mm across), "
            f"E {score['E']['points']} ({score['E']['exophytic_percent']:g}% outside the kidney's outline), "
            f"N {score['N']['points']} ({score['N']['distance_mm']:g} mm from the sinus), "
            f"L {score['L']['points']} ({location}); {_hilar_words(score.get('hilar'))}"
            + (f"; {SEGMENTED_CAVEAT}" if segmented else ""))
