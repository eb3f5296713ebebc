"""Writing phantoms: the training layout, and CT DICOM series.

Layout written by :func:`write_cases` (KiPA22-compatible, what ``renalseg train``
reads)::

    DIR/image/case_0000.nii.gz     int16 HU   (or DIR/image/case_0000/ a DICOM series)
    DIR/label/case_0000.nii.gz     uint8 KiPA22 labels: 1 vein, 2 kidney, 3 artery, 4 tumour
    DIR/tissue/case_0000.nii.gz    uint8 tissue classes (TISSUES), for domain randomisation
    DIR/territory/case_0000.nii.gz uint8 true perfusion territories (cases drawn with the
                                   ``territories`` option; values and feeding arteries in
                                   the case's ``truth`` in cases.json)
    DIR/cases.json                 every case's parameters

DICOM series are written with pydicom, one uncompressed CT Image Storage file per
slice, with the geometry in ImagePositionPatient / ImageOrientationPatient /
PixelSpacing / SliceThickness, stored unsigned with RescaleIntercept −1024 as most
scanners do, and UIDs generated deterministically from the case's seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from renalseg import __version__
from renalseg.errors import UsageError
from renalseg.io.image import write_image
from renalseg.io.output import StagedDir, atomic_write_json
from renalseg.phantom.abdomen import PhantomCase
from renalseg.phantom.tissues import KIPA_LABELS, TISSUES
from renalseg.volume import Volume

__all__ = ["write_cases", "write_dicom_series", "FORMATS"]

FORMATS = ("nifti", "dicom")
_INTERCEPT = -1024.0


def _uid(*parts: object) -> str:
    """A UID derived only from ``parts`` (deterministic, collision-free in practice)."""
    return generate_uid(entropy_srcs=["renalseg-phantom", *(str(p) for p in parts)])


def write_dicom_series(volume: Volume, folder: Path | str, *, uid_key: str, patient_id: str,
                       series_description: str = "renalseg phantom CTA") -> list[Path]:
    """Write an int16 HU volume as a CT DICOM series, one file per slice.

    The series keeps the volume's geometry exactly: ImageOrientationPatient holds the
    first two direction columns, ImagePositionPatient each slice's first voxel, so
    any reader (SimpleITK/GDCM, pydicom) rebuilds the same grid.

    Args:
        volume: HU volume (z, y, x); its direction's third column must be the cross
            product of the first two (a right-handed grid, as DICOM requires).
        folder: the series folder (created).
        uid_key: text the Study/Series/Frame-of-Reference/SOP UIDs are derived from
            (e.g. ``"seed-7/case_0007"``): same key, same UIDs.
        patient_id: PatientID / PatientName.
        series_description: SeriesDescription.

    Returns:
        The files written, in slice order.

    Raises:
        UsageError: a left-handed direction, which DICOM slices cannot express.
    """
    folder = Path(folder)
    g = volume.geometry
    d = g.direction_matrix
    if not np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2], atol=1e-6):
        raise UsageError(f"Cannot write a DICOM series with a left-handed direction ({g.orientation}).")
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = (_uid(uid_key, k) for k in ("study", "series", "frame"))
    stored = np.clip(np.rint(volume.array.astype(np.float32) - _INTERCEPT), 0, 65535).astype(np.uint16)
    nz, ny, nx = g.shape_zyx
    sx, sy, sz = g.spacing_xyz_mm
    orientation = [float(v) for v in (*d[:, 0], *d[:, 1])]
    paths = []
    for k in range(nz):
        sop_uid = _uid(uid_key, "sop", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{k + 1:05d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.Manufacturer = "renalseg phantom"
        ds.SoftwareVersions = __version__
        ds.PatientName = patient_id
        ds.PatientID = patient_id
        ds.StudyID = "1"
        ds.StudyDescription = "Synthetic CTA phantom"
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.PatientPosition = "FFS"
        ds.BodyPartExamined = "ABDOMEN"
        ds.ContrastBolusAgent = "synthetic"
        position = g.index_to_world([[0, 0, k]])[0]
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = [round(v, 8) for v in orientation]
        ds.PixelSpacing = [round(float(sy), 6), round(float(sx), 6)]  # row spacing (y), column spacing (x)
        ds.SliceThickness = round(float(sz), 6)
        ds.SpacingBetweenSlices = round(float(sz), 6)
        ds.SliceLocation = round(float(position @ d[:, 2]), 6)
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = _INTERCEPT
        ds.RescaleSlope = 1.0
        ds.RescaleType = "HU"
        ds.WindowCenter = 100
        ds.WindowWidth = 700
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_cases(out_dir: Path | str, cases: Iterable[PhantomCase], *, kind: str, fmt: str = "nifti",
                overwrite: bool = False, names: Iterable[str] | None = None,
                on_progress: Callable[[int, PhantomCase], None] | None = None) -> Path:
    """Write cases in the training layout (see module docstring), all or nothing.

    The folder is built in staging and published whole, so an interrupted run never
    leaves a half-written dataset.

    Args:
        out_dir: the dataset folder.
        cases: the cases (may be a generator: each is written and released in turn).
        kind: ``"roi"`` or ``"abdomen"`` (recorded in ``cases.json``).
        fmt: ``"nifti"`` or ``"dicom"`` (images only; labels and tissues stay NIfTI).
        overwrite: replace an existing ``out_dir``.
        names: case names (default ``case_0000``, ``case_0001``, ...).
        on_progress: called with (index, case) after each case is written.

    Returns:
        ``out_dir``.

    Raises:
        UsageError: unknown ``fmt``.
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is false.
    """
    if fmt not in FORMATS:
        raise UsageError(f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    out_dir = Path(out_dir)
    name_iter = iter(names) if names is not None else None
    entries = []
    with StagedDir(out_dir, overwrite=overwrite) as staging:
        for index, case in enumerate(cases):
            name = next(name_iter) if name_iter is not None else f"case_{index:04d}"
            if fmt == "dicom":
                write_dicom_series(case.image, staging / "image" / name,
                                   uid_key=f"seed-{case.params.get('seed')}/{name}", patient_id=f"PHANTOM_{name}")
                image_rel = f"image/{name}"
            else:
                write_image(case.image, staging / "image" / f"{name}.nii.gz")
                image_rel = f"image/{name}.nii.gz"
            write_image(case.label, staging / "label" / f"{name}.nii.gz")
            write_image(case.tissues, staging / "tissue" / f"{name}.nii.gz")
            entries.append({"name": name, "image": image_rel, "label": f"label/{name}.nii.gz",
                            "tissue": f"tissue/{name}.nii.gz", "params": case.params})
            if case.territory is not None:
                write_image(case.territory, staging / "territory" / f"{name}.nii.gz")
                entries[-1].update({"territory": f"territory/{name}.nii.gz", "truth": case.truth})
            if on_progress is not None:
                on_progress(index, case)
        atomic_write_json(staging / "cases.json", {
            "generator": f"renalseg {__version__} synth",
            "kind": kind,
            "format": fmt,
            "count": len(entries),
            "labels": {str(k): v for k, v in KIPA_LABELS.items()},
            "tissues": {str(k): v for k, v in TISSUES.items()},
            "note": "case i was generated with seed S + i; tissue/ holds the tissue-class map "
                    "(ids in 'tissues') for domain randomisation",
            "cases": entries,
        })
    return out_dir
