"""The real atlas CT with its kidneys enhanced: real anatomy around a contrast-filled kidney.

    python recipes/enhanced_atlas.py OUT
    renalseg segment OUT/atlas_plus160.nii.gz OUT/atlas_plus100.nii.gz --out OUT/segment
    renalseg evaluate OUT/segment/atlas_plus160 --gt OUT/kidneys.nii.gz --label 2 --gt-label 1

The package's atlas CT (TotalSegmentator, Wasserthal et al. 2023, CC BY 4.0; 3 mm
isotropic) is un-enhanced: its kidneys sit at about 15 HU, which no renal CTA shows. Here
its kidney labels, smoothed (Gaussian σ 1.5 mm) so the edge fades over a voxel or two,
add 160 HU (about a nephrographic kidney) or 100 HU (a weak portal-venous one) to the
kidneys, with the same σ 12 HU noise inside them (seed 0); every other tissue, the liver, spleen, bowel,
spine and vessels, stays as the patient's scan has it (vessels un-enhanced). OUT/kidneys.nii.gz
holds the atlas's two kidneys as one label (1), for ``renalseg evaluate``.

What it tests: whether the kidney label lands on a real kidney among real neighbours once
the kidney is enhanced. What it does not: a CTA (the arteries and veins stay dark), or a
clinical resolution (3 mm pixels; recipes/thick_slices.py makes phantoms at 3 mm to
compare).
"""

from __future__ import annotations

import argparse
from importlib.resources import files
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ADDED_HU = (160, 100)
NOISE_HU = 12.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    atlas = files("renalseg") / "data" / "atlas"
    ct = sitk.ReadImage(str(atlas / "atlas_ct.nii.gz"))
    kidneys = sitk.ReadImage(str(atlas / "atlas_kidneys.nii.gz"))
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    fade = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.Cast(kidneys > 0, sitk.sitkFloat32), 1.5))
    args.out.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).normal(0.0, NOISE_HU, hu.shape).astype(np.float32) * (fade > 0.05)
    for added in ADDED_HU:
        image = sitk.GetImageFromArray(np.round(hu + added * fade + noise).astype(np.int16))
        image.CopyInformation(ct)
        sitk.WriteImage(image, str(args.out / f"atlas_plus{added}.nii.gz"), useCompression=True)
    sitk.WriteImage(sitk.Cast(kidneys > 0, sitk.sitkUInt8), str(args.out / "kidneys.nii.gz"), useCompression=True)
    print(f"atlas_plus{ADDED_HU[0]}, atlas_plus{ADDED_HU[1]} and kidneys.nii.gz in {args.out}")


if __name__ == "__main__":
    main()
