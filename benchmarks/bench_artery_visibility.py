"""How far each part of a phantom's renal artery stands out from what surrounds it, per phase.

The network cannot label an artery the image does not show. In the portal-venous phase
the renal artery is about as bright as the enhancing kidney around it (real scans: the
artery 150-210 HU, the kidney 150-250 HU), so the thin branches inside the parenchyma
may be all but invisible, whatever the network. This measures it on roi phantoms made
as the held-out sets ``four_art`` / ``four_pv`` are (seeds 9600-9619 arterial, 9620-9639
portal-venous by default; ``--great-vessels``, half with a tumour, the model grid):

* each point of the true artery's centerline (:func:`renalseg.tree.centerline`) is read
  at its vessel diameter (:func:`renalseg.metrics.vessel_diameter_mm`) and its HU, the
  mean over its 3 × 3 × 3 voxels inside the artery (partial volume included, as the
  network sees it);
* its surroundings: the voxels 2-4 voxels from the artery in a 13 × 13 × 9 box around
  the point, neither artery nor vein; their median HU and their standard deviation
  (noise and texture together);
* **contrast-to-noise** ``(artery HU - surroundings median) / surroundings SD``, and
  whether the point lies in the kidney (its surroundings mostly kidney or tumour);
* the **visible share** of the artery: the share of true artery voxels whose nearest
  centerline point has a contrast-to-noise of at least ``--visible-cnr`` (default 1);
  ``2 v / (1 + v)`` is then the Dice of a map holding exactly the visible artery, an
  upper bound for a labeller that finds nothing it cannot see.

Usage:
    PYTHONPATH=. python benchmarks/bench_artery_visibility.py [--cases 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from renalseg.metrics import DIAMETER_BANDS_MM, FOUND_LABELS, vessel_diameter_mm
from renalseg.phantom import synthesize_roi
from renalseg.tree import centerline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
# the held-out sets' grid and tumour draw, from the script that makes them
from make_training_phantoms import SPACING_XYZ_MM, draws  # noqa: E402

SETS = {"arterial": 9600, "portal-venous": 9620}  # the first seed of four_art / four_pv
HALF_BOX_ZYX = (4, 6, 6)
SHELL_VOXELS = (2.0, 4.0)


def _band(diameter: float) -> str:
    """The diameter band a point reads in, named as the reports name it (``FOUND_LABELS``)."""
    return next(name for (lo, hi), name in zip(DIAMETER_BANDS_MM, FOUND_LABELS) if lo <= diameter < hi)


def measure(image: np.ndarray, label: np.ndarray, visible_cnr: float) -> dict:
    """Centerline points of the artery (KiPA22 label 3) with their diameter band,
    contrast-to-noise and place, and the visible share of the artery's voxels."""
    artery = label == 3
    vessel = artery | (label == 1)
    line = centerline(artery, SPACING_XYZ_MM)
    diameter = vessel_diameter_mm(artery, SPACING_XYZ_MM)
    # mean HU over each point's 3 x 3 x 3 neighbourhood inside the artery
    hu_sum = ndimage.uniform_filter(np.where(artery, image, 0.0).astype(np.float64), 3)
    count = ndimage.uniform_filter(artery.astype(np.float64), 3)
    away = ndimage.distance_transform_edt(~artery)  # in voxels
    shell = (away >= SHELL_VOXELS[0]) & (away <= SHELL_VOXELS[1]) & ~vessel
    in_kidney_tissue = (label == 2) | (label == 4)
    points = np.argwhere(line)
    cnr = np.empty(len(points))
    inside = np.zeros(len(points), bool)
    for i, p in enumerate(points):
        box = tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(p, HALF_BOX_ZYX))
        ring = shell[box]
        values = image[box][ring]
        if values.size < 10:
            cnr[i] = np.nan
            continue
        value = hu_sum[tuple(p)] / max(count[tuple(p)], 1e-6)
        cnr[i] = (value - np.median(values)) / max(float(values.std()), 1.0)
        inside[i] = in_kidney_tissue[box][ring].mean() > 0.5
    # the share of artery voxels whose nearest centerline point is visible
    seen = np.zeros(artery.shape, bool)
    seen[tuple(points[np.nan_to_num(cnr, nan=-np.inf) >= visible_cnr].T)] = True
    nearest = ndimage.distance_transform_edt(~line, return_distances=False, return_indices=True)
    visible = seen[tuple(nearest)][artery]
    return {"band": [_band(d) for d in diameter[line]], "cnr": cnr, "inside": inside,
            "visible_share": float(visible.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20, help="phantoms per phase")
    parser.add_argument("--visible-cnr", type=float, default=1.0)
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()
    rows, t0 = [], time.perf_counter()
    for phase, first in SETS.items():
        points: dict[tuple[str, str], list[float]] = {}
        shares = []
        for seed in range(first, first + args.cases):
            case = synthesize_roi(seed, spacing_xyz_mm=SPACING_XYZ_MM, inplane_voxels=152, phase=phase,
                                  great_vessels=True, tumour=draws(seed, 0.5))
            m = measure(case.image.array.astype(np.float32), case.label.array, args.visible_cnr)
            shares.append(m["visible_share"])
            for band, c, inside in zip(m["band"], m["cnr"], m["inside"]):
                if np.isfinite(c):
                    points.setdefault((band, "kidney" if inside else "outside"), []).append(c)
        v = float(np.mean(shares))
        for (band, where), values in sorted(points.items()):
            values_a = np.asarray(values)
            rows.append({"phase": phase, "diameter": band, "where": where, "points": int(values_a.size),
                         "median_cnr": round(float(np.median(values_a)), 2),
                         "below_visible": round(float((values_a < args.visible_cnr).mean()), 3)})
        rows.append({"phase": phase, "visible_share": round(v, 3), "dice_ceiling": round(2 * v / (1 + v), 3),
                     "cases": args.cases})
    print(f"{'phase':<14} {'diameter':<15} {'where':<8} {'points':>7} {'median CNR':>11} "
          f"{'CNR < ' + format(args.visible_cnr, 'g'):>9}")
    for r in rows:
        if "diameter" in r:
            print(f"{r['phase']:<14} {r['diameter']:<15} {r['where']:<8} {r['points']:>7} {r['median_cnr']:>11.2f} "
                  f"{r['below_visible']:>9.3f}")
        else:
            print(f"{r['phase']}: visible share of the artery's voxels {r['visible_share']:.3f}, "
                  f"Dice of the visible artery alone {r['dice_ceiling']:.3f} ({r['cases']} phantoms)")
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
