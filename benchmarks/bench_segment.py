"""Benchmark ``renalseg segment``: end to end, and the stitching against MONAI.

Two measurements (issue 6):

1. **End to end**: ``renalseg segment`` in a child process on the standard abdomen
   phantom (seed 9001, 512 × 512 × 400 voxels at 0.7 × 0.7 × 0.8 mm, LPS): wall time
   and peak resident memory of the child (``os.wait4``'s ``ru_maxrss``).
   Targets: ≤ 60 s and ≤ 2.5 GB on 2 CPU cores. The phantom is synthesised once
   (minutes) and cached in ``--cache``.
2. **Stitching**: ``Segmenter.predict`` against MONAI's ``sliding_window_inference``
   with the same network, overlap (0.5), Gaussian blending (σ = 1/8) and batch size
   (1) on one 152 × 152 × Z ROI, both under ``torch.inference_mode``. Runs alternate
   (MONAI, renalseg, MONAI, renalseg, …) and the best of each is compared, so that
   load from other processes hits both alike. Target: time ratio ≤ 1.0.

MONAI is a benchmark-only extra (``pip install monai`` or ``pip install -e '.[bench]'``);
the package never imports it.

Usage::

    .venv/bin/python benchmarks/bench_segment.py --cache /tmp/renalseg-bench [--weights W]
        [--skip-e2e] [--skip-monai] [--roi-slices 150] [--repeats 2] [--segment-overlap O]
        [--thin-branches | --no-thin-branches] [--json out.json]

An AVX-512 machine measures the AVX2-only path when torch's kernels are held to AVX2::

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_segment.py ...

(``cpu_capability`` in the results says which path ran).

Without ``--weights`` (and before the shipped weights exist) a randomly initialised
DPA-DenseBiasNet with the authors' widths is used: the same computation, so the same
time (not the same labels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHANTOM_SEED = 9001
PHANTOM_OPTIONS = {"spacing_xyz_mm": (0.7, 0.7, 0.8), "slices": 400, "inplane_voxels": 512}


def _run_child(command: list[str]) -> dict:
    """Run a child process; its exit code, output, wall time and its own peak RSS (wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"exit_code": child.returncode, "stdout": out.read(), "stderr": err.read(),
                "wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2)}  # Linux: KiB


def _phantom(cache: Path) -> tuple[Path, Path]:
    """The standard phantom's image and truth, synthesised once into ``cache``."""
    image, truth = cache / f"abdomen_{PHANTOM_SEED}.nii.gz", cache / f"abdomen_{PHANTOM_SEED}_truth.nii.gz"
    if not (image.exists() and truth.exists()):
        from renalseg.io.image import write_image
        from renalseg.phantom import synthesize_abdomen

        started = time.perf_counter()
        case = synthesize_abdomen(PHANTOM_SEED, **PHANTOM_OPTIONS)
        write_image(case.image, image, overwrite=True)
        write_image(case.label, truth, overwrite=True)
        (cache / f"abdomen_{PHANTOM_SEED}.json").write_text(json.dumps(case.params, default=str))
        print(f"phantom synthesised in {time.perf_counter() - started:.0f} s -> {image}", flush=True)
    return image, truth


def _weights(args: argparse.Namespace, cache: Path) -> Path:
    if args.weights is not None:
        return Path(args.weights)
    from renalseg.weights import DEFAULT_WEIGHTS_PATH

    if Path(DEFAULT_WEIGHTS_PATH).exists():
        return Path(DEFAULT_WEIGHTS_PATH)
    import torch

    from renalseg.nets import build_network
    from renalseg.weights import ModelCard, save_model

    path = cache / "random_dpa_densebiasnet.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_model(build_network("dpa_densebiasnet"), ModelCard(name="dpa_densebiasnet"), path)
    print(f"(no shipped weights: using randomly initialised weights {path})", flush=True)
    return path


def end_to_end(args: argparse.Namespace, cache: Path) -> dict:
    """Run ``renalseg segment`` in a child process; wall time and its peak RSS."""
    import SimpleITK as sitk

    image, truth = _phantom(cache)
    weights = _weights(args, cache)
    out = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    command = [sys.executable, "-m", "renalseg", "segment", str(image), "--out", str(out), "--weights",
               str(weights), "--device", args.device, "--json"]
    if args.segment_overlap is not None:
        command += ["--overlap", str(args.segment_overlap)]
    if args.thin_branches is not None:  # else segment's default: the pass in an arterial-phase study
        command += ["--thin-branches" if args.thin_branches else "--no-thin-branches"]
    child = _run_child(command)
    result = {"command": " ".join(command), "exit_code": child["exit_code"], "wall_s": child["wall_s"],
              "peak_rss_gb": child["peak_rss_gb"]}
    if child["exit_code"] != 0:
        result["stderr_tail"] = child["stderr"][-2000:]
        return result
    study = out / image.name.removesuffix(".nii.gz")
    report = json.loads((study / "report.json").read_text())
    result["timings_s"] = report["timings_s"]
    result["thin_branches"] = report.get("thin_branches", {}).get("reason")
    result["rois"] = [(r["side"], r["model_grid"]["shape_zyx"]) for r in report["rois"]]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(study / "labels.nii.gz")))
    names = json.loads((study / "labels.json").read_text())  # KiPA22 values: {"3": "renal_artery", ...}
    artery = next(int(value) for value, name in names.items() if name == "renal_artery")
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(truth))) == 3
    pred = labels == artery
    result["dice_vs_truth"] = round(2 * float((pred & gt).sum()) / max(1, int(pred.sum() + gt.sum())), 4)
    return result


_SEGMENT_WITH_TRUTH_ROIS = r"""
import json, sys, time
import numpy as np
from renalseg.geometry import Geometry
from renalseg.io.study import read_study
from renalseg.pipeline import SegmentConfig, segment_study, write_outputs
from renalseg.roi import KidneyROI
from renalseg.segmenter import load_model

image, params, weights, device, out, slices = sys.argv[1:7]
started = time.perf_counter()
study = read_study(image)
segmenter = load_model(weights, device)
spacing = np.asarray(segmenter.spec.spacing_xyz_mm)
g = study.geometry
rois = []
for side, kidney in json.loads(open(params).read())["kidneys"].items():
    shape_xyz = np.array([152, 152, int(slices)])
    origin = np.asarray(kidney["centre_mm"]) - (shape_xyz - 1) / 2 * spacing
    grid = Geometry(tuple(shape_xyz[::-1].tolist()), tuple(spacing.tolist()), tuple(origin.tolist()),
                    (1, 0, 0, 0, 1, 0, 0, 0, 1))
    index = g.world_to_index(grid.corners_world())
    lo, hi = np.floor(index.min(axis=0)).astype(int), np.ceil(index.max(axis=0)).astype(int) + 1
    rois.append(KidneyROI(side, grid, tuple(lo[::-1].tolist()), tuple((hi - lo)[::-1].tolist()), 0.0))
result = segment_study(study, SegmentConfig(device=device), segmenter=segmenter, rois=rois)
write_outputs(result, out, overwrite=True)
print(json.dumps({"wall_s": round(time.perf_counter() - started, 1), "timings_s": result.report["timings_s"]}))
"""


def segment_with_truth_rois(args: argparse.Namespace, cache: Path) -> dict:
    """``segment_study`` with ROIs centred on the phantom's true kidneys (no localisation).

    Isolates this issue's part (read, resample, windows, paste, write) from the
    atlas registration; same child-process wall time and peak RSS as :func:`end_to_end`.
    """
    image, _ = _phantom(cache)
    weights = _weights(args, cache)
    out = Path(tempfile.mkdtemp(prefix="bench-segment-rois-")) / "phantom"
    command = [sys.executable, "-c", _SEGMENT_WITH_TRUTH_ROIS, str(image),
               str(cache / f"abdomen_{PHANTOM_SEED}.json"), str(weights), args.device, str(out),
               str(args.truth_roi_slices)]
    child = _run_child(command)
    result = {"exit_code": child["exit_code"], "wall_s": child["wall_s"], "peak_rss_gb": child["peak_rss_gb"]}
    if child["exit_code"] != 0:
        result["stderr_tail"] = child["stderr"][-2000:]
    else:
        result["inner"] = json.loads(child["stdout"].strip().splitlines()[-1])
    return result


def stitching_vs_monai(args: argparse.Namespace, cache: Path) -> dict:
    """Best-of-N times of Segmenter.predict and MONAI on the same ROI and network."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from renalseg.segmenter import load_model

    segmenter = load_model(_weights(args, cache), args.device)
    network, spec = segmenter.network, segmenter.spec
    device = torch.device(segmenter.device)
    rng = np.random.default_rng(0)
    roi_hu = rng.normal(0, 300, (args.roi_slices, 152, 152)).astype(np.float32)
    normalised = torch.from_numpy(spec.normalize(roi_hu))[None, None].to(device)

    class Timed(torch.nn.Module):
        """The same network, timing each forward: total - network = stitching overhead."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.seconds = inner, 0.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            started = time.perf_counter()
            out = self.inner(x)
            self.seconds += time.perf_counter() - started
            return out

    timed = Timed(network)
    segmenter.predictor.network = timed  # NetworkPredictor calls self.network(batch)

    def run_monai() -> np.ndarray:
        with torch.inference_mode():
            out = sliding_window_inference(normalised, spec.window_zyx, 1, timed, overlap=args.overlap,
                                           mode="gaussian", sigma_scale=0.125, padding_mode="constant",
                                           cval=spec.air_value)
        return out[0].float().cpu().numpy()

    def run_renalseg() -> np.ndarray:
        return segmenter.predict(roi_hu, overlap=args.overlap)

    times: dict[str, list[float]] = {"monai": [], "renalseg": []}
    overhead: dict[str, list[float]] = {"monai": [], "renalseg": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in (("monai", run_monai), ("renalseg", run_renalseg)):
            timed.seconds = 0.0
            started = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - started)
            overhead[name].append(times[name][-1] - timed.seconds)
            print(f"  {name}: {times[name][-1]:.1f} s (outside the network {overhead[name][-1]:.2f} s)",
                  flush=True)
    best = {k: min(v) for k, v in times.items()}
    # Same stitching? The two Gaussians differ only in their floor (MONAI clamps the map at
    # 1e-3, renalseg at 1e-6: that changes the blend at the far in-plane corners, where
    # the network outputs differ between windows). With MONAI given renalseg's map and a
    # position-dependent analytic predictor, the results must agree to float rounding.
    from renalseg.inference import sliding_window
    from renalseg.windows import gaussian_weights

    def analytic(batch):
        ramp = torch.linspace(0.5, 2.0, batch.shape[-1]) if isinstance(batch, torch.Tensor) else \
            np.linspace(0.5, 2.0, batch.shape[-1], dtype=np.float32)
        return batch.cumsum(-1) * ramp if isinstance(batch, torch.Tensor) else np.cumsum(batch, -1) * ramp

    small = normalised[..., :96, :40, :40].cpu()  # sizes where both place windows alike
    window = (32, 16, 16)
    with torch.inference_mode():
        theirs = sliding_window_inference(small, window, 1, analytic, overlap=args.overlap,
                                          roi_weight_map=torch.from_numpy(gaussian_weights(window).copy()))
    ours = sliding_window(small[0].numpy(), analytic, window_zyx=window, overlap=args.overlap)
    return {
        "roi_zyx": [args.roi_slices, 152, 152], "window_zyx": list(spec.window_zyx), "overlap": args.overlap,
        "times_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "best_s": {k: round(v, 2) for k, v in best.items()},
        "ratio_renalseg_over_monai": round(best["renalseg"] / best["monai"], 3),
        "outside_network_s": {k: [round(t, 3) for t in v] for k, v in overhead.items()},
        "ratio_outside_network_best": round(min(overhead["renalseg"]) / min(overhead["monai"]), 3),
        "max_abs_difference_network": float(np.abs(outputs["monai"] - outputs["renalseg"]).max()),
        "mean_abs_difference_network": float(np.abs(outputs["monai"] - outputs["renalseg"]).mean()),
        "max_abs_difference_same_weight_map_analytic": float(np.abs(theirs[0].numpy() - ours).max()),
        "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "renalseg-bench")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap of the MONAI comparison")
    parser.add_argument("--segment-overlap", type=float, default=None,
                        help="end to end: `segment --overlap` (default: segment's own default)")
    parser.add_argument("--thin-branches", action=argparse.BooleanOptionalAction, default=None,
                        help="end to end: `segment --thin-branches` / `--no-thin-branches` (the artery-only "
                             "model's second pass; default: segment's, the pass when the phase is arterial)")
    parser.add_argument("--roi-slices", type=int, default=160,
                        help="ROI slices for the MONAI comparison (64 + 32k: both place windows alike)")
    parser.add_argument("--truth-roi-slices", type=int, default=130,
                        help="ROI slices per kidney for --truth-rois (about what localisation gives)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-monai", action="store_true")
    parser.add_argument("--truth-rois", action="store_true",
                        help="also run segment_study with ROIs from the phantom's truth (no localisation)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    import torch

    # the instruction set torch's kernels use: ATEN_CPU_CAPABILITY=avx2 (with
    # ONEDNN_MAX_CPU_ISA=AVX2) runs an AVX-512 machine as an AVX2-only one; the child inherits it
    results: dict = {"cpu_count": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                     "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                     "load_average_start": os.getloadavg()}
    if not args.skip_monai:
        print("stitching: Segmenter.predict vs MONAI sliding_window_inference", flush=True)
        results["stitching"] = stitching_vs_monai(args, args.cache)
        print(json.dumps(results["stitching"], indent=2), flush=True)
    if args.truth_rois:
        print("segment_study with the phantom's true kidney ROIs (no localisation)", flush=True)
        results["truth_rois"] = segment_with_truth_rois(args, args.cache)
        print(json.dumps(results["truth_rois"], indent=2), flush=True)
    if not args.skip_e2e:
        print("end to end: renalseg segment on the standard phantom", flush=True)
        results["end_to_end"] = end_to_end(args, args.cache)
        print(json.dumps(results["end_to_end"], indent=2), flush=True)
    results["load_average_end"] = os.getloadavg()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
