"""Timing of ``export_meshes`` (two-kidney label map) and ``evaluate_case`` (one ROI).

Targets (issue 8): export-mesh of a two-kidney label map ≤ 5 s, evaluate of one
ROI-sized case (152 × 152 × ~150) ≤ 10 s, on 2 CPU cores. The label maps are built
here: branching artery trees of tapered tubes (radius 3 → 0.7 mm), drawn into a
whole-abdomen grid (512 × 512 × 220 at 0.78 × 0.78 × 1 mm) for the meshes, and on an
ROI grid (152 × 152 × 150 at 0.7 × 0.7 × 1 mm) for the metrics, where the
"prediction" is the truth shifted by one voxel with one branch missing.

Run: ``.venv/bin/python benchmarks/bench_mesh_metrics.py`` (prints JSON). Wall time
(``*_s``) and this process's CPU time (``*_cpu_s``) are both reported: on a shared,
loaded machine the CPU time is the fairer figure.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from renalseg.geometry import Geometry
from renalseg.mesh import export_meshes
from renalseg.metrics import evaluate_case
from renalseg.volume import Volume

LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def draw_tube(array: np.ndarray, spacing_zyx: np.ndarray, a_mm: np.ndarray, b_mm: np.ndarray,
              radius_mm: float, value: int) -> None:
    """Burn a tube between two points (zyx mm) into ``array`` within its bounding box."""
    lo = np.maximum(np.floor((np.minimum(a_mm, b_mm) - radius_mm) / spacing_zyx).astype(int), 0)
    hi = np.minimum(np.ceil((np.maximum(a_mm, b_mm) + radius_mm) / spacing_zyx).astype(int) + 1, array.shape)
    if (hi <= lo).any():
        return
    grid = np.stack(np.meshgrid(*[np.arange(l, h) for l, h in zip(lo, hi)], indexing="ij"), -1) * spacing_zyx
    axis = b_mm - a_mm
    t = np.clip((grid - a_mm) @ axis / max(axis @ axis, 1e-9), 0, 1)
    inside = np.linalg.norm(grid - (a_mm + t[..., None] * axis), axis=-1) <= radius_mm
    view = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    view[inside] = value


def draw_tree(array, spacing_zyx, root_mm, direction, radius_mm, depth, rng, value=1, skip=None, path=()):
    """A binary tree of tubes: each branch ~10-20 mm, radius × 0.75 per generation."""
    if depth == 0 or radius_mm < 0.6:
        return
    if skip is not None and path == skip:
        return
    length = rng.uniform(10, 20)
    end = root_mm + direction * length
    draw_tube(array, spacing_zyx, root_mm, end, radius_mm, value)
    for k, turn in enumerate((-1, 1)):
        child = direction + turn * rng.uniform(0.4, 0.8) * np.cross(direction, rng.normal(size=3))
        child /= np.linalg.norm(child)
        draw_tree(array, spacing_zyx, end, child, radius_mm * 0.75, depth - 1, rng, value, skip, path + (k,))


def two_kidney_labels() -> Volume:
    shape = (220, 512, 512)
    spacing_xyz = (0.78, 0.78, 1.0)
    spacing_zyx = np.asarray(spacing_xyz[::-1])
    array = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(0)
    centre_x = shape[2] * spacing_xyz[0] / 2
    for side in (-1, 1):  # right (−x), left (+x) in LPS
        root = np.array([110.0, 200.0, centre_x + side * 20.0])
        draw_tree(array, spacing_zyx, root, np.array([0.0, 0.3, side * 1.0]) / np.hypot(0.3, 1.0), 3.0, 6, rng)
    return Volume(array, Geometry(shape, spacing_xyz, (-200.0, -180.0, -300.0), LPS))


def roi_pair() -> tuple[Volume, Volume]:
    shape = (150, 152, 152)
    spacing_xyz = (0.7, 0.7, 1.0)
    spacing_zyx = np.asarray(spacing_xyz[::-1])
    geometry = Geometry(shape, spacing_xyz, (0.0, 0.0, 0.0), LPS)
    truth = np.zeros(shape, np.uint8)
    root, direction = np.array([75.0, 53.0, 10.0]), np.array([0.0, 0.2, 1.0]) / np.hypot(0.2, 1.0)
    draw_tree(truth, spacing_zyx, root, direction, 3.0, 6, np.random.default_rng(1))
    pred = np.roll(truth, 1, axis=1)  # one voxel (0.7 mm) posterior
    pred[:, :, 110:] = 0  # and the branches beyond x = 77 mm missed
    return Volume(pred, geometry), Volume(truth, geometry)
    return Volume(pred, geometry), Volume(truth, geometry)


def main() -> None:
    labels = two_kidney_labels()
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        summary = export_meshes(labels, Path(tmp), label_names={1: "renal_artery"})
        mesh_s, mesh_cpu = time.perf_counter() - start, time.process_time() - cpu
    pred, truth = roi_pair()
    start, cpu = time.perf_counter(), time.process_time()
    metrics = evaluate_case(pred, truth)
    eval_s, eval_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({
        "export_meshes_s": round(mesh_s, 2),
        "export_meshes_cpu_s": round(mesh_cpu, 2),
        "export_meshes_target_s": 5.0,
        "label_voxels": int(labels.array.sum()),
        "meshes": [{k: m[k] for k in ("side", "faces", "volume_ml", "voxel_volume_ml", "watertight")}
                   for m in summary["meshes"]],
        "trees": {side: {k: t[k] for k in ("centerline_length_mm", "branch_points", "end_points")}
                  for side, t in summary["trees"]["renal_artery"].items()},
        "evaluate_case_s": round(eval_s, 2),
        "evaluate_case_cpu_s": round(eval_cpu, 2),
        "evaluate_case_target_s": 10.0,
        "roi_voxels": int(truth.array.sum()),
        "metrics": {k: round(v, 3) for k, v in metrics.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
