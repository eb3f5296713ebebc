"""Which phantoms a model fails on: per-case Dice against each case's imaging settings.

Reads the per-case Dice of ``evaluate_shipped.py --json`` and, for each case, the
settings its phantom was drawn with (re-synthesised from the seed and options in the
folder's ``cases.json``: the same seed gives the same case), then prints the
correlation of the Dice with each setting and the mean Dice per quarter of the
artery's contrast against the cortex.

    python benchmarks/contrast_study.py runs/eval/val40.json runs/phantoms/val40 [--key dice_segment]

Session 10 found the shipped weights' Dice follows the artery's enhancement, not the
noise or the blur (docs/training-history.md, "Which phantoms lose it").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from make_training_phantoms import SPACING_XYZ_MM

from renalseg.phantom.abdomen import synthesize_roi


def settings(seed: int, options: dict) -> dict[str, float]:
    """The imaging settings of one phantom, by name."""
    params = synthesize_roi(seed, spacing_xyz_mm=SPACING_XYZ_MM, **options).params
    hu = params["intensities_hu"]
    return {"artery_hu": hu["renal_artery"], "artery_minus_cortex_hu": hu["renal_artery"] - hu["kidney_cortex"],
            "artery_minus_sinus_fat_hu": hu["renal_artery"] - hu["sinus_fat"],
            "noise_sigma_hu": params["imaging"]["noise_sigma_hu"], "psf_fwhm_mm": params["imaging"]["psf_fwhm_mm"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, help="evaluate_shipped.py --json output")
    parser.add_argument("folder", type=Path, help="the phantom folder (with cases.json)")
    parser.add_argument("--key", default="dice_segment", help="per-case figure (default: Dice as segment writes)")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    rows = next(v["cases"] for v in results.values() if Path(v["folder"]).name == args.folder.name)
    index = {c["case"]: c for c in json.loads((args.folder / "cases.json").read_text())["cases"]}
    dice = np.array([r[args.key] for r in rows])
    table = [settings(index[r["case"]]["seed"], index[r["case"]].get("options") or {}) for r in rows]
    print(f"{len(rows)} cases, mean {args.key} {dice.mean():.4f}")
    for name in table[0]:
        values = np.array([t[name] for t in table])
        print(f"  correlation with {name:27s} {np.corrcoef(dice, values)[0, 1]:+.3f}")
    contrast = np.array([t["artery_minus_cortex_hu"] for t in table])
    for part in np.array_split(np.argsort(contrast), 4):
        print(f"  artery − cortex {contrast[part].min():4.0f}–{contrast[part].max():4.0f} HU: "
              f"{args.key} {dice[part].mean():.4f} ({len(part)} cases)")


if __name__ == "__main__":
    main()
