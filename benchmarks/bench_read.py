"""Reading a DICOM series stored one file per slice against the same series as one
multi-frame (Enhanced CT) object: wall time and peak resident memory of
``read_dicom_study``, each in a fresh process, alternating.

A 512 × 512 × N CT series (0.7 × 0.7 × 0.8 mm, uncompressed, 12-bit values with
intercept −1024, as scanners store CT) is written with SimpleITK, converted to a Legacy Converted Enhanced CT object with highdicom, and both
are read ``--repeats`` times; the HU and geometry read are checked identical. The
multi-frame object is read twice each time: decoded by pydicom a frame at a time (what
``read_dicom_study`` does where pydicom has the codec) and by GDCM whole (what it does
for the transfer syntaxes pydicom cannot decode, JPEG Lossless among them).

    python benchmarks/bench_read.py [--slices 400] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

_READ = """
import json, sys, time
import numpy as np, SimpleITK as sitk
import renalseg.io.dicom
from renalseg.io.dicom import read_dicom_study
if sys.argv[2] == "gdcm":
    renalseg.io.dicom._pydicom_decodes = lambda transfer_syntax: False
started = time.perf_counter()
study = read_dicom_study(sys.argv[1])
seconds = time.perf_counter() - started
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the parent's
peak_gb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1e6
array = sitk.GetArrayViewFromImage(study.image)
checksum = sum(float(np.asarray(plane, np.float64).sum() * (k + 1)) for k, plane in enumerate(array))
print(json.dumps({"seconds": seconds, "peak_gb": peak_gb, "checksum": checksum, "origin": study.image.GetOrigin(),
                  "spacing": study.image.GetSpacing()}))
"""


def write_classic(folder: Path, slices: int) -> None:
    """One file per slice as a scanner stores CT: 12-bit unsigned values, intercept −1024."""
    import pydicom

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.8." + str(int(time.time()))
    for k in range(slices):
        stored = np.clip(rng.normal(1064, 200, (1, 512, 512)), 0, 4095).astype(np.uint16)
        image = sitk.GetImageFromArray(stored)[:, :, 0]
        image.SetSpacing((0.7, 0.7))
        for tag, value in [("0008|0060", "CT"), ("0020|000e", uid), ("0020|000d", uid + ".1"),
                           ("0020|0052", uid + ".2"), ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
                           ("0008|0018", f"{uid}.{k + 10}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0032", f"-180\\-180\\{-300.0 + k * 0.8:.3f}"), ("0020|0013", str(k + 1)),
                           ("0018|0050", "0.8")]:
            image.SetMetaData(tag, value)
        path = folder / f"{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit, ds.RescaleIntercept, ds.RescaleSlope = 12, 11, "-1024", "1"
        ds.save_as(path)


def to_enhanced(classic: Path, folder: Path) -> None:
    import highdicom as hd
    import pydicom

    datasets = [pydicom.dcmread(p) for p in sorted(classic.iterdir())]
    folder.mkdir(parents=True)
    hd.legacy.LegacyConvertedEnhancedCTImage(
        datasets, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1).save_as(folder / "enhanced.dcm")


def read_once(folder: Path, decoder: str = "pydicom") -> dict:
    done = subprocess.run([sys.executable, "-c", _READ, str(folder), decoder], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        classic, enhanced = Path(scratch) / "classic", Path(scratch) / "enhanced"
        write_classic(classic, args.slices)
        to_enhanced(classic, enhanced)
        results: dict[str, list[dict]] = {"one file per slice": [], "one multi-frame object": [],
                                          "one multi-frame object, GDCM": []}
        for _ in range(args.repeats):
            results["one file per slice"].append(read_once(classic))
            results["one multi-frame object"].append(read_once(enhanced))
            results["one multi-frame object, GDCM"].append(read_once(enhanced, "gdcm"))
    same = {(r["checksum"], tuple(r["origin"]), tuple(r["spacing"])) for runs in results.values() for r in runs}
    print(json.dumps({"slices": args.slices, "identical": len(same) == 1,
                      **{name: {"seconds": [round(r["seconds"], 2) for r in runs],
                                "peak_gb": [round(r["peak_gb"], 2) for r in runs]}
                         for name, runs in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
