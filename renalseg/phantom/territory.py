"""The true perfusion territories of a phantom kidney (the truth of ``renalseg plan``).

A renal lobe, one pyramid with the cortex over it, is supplied by its lobar artery,
and the phantom's generator knows which segmental artery gives each lobar artery
(:attr:`renalseg.phantom.anatomy.Kidney.lobes`). Each kidney voxel (and tumour voxel)
belongs to the lobe of the nearest pyramid, the distance being measured to the
pyramid's cone (its apex–base axis, minus the radius there: 2 mm at the apex, the
base radius at the base); its territory is that lobe's segmental artery. This uses
only the pyramids, not the arteries, so it does not share the plan's method
(nearest terminal branch along the parenchyma).

Territory values: 1, 2, ... over the sides in alphabetical order, and each side's
segmental arteries by name. The feeding segmental arteries follow the plan's rule
(:func:`renalseg.plan.tumour_region`, :func:`renalseg.plan.region_shares`): tumour +
``margin_mm`` share of at least ``feeding_min_share``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from renalseg.geometry import Geometry
from renalseg.phantom.anatomy import Kidney

__all__ = ["true_territories", "compare_plan", "TRUTH_MARGIN_MM", "TRUTH_FEEDING_MIN_SHARE"]

TRUTH_MARGIN_MM = 5.0
TRUTH_FEEDING_MIN_SHARE = 0.05
_APEX_RADIUS_MM = 2.0
_KIDNEY, _TUMOUR = 2, 4  # KiPA22 values


def _nearest_lobe(points: np.ndarray, lobes: list[dict]) -> np.ndarray:
    best = np.full(len(points), np.inf)
    owner = np.zeros(len(points), dtype=np.int64)
    for k, lobe in enumerate(lobes):
        apex, base = np.asarray(lobe["apex_mm"], float), np.asarray(lobe["base_mm"], float)
        axis = base - apex
        t = np.clip((points - apex) @ axis / float(axis @ axis), 0.0, 1.0)
        distance = np.linalg.norm(points - (apex + t[:, None] * axis), axis=1)
        distance -= _APEX_RADIUS_MM + t * (float(lobe["radius_mm"]) - _APEX_RADIUS_MM)
        closer = distance < best
        best[closer], owner[closer] = distance[closer], k
    return owner


def true_territories(kidneys: Mapping[str, Kidney], label: np.ndarray, geometry: Geometry, *,
                     margin_mm: float = TRUTH_MARGIN_MM,
                     feeding_min_share: float = TRUTH_FEEDING_MIN_SHARE) -> tuple[np.ndarray, dict]:
    """The true territory map and its description.

    Args:
        kidneys: the kidneys drawn in ``label`` (side → :class:`Kidney`).
        label: KiPA22 labels ``(Z, Y, X)`` on ``geometry``.
        geometry: the grid.
        margin_mm: resection margin for the feeding arteries.
        feeding_min_share: tumour + margin share that makes a segmental artery feeding.

    Returns:
        ``(territory, truth)``: uint8 ``(Z, Y, X)`` (0 outside kidney and tumour) and
        a JSON-ready dict: ``territories`` (value → side, segmental artery, root
        artery), ``kidneys`` (side → ``tumour_percent`` per segmental artery and the
        ``feeding`` ones), ``margin_mm``, ``feeding_min_share``, ``method``.
    """
    from renalseg.plan import region_shares, tumour_region

    territory = np.zeros(label.shape, dtype=np.uint8)
    voxels = np.argwhere((label == _KIDNEY) | (label == _TUMOUR))
    points = geometry.index_to_world(voxels[:, ::-1].astype(float))
    sides = sorted(kidneys)
    centres = np.stack([kidneys[s].centre_mm for s in sides])
    nearest_kidney = np.argmin(np.linalg.norm(points[:, None, :] - centres[None], axis=2), axis=1)
    truth: dict = {"method": "nearest renal pyramid (lobe) → its segmental artery", "margin_mm": margin_mm,
                   "feeding_min_share": feeding_min_share, "territories": {}, "kidneys": {}}
    value = 0
    for k, side in enumerate(sides):
        lobes = kidneys[side].lobes
        names = sorted({lobe["segmental"] for lobe in lobes})
        values = {}
        for name in names:
            value += 1
            values[name] = value
            root = next(lobe["root"] for lobe in lobes if lobe["segmental"] == name)
            truth["territories"][str(value)] = {"side": side, "segmental": name, "root": root}
        mine = nearest_kidney == k
        lobe_value = np.array([values[lobe["segmental"]] for lobe in lobes], dtype=np.uint8)
        territory[tuple(voxels[mine].T)] = lobe_value[_nearest_lobe(points[mine], lobes)]
        own = np.zeros(label.shape, bool)
        own[tuple(voxels[mine].T)] = True
        region = tumour_region(own & (label == _TUMOUR), own & (label == _KIDNEY), geometry.spacing_xyz_mm, margin_mm)
        shares = region_shares(territory, region)
        by_name = {truth["territories"][str(v)]["segmental"]: round(100 * s, 2) for v, s in shares.items()}
        truth["kidneys"][side] = {"tumour_percent": by_name,
                                  "feeding": [n for n, s in by_name.items() if s >= 100 * feeding_min_share]}
    return territory, truth


def compare_plan(plan: Mapping, plan_map: np.ndarray, truth: Mapping, truth_map: np.ndarray,
                 kidney: np.ndarray) -> list[dict]:
    """A plan scored against a phantom's true territories, one row per planned side.

    Each plan territory is mapped to the true segmental territory of its side it
    overlaps most on the kidney (many plan territories may map to one true one).

    Args:
        plan: ``plan.json``'s content (:attr:`renalseg.plan.PlanResult.plan`).
        plan_map: the plan's territory values (``territories.nii.gz``), ``(Z, Y, X)``.
        truth: the phantom's ``truth`` (:func:`true_territories`).
        truth_map: the phantom's true territory values on the same grid.
        kidney: the phantom's true kidney voxels on the same grid.

    Returns:
        Per side: ``side``, ``status``, ``tp``/``fp``/``fn`` (the true segmental arteries
        the plan's feeding territories map to, against the true feeding ones),
        ``agreement`` (the share of the side's true kidney voxels whose plan territory
        maps to their own true territory), ``segmentals_plan``, ``segmentals_true``,
        ``truth_feeding`` and ``plan_feeding`` (true segmental names), ``strategy``;
        a side the truth lacks gets ``error`` only.

    Example:
        >>> t = np.array([[[1, 1, 2, 2]]]); k = np.ones_like(t, bool)
        >>> truth = {"territories": {"1": {"side": "left", "segmental": "upper"},
        ...                          "2": {"side": "left", "segmental": "lower"}},
        ...          "kidneys": {"left": {"feeding": ["lower"]}}}
        >>> plan = {"kidneys": [{"side": "left", "status": "planned", "clamping": None,
        ...                      "territories": [{"value": 7}, {"value": 8}], "tumour": {"feeding": [8]}}]}
        >>> row = compare_plan(plan, np.array([[[7, 7, 7, 8]]]), truth, t, k)[0]
        >>> row["tp"], row["fp"], row["fn"], row["agreement"]
        (1, 0, 0, 0.75)
    """
    rows = []
    for entry in plan["kidneys"]:
        side = entry["side"]
        if side not in truth["kidneys"]:
            rows.append({"side": side, "error": "side not in truth"})
            continue
        true_values = [int(v) for v, t in truth["territories"].items() if t["side"] == side]
        mapping = {}
        for territory in entry["territories"]:
            overlap = truth_map[(plan_map == territory["value"]) & kidney]
            overlap = overlap[np.isin(overlap, true_values)]
            mapping[territory["value"]] = int(np.bincount(overlap).argmax()) if overlap.size else 0
        own = kidney & np.isin(truth_map, true_values)
        mapped = np.zeros(max([int(plan_map.max()), *mapping]) + 1, dtype=np.int64)
        for value, target in mapping.items():
            mapped[value] = target
        agreement = float((mapped[plan_map[own]] == truth_map[own]).mean()) if own.any() else float("nan")
        name_of = {int(v): t["segmental"] for v, t in truth["territories"].items()}
        truth_feeding = set(truth["kidneys"][side]["feeding"])
        plan_feeding = {name_of.get(mapping.get(b, 0), "?") for b in (entry["tumour"] or {}).get("feeding", [])}
        rows.append({"side": side, "status": entry["status"],
                     "tp": len(plan_feeding & truth_feeding), "fp": len(plan_feeding - truth_feeding),
                     "fn": len(truth_feeding - plan_feeding), "agreement": agreement,
                     "segmentals_plan": len(entry["territories"]), "segmentals_true": len(true_values),
                     "truth_feeding": sorted(truth_feeding), "plan_feeding": sorted(plan_feeding),
                     "strategy": (entry["clamping"] or {}).get("strategy")})
    return rows
