"""The hilar suffix ``h`` of the R.E.N.A.L. score: on the true labels and on written ones.

For each case with a true tumour, plans the KiPA22 truth (1 vein, 2 kidney, 3 artery,
4 tumour) as ``renalseg plan --labels`` does, and the ``renalseg segment`` output folder
of the same case as ``renalseg plan`` does, and compares what each says of the largest
tumour piece: ``h`` (it abuts the main renal artery or vein), and the gap from each main
vessel's wall to the tumour. The phantoms store their vessels as labels, not as the
main trunk apart, so the truth here is the same rule on the true labels: what is measured
is how far the written labels carry it.

Usage (folders of ``renalseg segment --input-is-roi`` outputs, one sub-folder per case,
each with the KiPA22 truth folder holding ``<case>.nii.gz``)::

    PYTHONPATH=. python benchmarks/bench_hilar.py SEGMENTED_DIR TRUTH_DIR [SEGMENTED_DIR TRUTH_DIR ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.nephrometry import notation
from renalseg.plan import plan_study

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


if __name__ == "__main__":
    arguments = [Path(a) for a in sys.argv[1:]]
    if not arguments or len(arguments) % 2:
        sys.exit(__doc__)
    main(list(zip(arguments[::2], arguments[1::2])))
