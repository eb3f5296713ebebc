"""Where the tumour label is lost: inside the kidney's outline or outside it.

For each case with a true tumour, splits the true tumour into the part inside the
kidney's convex outline (:func:`renalseg.nephrometry.kidney_outline` of the true kidney)
and the part that bulges out of it, and reports the share of each that a written label
map labels tumour, and what the part outside is labelled instead.

Usage (a folder of ``renalseg segment --input-is-roi`` outputs, one sub-folder per case,
and the KiPA22 truth folder with ``<case>.nii.gz``)::

    PYTHONPATH=. python benchmarks/bench_tumour_outline.py SEGMENTED_DIR TRUTH_DIR [SEGMENTED_DIR TRUTH_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.nephrometry import kidney_outline


def main(pairs: list[tuple[Path, Path]]) -> None:
    inside_total = outside_total = inside_found = outside_found = 0
    per_case = []
    print("case | true tumour inside / outside (voxels) | labelled tumour inside | outside | outside labelled "
          "background / vein / kidney / artery")
    for segmented, truth in pairs:
        for folder in sorted(p for p in segmented.iterdir() if (p / "labels.nii.gz").is_file()):
            true = sitk.GetArrayFromImage(sitk.ReadImage(str(truth / f"{folder.name}.nii.gz")))
            image = sitk.ReadImage(str(folder / "labels.nii.gz"))
            written = sitk.GetArrayFromImage(image)
            tumour = true == 4
            outline = kidney_outline(true == 2, np.asarray(image.GetSpacing(), float)[::-1])
            if not tumour.any() or outline is None:
                continue
            inside, outside = tumour & outline, tumour & ~outline
            found_in, found_out = int((written[inside] == 4).sum()), int((written[outside] == 4).sum())
            instead = np.bincount(written[outside], minlength=5)[:4] / max(int(outside.sum()), 1)
            print(f"{folder.name} | {int(inside.sum())} / {int(outside.sum())} | "
                  f"{found_in / max(int(inside.sum()), 1):.2f} | {found_out / max(int(outside.sum()), 1):.2f} | "
                  + " / ".join(f"{v:.2f}" for v in instead))
            inside_total, outside_total = inside_total + int(inside.sum()), outside_total + int(outside.sum())
            inside_found, outside_found = inside_found + found_in, outside_found + found_out
            if inside.any() and outside.any():
                per_case.append((found_in / inside.sum(), found_out / outside.sum()))
    recall = np.array(per_case)
    print(f"pooled: {outside_total / (inside_total + outside_total):.3f} of the true tumour lies outside the "
          f"outline; labelled tumour {inside_found / inside_total:.3f} inside, {outside_found / outside_total:.3f} "
          f"outside; per tumour (both parts present, {len(recall)}) median {np.median(recall[:, 0]):.2f} inside, "
          f"{np.median(recall[:, 1]):.2f} outside, outside lower in {int((recall[:, 1] < recall[:, 0]).sum())}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if not arguments or len(arguments) % 2:
        sys.exit(__doc__)
    main([(Path(a), Path(b)) for a, b in zip(arguments[::2], arguments[1::2])])
