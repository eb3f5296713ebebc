"""A picture as a DICOM Secondary Capture in the source CT's study, for any PACS viewer.

``renalseg segment`` writes ``preview.sc.dcm`` (``preview.png``) and ``renalseg plan``
writes ``plan.sc.dcm`` (``plan.png``) for a study read from DICOM. Many PACS viewers
show no DICOM SEG overlay, but every one shows a Secondary Capture image: filed in the
CT's study (its patient and study attributes copied by highdicom's
:meth:`highdicom.sc.SCImage.from_ref_dataset`), as a series of its own, the picture is
where the radiologist and the surgeon already look.

The image is the PNG's RGB pixels exactly (8 bits a sample, RLE Lossless, which every
DICOM toolkit decodes: ``plan.png``'s flat colours shrink from 1.7 MB to 0.15 MB, the
preview's grey MIPs from 0.9 to 0.6 MB). The series description says research use and,
when the model card says so, that the weights were trained on synthetic phantoms; the
derivation description names the source series.
Burned In Annotation is ``YES`` when the picture's text may identify the patient (the
preview's title is the study's name, a folder or file name).

A series with an EMPTY Study Instance UID (anonymised exports) gets the UID
:mod:`renalseg.io.dicom_seg` derives for its SEG, so the two land in one study.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import RLELossless

from renalseg import __version__
from renalseg.errors import InputError
from renalseg.io.dicom_seg import _fill_uids, empty_type2, series_description
from renalseg.io.output import atomic_write_bytes

__all__ = ["write_secondary_capture", "PREVIEW_SC_SERIES_NUMBER", "PLAN_SC_SERIES_NUMBER"]

#: the SeriesNumber of ``preview.sc.dcm`` (the SEG is 9001)
PREVIEW_SC_SERIES_NUMBER = 9002
#: the SeriesNumber of ``plan.sc.dcm``
PLAN_SC_SERIES_NUMBER = 9003


def write_secondary_capture(picture: Image.Image | np.ndarray, source_files: Sequence[Path], path: Path | str, *,
                            series_number: int, synthetic_training_only: bool, what: str,
                            identifying_text: bool) -> dict:
    """Write ``picture`` as one Secondary Capture image in the source series' study.

    Args:
        picture: the picture (a PIL image, or ``(rows, columns, 3)`` uint8 RGB).
        source_files: the CT series' files (their headers give patient, study and frame
            of reference; :func:`renalseg.io.dicom.dicom_series_slices`).
        path: where to write (``preview.sc.dcm``, ``plan.sc.dcm``).
        series_number: the new series' number (:data:`PREVIEW_SC_SERIES_NUMBER`, ...).
        synthetic_training_only: say so in the series description.
        what: what the picture is, for the series description (``"preview"``, ``"plan"``).
        identifying_text: the picture's text may identify the patient (Burned In Annotation).

    Returns:
        ``{"path", "sop_instance_uid", "series_instance_uid", "study_instance_uid",
        "filled_in"}``; ``filled_in`` names the study and series UIDs the source lacked,
        derived here.

    Raises:
        InputError: no source files, or a picture that is not RGB.
    """
    import highdicom as hd

    if not source_files:
        raise InputError("A DICOM Secondary Capture needs the source DICOM files; the study was not read from DICOM.")
    pixels = np.asarray(picture.convert("RGB") if isinstance(picture, Image.Image) else picture)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise InputError(f"A Secondary Capture here is an RGB picture (rows, columns, 3) of uint8; got "
                         f"{pixels.shape} {pixels.dtype}.")
    datasets = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in dict.fromkeys(source_files)]
    # the UIDs this object names (its study; the source series in its derivation description)
    filled_in = [k for k in _fill_uids(datasets) if k in ("StudyInstanceUID", "SeriesInstanceUID")]
    empty_type2(datasets)
    source = datasets[0]
    description = series_description(synthetic_training_only).replace("renalseg:", f"renalseg {what}:", 1)
    with warnings.catch_warnings():  # a scanner's one-part patient name is copied as it is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        sc = hd.sc.SCImage.from_ref_dataset(
            source, pixel_array=np.ascontiguousarray(pixels), photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="renalseg", transfer_syntax_uid=RLELossless,
            patient_orientation=("L", "F"))
    sc.PatientOrientation = ""  # panels of several orientations: Type 2, left empty
    sc.ConversionType = "WSD"  # made by a workstation's software
    sc.SeriesDescription = description[:64]
    sc.ManufacturerModelName = "renalseg"
    sc.SoftwareVersions = __version__
    sc.BurnedInAnnotation = "YES" if identifying_text else "NO"
    number = f" (series number {source.SeriesNumber})" if str(source.get("SeriesNumber", "") or "").strip() else ""
    sc.DerivationDescription = (f"renalseg {__version__} {what} of CT series {source.SeriesInstanceUID}{number}:"
                                " research use")[:1024]
    buffer = io.BytesIO()
    sc.save_as(buffer)
    atomic_write_bytes(path, buffer.getvalue())  # whole, or not at all
    return {"path": str(path), "sop_instance_uid": str(sc.SOPInstanceUID),
            "series_instance_uid": str(sc.SeriesInstanceUID), "study_instance_uid": str(sc.StudyInstanceUID),
            "filled_in": filled_in}
