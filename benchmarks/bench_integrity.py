"""What the integrity checks add to reading a clinical-size study (issue 28: ≤ 1 s).

A 512 × 512 × 400 int16 CT-like volume (smooth anatomy-like values plus noise, so it
compresses like a real scan) is written as ``.nii.gz`` (and ``.mha``, ``.nrrd``), then
read ``--repeats`` times each way:

* ``check``: :func:`renalseg.io.integrity.verify_image_file` alone (one streaming
  pass: gzip CRC-32 and length, header against bytes present);
* ``read``: :func:`renalseg.io.image.read_image` (check + header + SimpleITK read);
* ``sitk``: ``SimpleITK.ReadImage`` alone (what reading cost before the checks).

Run: ``python benchmarks/bench_integrity.py [--repeats 3] [--formats .nii.gz]`` (prints
JSON: best wall time and best CPU time of each, seconds, and ``added_s`` / ``added_cpu_s``
= read − sitk). On a shared, loaded machine the CPU time is the fairer figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.io.image import read_image
from renalseg.io.integrity import verify_image_file


def _study(shape_zyx: tuple[int, int, int] = (400, 512, 512)) -> sitk.Image:
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 240.0) ** 2 <= 1.0
    hu = np.where(body, 40, -1000).astype(np.int16)
    hu = hu + (20 * np.sin(z / 9.0) * np.cos(x / 13.0)).astype(np.int16)
    hu += rng.normal(0, 12, size=shape_zyx).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.7, 1.0))
    return image


def _best(fn, repeats: int) -> tuple[float, float]:
    """Best wall and best CPU (this process, all threads) seconds of ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return round(min(walls), 3), round(min(cpus), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default=".nii.gz,.mha,.nrrd")
    args = parser.parse_args()
    image = _study()
    results = {"shape_xyz": list(image.GetSize()), "pixel": "int16", "formats": {}}
    with tempfile.TemporaryDirectory() as folder:
        for suffix in args.formats.split(","):
            path = Path(folder) / f"study{suffix}"
            sitk.WriteImage(image, str(path), True)
            fmt = {".nii.gz": "nifti", ".mha": "metaimage", ".nrrd": "nrrd"}[suffix]
            row: dict = {"file_mb": round(path.stat().st_size / 1e6, 1)}
            for name, fn in (("check", lambda: verify_image_file(path, fmt)), ("read", lambda: read_image(path)),
                             ("sitk", lambda: sitk.ReadImage(str(path)))):
                row[name], row[f"{name}_cpu"] = _best(fn, args.repeats)
            row["added_s"] = round(row["read"] - row["sitk"], 3)
            row["added_cpu_s"] = round(row["read_cpu"] - row["sitk_cpu"], 3)
            results["formats"][suffix] = row
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
