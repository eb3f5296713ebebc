"""The hilar suffix ``h`` of the R.E.N.A.L. score, against the phantoms' truth and on written labels.

``--phantoms N``: synthesises N kidney ROI phantoms with a tumour
(``synthesize_roi(seed, tumour=True, tumour_site=SITE)``, seeds from ``--seed``), plans
their true KiPA22 labels (1 vein, 2 kidney, 3 artery, 4 tumour) as ``renalseg plan
--labels`` does and compares the plan's ``h`` and gaps (the main renal artery's and
vein's walls to the tumour) with the generator's own (``main_vessel_gap_mm``: its main
artery and vein tubes against its tumour shape; ``h`` where a gap is at most
:data:`renalseg.nephrometry.HILAR_CONTACT_MM`).

``SEGMENTED_DIR TRUTH_DIR ...``: for each case with a true tumour, plans the KiPA22
truth and the ``renalseg segment`` output folder of the same case (one sub-folder per
case) and compares what each says of the largest tumour piece: how far the written
labels carry the rule.

Usage::

    PYTHONPATH=. python benchmarks/bench_hilar.py --phantoms 40 --seed 63000 --site hilar
    PYTHONPATH=. python benchmarks/bench_hilar.py SEGMENTED_DIR TRUTH_DIR [SEGMENTED_DIR TRUTH_DIR ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.nephrometry import HILAR_CONTACT_MM, notation
from renalseg.plan import plan_labels, plan_study

KIPA = {1: "vein", 2: "kidney", 3: "artery", 4: "tumour"}


def score(**where) -> tuple[dict | None, float]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        plan = plan_study(**where, out_dir=out).plan
    scores = [k["tumour"]["nephrometry"] for k in plan["kidneys"] if (k.get("tumour") or {}).get("nephrometry")]
    largest = max(scores, key=lambda s: s["R"]["diameter_mm"], default=None)
    return largest, time.perf_counter() - started


def main(pairs: list[tuple[Path, Path]]) -> None:
    rows = []
    print("case | truth: score, gap to main artery / vein (mm) | written: score, gaps | seconds (written)")
    for segmented, truth in pairs:
        for folder in sorted(p for p in segmented.iterdir() if (p / "labels.nii.gz").is_file()):
            true_file = truth / f"{folder.name}.nii.gz"
            if not (sitk.GetArrayFromImage(sitk.ReadImage(str(true_file))) == 4).any():
                continue
            true, _ = score(labels=true_file, label_map=KIPA)
            found, seconds = score(study_dir=folder)
            rows.append((folder.name, true, found))

            def words(s: dict | None) -> str:
                if s is None:
                    return "not scored"
                h = s["hilar"]
                return f"{notation(s)}, {h['main_artery_mm']} / {h['main_vein_mm']}"
            print(f"{folder.name} | {words(true)} | {words(found)} | {seconds:.1f}")
    both = [(t["hilar"]["h"], f["hilar"]["h"]) for _, t, f in rows if t and f]
    truth_h = [t for t, _ in both]
    print(f"\n{len(rows)} cases with a tumour; scored both ways {len(both)}; hilar in the truth "
          f"{sum(t is True for t in truth_h)}, not hilar {sum(t is False for t in truth_h)}, "
          f"unknown {sum(t is None for t in truth_h)}")
    for t_value in (True, False):
        found = [f for t, f in both if t is t_value]
        if found:
            print(f"truth h={t_value}: written h=True {sum(f is True for f in found)}, False "
                  f"{sum(f is False for f in found)}, unknown {sum(f is None for f in found)}")
    agree = [t == f for t, f in both if t is not None and f is not None]
    if agree:
        print(f"agreement where both are scored: {np.mean(agree):.3f} ({sum(agree)} of {len(agree)})")


def phantoms(count: int, seed: int, site: str) -> None:
    from renalseg.phantom.abdomen import synthesize_roi

    rows = []
    print("seed | diameter (mm) | true gaps artery / vein (mm) | plan's gaps | true h | plan's h | s")
    for s in range(seed, seed + count):
        case = synthesize_roi(s, tumour=True, tumour_site=site)
        true_gaps = case.params["kidneys"][case.params["side"]]["tumour"]["main_vessel_gap_mm"]
        started = time.perf_counter()
        plan = plan_labels(case.label, KIPA).plan
        seconds = time.perf_counter() - started
        scores = [k["tumour"]["nephrometry"] for k in plan["kidneys"] if (k.get("tumour") or {}).get("nephrometry")]
        found = scores[0]["hilar"] if scores else None
        truth = min(true_gaps.values()) <= HILAR_CONTACT_MM
        diameter = case.params["kidneys"][case.params["side"]]["tumour"]["diameter_mm"]
        rows.append((truth, found, true_gaps))
        print(f"{s} | {diameter} | {true_gaps['artery']} / {true_gaps['vein']} | "
              f"{found and found['main_artery_mm']} / {found and found['main_vein_mm']} | {truth} | "
              f"{found and found['h']} | {seconds:.1f}")
    scored = [(t, f) for t, f, _ in rows if f is not None and f["h"] is not None]
    print(f"\n{count} phantoms (site {site}), scored {len(scored)}; h in the truth {sum(t for t, _ in scored)}")
    for t_value in (True, False):
        found = [f["h"] for t, f in scored if t is t_value]
        if found:
            print(f"truth h={t_value}: plan h=True {sum(found)}, False {len(found) - sum(found)}")
    if scored:
        print(f"agreement: {np.mean([t == f['h'] for t, f in scored]):.3f}")
    errors = [abs(f[f"main_{v}_mm"] - g[v]) for t, f, g in rows if f is not None for v in ("artery", "vein")
              if f[f"main_{v}_mm"] is not None and g[v] <= 10]
    if errors:
        print(f"gap found against true, where the true gap is under 10 mm: median {np.median(errors):.1f} mm, "
              f"90th percentile {np.percentile(errors, 90):.1f} mm ({len(errors)} gaps)")


if __name__ == "__main__":
    if "--phantoms" in sys.argv:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--phantoms", type=int, required=True)
        parser.add_argument("--seed", type=int, default=63000)
        parser.add_argument("--site", default="hilar", choices=("any", "hilar"))
        args = parser.parse_args()
        phantoms(args.phantoms, args.seed, args.site)
    else:
        arguments = [Path(a) for a in sys.argv[1:]]
        if not arguments or len(arguments) % 2:
            sys.exit(__doc__)
        main(list(zip(arguments[::2], arguments[1::2])))
