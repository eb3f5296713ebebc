"""What ``labels.seg.dcm`` (DICOM SEG), ``labels.sr.dcm`` and ``labels.seg.nrrd`` add to writing a full-size study.

A 512 × 512 × 400 CT series (0.7 × 0.7 × 0.8 mm, int16, one file per slice) is written
with SimpleITK into a temporary folder; an artery-like label map (a trunk and 12
branches, 2-4 mm across, spanning 250 slices, plus a kidney-sized second label
when ``--two-labels``) is then written both ways, each timed three times (best kept), and
the volumes as a DICOM SR on that SEG's segments (what ``renalseg segment`` writes with it).

    python benchmarks/bench_interchange.py [--slices 400] [--two-labels]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.geometry import Geometry
from renalseg.io.dicom import read_dicom_study
from renalseg.io.dicom_seg import write_dicom_seg
from renalseg.io.dicom_sr import write_measurement_report
from renalseg.io.slicer import write_seg_nrrd


def write_series(folder: Path, shape_zyx: tuple[int, int, int], spacing_xyz_mm: tuple[float, float, float]) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    plane = rng.normal(40, 20, shape_zyx[1:]).astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.7." + str(int(time.time()))
    for k in range(shape_zyx[0]):
        image = sitk.GetImageFromArray(plane[None])[:, :, 0]
        image.SetSpacing(spacing_xyz_mm[:2])
        image.SetOrigin((-180.0, -180.0, -300.0 + k * spacing_xyz_mm[2]))
        for tag, value in [("0008|0060", "CT"), ("0020|000e", series_uid), ("0020|000d", series_uid + ".1"),
                           ("0020|0052", series_uid + ".2"), ("0008|0018", f"{series_uid}.{k + 10}"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0032", f"-180\\-180\\{-300.0 + k * spacing_xyz_mm[2]:.3f}"),
                           ("0020|0013", str(k + 1)), ("0028|1052", "0"), ("0028|1053", "1")]:
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:04d}.dcm"))
        writer.Execute(image)


def tree_labels(shape_zyx: tuple[int, int, int], two_labels: bool) -> np.ndarray:
    labels = np.zeros(shape_zyx, np.uint8)
    rng = np.random.default_rng(1)
    zz = np.arange(shape_zyx[0])
    z0, z1 = shape_zyx[0] // 4, shape_zyx[0] // 4 + 250
    for branch in range(13):
        y0, x0 = 256 + rng.integers(-60, 60), 256 + rng.integers(-60, 60)
        dy, dx = rng.normal(0, 0.4, 2)
        radius = 2 + (branch == 0) * 2
        for z in zz[z0:z1]:
            t = z - z0
            cy, cx = int(y0 + dy * t), int(x0 + dx * t)
            if 0 <= cy < shape_zyx[1] - 8 and 0 <= cx < shape_zyx[2] - 8:
                labels[z, cy - radius:cy + radius, cx - radius:cx + radius] = 1
    if two_labels:
        labels[z0:z0 + 150, 150:250, 300:380] = np.where(labels[z0:z0 + 150, 150:250, 300:380] == 0, 2, 1)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--two-labels", action="store_true")
    args = parser.parse_args()
    shape = (args.slices, 512, 512)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        started = time.perf_counter()
        write_series(folder, shape, (0.7, 0.7, 0.8))
        print(f"series written in {time.perf_counter() - started:.1f} s")
        study = read_dicom_study(folder)
        geometry = Geometry.from_sitk(study.image)
        labels = tree_labels(shape, args.two_labels)
        names = {"0": "background", "1": "renal_artery", "2": "kidney"}
        print(f"labelled slices {int(labels.any(axis=(1, 2)).sum())}, voxels {int((labels > 0).sum())}")
        segments: list = []  # the SEG's, for the SR written on it
        structures = {"artery" if value == 1 else "kidney": {"right": {"volume_ml": round(
            float((labels == value).sum()) * geometry.voxel_volume_mm3 / 1000.0, 3)}}
            for value in (1, 2) if (labels == value).any()}

        def write_seg(path: Path) -> None:
            segments[:] = write_dicom_seg(labels, geometry, names, study.dicom_files, path, model_name="bench",
                                          weights_sha256="0" * 64, synthetic_training_only=True)["segments"]

        for name, write in (
            ("labels.seg.dcm", write_seg),
            ("labels.sr.dcm", lambda p: write_measurement_report(
                Path(tmp) / "labels.seg.dcm", segments, names, structures, p, model_name="bench",
                weights_sha256="0" * 64, synthetic_training_only=True)),
            ("labels.seg.nrrd", lambda p: write_seg_nrrd(labels, geometry, names, p)),
        ):
            times = []
            for _ in range(3):
                started = time.perf_counter()
                write(Path(tmp) / name)
                times.append(time.perf_counter() - started)
            size = (Path(tmp) / name).stat().st_size / 1e6
            print(f"{name}: best {min(times):.2f} s of {', '.join(f'{t:.2f}' for t in times)}; {size:.2f} MB")


if __name__ == "__main__":
    main()
