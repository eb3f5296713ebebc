"""Shared fixtures: the real CT in tests/data (see its README.md) and one synthetic-CT factory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from renalseg.geometry import Geometry
from renalseg.volume import Volume

#: real CT, TotalSegmentator (Wasserthal et al. 2023), CC BY 4.0: tests/data/README.md
TEST_DATA = Path(__file__).resolve().parent / "data"
DICOM_FIXTURE = TEST_DATA / "ts_abdomen_ct_dicom"
DICOM_REFERENCE_LABELS = TEST_DATA / "ts_abdomen_ct_dicom_reference_labels.nii.gz"
UPPER_POLE_CTA = TEST_DATA / "ts_cta_kidney_upper_pole_only.nii.gz"

_c, _s = np.cos(np.radians(30)), np.sin(np.radians(30))
#: rotated 30° about the patient's z axis: axis-order and direction bugs fail loudly
OBLIQUE_30DEG: tuple[float, ...] = (_c, -_s, 0.0, _s, _c, 0.0, 0.0, 0.0, 1.0)
LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
LAS = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def make_ct(
    shape_zyx: tuple[int, int, int] = (24, 32, 40),
    spacing_xyz_mm: tuple[float, float, float] = (0.8, 0.7, 2.5),
    origin_xyz_mm: tuple[float, float, float] = (-120.0, 35.5, 900.0),
    direction: tuple[float, ...] = OBLIQUE_30DEG,
    kidneys: tuple[tuple[int, int, int, int, int, int], ...] = ((12, 10, 12, 6, 5, 4),),
    seed: int = 0,
) -> Volume:
    """Air background, ellipsoid kidneys at +180 HU, seeded noise.

    ``kidneys`` holds (cz, cy, cx, rz, ry, rx) in voxels. The defaults are
    anisotropic, oblique and off-origin, so axis-order bugs fail loudly.
    """
    rng = np.random.default_rng(seed)
    array = np.full(shape_zyx, -1000.0, dtype=np.float32)
    zz, yy, xx = np.indices(shape_zyx)
    for cz, cy, cx, rz, ry, rx in kidneys:
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        array[inside] = 180.0
    array += rng.normal(0.0, 5.0, size=shape_zyx).astype(np.float32)
    return Volume(array.astype(np.int16), Geometry(shape_zyx, spacing_xyz_mm, origin_xyz_mm, direction))


@pytest.fixture(autouse=True)
def _renalseg_logging_restored():
    """A CLI call configures the ``renalseg`` logger for a terminal (its own handler, no
    propagation, quiet level); restore it so later tests' ``caplog`` still sees records."""
    import logging

    logger = logging.getLogger("renalseg")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def ct_factory():
    """The :func:`make_ct` factory, for tests that want their own variants."""
    return make_ct


def require(path: Path) -> Path:
    """A real-data fixture; fail (not skip) when the checkout lacks it."""
    if not path.exists():
        pytest.fail(f"{path} is missing: the real CT fixtures ship in tests/data (see its README.md).")
    return path


def to_multi_frame(files: list[Path], dest: Path, *, objects: int = 1,
                   sizes: tuple[int, ...] = ()) -> list[Path]:
    """Classic single-frame CT files as Legacy Converted Enhanced CT multi-frame objects
    (highdicom's conversion: positions, orientation, spacing and rescale in the functional
    groups, uncompressed pixels), ``objects`` files of consecutive slices in ``dest`` (as
    near equal as they divide; ``sizes`` gives each file's number of slices instead).

    The study, series and frame of reference UIDs are made one for all files (the first
    file's, or made up where anonymised exports left them empty; SimpleITK's writer gives
    each slice its own study UID). Returns the files written.
    """
    import highdicom as hd
    import pydicom
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    datasets = []
    for path in files:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array  # decoded here (JPEG 2000 in the real fixture)
        ds.PixelData = pixels.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = str(ds.get("SOPInstanceUID", "") or "") or generate_uid(entropy_srcs=[str(path)])
        datasets.append(ds)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        value = str(datasets[0].get(keyword, "") or "") or generate_uid(entropy_srcs=[keyword, str(files[0])])
        for ds in datasets:
            setattr(ds, keyword, value)
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    series_uid = generate_uid(entropy_srcs=["multi-frame", str(files[0])])
    if sizes and sum(sizes) != len(datasets):
        raise ValueError(f"sizes {sizes} do not add up to the {len(datasets)} slices")
    parts = (np.split(np.arange(len(datasets)), np.cumsum(sizes)[:-1]) if sizes
             else np.array_split(np.arange(len(datasets)), objects))
    for k, part in enumerate(parts, start=1):
        converted = hd.legacy.LegacyConvertedEnhancedCTImage(
            [datasets[i] for i in part], series_instance_uid=series_uid, series_number=7,
            sop_instance_uid=generate_uid(entropy_srcs=[series_uid, str(k)]), instance_number=k)
        written.append(dest / f"enhanced_{k}.dcm")
        converted.save_as(written[-1])
    return written
