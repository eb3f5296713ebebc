"""A horseshoe kidney end to end: `renalseg segment` and `renalseg plan` on whole-abdomen
phantoms with a horseshoe kidney, against the same seeds' textbook anatomy.

Each seed (from 32000 on: never used for training) is drawn twice by
``renalseg.phantom.synthesize_abdomen``: with ``horseshoe=True`` (the lower poles joined
by an isthmus in front of the aorta and the IVC, both halves low, hila forward) and
without. Each is segmented as ``renalseg segment`` does it (localisation included) and
compared with its truth: Dice per structure, the share of the isthmus labelled kidney
(truth kidney voxels within 15 mm of the isthmus centre), whether both sides got a ROI,
and whether ``renalseg plan`` on the written labels plans both sides.

Usage:
    PYTHONPATH=. python benchmarks/bench_horseshoe.py --cases 3 [--seed 32000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from renalseg.labels import BY_KEY

STRUCTURES = ("artery", "vein", "kidney", "tumour")


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum() + b.sum())
    return None if total == 0 else round(2.0 * int((a & b).sum()) / total, 3)


def measure(seed: int, horseshoe: bool, segmenter, artery_segmenter) -> dict:  # noqa: ANN001
    from renalseg.phantom import synthesize_abdomen
    from renalseg.pipeline import SegmentConfig, segment_study
    from renalseg.plan import plan_labels
    from renalseg.volume import Volume

    case = synthesize_abdomen(seed, horseshoe=horseshoe, tumour=True)
    started = time.perf_counter()
    result = segment_study(case.image.to_sitk(), SegmentConfig(), segmenter=segmenter,
                           artery_segmenter=artery_segmenter)
    seconds = round(time.perf_counter() - started, 1)
    labels, truth = Volume.from_sitk(result.labels).array, case.label.array
    row: dict = {"seed": seed, "horseshoe": horseshoe, "seconds": seconds,
                 "rois": sorted(roi.side for roi in result.rois),
                 "horseshoe_noted": any("horseshoe" in note for roi in result.rois for note in roi.notes),
                 "dice": {key: _dice(labels == BY_KEY[key].value, truth == BY_KEY[key].value) for key in STRUCTURES}}
    if horseshoe:
        geometry = case.image.geometry
        zz, yy, xx = np.nonzero(truth == BY_KEY["kidney"].value)
        points = geometry.index_to_world(np.stack([xx, yy, zz], axis=1))
        near = np.linalg.norm(points - np.asarray(case.params["scene"]["horseshoe"]["isthmus_centre_mm"]), axis=1) < 15
        row["isthmus_labelled_kidney"] = round(float((labels[zz[near], yy[near], xx[near]]
                                                      == BY_KEY["kidney"].value).mean()), 3)
    plan = plan_labels(Volume.from_sitk(result.labels),
                       {BY_KEY["artery"].value: "artery", BY_KEY["kidney"].value: "kidney",
                        BY_KEY["tumour"].value: "tumour"}, rois=[roi.to_dict() for roi in result.rois])
    row["planned_sides"] = sorted(entry["side"] for entry in plan.plan["kidneys"] if entry.get("territories"))
    row["plan_notes"] = {entry["side"]: entry.get("notes", []) for entry in plan.plan["kidneys"]
                         if not entry.get("territories")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--seed", type=int, default=32000)
    parser.add_argument("--only-horseshoe", action="store_true", help="skip the textbook twin of each seed")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from renalseg.pipeline import thin_branch_segmenter
    from renalseg.segmenter import load_model

    segmenter = load_model(None, device="cpu")
    artery_segmenter = thin_branch_segmenter(segmenter, device="cpu")
    rows = []
    for seed in range(args.seed, args.seed + args.cases):
        for horseshoe in (True,) if args.only_horseshoe else (True, False):
            rows.append(measure(seed, horseshoe, segmenter, artery_segmenter))
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for horseshoe in (True, False):
        mine = [r for r in rows if r["horseshoe"] is horseshoe]
        if not mine:
            continue
        summary["horseshoe" if horseshoe else "textbook"] = {
            "cases": len(mine),
            "both_rois": sum(r["rois"] == ["left", "right"] for r in mine),
            "both_planned": sum(r["planned_sides"] == ["left", "right"] for r in mine),
            "horseshoe_noted": sum(r["horseshoe_noted"] for r in mine),
            "mean_dice": {key: round(float(np.mean([r["dice"][key] for r in mine if r["dice"][key] is not None])), 3)
                          for key in STRUCTURES if any(r["dice"][key] is not None for r in mine)},
            **({"isthmus_labelled_kidney": [r["isthmus_labelled_kidney"] for r in mine]} if horseshoe else {}),
        }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "summary": summary}, handle, indent=2)


if __name__ == "__main__":
    main()
