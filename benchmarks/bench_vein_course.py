"""A left renal vein behind the aorta: what `renalseg segment` labels it, against the usual course.

Each seed (from 31000 on: never used for training) is drawn as a left kidney's ROI crop, as
``renalseg segment`` crops a study (``synthesize_roi(seed, side="left", great_vessels=True)``),
once per course of the left renal vein (``left_renal_vein``: ``preaortic``, the usual one in
front of the aorta; ``retroaortic``, behind it, flattened against the spine, into the IVC
about 2 cm lower; ``circumaortic``, both) and per contrast phase, and segmented as
``renalseg segment --input-is-roi --side left`` writes it (default weights, one network
pass; the side given, as localisation gives it on a whole study). Per case:
Dice of the vein and the artery, the share of true vein voxels labelled artery, what the
part of the vein behind the aorta (true vein voxels within 12 mm of its point behind the
aorta) is labelled, what the topology clean-up moved or dropped, and whether the quality
verdict asked for a check of artery label behind the aorta (``renalseg.quality.artery_behind_aorta_ml``).

Usage:
    PYTHONPATH=. python benchmarks/bench_vein_course.py --cases 6 [--seed 31000]
        [--phases arterial portal-venous] [--courses preaortic retroaortic circumaortic] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

#: true vein voxels this close (mm) to the vein's point behind the aorta are its retroaortic part
BEHIND_REACH_MM = 12.0


def _share(mask: np.ndarray, of: np.ndarray) -> float | None:
    return None if not of.any() else round(float((mask & of).sum() / of.sum()), 3)


def measure(seed: int, phase: str, course: str, segmenter) -> dict:  # noqa: ANN001
    import SimpleITK as sitk

    from renalseg.metrics import structure_scores
    from renalseg.phantom.abdomen import synthesize_roi
    from renalseg.pipeline import SegmentConfig, segment_study

    options = {"phase": phase} if phase != "arterial" else {}
    if course != "preaortic":
        options["left_renal_vein"] = course
    case = synthesize_roi(seed, side="left", great_vessels=True, tumour=False, **options)
    truth = case.label.array
    started = time.perf_counter()
    # the side given, as localisation gives it on a whole study (the great vessels looked for
    # in the crop's medial half; a left crop's arterial aorta found alone for the verdict)
    result = segment_study(case.image.to_sitk(), SegmentConfig(input_is_roi=True, side="left", thin_branches=False),
                           segmenter=segmenter)
    written = sitk.GetArrayFromImage(result.labels)
    row = {"seed": seed, "phase": phase, "course": course, "seconds": round(time.perf_counter() - started, 1)}
    scores = structure_scores(written, truth, case.image.geometry.spacing_xyz_mm, structures=("vein", "artery"))
    row.update({k: round(float(scores[k]), 3) for k in ("dice_vein", "dice_artery", "vein_as_artery")})
    info = case.params["scene"].get("left_renal_vein")
    if info:
        geometry = case.image.geometry
        zz, yy, xx = np.indices(truth.shape, sparse=True)
        point = geometry.world_to_index(np.array([info["behind_aorta_mm"]]))[0]
        sx, sy, sz = geometry.spacing_xyz_mm
        near = ((xx - point[0]) * sx) ** 2 + ((yy - point[1]) * sy) ** 2 + ((zz - point[2]) * sz) ** 2 \
            <= BEHIND_REACH_MM ** 2
        behind = (truth == 1) & near
        row["behind_ml"] = round(float(behind.sum()) * geometry.voxel_volume_mm3 / 1000.0, 3)
        row["behind_as_vein"] = _share(written == 1, behind)
        row["behind_as_artery"] = _share(written == 3, behind)
    topology = {}
    for side in result.report.get("arteries", {}).values():
        for kind, counts in (side.get("cleanup", {}).get("topology") or {}).items():
            topology[kind] = {k: v for k, v in counts.items() if v}
    row["topology"] = topology
    quality = result.report.get("quality", {})
    row["artery_behind_aorta_ml"] = max((u.get("artery_behind_aorta_ml") or 0.0)
                                        for u in quality.get("uncertainty", {}).values()) if quality.get(
        "uncertainty") else None
    row["behind_aorta_check"] = any("behind the aorta" in w for w in quality.get("warnings", []))
    row["topology_found"] = [r for r in (result.report.get("topology", {}).get("roots") or [])]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=31000)
    parser.add_argument("--phases", nargs="+", default=["arterial", "portal-venous"])
    parser.add_argument("--courses", nargs="+", default=["preaortic", "retroaortic", "circumaortic"])
    parser.add_argument("--weights", default=None, help="weights to segment with (default: the shipped default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()

    import torch

    from renalseg.segmenter import load_model

    torch.set_num_threads(args.threads)
    segmenter = load_model(args.weights, device="cpu")
    rows = []
    for phase in args.phases:
        for seed in range(args.seed, args.seed + args.cases):
            for course in args.courses:
                row = measure(seed, phase, course, segmenter)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    with open(args.json, "w") as handle:
                        json.dump(rows, handle, indent=1)
    print("\nphase, course: cases | vein Dice | artery Dice | vein labelled artery | behind the aorta: vein, artery "
          "| verdict asks to check behind the aorta")
    for phase in args.phases:
        for course in args.courses:
            got = [r for r in rows if r["phase"] == phase and r["course"] == course]

            def mean(key: str) -> str:
                values = [r[key] for r in got if r.get(key) is not None and np.isfinite(r[key])]
                return f"{np.mean(values):.3f}" if values else "-"

            print(f"{phase}, {course}: {len(got)} | {mean('dice_vein')} | {mean('dice_artery')} | "
                  f"{mean('vein_as_artery')} | {mean('behind_as_vein')}, {mean('behind_as_artery')} | "
                  f"{sum(r['behind_aorta_check'] for r in got)} of {len(got)}")


if __name__ == "__main__":
    main()
