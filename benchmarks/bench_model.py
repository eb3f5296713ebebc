"""Speed of one 152 × 152 × 64 window through DPA-DenseBiasNet on the CPU.

Prints, for one window (B = 1, Z × Y × X = 64 × 152 × 152) in inference mode on 2
threads: the time, the FLOPs (``torch.utils.flop_counter`` over the plain reference
formulation, i.e. the architecture's own FLOPs, not counting the zero channels the
fast path adds), the achieved GFLOP/s, and the ratio to a 4096² fp32 matmul's
GFLOP/s measured in the same process (the practical peak of the machine), both per
wall second and per process CPU second (the latter is less sensitive to other
processes sharing the cores, though not to their use of memory bandwidth).

Both forward paths are timed, interleaved, so their ratio is fair even on a busy
machine: ``reference`` (concatenate and convolve, what training uses) and ``fast``
(the inference path: channels_last, channel counts padded to multiples of 8,
pointwise compressors as matrix products).

``--memory`` instead runs the fast path alone, once, in this process and reports
its peak resident memory and seconds per voxel: what a window of ``--shape`` costs in
``renalseg segment`` (for example one pass over a whole 200 × 152 × 152 (x × y × z) kidney ROI
against 152 × 152 × 64 windows).

Usage::

    .venv/bin/python benchmarks/bench_model.py [--repeat 3] [--threads 2] [--network dpa_densebiasnet]
    .venv/bin/python benchmarks/bench_model.py --memory --shape 152,152,200
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from renalseg.nets import build_network


def _time(fn, repeat: int) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) of each call."""
    times = []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def _memory(net: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> None:
    """One fast-path pass: wall time, seconds per voxel, peak resident memory (ru_maxrss)."""
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    net.use_fast_inference(True)
    with torch.inference_mode():
        wall, cpu = _time(lambda: net(x), 1)[0]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    voxels = x[0, 0].numel()
    result = {"network": args.network, "shape_zyx": list(x.shape[2:]), "threads": args.threads, "wall_s": wall,
              "cpu_s": cpu, "us_per_voxel": wall / voxels * 1e6, "peak_rss_mb": peak_mb,
              "before_pass_mb": before_mb}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.network}, one pass over {'×'.join(map(str, x.shape[:1:-1]))} (x×y×z), {args.threads} threads: "
          f"{wall:.2f} s ({result['us_per_voxel']:.2f} µs a voxel), peak resident memory {peak_mb:.0f} MB "
          f"({before_mb:.0f} MB before the pass)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each path (best is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--network", default="dpa_densebiasnet", choices=["dpa_densebiasnet", "densebiasnet"])
    parser.add_argument("--shape", default="64,152,152", help="window Z,Y,X")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    parser.add_argument("--memory", action="store_true",
                        help="the fast path alone, once: peak resident memory and seconds per voxel")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.manual_seed(0)
    net = build_network(args.network).eval()
    x = torch.rand(1, 1, *shape)
    if args.memory:
        _memory(net, x, args)
        return

    with torch.inference_mode():
        a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
        a @ b

        def matmul_gflops() -> tuple[float, float]:
            """GFLOP per wall second and per CPU second (the best of two)."""
            runs = _time(lambda: a @ b, 2)
            return 2 * 4096**3 / min(w for w, _ in runs) / 1e9, 2 * 4096**3 / min(c for _, c in runs) / 1e9

        net.use_fast_inference(False)
        with FlopCounterMode(display=False) as counter:
            reference_out = net(x)
        flops = counter.get_total_flops()
        net.use_fast_inference(True)
        fast_out = net(x)  # warm-up of the fast path
        max_diff = float((fast_out - reference_out).abs().max())
        rounds = []
        for _ in range(args.repeat):  # interleaved: matmul and both paths see the same machine load
            wall, cpu = matmul_gflops()
            entry = {"matmul_gflops": wall, "matmul_gflop_per_cpu_s": cpu}
            for path in ("reference", "fast"):
                net.use_fast_inference(path == "fast")
                entry[path], entry[path + "_cpu_s"] = _time(lambda: net(x), 1)[0]
            rounds.append(entry)

    result = {"network": args.network, "shape_zyx": shape, "threads": args.threads, "gflop": flops / 1e9,
              "max_abs_diff_fast_vs_reference": max_diff, "rounds": rounds,
              "matmul_gflops_best": max(r["matmul_gflops"] for r in rounds)}
    for path in ("reference", "fast"):
        best = min(r[path] for r in rounds)
        result[path] = {"best_s": best, "gflops": flops / best / 1e9,
                        "best_ratio_to_matmul": max(flops / r[path] / 1e9 / r["matmul_gflops"] for r in rounds),
                        # per CPU second: time slices lost to other processes do not count
                        "best_cpu_ratio_to_matmul": max(flops / r[path + "_cpu_s"] / 1e9
                                                        / r["matmul_gflop_per_cpu_s"] for r in rounds)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.network}, one window {shape[2]}×{shape[1]}×{shape[0]} (x×y×z), {args.threads} threads, "
          f"inference_mode; FLOPs {flops / 1e9:.1f} GFLOP")
    for i, r in enumerate(rounds):
        print(f"round {i}: matmul {r['matmul_gflops']:.1f} GFLOP/s; "
              + "; ".join(f"{p} {r[p]:.2f} s = {flops / r[p] / 1e9:.1f} GFLOP/s = "
                          f"{flops / r[p] / 1e9 / r['matmul_gflops']:.2f} of matmul" for p in ("reference", "fast")))
    for path in ("reference", "fast"):
        r = result[path]
        print(f"{path:>9}: best {r['best_s']:.2f} s, {r['gflops']:.1f} GFLOP/s; best ratio to the same round's "
              f"matmul {r['best_ratio_to_matmul']:.2f} (wall), {r['best_cpu_ratio_to_matmul']:.2f} (CPU time)")
    print(f"fast vs reference: {result['reference']['best_s'] / result['fast']['best_s']:.2f}× faster; "
          f"max |Δp| {max_diff:.2e}")


if __name__ == "__main__":
    main()
