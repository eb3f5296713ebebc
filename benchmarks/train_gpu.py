"""Train the seg stage on a GPU from phantoms made in memory (how session 7 used an H200).

The recipe is the shipped run's (``weights/training/config.json``: DR 0.5, artery-centred
and hard-negative patch shares, CE + Dice, the same augmentation) with what a GPU
changes on the command line: more phantoms, the paper's 152 × 152 × 64 patch, a batch
of several patches, and ``--loader-workers`` processes building the batches while the
GPU trains (one core builds about five 152 × 152 × 64 patches a second).

Phantoms are ``synthesize_roi`` cases at the model spacing, made in worker processes
and handed to :func:`renalseg.training.loop.train` as :class:`TrainingCase` objects:
the same int16 arrays ``benchmarks/make_training_phantoms.py`` writes and ``renalseg
train --data`` reads back, without the files. That matters on the lent GPU machine,
whose Python has no SimpleITK (its 53 MB wheel does not fit beside the repository in
what the device tool carries): where SimpleITK is missing a placeholder module is
installed, because nothing on this path reads or writes an image. The cases stay in
memory: 500 phantoms take about 18 GB (60 s to make with 15 processes, 190 s with 2).

    python benchmarks/train_gpu.py runs/gpu --seeds 1000-1499 --val-seeds 9000-9001 \\
        --init weights/dpa_densebiasnet.safetensors --encoder weights/dae.safetensors \\
        --patch 152,152,64 --batch 4 --lr 5e-5 --time-limit-min 7 --loader-workers 14 --device cuda

Step 8 of ``benchmarks/train_shipped.sh`` is the command session 7 ran (the shipped
weights); ``benchmarks/gpu_lease.sh`` continues it in one call of a lent GPU machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import types
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

try:
    import SimpleITK  # noqa: F401
except ImportError:  # the GPU machine: see the module docstring
    placeholder = types.ModuleType("SimpleITK")

    def _missing(name: str):
        raise AttributeError(f"SimpleITK.{name}: SimpleITK is not installed here (train_gpu.py placeholder)")

    placeholder.__getattr__ = _missing  # type: ignore[attr-defined]
    sys.modules["SimpleITK"] = placeholder

import numpy as np  # noqa: E402

from make_training_phantoms import SPACING_XYZ_MM, artery_options  # noqa: E402

from renalseg.phantom.abdomen import synthesize_roi  # noqa: E402
from renalseg.training.data import TrainingCase, make_case, parse_label_map  # noqa: E402
from renalseg.training.loop import TrainConfig, TrainProgress, train  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "weights" / "training" / "config.json"


def _seeds(text: str) -> list[int]:
    first, last = (int(v) for v in text.split("-"))
    return list(range(first, last + 1))


def phantom_case(seed: int, label_map_text: str = "3:renal_artery", artery_hu: str | None = None) -> TrainingCase:
    """Phantom ``seed`` as ``renalseg train`` would load it from make_training_phantoms.py's
    files (``artery_hu`` "LO-HI": as its ``--artery-hu``)."""
    label_map = parse_label_map(label_map_text)
    case = synthesize_roi(seed, spacing_xyz_mm=SPACING_XYZ_MM, **artery_options(artery_hu))
    return make_case(f"roi_{seed:05d}", case.image.array, case.image.geometry,
                     label_map.apply(case.label.array), case.tissues.array, label_map)


class FreshPhantoms(Sequence):
    """A virtual training set: case ``i`` is phantom ``first_seed + i``, made when a batch asks for it.

    With a count far above the samples a run draws, every patch comes from a phantom
    never seen before (the epoch plan draws ``--samples-per-epoch`` of the ``count``
    cases at random, seeded): no fixed training set to overfit, nothing held in memory,
    and still exactly resumable (a sample's phantom depends on its seed and position
    only). A phantom costs about 0.8 s to make on one core, so each loader worker
    yields about one 152 × 152 × 64 patch a second.
    """

    made_on_demand = True  # renalseg.training.loop.train: do not walk the cases up front

    def __init__(self, first_seed: int, count: int) -> None:
        self.first_seed, self.count = first_seed, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("FreshPhantoms: one case at a time")
        if not 0 <= index < self.count:
            raise IndexError(index)
        return phantom_case(self.first_seed + index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", default="1000-1499", help="training phantoms FIRST-LAST")
    parser.add_argument("--fresh", action="store_true",
                        help="a new phantom for every patch, made by the loader workers (FreshPhantoms; "
                             "seeds from 100000 on); --seeds is then ignored")
    parser.add_argument("--faint-seeds", help="more training phantoms FIRST-LAST whose renal artery is drawn "
                                              "from --artery-hu (session 10: faint arteries lose the most Dice); "
                                              "not with --fresh")
    parser.add_argument("--artery-hu", default="250-340", help="with --faint-seeds: the artery's HU band")
    parser.add_argument("--val-seeds", default="9000-9001", help="validation phantoms (best-by-Dice)")
    parser.add_argument("--init", type=Path, required=True)
    parser.add_argument("--encoder", type=Path)
    parser.add_argument("--patch", default="152,152,64", help="x,y,z voxels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--amp", action="store_true", help="bfloat16 forward pass (TrainConfig.amp)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--samples-per-epoch", type=int, default=400)
    parser.add_argument("--time-limit-min", type=float, required=True)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--loader-workers", type=int, default=14)
    parser.add_argument("--make-workers", type=int, default=15, help="processes making the phantoms")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no GPU here")
        torch.backends.cudnn.benchmark = True  # one patch shape throughout
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)

    t0 = time.perf_counter()
    seeds, val_seeds = _seeds(args.seeds), _seeds(args.val_seeds)
    with multiprocessing.get_context("fork").Pool(args.make_workers) as pool:
        train_cases = FreshPhantoms(100_000, 1_000_000) if args.fresh else pool.map(phantom_case, seeds, chunksize=4)
        if args.faint_seeds and not args.fresh:
            faint = partial(phantom_case, artery_hu=args.artery_hu)
            train_cases += pool.map(faint, _seeds(args.faint_seeds), chunksize=4)
        val_cases = pool.map(phantom_case, val_seeds)
    print(f"{'a fresh phantom per patch' if args.fresh else f'{len(train_cases)} training phantoms'} and "
          f"{len(val_cases)} validation phantoms in {time.perf_counter() - t0:.0f} s", flush=True)
    training_data = ("a new phantom for every patch (synthesize_roi seeds 100000-1099999, made while training)"
                     if args.fresh else f"{len(train_cases)} training phantoms made in memory (synthesize_roi seeds "
                                        f"{args.seeds}"
                                        + (f", seeds {args.faint_seeds} with the renal artery at {args.artery_hu} HU"
                                           if args.faint_seeds else "") + ")")

    base = TrainConfig.from_dict(json.loads(RECIPE.read_text()))
    x, y, z = (int(v) for v in args.patch.split(","))
    config = replace(
        base, patch_zyx=(z, y, x), batch_size=args.batch, amp=args.amp, lr=args.lr, seed=args.seed,
        samples_per_epoch=args.samples_per_epoch, epochs=100_000, max_steps=args.max_steps,
        time_limit_min=args.time_limit_min, val_every=1, checkpoint_minutes=60.0,
        init_weights=None if args.resume else str(args.init),
        encoder=None if args.encoder is None else str(args.encoder),
        data_description=f"{training_data}, validation seeds {args.val_seeds}; benchmarks/train_gpu.py",
    )
    started = time.perf_counter()
    first_step: list[int] = []  # the step this session started from (resume: not 0)

    def log(event: TrainProgress) -> None:
        if not first_step:
            first_step.append(event.step - 1)
        if event.kind == "step" and event.step % 50:
            return
        rate = (event.step - first_step[0]) / max(time.perf_counter() - started, 1e-9)
        text = f"{event.kind} step {event.step} epoch {event.epoch}"
        if event.loss is not None:
            text += f" loss {event.loss:.4f}"
        if event.score is not None:
            text += f" val {event.score:.4f} best {event.best_score:.4f}"
        print(f"{text} ({event.elapsed_s:.0f} s, {rate:.2f} steps/s)", flush=True)

    result = train(config, args.out, train_cases=train_cases, val_cases=val_cases, resume=args.resume,
                   device=args.device, on_progress=log, loader_workers=args.loader_workers)
    print(f"done: {result.steps} steps, best {result.score_name} {result.best_score}, "
          f"{result.wall_s:.0f} s, stopped: {result.stopped_early}", flush=True)


if __name__ == "__main__":
    main()
