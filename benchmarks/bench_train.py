"""Training speed: seconds per step, and samples per second with 1 and 2 processes.

    .venv/bin/python benchmarks/bench_train.py [--steps 3] [--patches 152,152,64 64,64,32] [--json out.json]
    python benchmarks/bench_train.py --device cuda --batch 4 --amp --patches 152,152,64 --steps 20 --skip-ddp

1. Seconds per optimiser step (forward, HRA loss, backward, Adam) of DPA-DenseBiasNet
   (the authors' widths, m = 4, 2 classes) for each patch (x,y,z), ``--batch`` patches
   (default 1), one process with ``--threads`` threads, on ``--device``; with ``--amp``
   each patch is timed twice, float32 and the bfloat16 forward pass of ``renalseg train
   --amp``. The first step is a warm-up and not counted (on CUDA the first three, and
   the device is synchronised around each step).
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


def _step_seconds(patch_xyz: tuple[int, int, int], steps: int, *, device: str = "cpu", batch: int = 1,
                  amp: bool = False) -> list[float]:
    from renalseg.nets import build_network
    from renalseg.training.losses import hra_loss

    torch.manual_seed(0)
    where = torch.device(device)
    network = build_network("dpa_densebiasnet").train().to(where)
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-4,
                                 weight_decay=1e-5)
    shape = (batch, 1, patch_xyz[2], patch_xyz[1], patch_xyz[0])
    x = torch.rand(shape, device=where)
    y = (torch.rand(shape[:1] + shape[2:], device=where) > 0.99).long()
    warm_up = 3 if where.type == "cuda" else 1
    times = []
    for _ in range(steps + warm_up):
        if where.type == "cuda":
            torch.cuda.synchronize(where)
        t0 = time.perf_counter()
        with torch.autocast(where.type, dtype=torch.bfloat16, enabled=amp):
            logits = network.logits(x)
        loss = hra_loss(logits.float(), y, threshold=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if where.type == "cuda":
            torch.cuda.synchronize(where)
        times.append(time.perf_counter() - t0)
    return times[warm_up:]


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
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (the step timings only)")
    parser.add_argument("--batch", type=int, default=1, help="patches per step (the step timings only)")
    parser.add_argument("--amp", action="store_true", help="also time the bfloat16 forward pass")
    parser.add_argument("--ddp-patch", default="64,64,32")
    parser.add_argument("--ddp-steps", type=int, default=6)
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict = {"load_average_start": os.getloadavg(), "threads": args.threads, "device": args.device,
                    "batch": args.batch, "step_seconds": {}}
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # one shape per timing, as in training
        report["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    for text in args.patches:
        patch = tuple(int(v) for v in text.split(","))
        torch.set_num_threads(args.threads)
        for amp in (False, True) if args.amp else (False,):
            times = _step_seconds(patch, args.steps, device=args.device, batch=args.batch,  # type: ignore[arg-type]
                                  amp=amp)
            key = text + (" bf16" if amp else "")
            report["step_seconds"][key] = {"median": float(np.median(times)), "all": times}
            print(f"DPA-DenseBiasNet step, patch {text} (x,y,z) × {args.batch}, "
                  f"{'bfloat16 forward' if amp else 'float32'}: {np.median(times):.3f} s "
                  f"({args.device}, {args.threads} threads)", flush=True)
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
