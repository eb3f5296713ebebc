"""Speed of one 152 × 152 × 64 window through DPA-DenseBiasNet on the CPU.

Prints, for one window (B = 1, Z × Y × X = 64 × 152 × 152) in inference mode on 2
threads: the time, the FLOPs (``torch.utils.flop_counter`` over the plain reference
formulation, i.e. the architecture's own FLOPs, not counting the zero channels the
fast path adds), the achieved GFLOP/s, and the ratio to a 4096² fp32 matmul's
GFLOP/s measured in the same process (the practical peak of the machine).

Both forward paths are timed, interleaved, so their ratio is fair even on a busy
machine: ``reference`` (concatenate and convolve, what training uses) and ``fast``
(the inference path: channels_last, channel counts padded to multiples of 8,
pointwise compressors as matrix products).

Usage::

    .venv/bin/python benchmarks/bench_model.py [--repeat 3] [--threads 2] [--network dpa_densebiasnet]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from renalseg.nets import build_network


def _time(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each path (best is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--network", default="dpa_densebiasnet", choices=["dpa_densebiasnet", "densebiasnet"])
    parser.add_argument("--shape", default="64,152,152", help="window Z,Y,X")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.manual_seed(0)
    net = build_network(args.network).eval()
    x = torch.rand(1, 1, *shape)

    with torch.inference_mode():
        a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
        a @ b
        matmul_s = min(_time(lambda: a @ b, 3))
        matmul_gflops = 2 * 4096**3 / matmul_s / 1e9
        del a, b

        net.use_fast_inference(False)
        with FlopCounterMode(display=False) as counter:
            reference_out = net(x)
        flops = counter.get_total_flops()
        net.use_fast_inference(True)
        fast_out = net(x)  # warm-up of the fast path
        max_diff = float((fast_out - reference_out).abs().max())
        times: dict[str, list[float]] = {"reference": [], "fast": []}
        for _ in range(args.repeat):  # interleaved: both paths see the same machine load
            for path in ("reference", "fast"):
                net.use_fast_inference(path == "fast")
                times[path] += _time(lambda: net(x), 1)

    result = {"network": args.network, "shape_zyx": shape, "threads": args.threads, "gflop": flops / 1e9,
              "matmul_gflops": matmul_gflops, "max_abs_diff_fast_vs_reference": max_diff}
    for path, ts in times.items():
        best = min(ts)
        result[path] = {"best_s": best, "all_s": ts, "gflops": flops / best / 1e9,
                        "ratio_to_matmul": flops / best / 1e9 / matmul_gflops}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.network}, one window {shape[2]}×{shape[1]}×{shape[0]} (x×y×z), {args.threads} threads, "
          f"inference_mode")
    print(f"FLOPs: {flops / 1e9:.1f} GFLOP; 4096² fp32 matmul: {matmul_gflops:.1f} GFLOP/s")
    for path in ("reference", "fast"):
        r = result[path]
        print(f"{path:>9}: best {r['best_s']:.2f} s of {', '.join(f'{t:.2f}' for t in r['all_s'])}  "
              f"{r['gflops']:.1f} GFLOP/s  ratio to matmul {r['ratio_to_matmul']:.2f}")
    print(f"fast vs reference: {result['reference']['best_s'] / result['fast']['best_s']:.2f}× faster; "
          f"max |Δp| {max_diff:.2e}")


if __name__ == "__main__":
    main()
