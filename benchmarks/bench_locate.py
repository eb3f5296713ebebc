"""Timing and accuracy of ``locate_kidneys`` (issue 5: ≤ 10 s per study on 2 CPU cores).

Studies:

* ``moved_atlas``: the real atlas CT moved by 250 mm and cropped to slices 45–111
  (3 mm, both kidneys in view), compared with its own labels;
* ``upper_pole_cta``: the real chest CTA that ends at the right kidney's upper pole
  (1.5 mm; must be refused);
* ``phantom_<seed>``: whole-abdomen phantoms at clinical size (512 × 512 × 250–500
  voxels, 0.6–0.85 mm in-plane), compared with their kidney labels and hilum points.

For each: wall time and this process's CPU time of ``locate_kidneys`` alone (the
study is in memory; reading and phantom generation are not counted), time per stage,
and the fraction of each true kidney inside its ROI (phantoms and the atlas).

Run: ``.venv/bin/python benchmarks/bench_locate.py [--seeds 0,1,2]`` (prints JSON).
On a shared, loaded machine the CPU time is the fairer figure; say so with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.errors import RenalsegError
from renalseg.registration import ATLAS_DIR
from renalseg.roi import KidneyROI, locate_kidneys
from renalseg.volume import Volume

#: real CTA, TotalSegmentator (Wasserthal et al. 2023), CC BY 4.0: tests/data/README.md
UPPER_POLE_CTA = Path(__file__).resolve().parents[1] / "tests" / "data" / "ts_cta_kidney_upper_pole_only.nii.gz"


def _timed(volume: Volume) -> dict:
    stages: list[tuple[str, float]] = []
    started_wall, started_cpu = time.perf_counter(), time.process_time()

    def on_progress(step: int, total: int, description: str) -> None:
        stages.append((description, time.perf_counter() - started_wall))

    try:
        rois: list[KidneyROI] | str = locate_kidneys(volume, on_progress=on_progress)
    except RenalsegError as err:
        rois = f"{type(err).__name__}: {err}"
    wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu
    previous = 0.0
    per_stage = {}
    for description, at in stages:
        per_stage[description] = round(at - previous, 2)
        previous = at
    return {"rois": rois, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "stages_s": per_stage}


def _inside_fraction(roi: KidneyROI, points_lps: np.ndarray) -> float:
    index = roi.grid.world_to_index(points_lps)
    last = np.asarray(roi.grid.shape_xyz) - 0.5
    return float(np.all((index >= -0.5) & (index <= last), axis=1).mean())


def bench_moved_atlas() -> dict:
    ct = sitk.ReadImage(str(ATLAS_DIR / "atlas_ct.nii.gz"))[:, :, 45:112]
    labels = sitk.ReadImage(str(ATLAS_DIR / "atlas_kidneys.nii.gz"))[:, :, 45:112]
    origin = tuple(o + 250.0 for o in ct.GetOrigin())
    ct.SetOrigin(origin)
    labels.SetOrigin(origin)
    result = _timed(Volume.from_sitk(ct))
    label_volume = Volume.from_sitk(labels)
    if isinstance(result["rois"], list):
        inside = {}
        for roi in result["rois"]:
            zz, yy, xx = np.nonzero(label_volume.array == (1 if roi.side == "right" else 2))
            points = label_volume.geometry.index_to_world(np.stack([xx, yy, zz], axis=1))
            inside[roi.side] = round(_inside_fraction(roi, points), 4)
        result["inside_fraction"] = inside
        result["rois"] = [roi.side for roi in result["rois"]]
    return result


def bench_upper_pole_cta() -> dict:
    result = _timed(Volume.from_sitk(sitk.ReadImage(str(UPPER_POLE_CTA))))
    result["refused"] = isinstance(result["rois"], str)
    return result


def bench_phantom(seed: int) -> dict:
    from renalseg.phantom.abdomen import synthesize_abdomen

    case = synthesize_abdomen(seed)
    result = _timed(case.image)
    result["grid"] = case.image.geometry.describe()
    if isinstance(result["rois"], list):
        geometry = case.image.geometry
        zz, yy, xx = np.nonzero(case.label.array == 2)
        points = geometry.index_to_world(np.stack([xx, yy, zz], axis=1))
        kidneys = case.params["kidneys"]
        centres = {side: np.asarray(kidneys[side]["centre_mm"]) for side in ("left", "right")}
        inside, hilum = {}, {}
        for roi in result["rois"]:
            other = "left" if roi.side == "right" else "right"
            mine = (np.linalg.norm(points - centres[roi.side], axis=1)
                    < np.linalg.norm(points - centres[other], axis=1))
            inside[roi.side] = round(_inside_fraction(roi, points[mine]), 4)
            hilum[roi.side] = _inside_fraction(roi, np.asarray([kidneys[roi.side]["hilum_artery_mm"]])) == 1.0
        result["inside_fraction"], result["hilum_inside"] = inside, hilum
        result["rois"] = [roi.side for roi in result["rois"]]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="phantom seeds, comma-separated ('' for none)")
    args = parser.parse_args()
    results = {"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
               "moved_atlas": bench_moved_atlas(), "upper_pole_cta": bench_upper_pole_cta()}
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        results[f"phantom_{seed}"] = bench_phantom(seed)
    walls = [v["wall_s"] for v in results.values() if isinstance(v, dict)]
    cpus = [v["cpu_s"] for v in results.values() if isinstance(v, dict)]
    results["max_wall_s"], results["max_cpu_s"] = max(walls), max(cpus)
    results["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
