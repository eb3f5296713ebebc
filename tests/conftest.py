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
