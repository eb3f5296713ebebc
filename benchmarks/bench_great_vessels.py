"""How often the topology clean-up's roots are found, and whether they are safe.

For every phantom of the given folders (``recipes/make_training_phantoms.py
--great-vessels`` output: ``image/``, ``label/`` and ``tissue/``), the aorta and the IVC
are looked for as ``renalseg segment --input-is-roi`` looks for them
(:func:`renalseg.great_vessels.find_great_vessels` with the side unknown) and compared
with the phantom's own:

* **found**: the share of crops where a pair was returned (the clean-up runs);
* **aorta / IVC precision and recall**: voxel overlap with the tissue map's aorta and
  IVC (a root also holds the first few mm of its branches, so precision is below 1
  by design);
* **true labels changed**: :func:`renalseg.postprocess.reassign_by_topology` run on the
  phantom's *true* label map with the roots found: the share of true artery and vein
  voxels it moves or drops. On a perfect segmentation the clean-up must change nothing;
  anything here is what wrong roots would cost a correct answer;
* **true artery behind the aorta**: :func:`renalseg.quality.artery_behind_aorta_ml` of the
  phantom's true artery with the aorta found (the pair's, or in a left kidney's crop
  without one the aorta alone, as ``renalseg segment`` looks for it in a left ROI): the
  crops where it reaches the verdict's check
  (:data:`renalseg.quality.ARTERY_BEHIND_AORTA_CHECK_ML`) are false alarms on a perfect
  segmentation;
* **seconds** per crop.

Usage:
    python benchmarks/bench_great_vessels.py runs/phantoms/four_art runs/phantoms/four_pv [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from renalseg.great_vessels import AORTA_ALONE_MIN_HU, find_great_vessels
from renalseg.io.image import read_image
from renalseg.phantom.tissues import TISSUE_IDS, TISSUE_TO_KIPA
from renalseg.postprocess import DEFAULT_MAX_GAP_MM, reassign_by_topology
from renalseg.quality import ARTERY_BEHIND_AORTA_CHECK_ML, artery_behind_aorta_ml
from renalseg.volume import Volume

ARTERY, VEIN = TISSUE_TO_KIPA["renal_artery"], TISSUE_TO_KIPA["renal_vein"]


def score_case(image: Path) -> dict:
    """One crop's figures (see the module docstring)."""
    volume = Volume.from_sitk(read_image(image))
    label = Volume.from_sitk(read_image(image.parent.parent / "label" / image.name)).array
    tissue = Volume.from_sitk(read_image(image.parent.parent / "tissue" / image.name)).array
    spacing = volume.geometry.spacing_xyz_mm
    started = time.perf_counter()
    found = find_great_vessels(volume.array.astype(np.float32), spacing, side=None)
    row: dict = {"case": image.name.split(".")[0], "seconds": round(time.perf_counter() - started, 2),
                 "found": bool(found)}
    if not found:
        left = np.nonzero(label == TISSUE_TO_KIPA["kidney_cortex"])[2].mean() > \
            np.nonzero(tissue == TISSUE_IDS["aorta"])[2].mean()  # the kidney on the aorta's left (x+)
        alone = find_great_vessels(volume.array.astype(np.float32), spacing, side="left",
                                   aorta_alone_min_hu=AORTA_ALONE_MIN_HU).get("aorta") if left else None
        if alone is not None:
            row["aorta_alone"] = True
            row["true_artery_behind_aorta_ml"] = artery_behind_aorta_ml(label == ARTERY, alone, volume.geometry)
        return row
    for name, tissue_name in (("aorta", "aorta"), ("ivc", "ivc")):
        truth = tissue == TISSUE_IDS[tissue_name]
        overlap = float((found[name] & truth).sum())
        row[f"{name}_precision"] = round(overlap / max(1, found[name].sum()), 3)
        row[f"{name}_recall"] = round(overlap / max(1, truth.sum()), 3)
    cleaned, _ = reassign_by_topology(label, roots={ARTERY: found["aorta"], VEIN: found["ivc"]}, probabilities=None,
                                      max_gap_mm=DEFAULT_MAX_GAP_MM, spacing_xyz_mm=spacing)
    row["true_artery_behind_aorta_ml"] = artery_behind_aorta_ml(label == ARTERY, found["aorta"], volume.geometry)
    for name, value in (("artery", ARTERY), ("vein", VEIN)):
        truth = label == value
        row[f"true_{name}_changed"] = round(float((cleaned[truth] != value).mean()) if truth.any() else 0.0, 4)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="write the rows and the summary here")
    args = parser.parse_args(argv)
    summary: dict = {}
    all_rows = []
    for folder in args.folders:
        rows = [score_case(image) for image in sorted((folder / "image").glob("*.nii*"))]
        all_rows += rows
        hit = [r for r in rows if r["found"]]
        figures = {"cases": len(rows), "found": len(hit),
                   "seconds_mean": round(float(np.mean([r["seconds"] for r in rows])), 2)}
        for key in ("aorta_precision", "aorta_recall", "ivc_precision", "ivc_recall"):
            figures[key] = round(float(np.mean([r[key] for r in hit])), 3) if hit else None
        for key in ("true_artery_changed", "true_vein_changed"):
            figures[f"{key}_mean"] = round(float(np.mean([r[key] for r in hit])), 4) if hit else None
            figures[f"{key}_cases_over_1pct"] = sum(r[key] > 0.01 for r in hit)
        behind = [r["true_artery_behind_aorta_ml"] for r in rows if "true_artery_behind_aorta_ml" in r]
        figures["aorta_alone"] = sum(bool(r.get("aorta_alone")) for r in rows)
        figures["true_artery_behind_aorta_ml_max"] = max(behind) if behind else None
        figures["behind_aorta_false_checks"] = sum(v >= ARTERY_BEHIND_AORTA_CHECK_ML for v in behind)
        summary[folder.name] = figures
        print(folder.name, json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": all_rows}, indent=1))
    return summary


if __name__ == "__main__":
    main()
