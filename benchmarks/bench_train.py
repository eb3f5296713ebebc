"""Training speed: seconds per step, and samples per second with 1 and 2 processes.

    .venv/bin/python benchmarks/bench_train.py [--steps 3] [--patches 152,152,64 64,64,32] [--json out.json]

1. Seconds per optimiser step (forward, HRA loss, backward, Adam) of DPA-DenseBiasNet
   (the authors' widths, m = 4, 2 classes) for each patch (x,y,z), batch 1, one
   process with ``--threads`` threads. The first step is a warm-up and not counted.
2. Samples per second of the real trainer (``renalseg.training.loop.train``: patch
   sampling, augmentation, step) on synthetic cases with the CPU patch, with one process
   and with two processes (DistributedDataParallel, gloo, one thread each, spawned
   here), ``--ddp-steps`` steps each.

On a shared machine the figures depend on the load: report it with them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from renalseg.geometry import Geometry
from renalseg.training.augment import AugmentConfig
from renalseg.training.data import TrainingCase
from renalseg.training.distributed import DistributedContext, init_distributed, shutdown_distributed
from renalseg.training.loop import TrainConfig, train

PLAIN = {"num_classes": 2}


def _step_seconds(patch_xyz: tuple[int, int, int], steps: int) -> list[float]:
    from renalseg.nets import build_network
    from renalseg.training.losses import hra_loss

    torch.manual_seed(0)
    network = build_network("dpa_densebiasnet").train()
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-4,
                                 weight_decay=1e-5)
    shape = (1, 1, patch_xyz[2], patch_xyz[1], patch_xyz[0])
    x = torch.rand(shape)
    y = (torch.rand(shape[:1] + shape[2:]) > 0.99).long()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = hra_loss(network.logits(x), y, threshold=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return times[1:]


def _cases(patch_zyx: tuple[int, int, int], n: int = 4) -> list[TrainingCase]:
    rng = np.random.default_rng(0)
    shape = tuple(p + 16 for p in patch_zyx)
    cases = []
    for i in range(n):
        image = rng.normal(0.0, 20.0, shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[:, shape[1] // 2 - 2:shape[1] // 2 + 2, shape[2] // 2 - 2 + i:shape[2] // 2 + 2 + i] = 1
        image[label == 1] = 400.0
        g = Geometry(shape, (0.7, 0.7, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        cases.append(TrainingCase(f"c{i}", image, g, label, None, np.argwhere(label == 1).astype(np.int32)))
    return cases


def _config(patch_zyx: tuple[int, int, int], steps: int) -> TrainConfig:
    return TrainConfig(stage="seg", network="densebiasnet", network_options=PLAIN, patch_zyx=patch_zyx,
                       max_steps=steps, epochs=1000, samples_per_epoch=8, augment=AugmentConfig(),
                       checkpoint_minutes=1e6, checkpoint_every=1000)


def _ddp_worker(rank: int, world: int, port: int, patch_zyx, steps: int, run: str, out: str) -> None:
    torch.set_num_threads(1)
    context = DistributedContext(rank=rank, world_size=world, master_port=port)
    init_distributed(context, torch.device("cpu"))
    try:
        t0 = time.perf_counter()
        result = train(_config(patch_zyx, steps), run, train_cases=_cases(patch_zyx), context=context)
        if context.is_main:
            seconds = time.perf_counter() - t0
            Path(out).write_text(json.dumps({"steps": result.steps, "seconds": seconds,
                                             "samples_per_s": result.steps * world / seconds}))
    finally:
        shutdown_distributed(context)


def _samples_per_second(patch_zyx, steps: int, world: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        if world == 1:
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            result = train(_config(patch_zyx, steps), Path(tmp) / "run", train_cases=_cases(patch_zyx))
            seconds = time.perf_counter() - t0
            return {"steps": result.steps, "seconds": seconds, "samples_per_s": result.steps / seconds}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_ddp_worker, args=(world, port, patch_zyx, steps, str(Path(tmp) / "run"), str(out)),
                 nprocs=world, join=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", nargs="+", default=["152,152,64", "64,64,32"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ddp-patch", default="64,64,32")
    parser.add_argument("--ddp-steps", type=int, default=6)
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict = {"load_average_start": os.getloadavg(), "threads": args.threads, "step_seconds": {}}
    for text in args.patches:
        patch = tuple(int(v) for v in text.split(","))
        torch.set_num_threads(args.threads)
        times = _step_seconds(patch, args.steps)  # type: ignore[arg-type]
        report["step_seconds"][text] = {"median": float(np.median(times)), "all": times}
        print(f"DPA-DenseBiasNet step, patch {text} (x,y,z): {np.median(times):.2f} s "
              f"({args.threads} threads)", flush=True)
    if not args.skip_ddp:
        x, y, z = (int(v) for v in args.ddp_patch.split(","))
        for world in (1, 2):
            result = _samples_per_second((z, y, x), args.ddp_steps, world)
            report[f"trainer_{world}_process"] = result
            print(f"trainer (plain DenseBiasNet), patch {args.ddp_patch}, {world} process(es) × 1 thread: "
                  f"{result['samples_per_s']:.3f} samples/s", flush=True)
    report["load_average_end"] = os.getloadavg()
    print(f"load average (1, 5, 15 min) at start {report['load_average_start']}, end {report['load_average_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
