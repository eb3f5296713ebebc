"""Which ``--max-gap-mm`` should ``renalseg segment`` use? Dice of its clean-up per gap.

    python benchmarks/gap_study.py weights/dpa_densebiasnet.safetensors runs/phantoms/gap_select \
        [--gaps 5 10 15 20 30 40 inf] [--threads 2] [--json OUT]

For each case (a folder as ``benchmarks/make_training_phantoms.py`` writes) the network
runs once (the card's window, overlap 0.5, arg-max map) and the artery map goes through
``renalseg.postprocess.clean_labels`` with each gap in turn (``inf``: no main-tree
filter, small pieces still removed). Prints one JSON row per case and, at the end, per
gap the mean Dice and in how many cases it beats, ties or loses to the current default
(``DEFAULT_MAX_GAP_MM``). Session 8 ran it on 24 phantoms made for this choice only
(seeds 9200-9223: neither trained on, nor used to choose checkpoints, nor reported as
held out); docs/training-history.md, *What ``renalseg segment`` writes*, has the figures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from renalseg.metrics import dice
from renalseg.postprocess import DEFAULT_MAX_GAP_MM, DEFAULT_MIN_COMPONENT_MM3, clean_labels
from renalseg.segmenter import load_model
from renalseg.training.data import find_cases, load_cases, parse_label_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("weights", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--gaps", type=float, nargs="+", default=[5, 10, 15, 20, 30, 40, math.inf])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gaps = sorted(set(args.gaps) | {DEFAULT_MAX_GAP_MM})
    segmenter = load_model(args.weights, device="cpu")
    cases = load_cases(find_cases(args.folder), spacing_xyz_mm=segmenter.spec.spacing_xyz_mm,
                       label_map=parse_label_map("3:renal_artery"))
    rows = []
    for case in cases:
        artery = (segmenter.predict(case.image_hu, overlap=0.5).argmax(0) == 1).astype(np.uint8)
        truth = case.label == 1
        row = {"case": case.case_id, "raw": dice(artery > 0, truth)}
        for gap in gaps:
            cleaned = clean_labels(artery, spacing_xyz_mm=case.geometry.spacing_xyz_mm,
                                   min_component_mm3=DEFAULT_MIN_COMPONENT_MM3, max_gap_mm=gap)
            row[f"{gap:g}"] = dice(cleaned > 0, truth)
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    default = f"{DEFAULT_MAX_GAP_MM:g}"
    base = np.array([r[default] for r in rows])
    summary = {}
    for key in ["raw", *(f"{g:g}" for g in gaps)]:
        values = np.array([r[key] for r in rows])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std()),
                        "vs_default": {"better": int((values > base + 1e-4).sum()),
                                       "same": int((np.abs(values - base) <= 1e-4).sum()),
                                       "worse": int((values < base - 1e-4).sum())}}
        print(f"{key:>5}: Dice {values.mean():.4f} ± {values.std():.4f}; against {default} mm "
              f"{summary[key]['vs_default']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "default_mm": DEFAULT_MAX_GAP_MM},
                                        indent=1))


if __name__ == "__main__":
    main()
