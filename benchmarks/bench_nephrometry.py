"""How well the R.E.N.A.L. score read from the labels agrees with the phantoms' truth.

Synthesises N kidney ROI phantoms with a tumour (``synthesize_roi(seed, tumour=True)``,
seeds from 62000 on: never used for training) and scores each tumour on its true kidney
and tumour labels twice (:func:`renalseg.nephrometry.renal_score`):

* as ``renalseg plan`` does, the renal sinus found from the kidney label's outline;
* with the phantom's true sinus: its sinus fat and collecting system (tissue classes;
  the collecting system is labelled kidney, so the label alone does not show it). For
  the L feature the polar lines are also read from the sinus fat alone, as Kutikov and
  Uzzo draw them where the sinus fat begins and ends.

It prints the agreement per feature (N and L: the sinus found against the true one), the
sum exactly and within one point, the complexity band, E against how the phantom grew
the tumour (``exophytic``: its centre on the kidney's surface, 40-90% outside; small
``endophytic`` tumours lie wholly inside; large ones may break through the other side,
so only tumours up to 35 mm are counted), R against the drawn diameter, and the seconds
per score.

Usage::

    PYTHONPATH=. python benchmarks/bench_nephrometry.py --cases 80 [--seed 62000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from renalseg.nephrometry import renal_score
from renalseg.phantom.abdomen import synthesize_roi
from renalseg.phantom.tissues import TISSUE_IDS


def score_case(seed: int) -> dict:
    case = synthesize_roi(seed, tumour=True)
    label, tissue, geometry = case.label.array, case.tissues.array, case.label.geometry
    kidney, tumour = label == 2, label == 4
    drawn = next(k["tumour"] for k in case.params["kidneys"].values()
                 if isinstance(k, dict) and (k.get("tumour") or {}).get("present"))
    started = time.perf_counter()
    found = renal_score(kidney, tumour, geometry)
    seconds = time.perf_counter() - started
    sinus = np.isin(tissue, [TISSUE_IDS["sinus_fat"], TISSUE_IDS["collecting_system"]])
    return {"seed": seed, "seconds": round(seconds, 2), "growth": drawn["growth"], "diameter_mm": drawn["diameter_mm"],
            "found": found, "true_sinus": renal_score(kidney, tumour, geometry, sinus=sinus),
            "true_fat": renal_score(kidney, tumour, geometry, sinus=tissue == TISSUE_IDS["sinus_fat"])}


def summarise(rows: list[dict]) -> list[str]:
    both = [r for r in rows if r["found"] and r["true_sinus"] and r["true_fat"]]
    lines = [f"{len(rows)} phantoms, {len(both)} scored both ways; seconds per score: median "
             f"{np.median([r['seconds'] for r in rows]):.2f}, max {max(r['seconds'] for r in rows):.2f}"]

    def agreement(name: str, truth_key: str) -> str:
        found = np.array([r["found"][name]["points"] for r in both])
        truth = np.array([r[truth_key][name]["points"] for r in both])
        table = [[int(((found == a) & (truth == b)).sum()) for b in (1, 2, 3)] for a in (1, 2, 3)]
        return f"{name} ({truth_key}): {np.mean(found == truth):.3f} agree; found (rows 1-3) x truth (columns) {table}"

    lines += [agreement("N", "true_sinus"), agreement("L", "true_sinus"), agreement("L", "true_fat")]
    gap = np.array([r["found"]["N"]["distance_mm"] - r["true_sinus"]["N"]["distance_mm"] for r in both])
    lines.append(f"N distance, found minus true: median {np.median(gap):.1f} mm, {gap.min():.1f} to {gap.max():.1f}")
    found = np.array([r["found"]["score"] for r in both])
    truth = np.array([r["true_sinus"]["score"] for r in both])
    bands = np.mean([r["found"]["complexity"] == r["true_sinus"]["complexity"] for r in both])
    lines.append(f"sum: {np.mean(found == truth):.3f} exact, {np.mean(abs(found - truth) <= 1):.3f} within 1; "
                 f"complexity band {bands:.3f}")
    for growth in ("exophytic", "endophytic"):
        points = [r["found"]["E"]["points"] for r in both if r["growth"] == growth and r["diameter_mm"] <= 35]
        lines.append(f"E of {growth} tumours up to 35 mm: " + ", ".join(f"E{p} {points.count(p)}" for p in (1, 2, 3)))
    drawn = [1 if r["diameter_mm"] <= 40 else 2 if r["diameter_mm"] < 70 else 3 for r in both]
    same = np.mean([r["found"]["R"]["points"] == d for r, d in zip(both, drawn)])
    lines.append(f"R against the drawn diameter: {same:.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=80)
    parser.add_argument("--seed", type=int, default=62000)
    parser.add_argument("--json", help="write the per-case scores here")
    args = parser.parse_args()
    rows = []
    for seed in range(args.seed, args.seed + args.cases):
        rows.append(score_case(seed))
        print(seed, rows[-1]["found"] and rows[-1]["found"]["score"], rows[-1]["true_sinus"] and
              rows[-1]["true_sinus"]["score"], flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    print("\n".join(summarise(rows)))


if __name__ == "__main__":
    main()
