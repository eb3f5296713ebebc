"""How far a four-structure model is from labelling tumours: its tumour probability inside them.

While the tumour class is being learnt its arg-max labels almost none of a tumour, so the
tumour Dice says only "0"; the probability the network gives true tumour voxels shows
the progress. For each case of FOLDER (a phantom folder of
``recipes/make_training_phantoms.py``: image/, label/, at the model spacing) with a
tumour: the median tumour probability inside the true tumour, the share of the tumour
the arg-max calls tumour, the arg-max tumour Dice, and the volume called tumour outside
it (ml), with the phantom tissues it lies in where FOLDER has tissue maps (tissue/); the
same on the cases without a tumour (volume called tumour only). Then the tumour Dice and
false tumour (ml) after the segment clean-up, with the tumour kept by kidney contact as
``renalseg segment`` does (``contact``) and by the largest-piece rule of the other
labels (``largest``), at the default ``--max-gap-mm``; and with the contact rule's
tumour grown into the background and kidney voxels connected to it whose tumour
probability exceeds each ``--grow`` threshold (``grow0.2``: hysteresis from the
arg-max). Last, the mean tumour probability of the pieces the contact rule keeps, the
true ones (most voxels in a true tumour) against the false: whether a confidence
threshold could drop false tumour. ``--probabilities DIR`` keeps each case's network
output (``DIR/<case>.npy``, float16) and reads it back on the next run, so clean-up
rules are compared without the network passes.

Usage:
    python recipes/tumour_probability.py WEIGHTS FOLDER [--cases roi_09508,roi_09510] \\
        [--overlap 0.25] [--threads 2] [--grow 0.3,0.2,0.1] [--probabilities DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from renalseg.components import STRUCTURE_26
from renalseg.labels import BY_KEY, output_values
from renalseg.phantom.tissues import TISSUES
from renalseg.postprocess import DEFAULT_MAX_GAP_MM, clean_labels, probabilities_to_labels
from renalseg.segmenter import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grow", default="0.3,0.2,0.1", help="tumour probability thresholds to grow from")
    parser.add_argument("--probabilities", type=Path, default=None,
                        help="folder of saved network outputs: read where present, written where not")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    segmenter = load_model(args.weights, device="cpu")
    tumour_class = next((int(c) for c, name in segmenter.spec.classes.items() if name == "tumour"), None)
    if tumour_class is None:
        raise SystemExit(f"{args.weights}: the model labels no tumour ({dict(segmenter.spec.classes)}).")
    channel_to_value = np.zeros(segmenter.spec.num_classes, dtype=np.uint8)
    for channel, value in output_values(segmenter.spec.classes).items():
        channel_to_value[channel] = value
    thresholds = [float(t) for t in args.grow.split(",") if t]
    names = [n for n in args.cases.split(",") if n] or sorted(
        p.name.removesuffix(".nii.gz") for p in (args.folder / "label").glob("*.nii.gz"))
    rows = []
    for name in names:
        started = time.perf_counter()
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(args.folder / "image" / f"{name}.nii.gz")))
        label = sitk.ReadImage(str(args.folder / "label" / f"{name}.nii.gz"))
        truth = sitk.GetArrayFromImage(label) == 4
        voxel_ml = float(np.prod(label.GetSpacing())) / 1000
        saved = args.probabilities / f"{name}.npy" if args.probabilities else None
        if saved is not None and saved.exists():
            probabilities = np.load(saved).astype(np.float32)
        else:
            probabilities = segmenter.predict(image.astype(np.float32), overlap=args.overlap)
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                np.save(saved, probabilities.astype(np.float16))
        called = probabilities.argmax(axis=0) == tumour_class
        outside = called & ~truth
        row = {"case": name, "tumour_ml": round(float(truth.sum()) * voxel_ml, 2),
               "called_outside_ml": round(float(outside.sum()) * voxel_ml, 2)}
        tissue_file = args.folder / "tissue" / f"{name}.nii.gz"
        if tissue_file.exists() and outside.any():
            tissue = sitk.GetArrayFromImage(sitk.ReadImage(str(tissue_file)))[outside]
            values, counts = np.unique(tissue, return_counts=True)
            order = np.argsort(-counts)[:3]
            row["called_outside_in"] = {TISSUES[int(values[k])]: round(float(counts[k]) * voxel_ml, 2) for k in order}
        if truth.any():
            p = probabilities[tumour_class][truth]
            row.update(p_median=round(float(np.median(p)), 3), called_share=round(float(called[truth].mean()), 3),
                       dice=round(float(2 * (called & truth).sum() / (called.sum() + truth.sum())), 3))
        labels = channel_to_value[probabilities_to_labels(probabilities)]
        spacing = label.GetSpacing()
        tumour, kidney = BY_KEY["tumour"].value, BY_KEY["kidney"].value
        p_tumour = probabilities[tumour_class]
        kept_by = {}
        for rule, extra in (("largest", {}), ("contact", {"tumour_value": tumour, "kidney": labels == kidney})):
            kept_by[rule] = clean_labels(labels, spacing_xyz_mm=spacing, min_component_mm3=0.0,
                                         max_gap_mm=DEFAULT_MAX_GAP_MM, **extra) == tumour
        open_to_growth = (labels == 0) | (labels == kidney)  # _grown adds the seeds themselves
        for threshold in thresholds:
            kept_by[f"grow{threshold:g}"] = _grown(kept_by["contact"], (p_tumour > threshold) & open_to_growth)
        for rule, kept in kept_by.items():
            row[f"false_ml_{rule}"] = round(float((kept & ~truth).sum()) * voxel_ml, 2)
            if truth.any():
                row[f"dice_{rule}"] = round(float(2 * (kept & truth).sum() / (kept.sum() + truth.sum())), 3)
        pieces, count = ndimage.label(kept_by["contact"], structure=STRUCTURE_26)
        if count:
            index = np.arange(1, count + 1)
            true_share = ndimage.mean(truth.astype(np.float32), pieces, index)
            mean_p = ndimage.mean(p_tumour, pieces, index)
            row["piece_mean_p"] = {"true": [round(float(p), 3) for p, t in zip(mean_p, true_share) if t > 0.5],
                                   "false": [round(float(p), 3) for p, t in zip(mean_p, true_share) if t <= 0.5]}
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    with_tumour = [r for r in rows if "p_median" in r]
    if with_tumour:
        print(f"\n{len(with_tumour)} cases with a tumour: median p(tumour) inside "
              f"{np.median([r['p_median'] for r in with_tumour]):.3f}, called "
              f"{np.mean([r['called_share'] for r in with_tumour]):.3f} of it, Dice "
              f"{np.mean([r['dice'] for r in with_tumour]):.3f}; tumour called outside tumours "
              f"{np.mean([r['called_outside_ml'] for r in rows]):.2f} ml a case")
        without = [r for r in rows if "p_median" not in r]
        for rule in ["largest", "contact"] + [f"grow{t:g}" for t in thresholds]:
            false_free = [r[f"false_ml_{rule}"] for r in without]
            print(f"after the clean-up ({rule}): Dice {np.mean([r[f'dice_{rule}'] for r in with_tumour]):.3f}, "
                  f"found (Dice > 0.05) in {sum(r[f'dice_{rule}'] > 0.05 for r in with_tumour)}, false tumour "
                  f"{sum(r[f'false_ml_{rule}'] for r in rows):.1f} ml in all"
                  + (f", in the {len(without)} cases without one median {np.median(false_free):.1f} ml, "
                     f"max {max(false_free):.1f} ml" if without else ""))
        for kind in ("true", "false"):
            means = [p for r in rows for p in r.get("piece_mean_p", {}).get(kind, [])]
            if means:
                print(f"{kind} tumour pieces kept by contact: {len(means)}, mean p(tumour) in a piece "
                      f"median {np.median(means):.2f} (10th-90th percentile {np.percentile(means, 10):.2f}-"
                      f"{np.percentile(means, 90):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _grown(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``seeds`` with every piece of ``allowed`` (26-connected) that holds a seed voxel."""
    pieces, count = ndimage.label(allowed | seeds, structure=STRUCTURE_26)
    hit = np.zeros(count + 1, dtype=bool)
    hit[np.unique(pieces[seeds])] = True
    hit[0] = False
    return hit[pieces]


if __name__ == "__main__":
    main()
