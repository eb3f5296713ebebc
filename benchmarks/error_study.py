"""Where does the artery Dice go? Errors of ``renalseg segment``'s map split by kind and calibre.

    python benchmarks/error_study.py weights/dpa_densebiasnet.safetensors runs/phantoms/val40 \
        [--cases N] [--threads 2] [--cache DIR] [--json OUT]

Each case (a folder as ``benchmarks/make_training_phantoms.py`` writes) goes through the
network (card window, overlap 0.5) and ``clean_labels`` with the defaults, as
``renalseg segment`` writes it. Its errors are then split:

* boundary: a missed voxel (FN) next to the prediction, or a false voxel (FP) next to
  the truth (26-neighbourhood: within one voxel) — a wall drawn a voxel off;
* far: the rest — branches missed or invented.

and each error voxel gets the diameter of the true vessel it belongs to (that of the
nearest voxel of the truth's centerline, ``renalseg.metrics.vessel_diameter_mm``),
in the bands of ``renalseg.metrics.DIAMETER_BANDS_MM``. Printed per case and summed
over all cases: Dice, the Dice if every boundary (or every far) error were mended,
the share of the errors in each band, and whether the walls come out too thick or
too thin (boundary FP minus FN). ``--cache`` keeps each case's arg-max map (npz, named
by case and by the weights file's content) so the split can be re-run without the
network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from renalseg.metrics import DIAMETER_BANDS_MM, FOUND_NAMES, vessel_diameter_mm
from renalseg.postprocess import DEFAULT_MAX_GAP_MM, DEFAULT_MIN_COMPONENT_MM3, clean_labels
from renalseg.segmenter import load_model
from renalseg.training.data import find_cases, load_cases, parse_label_map
from renalseg.tree import centerline
from renalseg.weights import model_paths

BANDS = [name.removeprefix("found_") for name in FOUND_NAMES]  # "0-2mm", "2-4mm", "4mm+"


def split_errors(pred: np.ndarray, truth: np.ndarray, spacing_xyz_mm) -> dict:
    """Voxel counts of the errors of ``pred`` against ``truth`` by kind and band."""
    spacing_zyx = np.asarray(spacing_xyz_mm, float)[::-1]
    near = np.ones((3, 3, 3), bool)
    fn, fp = truth & ~pred, pred & ~truth
    fn_boundary = fn & ndimage.binary_dilation(pred, near)
    fp_boundary = fp & ndimage.binary_dilation(truth, near)
    # each voxel's band: the diameter at the nearest truth-centerline voxel
    line = centerline(truth, tuple(spacing_xyz_mm))
    diameter = vessel_diameter_mm(truth, spacing_xyz_mm)
    _, nearest = ndimage.distance_transform_edt(~line, sampling=spacing_zyx, return_indices=True)
    calibre = diameter[tuple(nearest)]
    band = np.digitize(calibre, [hi for _, hi in DIAMETER_BANDS_MM[:-1]])
    counts = {"tp": int((pred & truth).sum()), "fn": int(fn.sum()), "fp": int(fp.sum()),
              "truth": int(truth.sum())}
    for name, mask in (("fn_boundary", fn_boundary), ("fn_far", fn & ~fn_boundary),
                       ("fp_boundary", fp_boundary), ("fp_far", fp & ~fp_boundary), ("truth", truth)):
        for i, b in enumerate(BANDS):
            counts[f"{name}_{b}"] = int((mask & (band == i)).sum())
    counts["fn_boundary"] = int(fn_boundary.sum())
    counts["fp_boundary"] = int(fp_boundary.sum())
    return counts


def figures(c: dict) -> dict:
    """Dice and what-if figures from (summed) counts."""
    tp, fn, fp = c["tp"], c["fn"], c["fp"]
    fnb, fpb = c["fn_boundary"], c["fp_boundary"]
    errors = fn + fp
    out = {"dice": 2 * tp / (2 * tp + fn + fp),
           "dice_boundary_mended": 2 * (tp + fnb) / (2 * (tp + fnb) + (fn - fnb) + (fp - fpb)),
           "dice_far_mended": 2 * (tp + fn - fnb) / (2 * (tp + fn - fnb) + fnb + fpb),
           "boundary_share": (fnb + fpb) / errors if errors else 0.0,
           "wall_bias_voxels_per_truth": (fpb - fnb) / c["truth"]}
    for b in BANDS:
        band_errors = sum(c[f"{k}_{b}"] for k in ("fn_boundary", "fn_far", "fp_boundary", "fp_far"))
        out[f"error_share_{b}"] = band_errors / errors if errors else 0.0
        out[f"truth_share_{b}"] = c[f"truth_{b}"] / c["truth"]
        # Dice inside the band (each error voxel counted with the vessel it belongs to)
        tp_b = c[f"truth_{b}"] - c[f"fn_boundary_{b}"] - c[f"fn_far_{b}"]
        denom = 2 * tp_b + c[f"fn_boundary_{b}"] + c[f"fn_far_{b}"] + c[f"fp_boundary_{b}"] + c[f"fp_far_{b}"]
        out[f"dice_{b}"] = 2 * tp_b / denom if denom else float("nan")
        out[f"dice_if_perfect_{b}"] = 2 * (tp + c[f"fn_boundary_{b}"] + c[f"fn_far_{b}"]) / (
            2 * (tp + c[f"fn_boundary_{b}"] + c[f"fn_far_{b}"]) + errors - band_errors)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("weights", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cases", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    found = find_cases(args.folder)[: args.cases]
    segmenter = load_model(args.weights, device="cpu")
    # cached maps belong to these weights: other weights never read them
    weights_key = hashlib.sha256(model_paths(args.weights)[0].read_bytes()).hexdigest()[:12]
    totals: dict[str, int] = {}
    rows = []
    for case in load_cases(found, spacing_xyz_mm=segmenter.spec.spacing_xyz_mm, label_map=parse_label_map("3:renal_artery")):
        cached = args.cache / f"{case.case_id}-{weights_key}.npz" if args.cache else None
        if cached is not None and cached.exists():
            artery = np.load(cached)["artery"]
        else:
            artery = (segmenter.predict(case.image_hu, overlap=0.5).argmax(0) == 1).astype(np.uint8)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(cached, artery=artery)
        written = clean_labels(artery, spacing_xyz_mm=case.geometry.spacing_xyz_mm,
                               min_component_mm3=DEFAULT_MIN_COMPONENT_MM3, max_gap_mm=DEFAULT_MAX_GAP_MM) > 0
        counts = split_errors(written, case.label == 1, case.geometry.spacing_xyz_mm)
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        row = {"case": case.case_id, **{k: round(v, 4) for k, v in figures(counts).items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k != "case"]
    summary = {"mean_of_cases": {k: round(float(np.nanmean([r[k] for r in rows])), 4) for k in keys},
               "pooled": {k: round(v, 4) for k, v in figures(totals).items()}, "n": len(rows)}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"cases": rows, "totals": totals, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
