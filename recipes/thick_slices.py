"""Write a phantom folder again as thick-slice scans: held-out cases for slice robustness.

    python recipes/thick_slices.py runs/phantoms/four_art runs/phantoms/four_art_z3 --slice-mm 3 \
        --cases roi_09600,roi_09601
    renalseg synth --out abdomen --kind abdomen --phase nephrographic --cases 2 --seed 30200
    python recipes/thick_slices.py abdomen abdomen_3mm --slice-mm 3 --inplane-mm 3

Folders of ``recipes/make_training_phantoms.py`` and of ``renalseg synth`` both work.

Routine portal-venous and nephrographic abdominal CT is often reconstructed at 2-5 mm
slices. Each image is blurred along z with a Gaussian slice profile whose full width at
half maximum is the slice thickness (SimpleITK's recursive Gaussian; the training
augmentation ``--thick-slices`` uses a box profile instead, so these cases do not share
its model) and resampled linearly onto a grid of that slice spacing, in-plane unchanged
unless ``--inplane-mm`` asks for coarser pixels too (the same profile in x and y);
the label and tissue maps are resampled to the same grid by nearest neighbour, as a
thick-slice study's truth would be drawn. A case whose slices are already as thick (and,
without ``--inplane-mm``, any case at ``--slice-mm`` no more than its own spacing) is
copied as it is, so the same command gives the reference set. ``recipes/evaluate_shipped.py`` scores the
written labels on that grid.

``--noise-hu S`` adds noise of standard deviation S HU to each image (on top of the
phantom's own 8-25 HU, as in a low-dose scan or a large patient's), white noise smoothed
by a Gaussian of half a voxel (a scanner's reconstruction correlates neighbours), drawn
from the case's seed so the set is the same each time; with ``--slice-mm`` left out the
grid stays the phantom's own:

    python recipes/thick_slices.py runs/phantoms/four_art runs/phantoms/four_art_n30 --noise-hu 30
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.training.augment import add_scan_noise

FWHM_TO_SIGMA = 1.0 / 2.3548


def thick_grid(image: sitk.Image, slice_mm: float, inplane_mm: float | None = None
               ) -> tuple[list[int], tuple[float, float, float]]:
    """Size and spacing of the same field of view with ``slice_mm`` slices (and ``inplane_mm`` pixels)."""
    size, spacing = list(image.GetSize()), image.GetSpacing()
    new = (inplane_mm or spacing[0], inplane_mm or spacing[1], slice_mm)
    # voxel centres from the first one to the last that stays inside the original extent
    # (a micrometre's tolerance, so an unchanged axis keeps every voxel)
    return [math.floor((size[a] - 1) * spacing[a] / new[a] + 1e-6) + 1 for a in range(3)], new


def thicken(image: sitk.Image, slice_mm: float, *, label: bool, inplane_mm: float | None = None) -> sitk.Image:
    """``image`` as a scan of ``slice_mm`` slices (a label map: resampled by nearest neighbour)."""
    size, spacing = thick_grid(image, slice_mm, inplane_mm)
    if label:
        source, interpolator, pixel = image, sitk.sitkNearestNeighbor, image.GetPixelID()
    else:
        source = sitk.RecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), slice_mm * FWHM_TO_SIGMA, direction=2)
        for axis in (0, 1) if inplane_mm else ():
            source = sitk.RecursiveGaussian(source, inplane_mm * FWHM_TO_SIGMA, direction=axis)
        interpolator, pixel = sitk.sitkLinear, sitk.sitkInt16
    return sitk.Resample(source, size, sitk.Transform(), interpolator, image.GetOrigin(), spacing,
                         image.GetDirection(), 0 if label else -1024, pixel)


def add_noise(image: sitk.Image, sigma_hu: float, seed: int) -> sitk.Image:
    """``image`` with added noise of standard deviation ``sigma_hu`` (HU), int16, the same grid.

    The noise is ``train --noisy-scans``' (``renalseg.training.augment.add_scan_noise``).
    """
    hu = add_scan_noise(sitk.GetArrayFromImage(image).astype(np.float32), sigma_hu, np.random.default_rng(seed))
    out = sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    out.CopyInformation(image)
    return out


def case_id(record: dict) -> str:
    """A case's name in cases.json: ``case`` (make_training_phantoms.py) or ``name`` (synth)."""
    return record.get("case", record.get("name"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a folder recipes/make_training_phantoms.py wrote")
    parser.add_argument("out", type=Path)
    parser.add_argument("--slice-mm", type=float, default=None,
                        help="slice thickness and spacing (mm; default: the phantom's own)")
    parser.add_argument("--inplane-mm", type=float, default=None, help="coarser in-plane pixels too (mm)")
    parser.add_argument("--noise-hu", type=float, default=0.0, help="added noise, standard deviation (HU)")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: all)")
    args = parser.parse_args()
    if args.slice_mm is None and args.inplane_mm is None and not args.noise_hu:
        parser.error("give --slice-mm, --inplane-mm or --noise-hu")
    wanted = {c for c in args.cases.split(",") if c}
    listing = json.loads((args.source / "cases.json").read_text())
    kept = [r for r in listing["cases"] if not wanted or case_id(r) in wanted]
    for record in kept:
        name = f"{case_id(record)}.nii.gz"
        for sub in ("image", "label", "tissue"):
            path = args.source / sub / name
            if not path.exists():
                continue
            (args.out / sub).mkdir(parents=True, exist_ok=True)
            image = sitk.ReadImage(str(path))
            slice_mm = args.slice_mm or image.GetSpacing()[2]
            coarser = args.inplane_mm is not None or slice_mm > image.GetSpacing()[2] + 1e-6
            noisy = sub == "image" and args.noise_hu > 0
            if not coarser and not noisy:
                shutil.copy(path, args.out / sub / name)
                continue
            if coarser:
                image = thicken(image, slice_mm, label=sub != "image", inplane_mm=args.inplane_mm)
            if noisy:
                image = add_noise(image, args.noise_hu, int(record.get("seed", 0)))
            sitk.WriteImage(image, str(args.out / sub / name), useCompression=True)
        for key, value in (("thick_slice_mm", args.slice_mm), ("inplane_mm", args.inplane_mm),
                           ("added_noise_hu", args.noise_hu)):
            if value:
                record[key] = value
    (args.out / "cases.json").write_text(json.dumps({**listing, "cases": kept}, indent=1) + "\n")
    print(f"{len(kept)} cases in {args.out}")


if __name__ == "__main__":
    main()
