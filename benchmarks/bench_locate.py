"""Timing and accuracy of ``locate_kidneys`` (issue 5: ≤ 10 s per study on 2 CPU cores).

Studies:

* ``moved_atlas``: the real atlas CT moved by 250 mm and cropped to slices 45–111
  (3 mm, both kidneys in view), compared with its own labels;
* ``upper_pole_cta``: the real chest CTA that ends at the right kidney's upper pole
  (1.5 mm; must be refused);
* ``phantom_<seed>``: whole-abdomen phantoms at clinical size (512 × 512 × 250–500
  voxels, 0.6–0.85 mm in-plane), compared with their kidney labels and hilum points;
* ``--variants N``: N held-out hard-patient phantoms (seeds 30000 + i, never used
  for anything else; kinds cycled through
  :data:`renalseg.phantom.variants.VARIANT_KINDS`, each with a random contrast phase),
  256 voxels in-plane (``--size small``) or 512 (``clinical``). Per case: every present
  kidney's fraction inside its ROI (≥ 0.99 passes), its side, an absent kidney reported
  absent, and every renal artery's aortic origin (main and accessory) inside the ROI;
  a table and the totals. ``--kind absent --start 30200``: every case of that kind,
  seeds ``start + i`` (the single-kidney figures in docs/validation.md);
* ``--timing``: one 512 × 512 × 400 phantom located in a child process (wall time and
  peak resident memory of that process, reading the file included).

For each: wall time and this process's CPU time of ``locate_kidneys`` alone (the
study is in memory; reading and phantom generation are not counted), time per stage,
and the fraction of each true kidney inside its ROI (phantoms and the atlas).

Run: ``.venv/bin/python benchmarks/bench_locate.py [--seeds 0,1,2] [--variants 40 [--only 30004,30016]] [--timing]``
(prints JSON; with ``--variants`` also a table on stderr).
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


def _variant_case(index: int, size: str, kind: str = "", start: int = 30000):
    from renalseg.phantom.abdomen import synthesize_abdomen
    from renalseg.phantom.variants import VARIANT_KINDS, random_variant

    seed = start + index
    kind = kind or VARIANT_KINDS[index % len(VARIANT_KINDS)]
    options = random_variant(seed, kind)
    if size == "small":
        options = {"fov_mm": 400.0, "slice_mm": 2.0, **options, "inplane_voxels": 256}
    return seed, kind, options, synthesize_abdomen(seed, **options)


def _in_view_fractions(seed: int, options: dict, case) -> dict[str, float]:
    """Per side, the fraction of the kidney inside the scan (the same phantom uncut as reference)."""
    from renalseg.phantom.abdomen import synthesize_abdomen

    if "fov_cut" not in options:
        return {side: 1.0 for side in case.params["kidneys"]}
    uncut = synthesize_abdomen(seed, **{k: v for k, v in options.items() if k not in ("fov_cut", "fov_cut_fraction")})
    counts = [_side_points(c)[1] for c in (case, uncut)]
    return {side: round(float(counts[0][side].sum() / max(counts[1][side].sum(), 1)), 3) for side in counts[1]}


def _side_points(case) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Kidney voxel centres (LPS mm) and, per side, which of them belong to that kidney."""
    geometry = case.image.geometry
    zz, yy, xx = np.nonzero(case.label.array == 2)
    points = geometry.index_to_world(np.stack([xx, yy, zz], axis=1))
    centres = {side: np.asarray(k["centre_mm"]) for side, k in case.params["kidneys"].items()}
    if len(centres) == 2:
        near_left = (np.linalg.norm(points - centres["left"], axis=1)
                     < np.linalg.norm(points - centres["right"], axis=1))
        return points, {"left": near_left, "right": ~near_left}
    return points, {side: np.ones(len(points), bool) for side in centres}


def evaluate_rois(case, rois: list[KidneyROI], in_view: dict[str, float] | None = None) -> dict:
    """Per side: inside fraction, origins inside, side right; absent sides reported absent.

    A kidney less than 60 % in the scan (``in_view``) may be refused (by design).
    """
    kidneys = case.params["kidneys"]
    points, mine = _side_points(case)
    centres = {side: np.asarray(k["centre_mm"]) for side, k in kidneys.items()}
    in_view = in_view or {}
    by_side = {roi.side: roi for roi in rois}
    out: dict = {}
    for side in ("right", "left"):
        roi = by_side.get(side)
        if side not in kidneys:
            out[side] = {"present": False, "ok": roi is None, "reported": "absent" if roi is None else "found"}
            continue
        if roi is None:
            refusable = in_view.get(side, 1.0) < 0.6
            out[side] = {"present": True, "ok": refusable, "in_view": in_view.get(side, 1.0),
                         "reported": "refused (cut)" if refusable else "absent"}
            continue
        inside = _inside_fraction(roi, points[mine[side]]) if mine[side].any() else 1.0
        origins = [kidneys[side]["artery_ostium_mm"]]
        if kidneys[side].get("accessory_ostium_mm"):
            origins.append(kidneys[side]["accessory_ostium_mm"])
        origin_ok = _inside_fraction(roi, np.asarray(origins)) == 1.0
        side_ok = _inside_fraction(roi, centres[side][None]) == 1.0
        out[side] = {"present": True, "inside": round(inside, 4), "origins_inside": origin_ok,
                     "side_right": side_ok, "ok": inside >= 0.99 and side_ok,
                     "confidence": getattr(roi, "confidence", None), "method": getattr(roi, "method", None),
                     "roi_shape_zyx": list(roi.grid.shape_zyx), "notes": list(roi.notes)}
    return out


def bench_variants(count: int, size: str, only: set[int] | None = None, kind: str = "", start: int = 30000) -> dict:
    import sys

    rows = []
    for index in range(count):
        if only and start + index not in only:
            continue
        seed, case_kind, options, case = _variant_case(index, size, kind, start)
        result = _timed(case.image)
        in_view = _in_view_fractions(seed, options, case)
        row = {"seed": seed, "kind": case_kind, "options": {k: v for k, v in options.items() if k != "inplane_voxels"},
               "wall_s": result["wall_s"], "cpu_s": result["cpu_s"]}
        if isinstance(result["rois"], str):
            row["error"] = result["rois"]
            row["sides"] = evaluate_rois(case, [], in_view)
        else:
            row["sides"] = evaluate_rois(case, result["rois"], in_view)
        row["ok"] = all(v["ok"] for v in row["sides"].values())
        row["origins_ok"] = all(v.get("origins_inside", v["ok"]) for v in row["sides"].values() if v["present"])
        rows.append(row)
        cells = []
        for side in ("right", "left"):
            v = row["sides"][side]
            cells.append(f"{side[0]}:" + (v["reported"] if "reported" in v
                                           else f"{v['inside']:.3f}{'' if v['origins_inside'] else '(o)'}"))
        print(f"{seed} {case_kind:12s} {str(options.get('phase')):14s} {' '.join(cells):32s} "
              f"{'ok' if row['ok'] else 'FAIL'} {result['wall_s']:.1f}s {row.get('error', '')[:120]}",
              file=sys.stderr, flush=True)
    return {"cases": rows, "passed": sum(r["ok"] for r in rows), "origins_ok": sum(r["origins_ok"] for r in rows),
            "count": len(rows), "max_wall_s": max((r["wall_s"] for r in rows), default=0.0)}


def bench_timing() -> dict:
    """A 512 × 512 × 400 phantom located in a child process: wall time and peak RSS."""
    import subprocess
    import sys
    import tempfile

    from renalseg.io.image import write_image
    from renalseg.phantom.abdomen import synthesize_abdomen

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.nii.gz"
        write_image(synthesize_abdomen(30999, slices=400).image.to_sitk(), path)
        code = ("import resource, time, json, sys\n"
                "from renalseg.io.study import read_study\nfrom renalseg.roi import locate_kidneys\n"
                "t0 = time.perf_counter(); study = read_study(sys.argv[1]); t1 = time.perf_counter()\n"
                "c1 = time.process_time(); rois = locate_kidneys(study); t2 = time.perf_counter()\n"
                "print(json.dumps({'read_s': round(t1 - t0, 2), 'locate_s': round(t2 - t1, 2), "
                "'locate_cpu_s': round(time.process_time() - c1, 2), "
                "'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "
                "'sides': [r.side for r in rois]}))")
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return {"shape_zyx": [400, 512, 512], **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="phantom seeds, comma-separated ('' for none)")
    parser.add_argument("--variants", type=int, default=0, help="held-out hard-patient phantoms (seeds 30000+)")
    parser.add_argument("--kind", default="", help="with --variants, every case of this kind (e.g. absent)")
    parser.add_argument("--start", type=int, default=30000, help="with --variants, the first seed")
    parser.add_argument("--only", default="", help="with --variants, run only these seeds (e.g. 30004,30016)")
    parser.add_argument("--size", choices=("small", "clinical"), default="small", help="variant phantoms' grid")
    parser.add_argument("--timing", action="store_true", help="512 × 512 × 400 study in a child process")
    parser.add_argument("--no-real", action="store_true", help="skip the real-CT studies")
    args = parser.parse_args()
    results: dict = {"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}
    if not args.no_real:
        results["moved_atlas"], results["upper_pole_cta"] = bench_moved_atlas(), bench_upper_pole_cta()
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        results[f"phantom_{seed}"] = bench_phantom(seed)
    walls = [v["wall_s"] for v in results.values() if isinstance(v, dict)]
    cpus = [v["cpu_s"] for v in results.values() if isinstance(v, dict)]
    results["max_wall_s"], results["max_cpu_s"] = max(walls, default=0.0), max(cpus, default=0.0)
    if args.variants:
        only = {int(s) for s in args.only.split(",") if s.strip()}
        results["variants"] = bench_variants(args.variants, args.size, only or None, args.kind, args.start)
    if args.timing:
        results["timing_512x512x400"] = bench_timing()
    results["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
