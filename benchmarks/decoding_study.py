"""Does the way the network's probabilities are turned into a label map limit the Dice?

    python benchmarks/decoding_study.py weights/dpa_densebiasnet.safetensors runs/phantoms/val \
        [--cases N] [--no-tta] [--threads 2] [--json OUT]

For each case the network runs once with the card's window and overlap 0.5 and the
artery map goes through the clean-up ``renalseg segment`` applies
(``renalseg.postprocess.clean_labels``); the Dice of that is the baseline. Each other
arm changes one thing only:

* ``threshold_T``: artery where p > T instead of the arg-max (p > 0.5);
* ``size_adaptive``: p > 0.3 on thin parts, p > 0.6 within 2 voxels of a part whose
  distance to its own wall exceeds 1.5 mm (thin vessels are drawn too thin, thick ones
  too wide: one threshold per calibre);
* ``tta``: mirroring test-time augmentation on all three axes (``--tta``, 8× the work);
* ``window_training_patch``: windows of the last training phase's patch (48 × 96 × 96)
  instead of the card's 64 × 152 × 152;
* ``window_whole_roi``: one window covering the whole ROI (no overlap, no blending).

It also prints what the output layer can express: ``p_max``, the artery probability
when every feature of the last layer is zero (softmax of the head's bias), and how many
of those features vote for the artery (positive weight difference artery − background).

Session 5's figures (shipped weights, 6 held-out phantoms) are in docs/training-history.md,
in the paragraph "The target (Dice ≥ 0.90 on held-out phantoms) is not reached"; they are
measurements of these phantoms, not of patients.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from renalseg.metrics import dice
from renalseg.postprocess import DEFAULT_MAX_GAP_MM, DEFAULT_MIN_COMPONENT_MM3, clean_labels
from renalseg.segmenter import load_model
from renalseg.training.data import find_cases, load_cases, parse_label_map


def head_summary(network: torch.nn.Module) -> dict:
    """Artery probability at all-zero features, and the last layer's artery-voting features."""
    head = network.segmenter.head if hasattr(network, "segmenter") else network.head
    bias = head.bias.detach().double()
    weight = head.weight.detach().double().flatten(1)
    difference = weight[1] - weight[0]
    return {"p_max": float(torch.softmax(bias, 0)[1]), "features": int(difference.numel()),
            "features_voting_artery": int((difference > 0.05).sum()),
            "features_voting_background": int((difference < -0.05).sum())}


def size_adaptive(p: np.ndarray, spacing_zyx: tuple[float, float, float], *, thin: float = 0.3,
                  thick: float = 0.6, radius_mm: float = 1.5) -> np.ndarray:
    inside = ndi.distance_transform_edt(p > 0.5, sampling=spacing_zyx)
    near_thick = ndi.grey_dilation(inside, size=(3, 5, 5)) > radius_mm
    return np.where(near_thick, p > thick, p > thin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cases", type=int, default=None, help="only the first N cases")
    parser.add_argument("--no-tta", action="store_true", help="skip the TTA arm (8× the work)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = load_model(args.weights, device="cpu")
    head = head_summary(segmenter.network)
    print(json.dumps({"head": head}), flush=True)
    found = find_cases(args.folder)
    cases = load_cases(found[:args.cases] if args.cases else found, spacing_xyz_mm=segmenter.spec.spacing_xyz_mm,
                       label_map=parse_label_map("3:renal_artery"))
    card_window = segmenter.spec.window_zyx
    rows = []
    for case in cases:
        spacing = case.geometry.spacing_xyz_mm
        truth = case.label == 1

        def score(mask: np.ndarray) -> float:
            cleaned = clean_labels(mask.astype(np.uint8), spacing_xyz_mm=spacing,
                                   min_component_mm3=DEFAULT_MIN_COMPONENT_MM3, max_gap_mm=DEFAULT_MAX_GAP_MM)
            return round(dice(cleaned > 0, truth), 4)

        def predict(window: tuple[int, int, int], tta: bool = False) -> np.ndarray:
            segmenter.spec = dataclasses.replace(segmenter.spec, window_zyx=window)
            return segmenter.predict(case.image_hu, overlap=0.5, tta=tta)[1]

        p = predict(card_window)
        row = {"case": case.case_id, "baseline": score(p > 0.5)}
        for t in (0.3, 0.4, 0.6):
            row[f"threshold_{t}"] = score(p > t)
        row["size_adaptive"] = score(size_adaptive(p, spacing[::-1]))
        row["window_training_patch"] = score(predict((48, 96, 96)) > 0.5)
        whole = tuple(int(np.ceil(s / 8) * 8) for s in case.image_hu.shape)
        row["window_whole_roi"] = score(predict(whole) > 0.5)  # type: ignore[arg-type]
        if not args.no_tta:
            row["tta"] = score(predict(card_window, tta=True) > 0.5)
        rows.append(row)
        print(json.dumps(row), flush=True)
    arms = [k for k in rows[0] if k != "case"]
    summary = {arm: {"mean": round(float(np.mean([r[arm] for r in rows])), 4),
                     "better_than_baseline": sum(r[arm] > r["baseline"] for r in rows)} for arm in arms}
    print(json.dumps({"cases": len(rows), "summary": summary}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"head": head, "rows": rows,
                                         "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
