"""Acceptance of the quality block (issue 30): phase calls, verdicts, uncertainty vs Dice, cost.

Part A (no network): whole-abdomen phantoms with seeds never used in training
(``--seed0``, default 40000), 384 × 384 voxels of 0.8 mm in-plane, slices 0.5–1.0 mm
(by seed). Each anatomy is rendered in the six contrast phases
(:mod:`quality_phantoms`: its own texture, blur and noise 8–25 HU), and once more in
the arterial phase averaged to 3 mm slices. Each rendering is localised on its own
(``locate_kidneys``) and judged from its pixels (``assess_scan`` + ``judge`` without
the network's uncertainty). Reported: phase accuracy (all six phases), the share of
``ok`` verdicts among arterial-phase renderings at 0.5–1 mm, and the share of
non-``ok`` verdicts among portal-venous, non-contrast and 3 mm renderings.

Part B (the shipped network, ``--network-cases``, default 12): kidney ROI phantoms
(``synthesize_roi``, seeds ``--seed0`` + 100 …) under conditions from easy to hard
(training-like arterial phase; noise 35–45 HU; weak arteries 180–260 HU; portal-venous
intensities; 2 mm slices), segmented as ``renalseg segment --input-is-roi`` does
(overlap 0.5, no TTA). Reported: per-case Dice against the phantom's arteries, the
uncertainty (share of candidate voxels with probability 0.25–0.75), the verdict,
Spearman ρ between uncertainty and Dice, and the time the quality step adds.

Run: ``.venv/bin/python benchmarks/bench_quality.py --seeds 6 --network-cases 12 --threads 2``
(prints the summary, writes ``--out`` JSON; ``--network-cases 0`` or ``--seeds 0`` runs one part).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_phantoms import PHASE_RANGES_HU, render_phase  # noqa: E402

from renalseg import quality  # noqa: E402
from renalseg.errors import RenalsegError  # noqa: E402
from renalseg.volume import Volume  # noqa: E402

SLICES_MM = (1.0, 0.8, 0.625, 0.5)
NOT_OK_PHASES = ("portal_venous", "non_contrast")


def _thick(volume: Volume, slice_mm: float) -> Volume:
    """The volume averaged into thicker slices (as a thick-slice reconstruction)."""
    factor = max(1, int(round(slice_mm / volume.geometry.spacing_xyz_mm[2])))
    nz = volume.array.shape[0] // factor
    array = volume.array[:nz * factor].astype(np.float32).reshape(nz, factor, *volume.array.shape[1:]).mean(axis=1)
    image = sitk.GetImageFromArray(np.rint(array).astype(np.int16))
    g = volume.geometry
    image.SetSpacing((g.spacing_xyz_mm[0], g.spacing_xyz_mm[1], g.spacing_xyz_mm[2] * factor))
    origin = np.asarray(g.origin_xyz_mm) + np.asarray(g.direction).reshape(3, 3)[:, 2] * g.spacing_xyz_mm[2] * (
        factor - 1) / 2
    image.SetOrigin(tuple(origin.tolist()))
    image.SetDirection(g.direction)
    return Volume.from_sitk(image)


def part_a(seeds: list[int]) -> list[dict]:
    from renalseg.phantom import synthesize_abdomen
    from renalseg.roi import locate_kidneys

    rows = []
    for n, seed in enumerate(seeds):
        slice_mm = SLICES_MM[n % len(SLICES_MM)]
        nz = int(round(240 / slice_mm))
        case = synthesize_abdomen(seed, spacing_xyz_mm=(0.8, 0.8, slice_mm), inplane_voxels=384, slices=nz)
        renders = [(phase, slice_mm) for phase in PHASE_RANGES_HU] + [("late_arterial", 3.0)]
        for index, (phase, thickness) in enumerate(renders):
            image, info = render_phase(case.tissues, phase, seed * 10 + index)
            if thickness != slice_mm:
                image = _thick(image, thickness)
            row = {"seed": seed, "phase": phase, "slice_mm": thickness, "noise_sigma_hu": round(info["noise_sigma_hu"], 1)}
            try:
                rois = locate_kidneys(image)
            except RenalsegError as err:
                rows.append({**row, "called": "locate failed", "verdict": "error", "error": str(err)[:120]})
                print(rows[-1], flush=True)
                continue
            started = time.perf_counter()
            scan_quality = quality.assess_scan(image.to_sitk(), rois)
            seconds = time.perf_counter() - started
            verdict = quality.judge(scan_quality, {})
            rows.append({**row, "called": scan_quality.phase, "verdict": verdict["verdict"],
                         "assess_s": round(seconds, 3), "phase_hu": scan_quality.phase_hu,
                         "noise_hu": scan_quality.scan["noise_hu"], "first_warning": (verdict["warnings"] or [""])[0],
                         "true_hu": {k: round(info["intensities_hu"][k]) for k in (
                             "aorta", "ivc", "other_vein", "kidney_cortex", "kidney_medulla", "collecting_system")}})
            print({k: rows[-1][k] for k in ("seed", "phase", "slice_mm", "called", "verdict", "assess_s")}, flush=True)
    return rows


NETWORK_CONDITIONS: list[tuple[str, dict]] = [
    ("arterial", {}),
    ("arterial", {}),
    ("arterial", {}),
    ("arterial, noise 40 HU", {"noise_sigma_hu": 40.0}),
    ("weak arteries 180-260 HU", {"intensity_ranges_hu": {"renal_artery": (180.0, 260.0),
                                                          "kidney_cortex": (150.0, 200.0)}}),
    ("portal-venous", {"intensities_hu": None}),
]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def part_b(seed0: int, cases: int, weights: str | None) -> list[dict]:
    from renalseg.phantom import synthesize_roi
    from renalseg.pipeline import SegmentConfig, segment_study
    from renalseg.segmenter import load_model

    segmenter = load_model(weights, "cpu")
    rows = []
    for index in range(cases):
        seed = seed0 + 100 + index
        name, options = NETWORK_CONDITIONS[index % len(NETWORK_CONDITIONS)]
        options = dict(options)
        if "intensities_hu" in options:  # portal-venous: arteries ≈ veins ≈ kidney
            rng = np.random.default_rng(seed)
            from quality_phantoms import phase_intensities

            options["intensities_hu"] = phase_intensities("portal_venous", rng)
        case = synthesize_roi(seed, **options)
        image = case.image
        if index % len(NETWORK_CONDITIONS) == 2:  # one arterial case in three at 2 mm slices
            name = "arterial, 2 mm slices"
            image = _thick(image, 2.0)
        result = segment_study(image.to_sitk(), SegmentConfig(input_is_roi=True), segmenter=segmenter)
        labels = sitk.GetArrayFromImage(result.labels) > 0
        truth = case.label.array == 3
        if image.geometry.shape_zyx != case.label.geometry.shape_zyx:  # thick slices: truth onto their grid
            source = case.label.with_array(truth.astype(np.float32)).to_sitk()
            truth = sitk.GetArrayFromImage(sitk.Resample(source, result.labels, sitk.Transform(),
                                                         sitk.sitkLinear, 0.0)) >= 0.5
        q = result.report["quality"]
        (side,) = q["uncertainty"]
        rows.append({"seed": seed, "condition": name, "dice": round(_dice(labels, truth), 4),
                     "uncertain_share": q["uncertainty"][side]["uncertain_share"],
                     "mean_probability": q["uncertainty"][side]["mean_probability"],
                     "tree_length_mm": q["uncertainty"][side]["tree_length_mm"],
                     "branch_points": q["uncertainty"][side]["branch_points"],
                     "pieces": q["uncertainty"][side]["pieces"], "phase": q["phase"], "verdict": q["verdict"],
                     "quality": q, "quality_s": result.report["timings_s"]["quality"],
                     "inference_s": result.report["timings_s"]["inference"]})
        print({k: v for k, v in rows[-1].items() if k != "quality"}, flush=True)
    return rows


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy import stats

    return float(stats.spearmanr(x, y).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6, help="anatomies for part A (each: 6 phases + 3 mm)")
    parser.add_argument("--seed0", type=int, default=40000)
    parser.add_argument("--network-cases", type=int, default=12, help="ROI phantoms through the network (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench_quality.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    summary: dict = {"seed0": args.seed0}
    rows_a = part_a([args.seed0 + i for i in range(args.seeds)]) if args.seeds else []
    if rows_a:
        thin = [r for r in rows_a if r["slice_mm"] <= 1.0]
        right = [r["called"] == r["phase"] for r in thin]
        arterial = [r for r in thin if r["phase"] in ("early_arterial", "late_arterial")]
        bad = [r for r in rows_a if r["phase"] in NOT_OK_PHASES or r["slice_mm"] >= 3.0]
        summary["part_a"] = {
            "renderings": len(rows_a),
            "phase_accuracy": round(float(np.mean(right)), 3), "phase_cases": len(right),
            "phase_accuracy_by_phase": {p: round(float(np.mean([r["called"] == p for r in thin if r["phase"] == p])), 3)
                                        for p in PHASE_RANGES_HU},
            "arterial_ok_share": round(float(np.mean([r["verdict"] == "ok" for r in arterial])), 3),
            "arterial_cases": len(arterial),
            "not_ok_share_pv_nc_3mm": round(float(np.mean([r["verdict"] != "ok" for r in bad])), 3),
            "not_ok_cases": len(bad),
            "assess_s_mean": round(float(np.mean([r.get("assess_s", 0) for r in rows_a])), 3),
            "assess_s_max": round(float(np.max([r.get("assess_s", 0) for r in rows_a])), 3),
        }
    rows_b = part_b(args.seed0, args.network_cases, args.weights) if args.network_cases else []
    if rows_b:
        summary["part_b"] = {
            "cases": len(rows_b),
            "spearman_uncertain_share_vs_dice": round(spearman([r["uncertain_share"] for r in rows_b],
                                                               [r["dice"] for r in rows_b]), 3),
            "spearman_mean_probability_vs_dice": round(spearman([r["mean_probability"] for r in rows_b],
                                                                [r["dice"] for r in rows_b]), 3),
            "quality_s_mean": round(float(np.mean([r["quality_s"] for r in rows_b])), 3),
            "quality_s_max": round(float(np.max([r["quality_s"] for r in rows_b])), 3),
            "tree_length_mm_range": [min(r["tree_length_mm"] for r in rows_b), max(r["tree_length_mm"] for r in rows_b)],
            "branch_points_range": [min(r["branch_points"] for r in rows_b), max(r["branch_points"] for r in rows_b)],
        }
    args.out.write_text(json.dumps({"summary": summary, "part_a": rows_a, "part_b": rows_b}, indent=1, default=str))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
