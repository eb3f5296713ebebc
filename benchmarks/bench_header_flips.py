"""How often a damaged DICOM header is read as another image instead of refused.

A 4-slice oblique CT series (10 × 8 pixels, 2.5 mm slices) is written with SimpleITK as
a scanner would; then, ``--flips`` times per seed, one to three random bytes of one
slice's header (after the preamble, before the pixel data) are XOR-ed with random
values, the series is read with :func:`renalseg.io.study.read_study`, and the file is
restored. Each read is counted as refused (a ``RenalsegError``), the same image
(size, values and geometry), or different: a slice left out, or pixels decoded to
other values, which the reader must never do silently.

    python benchmarks/bench_header_flips.py [--seeds 40] [--flips 80]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from renalseg.errors import RenalsegError
from renalseg.io.study import read_study


def write_series(folder: Path) -> None:
    folder.mkdir(parents=True)
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rng = np.random.default_rng(0)
    array = np.full((4, 8, 10), -1000, np.int16)
    array[1:3, 2:6, 3:8] = 180
    image = sitk.GetImageFromArray(array + rng.normal(0, 5, array.shape).astype(np.int16))
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-120.0, 35.5, 900.0))
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1." + str(int(time.time() * 1e3))
    orientation = "\\".join(f"{v:.10f}" for v in (c, s, 0.0, -s, c, 0.0))
    for k in range(image.GetDepth()):
        one = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in [("0008|0060", "CT"), ("0020|000e", uid), ("0008|103e", "CTA tube"),
                           ("0020|0037", orientation), ("0020|0032", "\\".join(f"{p:.6f}" for p in position)),
                           ("0008|0018", f"{uid}.{k + 1}"), ("0020|0013", str(k + 1))]:
            one.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(one)


def same(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--flips", type=int, default=80)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    counts = {"refused": 0, "same": 0, "different": 0}
    for seed in range(1, args.seeds + 1):
        rng = np.random.default_rng(seed)
        with tempfile.TemporaryDirectory() as scratch:
            series = Path(scratch) / "series"
            write_series(series)
            reference = read_study(series).image
            files = sorted(series.iterdir())
            for _ in range(args.flips):
                victim = files[int(rng.integers(len(files)))]
                clean = victim.read_bytes()
                pixels = pydicom.dcmread(victim, defer_size=0).get_item(0x7FE00010, keep_deferred=True).value_tell
                mutated = bytearray(clean)
                for _ in range(int(rng.integers(1, 4))):
                    mutated[int(rng.integers(128, pixels))] ^= int(rng.integers(1, 256))
                victim.write_bytes(bytes(mutated))
                try:
                    counts["same" if same(read_study(series).image, reference) else "different"] += 1
                except RenalsegError:
                    counts["refused"] += 1
                finally:
                    victim.write_bytes(clean)
    print(json.dumps({"seeds": args.seeds, "flips_per_seed": args.flips, **counts}))


if __name__ == "__main__":
    main()
