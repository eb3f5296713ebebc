"""Accuracy and speed of ``renalseg plan`` on held-out phantoms with tumours.

Synthesises N phantoms (seeds from 20000 on: never used for training) with a tumour
and their true territories (:mod:`renalseg.phantom.territory`), plans each on its
true labels and compares:

* **feeding branches**: the plan's feeding segmental territories, each mapped to the
  true segmental artery it overlaps most, against the true feeding segmental
  arteries (same rule: tumour + 5 mm margin share ≥ 5%); precision and recall summed
  over all cases (micro) and the mean per case;
* **territory agreement**: the share of kidney voxels whose plan territory maps to
  their true one (the same many-to-one mapping by largest overlap);
* **seconds per study** for the plan alone (the phantom synthesis is not counted).

Usage:
    python benchmarks/bench_plan.py --cases 30 --seed 20000 [--kind roi|abdomen] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from renalseg.phantom import synthesize_abdomen, synthesize_roi
from renalseg.plan import PlanConfig, plan_labels

KIPA = {3: "artery", 2: "kidney", 4: "tumour"}


def evaluate_case(case, result) -> list[dict]:  # noqa: ANN001
    """Per side: feeding TP/FP/FN, territory agreement, segmental counts."""
    truth_map = case.territory.array
    plan_map = result.territories.array
    kidney = case.label.array == 2
    rows = []
    for entry in result.plan["kidneys"]:
        side = entry["side"]
        if side not in case.truth["kidneys"]:
            rows.append({"side": side, "error": "side not in truth"})
            continue
        true_values = {int(v) for v, t in case.truth["territories"].items() if t["side"] == side}
        mapping = {}
        for t in entry["territories"]:
            inside = plan_map == t["value"]
            overlap = truth_map[inside & kidney]
            overlap = overlap[np.isin(overlap, list(true_values))]
            mapping[t["value"]] = int(np.bincount(overlap).argmax()) if overlap.size else 0
        own = kidney & np.isin(truth_map, list(true_values))
        mapped = np.zeros(max([int(plan_map.max()), *mapping]) + 1, dtype=np.int64)
        for value, target in mapping.items():
            mapped[value] = target
        agreement = float((mapped[plan_map[own]] == truth_map[own]).mean()) if own.any() else float("nan")
        name_of = {int(v): t["segmental"] for v, t in case.truth["territories"].items()}
        truth_feeding = set(case.truth["kidneys"][side]["feeding"])
        plan_feeding = {name_of.get(mapping.get(b, 0), "?") for b in (entry["tumour"] or {}).get("feeding", [])}
        rows.append({"side": side, "seed": case.params["seed"], "status": entry["status"],
                     "tp": len(plan_feeding & truth_feeding), "fp": len(plan_feeding - truth_feeding),
                     "fn": len(truth_feeding - plan_feeding), "agreement": agreement,
                     "segmentals_plan": len(entry["territories"]), "segmentals_true": len(true_values),
                     "truth_feeding": sorted(truth_feeding), "plan_feeding": sorted(plan_feeding),
                     "strategy": (entry["clamping"] or {}).get("strategy")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--seed", type=int, default=20000)
    parser.add_argument("--kind", choices=("roi", "abdomen"), default="roi")
    parser.add_argument("--json", default=None, help="write per-case rows and the summary here")
    parser.add_argument("--segmental-max-share", type=float, default=PlanConfig.segmental_max_share)
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    args = parser.parse_args()
    if args.seed < 20000:
        parser.error("held-out phantoms use seeds ≥ 20000 (lower seeds may have been used for training)")
    make = synthesize_roi if args.kind == "roi" else synthesize_abdomen
    rows, seconds = [], []
    for seed in range(args.seed, args.seed + args.cases):
        case = make(seed, tumour=True, territories=True)
        started = time.perf_counter()
        result = plan_labels(case.label, KIPA, config=PlanConfig(segmental_max_share=args.segmental_max_share))
        seconds.append(time.perf_counter() - started)
        for row in evaluate_case(case, result):
            row["seconds"] = round(seconds[-1], 2)
            rows.append(row)
            if not args.quiet:
                print(json.dumps(row), flush=True)
    valid = [r for r in rows if "tp" in r]
    tp, fp, fn = (sum(r[k] for r in valid) for k in ("tp", "fp", "fn"))
    precision_case = [r["tp"] / (r["tp"] + r["fp"]) for r in valid if r["tp"] + r["fp"]]
    recall_case = [r["tp"] / (r["tp"] + r["fn"]) for r in valid if r["tp"] + r["fn"]]
    summary = {
        "kind": args.kind, "cases": args.cases, "segmental_max_share": args.segmental_max_share, "seeds": [args.seed, args.seed + args.cases - 1],
        "kidneys_scored": len(valid),
        "feeding_precision_micro": round(tp / max(tp + fp, 1), 3),
        "feeding_recall_micro": round(tp / max(tp + fn, 1), 3),
        "feeding_precision_mean": round(float(np.mean(precision_case)), 3) if precision_case else None,
        "feeding_recall_mean": round(float(np.mean(recall_case)), 3) if recall_case else None,
        "territory_agreement_mean": round(float(np.nanmean([r["agreement"] for r in valid])), 3),
        "territory_agreement_min": round(float(np.nanmin([r["agreement"] for r in valid])), 3),
        "seconds_per_study_mean": round(float(np.mean(seconds)), 2),
        "seconds_per_study_max": round(float(np.max(seconds)), 2),
    }
    print("\n| metric | value |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"summary": summary, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
