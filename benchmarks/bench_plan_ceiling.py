"""The ceiling of ``renalseg plan``'s territory method on the phantoms.

The plan gives each kidney voxel to the artery branch nearest along the parenchyma
(:func:`renalseg.plan._geodesic_voronoi`); the phantom's truth gives it to the
segmental artery of the nearest renal pyramid (:mod:`renalseg.phantom.territory`).
This script runs the plan's method on the phantom's *true* artery centerlines
(lobar, interlobar and arcuate arteries, each labelled with its segmental artery,
inside the plan's domain: kidney, tumour and the arteries touching them) instead of
the centerline of the label map. What it reaches is the best the plan can reach
with a perfect tree; the gap between it and ``bench_plan.py`` is what the tree
costs (skeleton topology where arteries touch, and the choice of segmental units).

The scene is rebuilt from the seed with the draws of :func:`synthesize_roi`
(placement, side, scene); the script checks that the rebuilt kidney is the case's.

Usage:
    python benchmarks/bench_plan_ceiling.py --cases 10 --seed 29000
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from renalseg.phantom import synthesize_roi
from renalseg.phantom.abdomen import build_scene, random_placement
from renalseg.plan import _geodesic_voronoi, region_shares, tumour_region
from renalseg.tree import STRUCTURE_26

_KINDS = ("lobar", "interlobar", "arcuate")


def true_kidney(seed: int, case):  # noqa: ANN001, ANN201
    """The case's kidney with its artery tree, rebuilt with the draws of ``synthesize_roi``."""
    rng = np.random.default_rng(seed)
    rotation, shift = random_placement(rng)
    side = "left" if rng.random() < 0.5 else "right"
    scene = build_scene(rng, rotation=rotation, shift_mm=shift, tumour=True, accessory=None, early_branching=None)
    kidney = scene.kidneys[side]
    if kidney.params != case.params["kidneys"].get(side):
        raise SystemExit(f"seed {seed}: the rebuilt scene differs from synthesize_roi's; update true_kidney().")
    return kidney


def ceiling(seed: int) -> dict:
    case = synthesize_roi(seed, tumour=True, territories=True)
    kidney_model = true_kidney(seed, case)
    g, labels = case.label.geometry, case.label.array
    kidney, tumour, artery = labels == 2, labels == 4, labels == 3
    organ = kidney | tumour
    domain = organ | (artery & ndimage.binary_dilation(organ, STRUCTURE_26, iterations=2))
    value_of = {t["segmental"]: int(v) for v, t in case.truth["territories"].items()}
    branches = kidney_model.branches
    points, values = [], []
    for branch in branches:
        if branch.kind not in _KINDS:
            continue
        segmental = branch
        while segmental.kind != "segmental":
            segmental = branches[segmental.parent]
        index = np.rint(g.world_to_index(branch.points_mm)).astype(int)[:, ::-1]
        points.append(index)
        values += [value_of[segmental.name]] * len(index)
    points, values = np.concatenate(points), np.asarray(values)
    keep = np.all((points >= 0) & (points < labels.shape), axis=1)
    points, values = points[keep], values[keep]
    keep = domain[tuple(points.T)]
    voronoi, _ = _geodesic_voronoi(domain, points[keep], values[keep], np.asarray(g.spacing_xyz_mm)[::-1])
    truth = case.territory.array
    region = tumour_region(tumour, kidney, g.spacing_xyz_mm, case.truth["margin_mm"])
    shares = region_shares(np.maximum(voronoi, 0), region)
    found = {v for v, s in shares.items() if s >= case.truth["feeding_min_share"]}
    true_feeding = {value_of[n] for n in case.truth["kidneys"][kidney_model.side]["feeding"]}
    return {"seed": seed, "agreement": float((voronoi[kidney] == truth[kidney]).mean()),
            "tp": len(found & true_feeding), "fp": len(found - true_feeding), "fn": len(true_feeding - found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=29000)
    args = parser.parse_args()
    rows = []
    for seed in range(args.seed, args.seed + args.cases):
        rows.append(ceiling(seed))
        print(rows[-1], flush=True)
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    print(f"\n| metric | value |\n|---|---|\n| cases | {len(rows)} |"
          f"\n| territory_agreement_mean | {np.mean([r['agreement'] for r in rows]):.3f} |"
          f"\n| feeding_precision_micro | {tp / max(tp + fp, 1):.3f} |\n| feeding_recall_micro | {tp / max(tp + fn, 1):.3f} |")


if __name__ == "__main__":
    main()
