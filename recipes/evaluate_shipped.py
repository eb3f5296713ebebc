"""Held-out evaluation of trained weights on phantom folders, and publishing them with their card.

    python recipes/evaluate_shipped.py runs/shipped/twin/best.safetensors \
        runs/phantoms/val runs/phantoms/unseen [--publish weights/densebiasnet.safetensors]

The phantom folders are those ``recipes/make_training_phantoms.py`` writes;
``recipes/shipped_weights.sh`` runs this on each model it finishes.

Each case goes through ``Segmenter.predict`` (the shipped inference: sliding windows on
the card's window, Gaussian blending) and ``renalseg.metrics.evaluate_masks`` (Dice,
MCD, MSD, HD, HD95 in mm) of the arg-max map; ``dice_segment`` and ``segment_*``: the
same metrics after the clean-up ``renalseg segment`` applies by default
(``renalseg.postprocess.clean_labels``: the main tree, ``--max-gap-mm``, then the speck
removal, ``--min-component-mm3``); and ``found_<band>``: the share of the true
centerline found, by vessel diameter
(``renalseg.metrics.found_by_diameter``: < 2 mm interlobar/arcuate, 2–4 mm,
>= 4 mm main artery and divisions).
``--tta`` runs each case with mirroring test-time augmentation, as ``renalseg segment
--tta`` (on by default on CUDA); its figures are stored as ``FOLDER_tta``.
With ``--publish`` the weights are re-saved with a card whose ``metrics`` hold these
held-out figures (``save_model`` recomputes the sha256).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from renalseg.metrics import dice, evaluate_masks, found_by_diameter
from renalseg.postprocess import DEFAULT_MAX_GAP_MM, DEFAULT_MIN_COMPONENT_MM3, clean_labels
from renalseg.segmenter import load_model
from renalseg.training.data import find_cases, load_cases, parse_label_map
from renalseg.weights import load_model_files, model_paths, save_model


def evaluate_folder(segmenter, folder: Path, overlap: float, tta: bool = False) -> dict:
    cases = load_cases(find_cases(folder), spacing_xyz_mm=segmenter.spec.spacing_xyz_mm,
                       label_map=parse_label_map("3:renal_artery"))
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        probabilities = segmenter.predict(case.image_hu, overlap=overlap, tta=tta)
        prediction = np.argmax(probabilities, axis=0) == 1
        truth = case.label == 1
        # what `renalseg segment` writes: the same map after its default clean-up
        cleaned = clean_labels(prediction.astype(np.uint8), spacing_xyz_mm=case.geometry.spacing_xyz_mm,
                               min_component_mm3=DEFAULT_MIN_COMPONENT_MM3, max_gap_mm=DEFAULT_MAX_GAP_MM) > 0
        row = {"case": case.case_id, **evaluate_masks(prediction, truth, case.geometry.spacing_xyz_mm),
               "dice_segment": dice(cleaned, truth),
               **{f"segment_{k}": v for k, v in evaluate_masks(cleaned, truth, case.geometry.spacing_xyz_mm).items()
                  if k != "dice"},
               **{f"segment_{k}": v
                  for k, v in found_by_diameter(cleaned, truth, case.geometry.spacing_xyz_mm).items()},
               **found_by_diameter(prediction, truth, case.geometry.spacing_xyz_mm),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("case", "seconds")]
    # a band no vessel of a case falls in is NaN there: nanmean, with the count used
    summary = {k: {"mean": float(np.nanmean([r[k] for r in rows])), "std": float(np.nanstd([r[k] for r in rows])),
                   "n": int(np.sum(np.isfinite([r[k] for r in rows])))} for k in keys}
    return {"folder": str(folder), "cases": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("weights", type=Path)
    parser.add_argument("folders", type=Path, nargs="*")
    parser.add_argument("--results", type=Path, nargs="*", default=[],
                        help="--json files of earlier runs (e.g. folders evaluated in parallel) to publish")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tta", action="store_true",
                        help="mirroring test-time augmentation, as `renalseg segment --tta` (8x the work)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--publish", type=Path, help="write the weights + card with these metrics here")
    parser.add_argument("--history", help="with --publish: how the weights came to be (runs before the last "
                                          "one, e.g. the phases a --init chain went through); card training.history")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for stored in args.results:
        results.update(json.loads(stored.read_text()))
    if args.folders:
        segmenter = load_model(args.weights, device="cpu")
        suffix = "_tta" if args.tta else ""  # a TTA run's figures under their own name, e.g. val40_tta
        results.update({folder.name + suffix: evaluate_folder(segmenter, folder, args.overlap, args.tta)
                        for folder in args.folders})
    print(json.dumps({k: v["summary"] for k, v in results.items()}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.publish:
        network, card = load_model_files(args.weights)
        metrics = {"held_out": {name: {"cases": [r["case"] for r in r_["cases"]], **r_["summary"]}
                                for name, r_ in results.items()},
                   "held_out_overlap": args.overlap,
                   # what dice_segment / segment_* measured: `renalseg segment`'s clean-up
                   "segment_clean_up": {"max_gap_mm": DEFAULT_MAX_GAP_MM,
                                        "min_component_mm3": DEFAULT_MIN_COMPONENT_MM3},
                   # re-publishing published weights (new figures) keeps their selection record
                   "selection": card.metrics.get("selection", card.metrics) if "held_out" in card.metrics
                   else card.metrics}
        training = dict(card.training, **({"history": args.history} if args.history else {}))
        card = dataclasses.replace(card, metrics=metrics, training=training, synthetic_training_only=True)
        if model_paths(args.publish)[0].resolve() == model_paths(args.weights)[0].resolve():
            # new figures for the same tensors: only the card changes (the file and its sha256 stay)
            model_paths(args.publish)[1].write_text(card.to_json(), encoding="utf-8")
        else:
            save_model(network, card, args.publish)
        print(f"published {args.publish}")


if __name__ == "__main__":
    main()
