"""Can the network draw thin-vessel walls at all? Fit trained weights to ONE fixed patch.

    python benchmarks/fit_one_patch.py weights/dpa_densebiasnet.safetensors runs/phantoms/train_fit \
        [--patch 96,96,48] [--steps 100] [--lr 1e-4] [--threads 2]

A capacity check, not training: one patch of the folder's first case (``x,y,z`` voxels,
centred on the median artery voxel), no augmentation, Adam on CE + Dice with the DAE
encoder frozen, the forward pass in bfloat16 as ``renalseg train --amp``. Every 25 steps
it prints the patch's Dice of the arg-max map, split by vessel diameter and error kind
as ``benchmarks/error_study.py`` does. If the network cannot fit a single patch's walls,
its size or resolution is the limit; if it can (session 9: 0.857 → 0.962 in 100 steps,
sub-2 mm vessels 0.786 → 0.938), what is short is a rule that holds across phantoms —
training, not the architecture's reach.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from error_study import figures, split_errors

from renalseg.segmenter import ModelSpec
from renalseg.training.data import find_cases, load_cases, parse_label_map
from renalseg.training.loop import freeze_encoder
from renalseg.training.losses import ce_dice_loss
from renalseg.weights import load_model_files

SHOWN = ("dice", "dice_0-2mm", "dice_2-4mm", "dice_4mm+", "dice_boundary_mended", "wall_bias_voxels_per_truth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--patch", default="96,96,48", help="x,y,z voxels")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network, card = load_model_files(args.weights)
    spec = ModelSpec.from_card(card)
    case = load_cases(find_cases(args.folder)[:1], spacing_xyz_mm=spec.spacing_xyz_mm,
                      label_map=parse_label_map("3:renal_artery"))[0]
    truth = case.label == 1
    patch_zyx = [int(v) for v in args.patch.split(",")][::-1]
    centre = [int(np.median(a)) for a in np.nonzero(truth)]
    starts = [max(0, min(c - p // 2, n - p)) for c, p, n in zip(centre, patch_zyx, truth.shape)]
    box = tuple(slice(s, s + p) for s, p in zip(starts, patch_zyx))
    x = torch.from_numpy(spec.normalize(case.image_hu[box]).astype(np.float32))[None, None]
    y = torch.from_numpy(truth[box].astype(np.int64))[None]
    print(f"{case.case_id}: patch z,y,x {tuple(x.shape[2:])}, {int(y.sum())} artery voxels", flush=True)

    network.train()
    if hasattr(network, "encoder"):
        freeze_encoder(network)  # no gradient, eval-mode normalisation, as in training
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=args.lr)

    def report(step: int, extra: dict) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = network(x).float().argmax(1)[0].numpy() == 1
        split = figures(split_errors(prediction, truth[box], spec.spacing_xyz_mm))
        print(json.dumps({"step": step, **extra, **{k: round(split[k], 4) for k in SHOWN}}), flush=True)

    report(0, {})
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        optimiser.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = network.logits(x)
        loss = ce_dice_loss(logits.float(), y)
        loss.backward()
        optimiser.step()
        if step % 25 == 0 or step == args.steps:
            report(step, {"loss": round(loss.item(), 4), "s_per_step": round((time.perf_counter() - t0) / step, 2)})


if __name__ == "__main__":
    main()
