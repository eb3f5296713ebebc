"""The whole-abdomen scene, and the two phantom kinds built from it.

One random abdomen (body wall, spine and lower ribs, psoas and back muscles, aorta
with calcified plaques, its celiac (splenic, hepatic), mesenteric and iliac branches,
IVC, splenic and portal veins, liver, spleen, pancreas, stomach, duodenum, small bowel
and colon with or without oral contrast, adrenals, both kidneys with their trees,
veins, cysts and tumours) is built in patient LPS millimetres, then rendered on a
grid:

* kind ``abdomen``: the whole scene on a 512 × 512 × (250–500) grid at clinical
  spacing, the patient shifted and slightly rotated in the field of view;
* kind ``roi``: only a 152 × 152 × Z box around one kidney, on an LPS-aligned grid
  at a per-case spacing (in-plane 0.55–0.8 mm, slices 0.5–1.0 mm), so its
  distractors (aorta or IVC at the medial edge, spine, psoas, bowel, liver or
  spleen) are anatomically consistent.

Seeds: every random choice comes from ``numpy.random.default_rng(seed)`` in a fixed
order, so the same seed and options give identical arrays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from renalseg.errors import UsageError, suggest
from renalseg.geometry import Geometry
from renalseg.phantom.anatomy import Kidney, build_kidney, smooth_path
from renalseg.phantom.render import Canvas, finish_image, smooth_field
from renalseg.phantom.shapes import CylinderZ, Ellipsoid, Intersection, Perturbed, Shape, Tube, rotation_matrix
from renalseg.phantom.tissues import (
    DEFAULT_INTENSITY_RANGES_HU,
    TISSUE_IDS,
    TISSUE_TO_KIPA,
    TISSUES,
    TUMOUR_HYPER_HU,
    TUMOUR_HYPO_HU,
    TUMOUR_NECROSIS_HU,
    CALCULUS_HU,
    EXCRETED_CONTRAST_HU,
)
from renalseg.volume import Volume

logger = logging.getLogger(__name__)

__all__ = ["NOISE_RANGE_HU", "PhantomCase", "Scene", "build_scene", "synthesize_roi", "synthesize_abdomen",
           "sample_intensities", "labels_from_tissues", "random_placement", "DIRECTIONS", "TUMOUR_SITES"]

#: the phantoms' noise (HU standard deviation after the PSF), drawn per case: a modern
#: low-dose CTA at the model's 0.7 x 0.7 x 1 mm voxels (renalseg.phantom.tissues)
NOISE_RANGE_HU: tuple[float, float] = (8.0, 25.0)

#: a left renal vein passing behind the aorta (``left_renal_vein``) lies flattened between
#: the aorta and the spine: its radius there (mm) ...
RETROAORTIC_RADIUS_MM = 3.5
#: ... and how far it holds the aorta off the vertebral body (mm; the aorta otherwise lies
#: within about 2 mm of it)
RETROAORTIC_LIFT_MM = 6.0

#: orientation code -> ITK direction (row-major) for the abdomen kind's ``direction`` option
DIRECTIONS: dict[str, tuple[float, ...]] = {
    "LPS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    "RAS": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    "LAS": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    "RPS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
}


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """One synthetic case with its ground truth.

    Attributes:
        image: int16 HU CT.
        label: uint8 KiPA22 labels on the same grid (0 background, 1 vein, 2 kidney,
            3 artery, 4 tumour); a voxel is labelled when at least half covered.
        tissues: uint8 tissue-class map (ids in :data:`~renalseg.phantom.TISSUES`),
            each voxel's dominant tissue: the last-painted (innermost) structure
            covering at least half of it, else what lies beneath; the labels are this
            map through :data:`~renalseg.phantom.tissues.TISSUE_TO_KIPA`.
        params: JSON-ready description (seed, kind, grid, intensities, imaging,
            kidneys with their trees, variants, tumour, timings).
        territory: with the ``territories`` option, the true perfusion territories
            (uint8, see :mod:`renalseg.phantom.territory`), else None.
        truth: with the ``territories`` option, their description and the feeding
            segmental arteries, else None.
    """

    image: Volume
    label: Volume
    tissues: Volume
    params: dict
    territory: Volume | None = None
    truth: dict | None = None


@dataclass
class Scene:
    """A random abdomen: tissue layers in painter's order, and its kidneys."""

    layers: list[tuple[str, list[Shape], list[np.ndarray]]]
    base_layers: list[tuple[str, list[Shape]]]
    kidneys: dict[str, Kidney]
    params: dict = field(default_factory=dict)


def _r(v: np.ndarray | list) -> list[float]:
    return [round(float(x), 2) for x in np.asarray(v, float).ravel()]


def intensity_ranges(overrides: Mapping[str, Sequence[float]] | None = None) -> dict[str, tuple[float, float]]:
    """:data:`DEFAULT_INTENSITY_RANGES_HU` with some tissues' ranges replaced.

    Raises:
        UsageError: an unknown tissue name (with a suggestion), or a range that is not
            two numbers ``lo ≤ hi``.

    Example:
        >>> intensity_ranges({"renal_artery": (250, 340)})["renal_artery"]
        (250.0, 340.0)
    """
    ranges = dict(DEFAULT_INTENSITY_RANGES_HU)
    for name, bounds in (overrides or {}).items():
        if name not in ranges:
            raise UsageError(f"intensity_ranges_hu: unknown tissue {name!r}.{suggest(name, ranges)} "
                             f"Valid names: {', '.join(sorted(ranges))}.")
        try:
            values = [float(v) for v in bounds]
        except (TypeError, ValueError):
            values = []
        if len(values) != 2 or not values[0] <= values[1]:
            raise UsageError(f"intensity_ranges_hu[{name!r}] must be (lo, hi) with lo ≤ hi; got {bounds!r}.")
        ranges[name] = (values[0], values[1])
    return ranges


def sample_intensities(rng: np.random.Generator, *, tumour_enhancement: str = "hypo",
                       ranges: Mapping[str, Sequence[float]] | None = None) -> dict[str, float]:
    """One case's mean HU per tissue, each inside its range.

    Args:
        rng: the case's generator (the same number of draws whatever the ranges, so
            a seed keeps its anatomy and imaging when only ranges change).
        tumour_enhancement: "hypo" or "hyper".
        ranges: tissues whose range replaces :data:`DEFAULT_INTENSITY_RANGES_HU`'s, see
            :func:`intensity_ranges`. The couplings stay: aorta and the other arteries
            follow the renal artery, the cortex stays 80 HU below it, sinus fat
            follows fat.
    """
    ranges = intensity_ranges(ranges)
    out = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in ranges.items()}
    lo, hi = ranges["aorta"]
    out["aorta"] = float(np.clip(out["renal_artery"] * rng.uniform(0.98, 1.08), lo, hi))
    # the cortex's enhancement comes from its arterial blood: arteries stay clearly brighter
    lo, hi = ranges["kidney_cortex"]
    top = max(lo, min(hi, out["renal_artery"] - 80.0))
    out["kidney_cortex"] = lo + (out["kidney_cortex"] - lo) / (hi - lo) * (top - lo)
    lo, hi = ranges["sinus_fat"]
    out["sinus_fat"] = float(np.clip(out["fat"] + rng.uniform(0, 20), lo, hi))
    lo, hi = ranges["other_artery"]
    out["other_artery"] = float(np.clip(out["aorta"] * rng.uniform(0.95, 1.0), lo, hi))
    out["ureter"] = out["collecting_system"]
    band = TUMOUR_HYPER_HU if tumour_enhancement == "hyper" else TUMOUR_HYPO_HU
    out["tumour"] = float(rng.uniform(*band))
    return {k: round(v, 1) for k, v in out.items()}


def build_scene(rng: np.random.Generator, *, rotation: np.ndarray, shift_mm: np.ndarray,
                tumour: bool | None = None, accessory: bool | None = None,
                early_branching: bool | None = None, kidney_drop_mm: Mapping[str, float] | None = None,
                absent_kidney: str | None = None, malrotated: Sequence[str] = (),
                large_tumour: str | None = None, horseshoe: Mapping[str, float] | None = None,
                left_renal_vein: str | None = None, tumour_site: str = "any") -> Scene:
    """Build a random abdomen placed in the scanner by ``p -> rotation @ p + shift_mm``.

    The patient frame has the L1/L2 disc at z = 0 and the body axis at x = y = 0.
    ``kidney_drop_mm``, ``absent_kidney``, ``malrotated``, ``large_tumour``,
    ``horseshoe`` (the values :func:`horseshoe_shape` draws) and ``left_renal_vein``
    (``"retroaortic"``, ``"circumaortic"``) are the anatomical variants
    of :mod:`renalseg.phantom.variants`; left at their defaults they change nothing, and
    set they draw nothing more from ``rng``. ``tumour_site`` (:data:`TUMOUR_SITES`):
    where a tumour grows, :func:`renalseg.phantom.anatomy.build_kidney`'s option.
    """
    if tumour_site not in TUMOUR_SITES:
        raise UsageError(f"tumour_site must be one of {', '.join(TUMOUR_SITES)}; got {tumour_site!r}.")
    R = np.asarray(rotation, float)
    T = np.asarray(shift_mm, float)
    yaw = float(np.arctan2(R[1, 0], R[0, 0]))

    def P(x: float, y: float, z: float) -> np.ndarray:
        return R @ np.array([x, y, z], float) + T

    def cyl(cx: float, cy: float, semi: tuple[float, float], zr: tuple[float, float], power: float = 2.0,
            angle: float = 0.0) -> CylinderZ:
        c = P(cx, cy, 0.0)
        return CylinderZ((c[0], c[1]), semi, angle + yaw, (zr[0] + T[2], zr[1] + T[2]), power)

    def ell(c: tuple[float, float, float], semi: tuple[float, float, float], axes: np.ndarray | None = None,
            power: float = 2.0) -> Ellipsoid:
        return Ellipsoid(tuple(P(*c)), R @ (np.eye(3) if axes is None else axes), semi, power)

    def tube(ctrl: list[tuple[float, float, float]], radii: tuple[float, float], step: float = 3.0) -> Tube:
        path = smooth_path(np.stack([P(*p) for p in ctrl]), step)
        return Tube(path, np.linspace(radii[0], radii[1], len(path)))

    p: dict[str, Any] = {}
    # -- body ---------------------------------------------------------------------
    a_body, b_body = rng.uniform(150, 180), rng.uniform(105, 130)
    fat_mm, wall_mm = rng.uniform(8, 30), rng.uniform(8, 12)
    zr = (-400.0, 400.0)
    body = cyl(0, 0, (a_body, b_body), zr, 2.6)
    wall = cyl(0, 0, (a_body - fat_mm, b_body - fat_mm), zr, 2.6)
    cavity = cyl(0, 0, (a_body - fat_mm - wall_mm, b_body - fat_mm - wall_mm), zr, 2.6)
    base_layers = [("fat", [body]), ("muscle", [wall]), ("fat", [cavity])]
    p["body"] = {"semi_axes_mm": _r([a_body, b_body]), "subcutaneous_fat_mm": round(fat_mm, 1)}

    y_vb = b_body - fat_mm - wall_mm - rng.uniform(45, 55)  # vertebral body centre (posterior is +y)
    layers: list[tuple[str, list[Shape], list[np.ndarray]]] = []

    def inside(shapes: list[Shape]) -> list[Shape]:
        return [Intersection(s, cavity) for s in shapes]

    # -- vessels' positions (needed by organs and kidneys) ---------------------------
    r_ao = rng.uniform(9.0, 12.0)
    x_ao, y_ao = rng.uniform(8, 18), y_vb - 17 - r_ao - 1.5
    behind_aorta = left_renal_vein in ("retroaortic", "circumaortic")
    if behind_aorta:  # a vein between the aorta and the spine holds the aorta off it
        y_ao -= RETROAORTIC_LIFT_MM
    ivc_semi = (rng.uniform(11, 14), rng.uniform(7, 10))
    x_ivc, y_ivc = -rng.uniform(20, 28), y_vb - 17 - ivc_semi[1] - 3
    z_ost = {"left": rng.uniform(-5, 15)}
    z_ost["right"] = z_ost["left"] - rng.uniform(0, 8)
    z_kid = {"left": z_ost["left"] - rng.uniform(0, 15)}
    z_kid["right"] = z_kid["left"] - rng.uniform(10, 25)
    x_kid = {"left": rng.uniform(62, 75), "right": -rng.uniform(62, 75)}
    y_kid = {s: y_vb + rng.uniform(0, 15) for s in ("left", "right")}

    # -- organs (clipped to the abdominal cavity) --------------------------------------
    liver_c = (-rng.uniform(70, 85), -rng.uniform(0, 20), z_kid["right"] + rng.uniform(75, 95))
    liver = ell(liver_c, (rng.uniform(65, 80), rng.uniform(70, 85), rng.uniform(70, 85)),
                rotation_matrix([0, 0, 1], rng.uniform(-0.3, 0.3)))
    spleen_c = (rng.uniform(70, 85), rng.uniform(15, 35), z_kid["left"] + rng.uniform(55, 75))
    spleen = ell(spleen_c, (rng.uniform(18, 26), rng.uniform(40, 55), rng.uniform(45, 60)),
                 rotation_matrix([0, 0, 1], rng.uniform(-0.9, -0.5)))
    layers.append(("liver", inside([liver]), []))
    layers.append(("spleen", inside([spleen]), []))
    oral_contrast = bool(rng.random() < 0.5)
    contents = ["bowel_contrast" if oral_contrast and rng.random() < 0.7 else "bowel", "bowel_gas"]
    stomach_c = (rng.uniform(40, 65), -rng.uniform(40, 60), z_kid["left"] + rng.uniform(70, 95))
    stomach_semi = (rng.uniform(35, 50), rng.uniform(28, 40), rng.uniform(40, 55))
    layers.append(("bowel", inside([ell(stomach_c, stomach_semi)]), []))
    layers.append((contents[0], inside([ell(stomach_c, tuple(s - 4 for s in stomach_semi))]), []))
    colon_paths = [
        [(-100, -5, -150), (-105, -10, -60), (-100, -20, 20)],
        [(-95, -35, 35), (-40, -75, 30), (40, -75, 35), (95, -35, 50)],
        [(100, -10, 55), (105, 0, -40), (95, -10, -150)],
    ]
    loops: list[tuple[list[tuple[float, float, float]], float, str]] = []
    for ctrl in colon_paths:
        jit = [(x + rng.normal(0, 5), y + rng.normal(0, 5), z + rng.normal(0, 5)) for x, y, z in ctrl]
        loops.append((jit, rng.uniform(14, 22), "bowel_gas" if rng.random() < 0.7 else "bowel"))
    n_loops = int(rng.integers(14, 25))
    for _ in range(n_loops):
        # small-bowel loops fill the peritoneal cavity in front of the retroperitoneum
        start = np.array([rng.uniform(-110, 110), rng.uniform(-100, -5), rng.uniform(-190, 30)])
        ctrl = [tuple(start)]
        for _k in range(int(rng.integers(3, 6))):
            start = start + rng.normal(0, 22, 3)
            start[1] = np.clip(start[1], -105, 5)
            ctrl.append(tuple(start))
        content = ("bowel_contrast" if oral_contrast and rng.random() < 0.6 else
                   "bowel_gas" if rng.random() < 0.15 else "bowel")
        loops.append((ctrl, rng.uniform(9, 16), content))
    for ctrl, radius, content in loops:
        layers.append(("bowel", inside([tube(ctrl, (radius, radius), 6.0)]), []))
        layers.append((content, inside([tube(ctrl, (radius - 2.5, radius - 2.5), 6.0)]), []))
    # duodenal C-loop around the pancreatic head, in front of the right kidney's hilum
    z_sma0 = z_ost["left"] + 15.0
    y_front = y_ao - r_ao  # the aorta's anterior wall
    duo = [(-20, y_front - 70, z_sma0 + 30), (-55, y_front - 42, z_sma0 + 12), (-62, y_front - 28, z_sma0 - 25),
           (-35, y_front - 32, z_sma0 - 55), (5, y_front - 40, z_sma0 - 50)]
    duo = [(x + rng.normal(0, 4), y + rng.normal(0, 4), z + rng.normal(0, 4)) for x, y, z in duo]
    r_duo = rng.uniform(10, 14)
    layers.append(("bowel", inside([tube(duo, (r_duo, r_duo), 4.0)]), []))
    duo_content = contents[0] if rng.random() < 0.6 else "bowel"
    layers.append((duo_content, inside([tube(duo, (r_duo - 2.5, r_duo - 2.5), 4.0)]), []))
    # pancreas: head in the duodenal loop, body over the aorta, tail to the splenic hilum
    pancreas = tube([(-38, y_front - 36, z_sma0 - 20), (-10, y_front - 40, z_sma0 + 2), (25, y_front - 32, z_sma0 + 12),
                     (spleen_c[0] - 25, spleen_c[1] - 15, spleen_c[2] - 10)],
                    (rng.uniform(13, 17), rng.uniform(7, 10)), 4.0)
    layers.append(("pancreas", inside([pancreas]), []))
    p["oral_contrast"] = oral_contrast
    p["bowel_loops"] = len(loops) + 1

    # -- muscles ---------------------------------------------------------------------
    back = []
    for s in (-1, 1):
        back.append(cyl(s * rng.uniform(24, 32), y_vb + rng.uniform(42, 50),
                        (rng.uniform(20, 26), rng.uniform(16, 22)), zr))
        back.append(cyl(s * rng.uniform(55, 65), y_vb + rng.uniform(20, 30), (rng.uniform(12, 16), rng.uniform(7, 10)),
                        (-150.0, 40.0), angle=s * 0.5))
        back.append(tube([(s * 22, y_vb + 2, 60), (s * 36, y_vb - 6, -40), (s * 52, y_vb - 14, -200)],
                         (8.0, rng.uniform(18, 24)), 6.0))
    layers.append(("muscle", inside(back), []))

    # -- spine ---------------------------------------------------------------------
    pitch = rng.uniform(32, 36)
    disc_h = rng.uniform(7, 10)
    vb_semi = (rng.uniform(22, 26), rng.uniform(16, 19))
    discs, cortical, trabecular, arches = [], [], [], []
    for k in range(-8, 9):
        zc = k * pitch + pitch / 2  # vertebral body centres; discs at multiples of pitch
        discs.append(ell((0, y_vb, k * pitch), (vb_semi[0], vb_semi[1], disc_h / 2 + 1.0), power=3.0))
        half_h = (pitch - disc_h) / 2
        cortical.append(ell((0, y_vb, zc), (vb_semi[0], vb_semi[1], half_h), power=3.0))
        trabecular.append(ell((0, y_vb, zc), (vb_semi[0] - 1.2, vb_semi[1] - 1.2, half_h - 1.0), power=3.0))
        yc = y_vb + vb_semi[1] + 10
        arches.append(tube([(-11, y_vb + vb_semi[1] - 2, zc), (-14, yc, zc), (0, yc + 12, zc - 2),
                            (14, yc, zc), (11, y_vb + vb_semi[1] - 2, zc)], (4.5, 4.5), 2.0))
        arches.append(tube([(0, yc + 12, zc - 2), (0, yc + 38, zc - 10)], (5.0, 4.0), 2.0))
        for s in (-1, 1):
            arches.append(tube([(s * 12, yc - 4, zc + 3), (s * rng.uniform(45, 55), yc - 2, zc + 5)], (4.0, 3.0), 2.0))
    ribs_outer, ribs_inner = [], []
    for k in range(1, 5):  # the lowest ribs, behind the upper poles of the kidneys
        zc = k * pitch + pitch / 2 + rng.uniform(10, 25)
        for s in (-1, 1):
            ctrl = [(s * 20, y_vb + 22, zc), (s * 55, y_vb + 32, zc - 8), (s * 95, y_vb + 12, zc - 25),
                    (s * (a_body - fat_mm - wall_mm + 2), y_vb - 40 - 10 * k, zc - 50)]
            ribs_outer.append(tube(ctrl, (5.0, 4.0), 3.0))
            ribs_inner.append(tube(ctrl, (3.2, 2.4), 3.0))
    layers.append(("disc", discs, []))
    layers.append(("bone_cortical", cortical + arches, []))
    layers.append(("bone_trabecular", trabecular, []))
    layers.append(("bone_cortical", ribs_outer, []))
    layers.append(("bone_trabecular", ribs_inner, []))
    layers.append(("csf", [cyl(0, y_vb + vb_semi[1] + 10, (10.0, 7.5), zr)], []))

    # -- kidneys: perirenal fat, then the great vessels, then the kidneys ----------------
    kidneys: dict[str, Kidney] = {}
    ostia, acc_ostia, via_artery, vein_end, via_vein = {}, {}, {}, {}, {}
    # the aorta's centreline and radius (patient frame), so ostia sit on its real wall
    z_top, z_bif = 400.0, rng.uniform(-150, -120)
    aorta_path = smooth_path(np.array([(x_ao - 3, y_ao - 3, z_top), (x_ao, y_ao, 0.0), (x_ao + 2, y_ao - 4, z_bif)]),
                             4.0)
    aorta_radii = np.linspace(r_ao * 1.05, r_ao * 0.85, len(aorta_path))

    def aorta_at(z: float) -> tuple[float, float, float]:
        """The aorta's centre (x, y) and radius at height z."""
        order = np.argsort(aorta_path[:, 2])
        return tuple(float(np.interp(z, aorta_path[order, 2], values[order]))  # type: ignore[return-value]
                     for values in (aorta_path[:, 0], aorta_path[:, 1], aorta_radii))

    def on_aorta(z: float, lateral: float, angle: float) -> np.ndarray:
        """A point just inside the aortic wall at height z, towards the patient's side."""
        cx, cy, r = aorta_at(z)
        r -= 1.0
        return P(cx + lateral * r * np.cos(angle), cy + r * np.sin(angle), z)

    for side in ("left", "right"):
        s = 1.0 if side == "left" else -1.0
        z0 = z_ost[side]
        ostia[side] = on_aorta(z0, s, rng.uniform(-0.5, 0.5))
        zacc = z0 + rng.choice([-1, 1]) * rng.uniform(15, 40)
        acc_ostia[side] = on_aorta(zacc, s, 0.0)
    via_artery["left"] = []
    via_artery["right"] = [P(x_ivc, y_ivc + ivc_semi[1] + 5.0, z_ost["right"] - 4.0)]
    via_vein["left"] = [P(x_ao, y_ao - r_ao - 6.0, z_kid["left"] + 2.0)]
    via_vein["right"] = []
    vein_end["left"] = P(x_ivc + 4.0, y_ivc, z_kid["left"] + 2.0)
    vein_end["right"] = P(x_ivc - 4.0, y_ivc, z_kid["right"] + 5.0)
    limbs: list[list[np.ndarray]] = []
    narrow: list[tuple[np.ndarray, float]] = []
    if behind_aorta:
        def around_aorta(z: float, angle_deg: float) -> np.ndarray:
            """A vein's centre at height z beside the aorta (0°: towards the patient's left,
            90°: behind it), clear of its wall by the squeezed vein's radius."""
            cx, cy, r = aorta_at(z)
            reach = r + RETROAORTIC_RADIUS_MM + 1.0
            angle = np.deg2rad(angle_deg)
            return P(cx + reach * np.cos(angle), cy + reach * np.sin(angle), z)

        z_v = z_kid["left"]
        behind = [around_aorta(z_v - 2.0, 0.0), around_aorta(z_v - 8.0, 45.0), around_aorta(z_v - 12.0, 90.0),
                  around_aorta(z_v - 16.0, 135.0), P(x_ivc + 4.0, y_ivc + 2.0, z_v - 22.0)]
        narrow.append((behind[2], RETROAORTIC_RADIUS_MM))
        if left_renal_vein == "retroaortic":
            via_vein["left"], vein_end["left"] = behind[:-1], behind[-1]
        else:  # the usual vein in front, and a posterior limb below it
            limbs.append(behind)
        p["left_renal_vein"] = {"course": left_renal_vein, "behind_aorta_mm": _r(behind[2]),
                                "aorta_lifted_mm": RETROAORTIC_LIFT_MM}
    enhancement = "hyper" if rng.random() < 0.4 else "hypo"
    if horseshoe:  # both halves lower, nearer the midline and forward, lower poles medial, hila forward
        for side in ("left", "right"):
            x_kid[side] *= float(horseshoe["medial_share"])
            y_kid[side] -= float(horseshoe["forward_mm"])
            z_kid[side] -= float(horseshoe["drop_mm"])
    for side in ("left", "right"):
        drop = float((kidney_drop_mm or {}).get(side, 0.0))
        kidneys[side] = build_kidney(
            rng, side, P(x_kid[side], y_kid[side], z_kid[side] - drop), ostium_mm=ostia[side],
            artery_via_mm=via_artery[side], accessory_ostium_mm=acc_ostia[side], vein_end_mm=vein_end[side],
            vein_via_mm=via_vein[side], tumour=tumour, early_branching=early_branching, accessory=accessory,
            rotation=R, tumour_enhancement=enhancement, malrotated=side in malrotated or bool(horseshoe),
            tumour_diameter_mm=(70.0, 100.0) if side == large_tumour else None, lower_pole_medial=bool(horseshoe),
            vein_limbs_mm=limbs if side == "left" else (), vein_narrow_mm=narrow if side == "left" else (),
            tumour_site=tumour_site,
        )
    perirenal = []
    for side, kid in kidneys.items():
        margin = rng.uniform(5, 12)
        perirenal.append(Ellipsoid(tuple(kid.centre_mm), kid.axes, tuple(np.asarray(kid.semi_mm) + margin)))
    isthmus_layers: list[tuple[str, list[Shape], list[np.ndarray]]] = []
    isthmus_artery_layers: list[tuple[str, list[Shape], list[np.ndarray]]] = []
    if horseshoe:
        # the isthmus: parenchyma joining the lower poles in front of the aorta and the IVC
        r_i = float(horseshoe["isthmus_radius_mm"])
        poles = {side: R.T @ (kid.local_to_world([-(kid.semi_mm[0] - r_i - 4.0), 0.0, 0.0]) - T)
                 for side, kid in kidneys.items()}
        z_i = float(np.mean([q[2] for q in poles.values()])) + 5.0
        y_i = min(y_ao - r_ao, y_ivc - ivc_semi[1]) - r_i - 4.0
        ctrl = [tuple(poles["left"]), (x_ao, y_i, z_i), (x_ivc, y_i, z_i), tuple(poles["right"])]
        perirenal.append(tube(ctrl, (r_i + 5.0, r_i + 5.0), 3.0))
        isthmus_layers.append(("kidney_cortex", inside([tube(ctrl, (r_i, r_i), 3.0)]), []))
        p["horseshoe"] = {"isthmus_radius_mm": round(r_i, 1), "isthmus_centre_mm": _r(P(x_ao, y_i, z_i)),
                          "isthmus_artery": bool(horseshoe["isthmus_artery"])}
        if horseshoe["isthmus_artery"]:  # from the aorta's front, a little above the isthmus
            start = on_aorta(z_i + 12.0, 1.0, -np.pi / 2)
            path = smooth_path(np.stack([start, P(x_ao, y_ao - r_ao - 3.0, z_i + 6.0), P(x_ao, y_i, z_i)]), 1.0)
            radius = float(horseshoe["isthmus_artery_radius_mm"])
            isthmus_artery_layers.append(("renal_artery", [Tube(path, np.linspace(radius, 0.8 * radius,
                                                                                   len(path)))], [path]))
    layers.append(("fat", inside(perirenal), []))
    adrenals = []
    for kid in kidneys.values():
        u, v, w = kid.axes[:, 0], kid.axes[:, 1], kid.axes[:, 2]
        top = kid.centre_mm + u * (kid.semi_mm[0] + 4.0) - v * 12.0 + w * 5.0
        for angle in (-0.45, 0.45):  # the two thin limbs of an inverted Y
            limb_axes = rotation_matrix(u, angle) @ kid.axes
            limb = (rng.uniform(10, 16), rng.uniform(2.0, 3.0), rng.uniform(8, 12))
            adrenals.append(Ellipsoid(tuple(top), limb_axes, limb))
    layers.append(("adrenal", adrenals, []))

    # great vessels: IVC, aorta with celiac trunk, SMA, iliacs, calcified plaques
    layers.append(("ivc", [cyl(x_ivc, y_ivc, ivc_semi, (-150.0, 400.0))], []))
    aorta = Tube(np.stack([P(*q) for q in aorta_path]), aorta_radii)
    z_sma = z_ost["left"] + rng.uniform(10, 20)
    sma = tube([(x_ao - 2, y_ao - r_ao + 2, z_sma), (x_ao - 4, y_ao - r_ao - 14, z_sma - 15),
                (x_ao - 8, y_ao - r_ao - 25, z_sma - 80), (x_ao - 20, y_ao - r_ao - 35, z_sma - 180)],
               (rng.uniform(3.0, 4.0), 2.5), 2.0)
    celiac = tube([(x_ao, y_ao - r_ao + 2, z_sma + 15), (x_ao - 2, y_ao - r_ao - 20, z_sma + 22)],
                  (rng.uniform(3.0, 4.0), 3.0), 2.0)
    iliacs = [tube([(x_ao + 2, y_ao - 4, z_bif + 5), (s * 35, y_ao - 10, z_bif - 60), (s * 55, y_ao, z_bif - 130)],
                   (r_ao * 0.6, r_ao * 0.5), 4.0) for s in (-1, 1)]
    layers.append(("aorta", [aorta], []))
    # celiac branches: the tortuous splenic artery runs to the spleen above the left
    # kidney (a bright artery that is not renal), the hepatic artery to the liver
    celiac_end = (x_ao - 2, y_ao - r_ao - 20, z_sma + 22)
    sp_hilum = (spleen_c[0] - 18, spleen_c[1] - 8, spleen_c[2] - 5)
    splenic = tube([celiac_end, (x_ao + 25 + rng.normal(0, 5), y_ao - r_ao - 18 + rng.normal(0, 5), z_sma + 30),
                    (x_ao + 45 + rng.normal(0, 5), y_ao - 12 + rng.normal(0, 5), z_sma + 22 + rng.normal(0, 5)),
                    (sp_hilum[0] - 12 + rng.normal(0, 4), sp_hilum[1] - 6, sp_hilum[2] + 6), sp_hilum],
                   (rng.uniform(2.3, 3.0), 2.0), 1.5)
    hepatic = tube([celiac_end, (x_ao - 30, y_ao - r_ao - 22, z_sma + 26),
                    (liver_c[0] + 35, liver_c[1] + 5, liver_c[2] - 35)],
                   (rng.uniform(2.2, 2.8), 2.0), 1.5)
    layers.append(("other_artery", [sma, celiac, splenic, hepatic, *iliacs], []))
    confluence = (x_ao - 28, y_ao - r_ao - 26, z_sma - 2)
    splenic_vein = tube([(sp_hilum[0] + 2, sp_hilum[1] + 4, sp_hilum[2] - 4),
                         (x_ao + 40, y_ao - r_ao - 8, z_sma + 10), (x_ao + 5, y_ao - r_ao - 20, z_sma + 2), confluence],
                        (rng.uniform(3.0, 4.0), 4.0), 2.0)
    portal = tube([confluence, (x_ao - 40, y_ao - r_ao - 30, z_sma + 25),
                   (liver_c[0] + 30, liver_c[1] + 10, liver_c[2] - 30)],
                  (rng.uniform(5.5, 7.0), 5.0), 2.0)
    layers.append(("other_vein", [splenic_vein, portal], []))
    plaques = []
    for _ in range(int(rng.integers(0, 8))):
        zc = rng.uniform(z_bif, 60)
        ang = rng.uniform(0, 2 * np.pi)
        rr = rng.uniform(0.8, 2.0)
        plaques.append(ell((x_ao + r_ao * 0.9 * np.cos(ang), y_ao + r_ao * 0.9 * np.sin(ang), zc), (rr, rr, rr * 2)))
    layers.append(("calcification", plaques, []))
    if absent_kidney is not None:  # its fossa keeps the perirenal fat and the adrenal
        kidneys.pop(absent_kidney)
    layers.extend(isthmus_layers)  # under each half's own structures where it enters a lower pole
    for kid in kidneys.values():
        layers.extend(kid.layers)
    layers.extend(isthmus_artery_layers)

    p["vertebral_body_centre_mm"] = _r(P(0, y_vb, 0))
    p["aorta"] = {"radius_mm": round(r_ao, 2), "bifurcation_z_mm": round(float(P(0, 0, z_bif)[2]), 1),
                  "calcified_plaques": len(plaques)}
    p["patient_yaw_deg"] = round(float(np.degrees(yaw)), 2)
    p["tumour_enhancement"] = enhancement
    # organ outlines are not ellipsoids: perturb liver and spleen surfaces (drawn last
    # so everything above is the same with or without this step)
    amplitude = {"liver": (2.0, 5.0), "spleen": (1.5, 3.5)}
    for index, (name, shapes, lines) in enumerate(layers):
        if name in amplitude:
            shapes = [Intersection(Perturbed.random(sh.shape, rng.uniform(*amplitude[name]), (35.0, 80.0), rng),
                                   sh.within) if isinstance(sh, Intersection) else sh for sh in shapes]
            layers[index] = (name, shapes, lines)
    return Scene(layers, base_layers, kidneys, p)


def _paint(scene: Scene, geometry: Geometry, intensities: dict[str, float]) -> Canvas:
    """Rasterise the scene on an LPS-aligned grid (the body, z-invariant, once in 2D)."""
    nz, ny, nx = geometry.shape_zyx
    slice_geometry = Geometry((1, ny, nx), geometry.spacing_xyz_mm, geometry.origin_xyz_mm, geometry.direction)
    base = Canvas(slice_geometry, background_tissue=TISSUE_IDS["air"], background_hu=intensities["air"])
    z_mid = float(geometry.origin_xyz_mm[2] + geometry.spacing_xyz_mm[2] * (nz - 1) / 2)
    for name, shapes in scene.base_layers:
        flat = [CylinderZ(s.centre_xy_mm, s.semi_mm, s.angle_rad, (z_mid - 1e4, z_mid + 1e4), s.power)
                for s in shapes if isinstance(s, CylinderZ)]
        base.paint(TISSUE_IDS[name], intensities[name], flat)
    canvas = Canvas(geometry)
    canvas.hu[...] = base.hu
    canvas.tissue[...] = base.tissue
    for name, shapes, lines in scene.layers:
        canvas.paint(TISSUE_IDS[name], intensities[name], shapes, centrelines=lines)
    return canvas


def labels_from_tissues(tissues: np.ndarray) -> np.ndarray:
    """KiPA22 labels (uint8) from a tissue map.

    Example:
        >>> labels_from_tissues(np.array([[[9, 5, 10, 11, 17]]], np.uint8)).tolist()
        [[[3, 2, 1, 4, 0]]]
    """
    lut = np.zeros(256, dtype=np.uint8)
    for name, value in TISSUE_TO_KIPA.items():
        lut[TISSUE_IDS[name]] = value
    return lut[tissues]


def _check_options(options: dict, allowed: tuple[str, ...], fn: str) -> None:
    for key in options:
        if key not in allowed:
            raise UsageError(f"{fn}: unknown option {key!r}.{suggest(key, allowed)} Valid: {', '.join(allowed)}.")


def _imaging(rng: np.random.Generator, options: dict, tumour_enhancement: str,
             seed: int) -> tuple[dict, float, float]:
    intensities = sample_intensities(rng, tumour_enhancement=tumour_enhancement,
                                     ranges=options.get("intensity_ranges_hu"))
    if options.get("phase"):  # its own generator: the case's other draws stay those of its seed
        from renalseg.phantom.phases import apply_phase

        intensities = apply_phase(intensities, options["phase"], seed=seed)
    intensities.update(options.get("intensities_hu") or {})
    psf = float(options["psf_fwhm_mm"]) if options.get("psf_fwhm_mm") is not None else float(rng.uniform(0.6, 1.0))
    if options.get("noise_sigma_hu") is not None:
        noise = float(options["noise_sigma_hu"])
    else:  # one draw whatever the range: the case's later draws stay those of its seed
        noise_lo, noise_hi = (float(v) for v in (options.get("noise_range_hu") or NOISE_RANGE_HU))
        noise = float(rng.uniform(noise_lo, noise_hi))
    return intensities, round(psf, 3), round(noise, 2)


_COMMON = ("tumour", "accessory", "early_branching", "psf_fwhm_mm", "noise_sigma_hu", "noise_range_hu",
           "intensities_hu", "intensity_ranges_hu", "spacing_xyz_mm", "territories", "phase", "stones",
           "excreted_contrast", "tumour_site")
#: where a phantom's tumour grows: anywhere but the renal hilum (the default), or in it
TUMOUR_SITES = ("any", "hilar")


def random_placement(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A scene's pose in the scanner: ``(rotation 3 × 3, shift_mm (x, y, z))`` for :func:`build_scene`.

    A yaw of at most ±4° about the patient's z axis and a shift of the whole body
    (x ±60 mm, y −250 … 50 mm, z ±900 mm), drawn from ``rng`` in that order.

    Example:
        >>> rotation, shift = random_placement(np.random.default_rng(0))
        >>> rotation.shape, bool(abs(shift[0]) <= 60)
        ((3, 3), True)
    """
    yaw = np.radians(rng.uniform(-4.0, 4.0))
    shift = np.array([rng.uniform(-60, 60), rng.uniform(-250, 50), rng.uniform(-900, 900)])
    return rotation_matrix([0, 0, 1], yaw), shift


def _tumour_enhancement(scene: Scene) -> str:
    """The scene's tumour enhancement (drawn once per scene, shared by both kidneys)."""
    return str(scene.params["tumour_enhancement"])


def synthesize_roi(seed: int, **options: Any) -> PhantomCase:
    """A kidney ROI phantom like the paper's 152 × 152 × Z crops.

    Args:
        seed: random seed; the same seed and options give identical arrays.
        **options: ``side`` ("left"/"right", default random), ``spacing_xyz_mm``
            (default: in-plane 0.55–0.8 mm, at least what fits the kidney; slices
            0.5–1.0 mm), ``inplane_voxels`` (default 152), ``tumour``,
            ``accessory``, ``early_branching`` (bool: force the variant on/off),
            ``psf_fwhm_mm`` (0.6–1.0), ``noise_sigma_hu`` (default: drawn from
            ``noise_range_hu``, (lo, hi), default :data:`NOISE_RANGE_HU`; a seed
            drawn with another range keeps its anatomy, texture and noise pattern,
            only the noise's scale changes),
            ``intensities_hu`` (dict overriding tissue means),
            ``intensity_ranges_hu`` (dict of tissue → (lo, hi) replacing the ranges the
            means are drawn from, e.g. ``{"renal_artery": (250, 340)}`` for weakly
            enhanced arteries; see :func:`sample_intensities`), ``territories`` (bool:
            also draw the true perfusion territories, :attr:`PhantomCase.territory`),
            ``phase`` (a contrast phase of :mod:`renalseg.phantom.phases`; default:
            the arterial-phase intensities as drawn), ``great_vessels`` (bool: the box
            ``renalseg segment`` places, the kidney plus the renal vessels' reach to the
            aorta and the IVC (:func:`renalseg.kidney_search.vessel_reach` from the true
            hila), its edges jittered by a few mm as a located box would be; in-plane at
            least ``inplane_voxels``; default False: a 152 × 152 box around the kidney),
            ``left_renal_vein`` (``"retroaortic"`` or ``"circumaortic"``: the left renal vein
            behind the aorta, :mod:`renalseg.phantom.variants`), ``tumour_site``
            (``"hilar"``: the tumour in the renal hilum, against the main vessels;
            :data:`TUMOUR_SITES`).

    Returns:
        A :class:`PhantomCase` on an LPS-aligned grid.

    Example:
        >>> case = synthesize_roi(3, inplane_voxels=48, spacing_xyz_mm=(2.4, 2.4, 3.0))
        >>> case.image.array.shape[1:], case.image.array.dtype.name, int(case.label.array.max()) >= 3
        ((48, 48), 'int16', True)
    """
    from renalseg.phantom.variants import check_variant_options

    _check_options(options, (*_COMMON, "side", "inplane_voxels", "great_vessels", "left_renal_vein"),
                   "synthesize_roi")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    rotation, shift = random_placement(rng)
    side = options.get("side") or ("left" if rng.random() < 0.5 else "right")
    if side not in ("left", "right"):
        raise UsageError(f"side must be 'left' or 'right'; got {side!r}.")
    check_variant_options({"left_renal_vein": options.get("left_renal_vein")})
    scene = build_scene(rng, rotation=rotation, shift_mm=shift, tumour=options.get("tumour"),
                        accessory=options.get("accessory"), early_branching=options.get("early_branching"),
                        left_renal_vein=options.get("left_renal_vein"), tumour_site=options.get("tumour_site") or "any")
    kidney = scene.kidneys[side]
    n_in = int(options.get("inplane_voxels") or 152)
    lo, hi = kidney.bbox_mm()
    extent = float(max(hi[0] - lo[0], hi[1] - lo[1])) + 12.0
    if options.get("spacing_xyz_mm") is not None:
        spacing = tuple(float(s) for s in options["spacing_xyz_mm"])
    else:
        s_in = float(np.clip(max(rng.uniform(0.55, 0.8), extent / n_in), 0.55, 0.8))
        spacing = (round(s_in, 4), round(s_in, 4), round(float(rng.uniform(0.5, 1.0)), 4))
    if options.get("great_vessels"):
        return _render_case(seed, "roi", scene, _great_vessel_box(scene, side, spacing, n_in, rng), rng, options,
                            t0, side=side, reorient="LPS")
    medial = -1.0 if side == "left" else 1.0
    centre = (lo + hi) / 2
    centre[0] += medial * rng.uniform(3, 10)
    centre[1] += rng.uniform(-4, 4)
    margin = rng.uniform(5, 12, 2)
    z_lo, z_hi = lo[2] + 1.0 - margin[0], hi[2] - 1.0 + margin[1]
    nz = max(int(np.ceil((z_hi - z_lo) / spacing[2])) + 1, 8)
    origin = (centre[0] - spacing[0] * (n_in - 1) / 2, centre[1] - spacing[1] * (n_in - 1) / 2, z_lo)
    geometry = Geometry((nz, n_in, n_in), spacing, origin, DIRECTIONS["LPS"])
    return _render_case(seed, "roi", scene, geometry, rng, options, t0, side=side, reorient="LPS")


def _great_vessel_box(scene: Scene, side: str, spacing: tuple[float, ...], n_in: int,
                      rng: np.random.Generator) -> Geometry:
    """The LPS grid ``renalseg segment`` would crop for ``side``: the kidney, its hilum and
    the renal vessels' reach to the aorta and the IVC, each edge moved out by 3 mm plus
    |N(0, 3 mm)| (a located box is never exact; the kidney stays inside)."""
    from renalseg.kidney_search import vessel_reach  # the pipeline's own rule (imports no phantom code)
    from renalseg.roi import ROI_MARGIN_MM, Z_MARGIN_MM

    hila = {s: np.asarray(k.hilum_artery_mm, float) for s, k in scene.kidneys.items()}
    midline_x = float(np.mean([h[0] for h in hila.values()]))
    lo, hi = scene.kidneys[side].bbox_mm()
    lo, hi = np.minimum(lo, hila[side] - 5.0), np.maximum(hi, hila[side] + 5.0)
    reach_lo, reach_hi = vessel_reach(side, hila[side], hila, hila, midline_x)
    widen = ROI_MARGIN_MM + np.abs(rng.normal(0.0, 3.0, (2, 3)))
    lo, hi = np.minimum(lo, reach_lo) - widen[0], np.maximum(hi, reach_hi) + widen[1]
    lo[2], hi[2] = lo[2] - Z_MARGIN_MM, hi[2] + Z_MARGIN_MM
    count = [max(n_in, int(np.ceil((hi[a] - lo[a]) / spacing[a])) + 1) for a in range(3)]
    start = [(lo[a] + hi[a]) / 2 - spacing[a] * (count[a] - 1) / 2 for a in range(3)]
    return Geometry((count[2], count[1], count[0]), tuple(spacing), tuple(start), DIRECTIONS["LPS"])


def synthesize_abdomen(seed: int, **options: Any) -> PhantomCase:
    """A whole-abdomen CTA phantom (both kidneys), for localisation and end-to-end tests.

    Args:
        seed: random seed; the same seed and options give identical arrays.
        **options: ``direction`` ("LPS" default, "RAS", "LAS", "RPS": the stored
            axis order; anatomy is the same), ``spacing_xyz_mm`` (default in-plane
            0.6–0.85 mm, slices 0.5–1.25 mm), ``inplane_voxels`` (default 512),
            ``slices`` (default: 250–500 covering both kidneys), and the
            ``tumour``/``accessory``/``early_branching``/``psf_fwhm_mm``/
            ``noise_sigma_hu``/``intensities_hu`` options of :func:`synthesize_roi`,
            and the hard-patient variants of :mod:`renalseg.phantom.variants`
            (``kidney_drop_mm``, ``absent_kidney``, ``malrotated``, ``large_tumour``,
            ``fov_cut``, ``fov_cut_fraction``, ``phase``, ``off_centre_mm``,
            ``fov_mm``, ``slice_mm``, ``horseshoe``, ``left_renal_vein``); without them a seed gives
            the same arrays as before they existed.

    Returns:
        A :class:`PhantomCase`; ``params["kidneys"][side]`` holds each kidney's
        centre, hilum and artery ostium in LPS mm (an absent kidney is not listed;
        ``params["scene"]["variants"]`` records the variants drawn).
    """
    from renalseg.phantom.variants import VARIANT_OPTIONS, VARIANT_STREAM, check_variant_options, horseshoe_shape

    _check_options(options, (*_COMMON, "direction", "inplane_voxels", "slices", *VARIANT_OPTIONS),
                   "synthesize_abdomen")
    check_variant_options(options)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    variant_rng = np.random.default_rng([seed, VARIANT_STREAM])
    rotation, shift = random_placement(rng)
    direction = options.get("direction") or "LPS"
    if direction not in DIRECTIONS:
        raise UsageError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}.")
    malrotated = options.get("malrotated") or ()
    horseshoe = horseshoe_shape(seed) if options.get("horseshoe") else None
    scene = build_scene(rng, rotation=rotation, shift_mm=shift, tumour=options.get("tumour"),
                        accessory=options.get("accessory"), early_branching=options.get("early_branching"),
                        kidney_drop_mm=options.get("kidney_drop_mm"), absent_kidney=options.get("absent_kidney"),
                        malrotated=(malrotated,) if isinstance(malrotated, str) else tuple(malrotated),
                        large_tumour=options.get("large_tumour"),
                        horseshoe=horseshoe, left_renal_vein=options.get("left_renal_vein"),
                        tumour_site=options.get("tumour_site") or "any")
    n_in = int(options.get("inplane_voxels") or 512)
    if options.get("spacing_xyz_mm") is not None:
        spacing = tuple(float(s) for s in options["spacing_xyz_mm"])
        clinical = False
    else:
        s_in = round(float(rng.uniform(0.6, 0.85)), 4)
        spacing = (s_in, s_in, float(rng.choice([0.5, 0.625, 0.75, 0.8, 1.0, 1.25])))
        clinical = True
    if options.get("fov_mm") is not None:
        s_in = float(options["fov_mm"]) / n_in
        spacing = (s_in, s_in, spacing[2])
    if options.get("slice_mm") is not None:
        spacing = (spacing[0], spacing[1], float(options["slice_mm"]))
    los = np.stack([k.bbox_mm()[0] for k in scene.kidneys.values()]).min(axis=0)
    his = np.stack([k.bbox_mm()[1] for k in scene.kidneys.values()]).max(axis=0)
    if horseshoe is not None:  # the scan still reaches where kidneys usually sit (liver, spleen)
        his[2] += horseshoe["drop_mm"]
    if options.get("slices") is not None:
        nz = int(options["slices"])
    else:
        nz = int(round(rng.uniform(200, 330) / spacing[2]))
        if options.get("slice_mm") is not None:
            nz = int(np.clip(nz, 8, 500))
        else:
            nz = int(np.clip(nz, 250, 500)) if clinical else max(nz, 8)
        if options.get("kidney_drop_mm") or options.get("horseshoe"):  # both kidneys and 20 mm above and below them
            nz = min(max(nz, int(np.ceil((his[2] - los[2] + 40.0) / spacing[2])) + 1), 600)
    extent_z = spacing[2] * (nz - 1)
    z_mid = (los[2] + his[2]) / 2 + rng.uniform(-1, 1) * max(0.0, (extent_z - (his[2] - los[2]) - 20) / 2)
    fov_centre = shift[:2] + rng.uniform(-15, 15, 2)
    variants: dict[str, Any] = {}
    if options.get("fov_cut") is not None:
        side, pole = str(options["fov_cut"]).split("_")
        if side not in scene.kidneys:
            raise UsageError(f"fov_cut {options['fov_cut']!r}: the {side} kidney is absent.")
        lo_k, hi_k = scene.kidneys[side].bbox_mm()
        fraction = (float(options["fov_cut_fraction"]) if options.get("fov_cut_fraction") is not None
                    else float(variant_rng.uniform(0.15, 0.4)))
        cut = (lo_k[2] + fraction * (hi_k[2] - lo_k[2]) if pole == "lower"
               else hi_k[2] - fraction * (hi_k[2] - lo_k[2]))
        z_mid = cut + extent_z / 2 if pole == "lower" else cut - extent_z / 2
        variants["fov_cut"] = {"side": side, "pole": pole, "fraction": round(fraction, 3), "plane_z_mm": round(float(cut), 2)}
    if options.get("off_centre_mm") is not None:
        fov_centre = shift[:2] - np.asarray(options["off_centre_mm"], dtype=float)
    if any(options.get(name) is not None for name in VARIANT_OPTIONS):
        variants.update({name: options[name] for name in VARIANT_OPTIONS
                         if options.get(name) is not None and name != "fov_cut"})
        variants["absent_sides"] = sorted({"left", "right"} - set(scene.kidneys))
        scene.params["variants"] = variants
    origin = (fov_centre[0] - spacing[0] * (n_in - 1) / 2, fov_centre[1] - spacing[1] * (n_in - 1) / 2,
              z_mid - extent_z / 2)
    geometry = Geometry((nz, n_in, n_in), spacing, tuple(float(v) for v in origin), DIRECTIONS["LPS"])
    return _render_case(seed, "abdomen", scene, geometry, rng, options, t0, side=None, reorient=direction)


def _reorient(volume: Volume, code: str) -> Volume:
    """The same voxels stored with another axis-aligned direction (flips of x and/or y)."""
    if code == "LPS":
        return volume
    direction = np.asarray(DIRECTIONS[code]).reshape(3, 3)
    flip_x, flip_y = direction[0, 0] < 0, direction[1, 1] < 0
    g = volume.geometry
    nz, ny, nx = g.shape_zyx
    corner = g.index_to_world([[nx - 1 if flip_x else 0, ny - 1 if flip_y else 0, 0]])[0]
    array = volume.array[:, ::-1 if flip_y else 1, ::-1 if flip_x else 1]
    return Volume(np.ascontiguousarray(array),
                  Geometry(g.shape_zyx, g.spacing_xyz_mm, tuple(corner.tolist()), DIRECTIONS[code]))


#: the necrosis generator's stream, apart from the case's own (seed) stream
_NECROSIS_STREAM = 28


def necrotic_cores(tissue: np.ndarray, hu: np.ndarray, geometry: Geometry, kidneys: Mapping[str, Mapping],
                   seed: int) -> dict[str, float]:
    """Give hypervascular (clear-cell-like) tumours a core of necrotic or cystic change.

    Most clear cell carcinomas enhance heterogeneously, hypervascular tissue around
    low-attenuation necrotic or cystic areas; papillary-like (hypovascular) ones are
    mostly homogeneous. Each hypervascular tumour gets such a core with probability 0.8
    from 30 mm across (0.4 below): 10-50% of its volume, the voxels deepest inside it
    with a smooth random field (about 5 mm) making the outline irregular, never within
    1.5 mm of the tumour's surface. The core becomes tissue ``tumour_necrosis`` (KiPA22
    label 4, tumour, as KiPA and KiTS label necrosis) at one non-enhancing HU per case
    from :data:`TUMOUR_NECROSIS_HU`. Drawn from a generator of the seed's own, so every
    other value of the case stays what its seed gives.

    Args:
        tissue, hu: the painted tissue map and mean-HU image ``(z, y, x)``, changed in place.
        geometry: their grid.
        kidneys: side → the kidney's ``params`` (its ``"tumour"`` facts).
        seed: the case's seed.

    Returns:
        ``{"tumour_necrosis": HU}`` when a core was painted, else ``{}``.
    """
    from scipy import ndimage

    rng = np.random.default_rng([int(seed), _NECROSIS_STREAM])
    value = float(rng.uniform(*TUMOUR_NECROSIS_HU))
    tumour_id = TISSUE_IDS["tumour"]
    spacing_zyx = np.asarray(geometry.spacing_xyz_mm, dtype=float)[::-1]
    painted = False
    pieces = boxes = None
    for side in sorted(kidneys):
        facts = kidneys[side].get("tumour") or {}
        if not facts.get("present") or facts.get("enhancement") != "hyper":
            continue
        chance, share = rng.random(), rng.uniform(0.1, 0.5)
        if chance >= (0.8 if facts["diameter_mm"] >= 30.0 else 0.4):
            continue
        if pieces is None:
            pieces, _ = ndimage.label(tissue == tumour_id)
            boxes = ndimage.find_objects(pieces)
        centre = np.rint(geometry.world_to_index(facts["centre_mm"])[0][::-1]).astype(int)
        if np.any(centre < 0) or np.any(centre >= tissue.shape):
            continue
        piece = int(pieces[tuple(centre)])
        if piece == 0:
            continue
        box = boxes[piece - 1]
        mask = pieces[box] == piece
        depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
        field_ = smooth_field(mask.shape, geometry.spacing_xyz_mm, 5.0, rng)
        score = depth / max(float(depth.max()), 1e-6) + 0.35 * field_
        inner = mask & (depth >= 1.5)
        if not inner.any():
            continue
        core = inner & (score >= np.quantile(score[mask], 1.0 - share))
        tissue[box][core] = TISSUE_IDS["tumour_necrosis"]
        hu[box][core] = value
        painted = painted or bool(core.any())
    return {"tumour_necrosis": round(value, 1)} if painted else {}


#: the urinary tract generator's stream, apart from the case's own (seed) stream
_URINARY_STREAM = 29


def urinary_tract(tissue: np.ndarray, hu: np.ndarray, geometry: Geometry, seed: int, *,
                  stones: bool = False, excreted_contrast: bool = False) -> dict[str, Any]:
    """Stones in the collecting systems and contrast excreted into them: bright
    structures inside the kidney that are not arteries.

    A real CT angiogram of a kidney often shows one or both. Stones (about one adult in
    ten has had one) lie in the calyces and the pelvis at 300-500 HU (uric acid) to
    1500 HU and more (calcium salts); excreted contrast fills the calyces, the pelvis and
    the ureter in an excretory phase, and beside enhancing arteries in a split- or
    triple-bolus scan or a CTA that follows an earlier contrast study. Neither is an
    artery: a stone becomes tissue ``calculus`` (KiPA22 label 2, kidney, as the collecting
    system it lies in), and excreted contrast changes only the HU of the collecting
    system and the ureter (kidney and background as before).

    ``stones``: 1-3 stones in each of the two largest connected pieces of collecting system
    in view (its pelvis and calyces; a calyx the grid leaves apart is a piece of its own),
    each an ellipsoid 2-8 mm across centred on one of its voxels, at one HU per stone
    from :data:`CALCULUS_HU`, never painted over an artery or a vein. ``excreted_contrast``: the collecting systems
    and ureters at one level per case from :data:`EXCRETED_CONTRAST_HU`, varying by
    ±15% over about 10 mm (mixing and layering of the urine). Drawn from a generator of
    the seed's own, so every other value of the case stays what its seed gives, and
    nothing changes with both off.

    Args:
        tissue, hu: the painted tissue map and mean-HU image ``(z, y, x)``, changed in place.
        geometry: their grid.
        seed: the case's seed.

    Returns:
        The HU drawn: ``{"calculus": [HU per stone], "collecting_system": HU, "ureter": HU}``
        for what was painted, else ``{}``.
    """
    if not (stones or excreted_contrast):
        return {}
    from scipy import ndimage

    rng = np.random.default_rng([int(seed), _URINARY_STREAM])
    spacing_zyx = np.asarray(geometry.spacing_xyz_mm, dtype=float)[::-1]
    urinary = np.isin(tissue, [TISSUE_IDS["collecting_system"], TISSUE_IDS["ureter"]])
    out: dict[str, Any] = {}
    if excreted_contrast and urinary.any():
        level = float(rng.uniform(*EXCRETED_CONTRAST_HU))
        box = ndimage.find_objects(urinary.astype(np.uint8))[0]
        field_ = smooth_field(tuple(s.stop - s.start for s in box), geometry.spacing_xyz_mm, 10.0, rng)
        inside = urinary[box]
        hu[box][inside] = level * (1.0 + 0.15 * np.clip(field_[inside], -2.0, 2.0))
        out.update({"collecting_system": round(level, 1), "ureter": round(level, 1)})
    if stones:
        systems, count = ndimage.label(tissue == TISSUE_IDS["collecting_system"])
        sizes = np.bincount(systems.ravel(), minlength=count + 1)[1:]
        vessels = np.isin(tissue, [TISSUE_IDS["renal_artery"], TISSUE_IDS["renal_vein"]])
        drawn: list[float] = []
        for piece in np.argsort(sizes)[::-1][:2] + 1:  # the two largest pieces in view
            if sizes[piece - 1] < 20:
                continue
            voxels = np.argwhere(systems == piece)
            for _ in range(int(rng.integers(1, 4))):
                centre = voxels[rng.integers(len(voxels))]
                semi_mm = rng.uniform(1.0, 4.0) * np.array([1.0, *rng.uniform(0.7, 1.3, 2)])
                reach = np.ceil(semi_mm / spacing_zyx).astype(int) + 1
                lo = np.maximum(centre - reach, 0)
                hi = np.minimum(centre + reach + 1, tissue.shape)
                box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
                grid = np.ogrid[box]
                inside = sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grid, centre, spacing_zyx, semi_mm)) <= 1.0
                inside &= ~vessels[box]
                value = float(rng.uniform(*CALCULUS_HU))
                tissue[box][inside] = TISSUE_IDS["calculus"]
                hu[box][inside] = value
                drawn.append(round(value, 1))
        if drawn:
            out["calculus"] = drawn
    return out


def _render_case(seed: int, kind: str, scene: Scene, geometry: Geometry, rng: np.random.Generator,
                 options: dict, t0: float, *, side: str | None, reorient: str) -> PhantomCase:
    intensities, psf, noise = _imaging(rng, options, _tumour_enhancement(scene), seed)
    t_build = time.perf_counter()
    canvas = _paint(scene, geometry, intensities)
    intensities.update(necrotic_cores(canvas.tissue, canvas.hu, geometry,
                                      {s: k.params for s, k in scene.kidneys.items()}, seed))
    intensities.update(urinary_tract(canvas.tissue, canvas.hu, geometry, seed, stones=bool(options.get("stones")),
                                     excreted_contrast=bool(options.get("excreted_contrast"))))
    t_paint = time.perf_counter()
    tissue = canvas.tissue
    image = finish_image(canvas.hu, tissue, geometry, psf_fwhm_mm=psf, noise_sigma_hu=noise, rng=rng)
    del canvas
    label = labels_from_tissues(tissue)
    t_finish = time.perf_counter()
    image_v = _reorient(Volume(image, geometry), reorient)
    label_v = _reorient(Volume(label, geometry), reorient)
    tissue_v = _reorient(Volume(tissue, geometry), reorient)
    g = image_v.geometry
    kidneys = {}
    for s, kid in scene.kidneys.items():
        if side is not None and s != side:
            continue
        kidneys[s] = kid.params
    params = {
        "seed": int(seed),
        "kind": kind,
        "side": side,
        "grid": {"shape_zyx": list(g.shape_zyx), "spacing_xyz_mm": list(g.spacing_xyz_mm),
                 "origin_xyz_mm": _r(g.origin_xyz_mm), "direction": list(g.direction),
                 "orientation": g.orientation},
        "imaging": {"psf_fwhm_mm": psf, "noise_sigma_hu": noise,
                    "noise": "white, shaped by the PSF (sigma given after the blur)"},
        "intensities_hu": intensities,
        "tissues": {str(k): v for k, v in TISSUES.items()},
        "labels": {"0": "background", "1": "vein", "2": "kidney", "3": "artery", "4": "tumour"},
        "scene": scene.params,
        "kidneys": kidneys,
        "options": {k: v for k, v in options.items() if k not in ("intensities_hu", "territories")},
        "seconds": {"build": round(t_build - t0, 3), "paint": round(t_paint - t_build, 3),
                    "finish": round(t_finish - t_paint, 3)},
    }
    logger.debug("phantom %s seed %d: %s in %.2f s", kind, seed, g.describe(), t_finish - t0)
    territory_v, truth = None, None
    if options.get("territories"):
        # drawn from the finished labels with no random draws: the case is the same with or without
        from renalseg.phantom.territory import true_territories

        in_scope = {s: kid for s, kid in scene.kidneys.items() if side is None or s == side}
        territory, truth = true_territories(in_scope, label, geometry)
        territory_v = _reorient(Volume(territory, geometry), reorient)
    return PhantomCase(image_v, label_v, tissue_v, params, territory_v, truth)
