"""Whole-abdomen phantoms that look like the hard patients (options of ``synthesize_abdomen``).

The default phantom of a seed is a textbook abdomen in the arterial phase. These
options change only what they name, so a seed keeps its anatomy, imaging and noise
everywhere else (every draw they need comes from a second generator,
``numpy.random.default_rng([seed, VARIANT_STREAM])``, or maps a value the default
draws anyway):

* ``kidney_drop_mm`` ``{"right": 90}``: that kidney sits this much lower (ptosis,
  hepatomegaly), its artery still from its usual aortic level;
* ``absent_kidney`` ``"left"``: a single kidney (agenesis, nephrectomy): the other
  side's kidney, artery and vein are not drawn, fat fills its fossa;
* ``malrotated`` ``"right"`` (or both): the hilum faces forward (75–100°);
* ``large_tumour`` ``"left"``: an exophytic tumour of 70–100 mm on that kidney;
* ``fov_cut`` ``"right_lower"`` (``<side>_lower``/``<side>_upper``): the field of view
  stops (starts) inside that kidney, ``fov_cut_fraction`` (default 15–40 %) of its
  length outside, the hilum inside (liver-centred scans);
* ``horseshoe`` ``True``: a horseshoe kidney: the lower poles joined by an isthmus of
  parenchyma (7–12 mm radius) in front of the aorta and the IVC, both halves 25–45 mm
  lower, nearer the midline and forward, lower poles tilted medially, hila facing
  forward, and in 70 % of cases an isthmus artery from the aorta's front
  (:func:`horseshoe_shape`);
* ``left_renal_vein`` ``"retroaortic"`` or ``"circumaortic"``: the left renal vein runs
  behind the aorta, flattened between it and the spine, down to the IVC about 2 cm lower
  (retroaortic), or the usual vein in front of the aorta keeps a second, posterior limb
  that does (circumaortic, a venous collar round the aorta); the aorta lies 6 mm off the
  spine there. Each is found in a few percent of patients on CT; a vein behind the aorta
  is where an artery is expected;
* ``phase``: one of :data:`renalseg.phantom.phases.PHASES` (default arterial), rendered by
  :func:`renalseg.phantom.phases.apply_phase`;
* ``off_centre_mm`` ``(dx, dy)``: the body axis this far from the field of view's
  centre; ``fov_mm``: the in-plane field of view (300–500 mm; sets the in-plane
  spacing); ``slice_mm``: the slice spacing (0.5–3 mm).

:func:`random_variant` draws one hard case's options (for benchmarks and training
mixes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from renalseg.errors import UsageError, suggest
from renalseg.phantom.phases import PHASES

__all__ = ["VARIANT_PHASES", "VARIANT_OPTIONS", "VARIANT_STREAM", "VARIANT_KINDS", "LEFT_RENAL_VEIN_COURSES",
           "check_variant_options", "random_variant", "horseshoe_shape"]

#: second random stream of a seed (the variants' draws)
VARIANT_STREAM = 23
#: the contrast phases :func:`random_variant` draws (:mod:`renalseg.phantom.phases` renders them)
VARIANT_PHASES = ("arterial", "non-contrast", "portal-venous", "nephrographic")
#: options of :func:`renalseg.phantom.abdomen.synthesize_abdomen` this module adds
VARIANT_OPTIONS = ("kidney_drop_mm", "absent_kidney", "malrotated", "large_tumour", "fov_cut",
                   "fov_cut_fraction", "phase", "off_centre_mm", "fov_mm", "slice_mm", "horseshoe", "left_renal_vein")
#: courses of ``left_renal_vein`` (``"preaortic"``, the usual one, is the default)
LEFT_RENAL_VEIN_COURSES = ("preaortic", "retroaortic", "circumaortic")
_SIDES = ("left", "right")
_CUTS = tuple(f"{side}_{pole}" for side in _SIDES for pole in ("lower", "upper"))

#: the hard cases :func:`random_variant` draws from
VARIANT_KINDS = ("drop", "absent", "malrotated", "large_tumour", "fov_cut", "phase", "off_centre", "fov_slices",
                 "horseshoe")


def _sides(value: Any, name: str) -> tuple[str, ...]:
    sides = (value,) if isinstance(value, str) else tuple(value)
    for side in sides:
        if side not in _SIDES:
            raise UsageError(f"{name}: {side!r} is not a side; choose left or right.{suggest(str(side), _SIDES)}")
    return sides


def check_variant_options(options: dict) -> None:
    """Validate the variant options (:data:`VARIANT_OPTIONS`); raise UsageError naming the bad one."""
    drop = options.get("kidney_drop_mm") or {}
    if not isinstance(drop, dict):
        raise UsageError(f"kidney_drop_mm must map a side to mm, e.g. {{'right': 90}}; got {drop!r}.")
    _sides(tuple(drop), "kidney_drop_mm")
    for side, mm in drop.items():
        if not 0.0 <= float(mm) <= 150.0:
            raise UsageError(f"kidney_drop_mm[{side!r}] must be 0–150 mm; got {mm}.")
    for name in ("absent_kidney", "large_tumour"):
        if options.get(name) is not None:
            _sides(options[name], name)
    if options.get("absent_kidney") is not None and len(_sides(options["absent_kidney"], "absent_kidney")) > 1:
        raise UsageError("absent_kidney: name one side; a phantom keeps at least one kidney.")
    if options.get("horseshoe") and options.get("absent_kidney") is not None:
        raise UsageError("horseshoe joins both kidneys; it cannot go with absent_kidney.")
    if options.get("malrotated") is not None:
        _sides(options["malrotated"], "malrotated")
    absent = set(_sides(options["absent_kidney"], "absent_kidney")) if options.get("absent_kidney") else set()
    for name, sides in (("kidney_drop_mm", tuple(drop)), ("malrotated", options.get("malrotated")),
                        ("large_tumour", options.get("large_tumour"))):
        clash = absent & set(_sides(sides, name)) if sides else set()
        if clash:
            raise UsageError(f"{name} {', '.join(sorted(clash))}: that kidney is absent (absent_kidney); "
                             "give it to the other kidney or leave the kidney in.")
    cut = options.get("fov_cut")
    if cut is not None and cut not in _CUTS:
        raise UsageError(f"fov_cut must be one of {', '.join(_CUTS)}; got {cut!r}.{suggest(str(cut), _CUTS)}")
    fraction = options.get("fov_cut_fraction")
    if fraction is not None and not 0.0 < float(fraction) < 0.5:
        raise UsageError(f"fov_cut_fraction must be in (0, 0.5) (the hilum stays in view); got {fraction}.")
    course = options.get("left_renal_vein")
    if course is not None and course not in LEFT_RENAL_VEIN_COURSES:
        raise UsageError(f"left_renal_vein must be one of {', '.join(LEFT_RENAL_VEIN_COURSES)}; got {course!r}."
                         f"{suggest(str(course), LEFT_RENAL_VEIN_COURSES)}")
    phase = options.get("phase")
    if phase is not None and phase not in PHASES:
        raise UsageError(f"phase must be one of {', '.join(PHASES)}; got {phase!r}.{suggest(str(phase), PHASES)}")
    if options.get("off_centre_mm") is not None and len(tuple(options["off_centre_mm"])) != 2:
        raise UsageError(f"off_centre_mm must be (dx, dy) in mm; got {options['off_centre_mm']!r}.")
    for name, (lo, hi) in (("fov_mm", (100.0, 700.0)), ("slice_mm", (0.3, 6.0))):
        if options.get(name) is not None and not lo <= float(options[name]) <= hi:
            raise UsageError(f"{name} must be {lo:g}–{hi:g} mm; got {options[name]}.")


def random_variant(seed: int, kind: str | None = None) -> dict[str, Any]:
    """Options of one hard case for ``synthesize_abdomen(seed, **options)``.

    ``kind`` is one of :data:`VARIANT_KINDS` (default: drawn from the seed); the
    phase is drawn for every kind, so contrast varies across all of them.

    Example:
        >>> random_variant(3, "absent")["absent_kidney"] in ("left", "right")
        True
    """
    rng = np.random.default_rng([seed, VARIANT_STREAM, 7])
    kind = kind or VARIANT_KINDS[int(rng.integers(len(VARIANT_KINDS)))]
    if kind not in VARIANT_KINDS:
        raise UsageError(f"variant kind must be one of {', '.join(VARIANT_KINDS)}; got {kind!r}.")
    side = _SIDES[int(rng.integers(2))]
    options: dict[str, Any] = {"phase": VARIANT_PHASES[int(rng.integers(len(VARIANT_PHASES)))]}
    if kind == "drop":
        options["kidney_drop_mm"] = {side: round(float(rng.uniform(40, 120)), 1)}
    elif kind == "absent":
        options["absent_kidney"] = side
    elif kind == "malrotated":
        options["malrotated"] = side if rng.random() < 0.7 else ["left", "right"]
    elif kind == "large_tumour":
        options["large_tumour"] = side
    elif kind == "fov_cut":
        options["fov_cut"] = f"{side}_{'lower' if rng.random() < 0.6 else 'upper'}"
    elif kind == "off_centre":
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(30, 70)
        options["off_centre_mm"] = (round(float(distance * np.cos(angle)), 1),
                                    round(float(distance * np.sin(angle)), 1))
    elif kind == "horseshoe":
        options["horseshoe"] = True
    elif kind == "fov_slices":
        options["fov_mm"] = round(float(rng.uniform(300, 500)), 0)
        options["slice_mm"] = float(rng.choice([0.5, 1.0, 1.5, 2.0, 2.5, 3.0]))
    return options


def horseshoe_shape(seed: int) -> dict[str, float | bool]:
    """The horseshoe kidney of a seed (``build_scene(horseshoe=...)``), from its own stream.

    Example:
        >>> shape = horseshoe_shape(5)
        >>> 25 <= shape["drop_mm"] <= 45 and 7 <= shape["isthmus_radius_mm"] <= 12
        True
    """
    rng = np.random.default_rng([seed, VARIANT_STREAM, 11])
    return {"drop_mm": float(rng.uniform(25, 45)), "medial_share": float(rng.uniform(0.78, 0.9)),
            "forward_mm": float(rng.uniform(8, 18)), "isthmus_radius_mm": float(rng.uniform(7, 12)),
            "isthmus_artery": bool(rng.random() < 0.7), "isthmus_artery_radius_mm": float(rng.uniform(1.2, 2.0))}
