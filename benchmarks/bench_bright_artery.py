"""Stones and excreted contrast: what the network calls artery there, and what the ceiling takes away.

A stone in a calyx or contrast excreted into the collecting system is a bright structure
inside the kidney, as the interlobar arteries are. This scores phantom folders made with
``recipes/make_training_phantoms.py --stone-share 1`` or ``--excretion-share 1`` (and,
as the control, the same seeds without) as ``renalseg segment --input-is-roi`` writes
them, once with ``--keep-bright-artery`` and once without (the default: artery voxels
brighter than contrast in the study's arteries go to the most probable other class,
:func:`renalseg.postprocess.drop_bright_artery`), from one network pass per case (its
output reused): the voxels above the ceiling alone, with a rim of 1 mm, and grown through
artery voxels above halfway from the arterial level to the ceiling (the default):

* Dice of artery, vein and kidney; the share of the sub-2 mm centerline found;
* the artery written on the urinary tract (collecting system, ureter and stones, by the
  phantom's tissue map), and on the stones alone, in ml;
* what the ceiling took from the artery, in ml per tissue of the phantom.

Usage:
    PYTHONPATH=. python benchmarks/bench_bright_artery.py FOLDER... [--weights W] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

import renalseg.pipeline as pipeline
from renalseg.metrics import structure_scores
from renalseg.phantom.tissues import TISSUE_IDS, TISSUES
from renalseg.pipeline import SegmentConfig, batch_thin_branch_segmenter, segment_study
from renalseg.segmenter import load_model

#: (name, --keep-bright-artery, rim mm, pipeline.BRIGHT_GROW_SHARE); ceiling_grow is the default
VARIANTS = (("kept", True, 0.0, None), ("ceiling", False, 0.0, None), ("ceiling_rim1", False, 1.0, None),
            ("ceiling_grow", False, 0.0, 0.5))
URINARY = ("collecting_system", "ureter", "calculus")


def reuse_network_output(model) -> dict:
    """Make ``model.predict`` compute each distinct ROI once and hand out copies after;
    the store it returns is emptied between cases."""
    store: dict = {}
    predict = model.predict

    def cached(roi, **options):
        array = np.ascontiguousarray(getattr(roi, "array", roi))
        key = (array.shape, hash(array.tobytes()))
        if key not in store:
            store[key] = predict(roi, **options)
        return store[key].copy()

    model.predict = cached
    return store


def score_case(segmenter, artery_segmenter, image: sitk.Image, truth: np.ndarray, tissue: np.ndarray) -> list[dict]:
    urinary = np.isin(tissue, [TISSUE_IDS[k] for k in URINARY])
    stones = tissue == TISSUE_IDS["calculus"]
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    rows, kept = [], None
    drop, grow = pipeline.drop_bright_artery, pipeline.BRIGHT_GROW_SHARE
    try:
        for name, keep, rim_mm, grow_share in VARIANTS:
            pipeline.drop_bright_artery = functools.partial(drop, rim_mm=rim_mm)
            pipeline.BRIGHT_GROW_SHARE = grow_share
            started = time.perf_counter()
            config = SegmentConfig(input_is_roi=True, weights=segmenter.weights_path, overlap=0.5,
                                   keep_bright_artery=keep)
            result = segment_study(image, config, segmenter=segmenter, artery_segmenter=artery_segmenter)
            written = sitk.GetArrayFromImage(result.labels)
            kept = written if kept is None else kept
            scores = structure_scores(written, truth, image.GetSpacing(), structures=("vein", "kidney", "artery", "tumour"))
            taken = (kept == 3) & (written != 3)
            ids, counts = np.unique(tissue[taken], return_counts=True)
            rows.append({
                "variant": name,
                **{k: round(float(scores[k]), 4) for k in ("dice_artery", "dice_vein", "dice_kidney", "found_0-2mm")},
                "artery_on_urinary_ml": round(float(((written == 3) & urinary).sum()) * voxel_ml, 3),
                "artery_on_stones_ml": round(float(((written == 3) & stones).sum()) * voxel_ml, 3),
                "taken_from_ml": {TISSUES[int(i)]: round(float(n) * voxel_ml, 4) for i, n in zip(ids, counts)},
                "ceiling_hu": {side: entry["cleanup"].get("artery_ceiling_hu")
                               for side, entry in result.report["arteries"].items()},
                "bright_artery_ml": {side: entry["cleanup"].get("bright_artery_ml")
                                     for side, entry in result.report["arteries"].items()},
                "phase": result.report["quality"]["phase"],
                "thin_branches": result.report.get("thin_branches", {}).get("applied"),
                "warnings": result.report["quality"]["warnings"],
                "seconds": round(time.perf_counter() - started, 1),
            })
    finally:
        pipeline.drop_bright_artery, pipeline.BRIGHT_GROW_SHARE = drop, grow
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--weights", default="weights/dpa_densebiasnet.safetensors")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = load_model(args.weights, device="cpu")
    artery_segmenter = batch_thin_branch_segmenter(segmenter, None, device="cpu")
    stores = [reuse_network_output(m) for m in (segmenter, artery_segmenter) if m is not None]
    rows = []
    for folder in args.folders:
        for path in sorted((folder / "image").glob("*.nii.gz")):
            for store in stores:
                store.clear()
            image = sitk.ReadImage(str(path))
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "label" / path.name)))
            tissue = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "tissue" / path.name)))
            for row in score_case(segmenter, artery_segmenter, image, truth, tissue):
                rows.append({"folder": folder.name, "case": path.name[:-7], **row})
                print(json.dumps(rows[-1]), flush=True)
    print(f"{'folder':<18} {'variant':<13} {'artery':>7} {'vein':>6} {'kidney':>7} {'sub-2mm':>8} "
          f"{'on urinary ml':>14} {'on stones ml':>13} {'taken ml':>9} {'check':>6}")
    for folder in dict.fromkeys(r["folder"] for r in rows):
        for name, *_ in VARIANTS:
            sel = [r for r in rows if r["folder"] == folder and r["variant"] == name]
            mean = {k: float(np.nanmean([r[k] for r in sel])) for k in
                    ("dice_artery", "dice_vein", "dice_kidney", "found_0-2mm", "artery_on_urinary_ml",
                     "artery_on_stones_ml")}
            taken = float(np.mean([sum(r["taken_from_ml"].values()) for r in sel]))
            checks = sum(any("brighter than contrast in this study" in w for w in r["warnings"]) for r in sel)
            print(f"{folder:<18} {name:<13} {mean['dice_artery']:7.4f} {mean['dice_vein']:6.3f} "
                  f"{mean['dice_kidney']:7.4f} {mean['found_0-2mm']:8.3f} {mean['artery_on_urinary_ml']:14.3f} "
                  f"{mean['artery_on_stones_ml']:13.3f} {taken:9.3f} {checks:>3}/{len(sel)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
