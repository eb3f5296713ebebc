"""DICOM series folders: list the series, check them, read one as a CT study in HU.

Headers are read with pydicom (``stop_before_pixels``) and checked before any pixel
is decoded; pixels are decoded by SimpleITK/GDCM (every transfer syntax GDCM knows,
JPEG 2000 included) from the file list *this module* sorted by position along the
slice normal, so file names and file order never matter.

Multi-frame objects (Enhanced CT, Legacy Converted Enhanced CT: what photon-counting
and many recent scanners export) are read too: each frame takes its position,
orientation, pixel spacing and rescale from the per-frame and shared functional groups,
and the frames are checked and sorted exactly as single-frame slices are, across one
or several files, every frame in its own rescale (pydicom decodes them a frame at a
time where it can, GDCM otherwise: :func:`_read_frames`).

What is refused, each with its own :class:`~renalseg.errors.DicomError` subclass and
a message that names the folder and says what to do: no DICOM images
(:class:`NoDicomError`), an unreadable file (:class:`CorruptDicomError`), several
series and none chosen or an unknown one (:class:`~renalseg.errors.SeriesSelectionError`),
not CT (:class:`NotCTError`), one 2D slice (:class:`SingleSliceError`), and slice
geometry that does not make one regular 3D grid (:class:`SliceGeometryError`:
:class:`DuplicateSliceError`, :class:`MissingSliceError`,
:class:`NonUniformSpacingError`, :class:`GantryTiltError`).

Series with an EMPTY SeriesInstanceUID (anonymised exports, like the real test
fixture) are grouped by frame of reference, series number, description and image
size instead, and are shown and selected as ``"(empty)"``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from renalseg.errors import DicomError, SeriesSelectionError, UsageError, suggest
from renalseg.study import Study, safe_study_id

__all__ = [
    "EMPTY_UID",
    "SeriesInfo",
    "list_series",
    "read_dicom_study",
    "dicom_series_slices",
    "holds_no_ct_volume",
    "is_dicom_file",
    "NoDicomError",
    "CorruptDicomError",
    "NotCTError",
    "SingleSliceError",
    "SliceGeometryError",
    "DuplicateSliceError",
    "MissingSliceError",
    "NonUniformSpacingError",
    "GantryTiltError",
]

logger = logging.getLogger(__name__)

#: how a series with an empty SeriesInstanceUID is shown and selected
EMPTY_UID = "(empty)"

#: file name suffixes taken as DICOM even without the 128-byte preamble + "DICM"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

#: two slices closer than this along the normal are at the same position (mm)
_DUPLICATE_TOL_MM = 0.01

_FIX_EXPORT = "export the series again from the PACS/scanner"


# -- errors ----------------------------------------------------------------------------
class NoDicomError(DicomError):
    """The folder holds no DICOM image files."""


class CorruptDicomError(DicomError):
    """A DICOM file whose header or pixel data cannot be read."""


class NotCTError(DicomError):
    """The series is not CT (Modality MR, SEG, PT, ...)."""


class SingleSliceError(DicomError):
    """The series is one 2D slice, not a 3D volume."""


class SliceGeometryError(DicomError):
    """The slices do not form one regular 3D grid (base class of the cases below)."""


class DuplicateSliceError(SliceGeometryError):
    """Two or more slices at the same position along the slice normal."""


class MissingSliceError(SliceGeometryError):
    """A gap between neighbouring slices larger than 1.5 × the median spacing."""


class NonUniformSpacingError(SliceGeometryError):
    """Slice spacing that varies along the series."""


class GantryTiltError(SliceGeometryError):
    """Slices stepping at an angle to their normal (gantry tilt): a sheared grid."""


# -- headers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Slice:
    """What the checks need from one file's header."""

    path: Path
    uid: str
    modality: str
    description: str
    series_number: int | None
    instance_number: int | None
    frame_of_reference: str
    rows: int | None
    columns: int | None
    frames: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    bits_stored: int | None
    signed: bool
    smallest: float | None
    largest: float | None
    gantry_tilt_deg: float
    encapsulated: bool
    extra: dict = field(default_factory=dict)
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"
    bits_allocated: int | None = None
    high_bit: int | None = None
    #: (value length, byte offset of the value) of Pixel Data; None when absent
    pixel_data: tuple[int, int] | None = None
    file_bytes: int = 0
    #: 1-based frame number in a multi-frame object; 0 for a single-frame file
    frame: int = 0
    #: a multi-frame object's frames, before :func:`_frames_of` makes each a slice
    frame_facts: tuple["_Frame", ...] = ()
    #: what tells apart volumes sharing one series (AcquisitionNumber and
    #: TemporalPositionIdentifier; a frame's TemporalPositionIndex and StackID)
    acquisition: tuple = ()

    @property
    def name(self) -> str:
        """How messages name this slice: the file, and the frame of a multi-frame object."""
        return f"{self.path.name} frame {self.frame}" if self.frame else self.path.name


@dataclass(frozen=True)
class _Frame:
    """One frame's geometry and rescale from a multi-frame object's functional groups."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    acquisition: tuple = ()


def is_dicom_file(path: Path) -> bool:
    """Whether a file looks like DICOM: the ``DICM`` marker at byte 128, or a DICOM suffix.

    Cheap (reads 132 bytes); used for discovery. ``DICOMDIR`` index files and hidden
    files are not counted.

    Example:
        >>> is_dicom_file(Path("no/such/DICOMDIR"))
        False
    """
    path = Path(path)
    if path.name.upper() == "DICOMDIR" or path.name.startswith("."):
        return False
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return path.is_file()
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _number(value: object, default: float | None = None) -> float | None:
    if value is None or value == "":
        return default
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _strict_number(value: object, default: float, name: str, path: Path) -> float:
    """A number that must parse when present: a damaged rescale would change every HU."""
    number = _number(value, None)
    if number is None and value not in (None, ""):
        raise CorruptDicomError(f"{path}: {name} {value!r} is not a number: the header is damaged. Remove the "
                                f"file or {_FIX_EXPORT}.")
    return default if number is None else number


def _numbers(value: object, count: int) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        values = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def _text(value: object) -> str:
    """A header value as text; multi-valued elements joined with a backslash, as stored."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _first_present(*values: object) -> object:
    """The first value that is neither missing nor empty (a number 0 counts as present)."""
    return next((v for v in values if v is not None and v != ""), None)


def _group_value(groups: Sequence[pydicom.Dataset | None], sequence: str, keyword: str) -> object:
    """``keyword`` in the first item of ``sequence`` of the first functional group holding it."""
    for group in groups:
        items = group.get(sequence) if group is not None else None
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _functional_groups(ds: pydicom.Dataset) -> tuple[pydicom.Dataset | None, list]:
    """(the shared functional group, the per-frame ones) of a multi-frame object."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    return (shared[0] if shared else None), list(ds.get("PerFrameFunctionalGroupsSequence") or [])


def _header_value(ds: pydicom.Dataset, keyword: str) -> object:
    """A top-level attribute, or where a multi-frame object keeps it: in any sequence of its
    shared functional group, then of its first frame's (e.g. SliceThickness in the Pixel
    Measures, ConvolutionKernel in the CT Reconstruction sequence)."""
    value = ds.get(keyword)
    if value not in (None, "") or "NumberOfFrames" not in ds:
        return value
    shared, per_frame = _functional_groups(ds)
    for group in (shared, per_frame[0] if per_frame else None):
        for element in group or ():
            if element.VR == "SQ" and element.value and keyword in element.value[0]:
                return element.value[0].get(keyword)
    return None


def _frame_facts(ds: pydicom.Dataset, path: Path) -> tuple[_Frame, ...]:
    """Each frame's position, orientation, spacing and rescale from the functional groups
    (per-frame first, then shared, then the top level); ``()`` when the object has no
    per-frame groups, one for each frame, so its frames cannot be placed."""
    shared, per_frame = _functional_groups(ds)
    if len(per_frame) != int(_number(ds.get("NumberOfFrames"), 1) or 1):
        return ()
    facts = []
    for group in per_frame:
        groups = (group, shared)
        facts.append(_Frame(
            position=_numbers(_group_value(groups, "PlanePositionSequence", "ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_numbers(_first_present(
                _group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
                ds.get("ImageOrientationPatient")), 6),
            pixel_spacing=_numbers(_first_present(_group_value(groups, "PixelMeasuresSequence", "PixelSpacing"),
                                                  ds.get("PixelSpacing")), 2),  # type: ignore[arg-type]
            slope=_strict_number(_first_present(_group_value(groups, "PixelValueTransformationSequence",
                                                             "RescaleSlope"), ds.get("RescaleSlope")),
                                 1.0, "RescaleSlope", path),
            intercept=_strict_number(_first_present(_group_value(groups, "PixelValueTransformationSequence",
                                                                 "RescaleIntercept"), ds.get("RescaleIntercept")),
                                     0.0, "RescaleIntercept", path),
            acquisition=tuple(_text(_group_value(groups, "FrameContentSequence", keyword))
                              for keyword in ("TemporalPositionIndex", "StackID")),
        ))
    return tuple(facts)


def _frames_of(header: _Slice) -> list[_Slice]:
    """A multi-frame object as one slice per frame (each with its own geometry and rescale)."""
    if not header.frame_facts:
        return [header]
    return [dataclasses.replace(header, frame=k, position=f.position, orientation=f.orientation,
                                pixel_spacing=f.pixel_spacing, slope=f.slope, intercept=f.intercept,
                                acquisition=f.acquisition, frame_facts=())
            for k, f in enumerate(header.frame_facts, start=1)]


def _read_header(path: Path) -> _Slice | None:
    """The header facts of one file; ``None`` for a file that is not DICOM at all.

    Raises:
        CorruptDicomError: the file claims to be DICOM but cannot be parsed.
    """
    if path.name.upper() == "DICOMDIR" or path.name.startswith("."):
        return None
    try:
        with warnings.catch_warnings():  # a cut file warns, and is refused below with its name
            warnings.simplefilter("ignore")
            # large values deferred: the Pixel Data's length and offset are known unread
            ds = pydicom.dcmread(path, defer_size=1024)
            cut_in_pixels = len(ds) == 0  # pydicom drops everything when compressed pixel data are cut
            if cut_in_pixels:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as err:
        if path.suffix.lower() in _DICOM_SUFFIXES:
            raise CorruptDicomError(
                f"{path}: named like a DICOM file but is not one ({err}). Remove it from the "
                f"folder or {_FIX_EXPORT}."
            ) from err
        return None
    except OSError as err:
        raise DicomError(
            f"{path}: cannot be opened ({err.strerror or err}). Check the file's permissions."
        ) from err
    except Exception as err:  # pydicom raises many types on damaged files
        raise CorruptDicomError(
            f"{path}: DICOM header cannot be read ({type(err).__name__}: {err}). The file is "
            f"damaged or truncated: remove it or {_FIX_EXPORT}."
        ) from err
    if "Modality" not in ds and "SOPClassUID" not in ds:
        # pydicom parses garbage after a valid preamble without complaint
        raise CorruptDicomError(
            f"{path}: starts like a DICOM file but holds no DICOM header (no Modality, no SOP "
            f"Class UID): the file is damaged. Remove it or {_FIX_EXPORT}."
        )
    try:
        rows = ds.get("Rows")
        frames = int(_number(ds.get("NumberOfFrames"), 1) or 1)
        position = _numbers(ds.get("ImagePositionPatient"), 3)
        orientation = _numbers(ds.get("ImageOrientationPatient"), 6)
        spacing = _numbers(ds.get("PixelSpacing"), 2)
        return _Slice(
            path=path,
            uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
            modality=str(ds.get("Modality", "") or "").strip().upper(),
            description=str(ds.get("SeriesDescription", "") or "").strip(),
            series_number=int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
            instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
            frame_of_reference=str(ds.get("FrameOfReferenceUID", "") or "").strip(),
            rows=int(rows) if rows is not None else None,
            columns=int(ds.Columns) if ds.get("Columns") is not None else None,
            frames=frames,
            position=position,  # type: ignore[arg-type]
            orientation=orientation,
            pixel_spacing=spacing,  # type: ignore[arg-type]
            slope=_strict_number(ds.get("RescaleSlope"), 1.0, "RescaleSlope", path),
            intercept=_strict_number(ds.get("RescaleIntercept"), 0.0, "RescaleIntercept", path),
            bits_stored=int(ds.BitsStored) if ds.get("BitsStored") is not None else None,
            signed=bool(ds.get("PixelRepresentation", 0)),
            smallest=_number(ds.get("SmallestImagePixelValue")),
            largest=_number(ds.get("LargestImagePixelValue")),
            gantry_tilt_deg=float(_number(ds.get("GantryDetectorTilt"), 0.0)),  # type: ignore[arg-type]
            encapsulated=bool(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
                              and ds.file_meta.TransferSyntaxUID.is_encapsulated),
            extra={
                "patient_position": str(ds.get("PatientPosition", "") or ""),
                "sop_class": str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None),
                                                                       "MediaStorageSOPClassUID", "") or ""),
                "manufacturer": str(ds.get("Manufacturer", "") or ""),
                "convolution_kernel": _text(_header_value(ds, "ConvolutionKernel")),
                "slice_thickness_mm": _number(_header_value(ds, "SliceThickness")),
                "transfer_syntax": str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
                if hasattr(ds, "file_meta") else "",
                "image_type": _text(ds.get("ImageType")).upper(),
                # present but empty: the CT Image module requires a value (checked on the series read)
                "rescale_empty": any(k in ds and ds.get(k) in ("", None) for k in ("RescaleSlope", "RescaleIntercept")),
            },
            samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
            photometric=str(ds.get("PhotometricInterpretation", "") or "").strip().upper(),
            bits_allocated=int(ds.BitsAllocated) if ds.get("BitsAllocated") not in (None, "") else None,
            high_bit=int(ds.HighBit) if ds.get("HighBit") not in (None, "") else None,
            pixel_data=(0xFFFFFFFF, -1) if cut_in_pixels else _pixel_data_place(ds),
            file_bytes=path.stat().st_size,
            frame_facts=_frame_facts(ds, path) if frames > 1 else (),
            acquisition=(_text(ds.get("AcquisitionNumber")), _text(ds.get("TemporalPositionIdentifier"))),
        )
    except CorruptDicomError:
        raise
    except Exception as err:  # values are parsed on access: pydicom raises many types on damaged ones
        raise CorruptDicomError(
            f"{path}: DICOM header has invalid values ({type(err).__name__}: {str(err)[:200]}). Remove the "
            f"file or {_FIX_EXPORT}."
        ) from err


def _pixel_data_place(ds: pydicom.Dataset) -> tuple[int, int] | None:
    """(declared length, file offset) of the Pixel Data value, read without loading it."""
    element = ds.get_item(0x7FE00010, keep_deferred=True)
    if element is None:
        return None
    length = getattr(element, "length", None)
    offset = getattr(element, "value_tell", None)
    if length is None or offset is None:  # a value small enough to be read already
        value = ds.get_item(0x7FE00010).value
        return (len(value) if value is not None else 0), -1
    return int(length), int(offset)


def _colour(header: _Slice) -> bool:
    """More than one sample a pixel, or not MONOCHROME: a picture, not a CT in HU."""
    return header.samples_per_pixel != 1 or header.photometric not in ("MONOCHROME1", "MONOCHROME2", "")


def _once_per_file(slices: Sequence[_Slice]) -> list[_Slice]:
    """The first slice of each file (a multi-frame object's frames share one)."""
    return list({s.path: s for s in reversed(slices)}.values())[::-1]


#: an SOP Class whose name says it holds an image (a file of it without pixels is damaged)
_IMAGE_SOP = "Image Storage"
#: a well-formed UID: numeric components joined by dots, at most 64 characters
_UID = re.compile(r"(?=.{1,64}$)(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _check_encoding(folder: Path, key: str, slices: list[_Slice]) -> None:
    """How a series' pixels are stored must be whole and consistent, or they would decode
    to other values: one encoding for all slices (bits allocated, stored, high bit,
    signedness, photometric: one reconstruction stores all its slices alike), High Bit at
    Bits Stored − 1 (the CT Image module), and a rescale that is present holding a value."""
    encodings = {(s.bits_allocated, s.bits_stored, s.high_bit, s.signed, s.photometric): s for s in slices}
    if len(encodings) > 1:
        (one, a), (other, b) = list(encodings.items())[:2]
        raise CorruptDicomError(
            f"{folder}: series {key}: {a.name} and {b.name} store their pixels differently (bits allocated, "
            f"stored, high bit, signed, photometric: {one} and {other}); one reconstruction stores all its "
            f"slices alike, so a header is damaged. Remove the file or {_FIX_EXPORT}."
        )
    for s in _once_per_file(slices):
        name = s.path.name
        if s.extra.get("rescale_empty"):
            raise CorruptDicomError(
                f"{folder}: {name}: Rescale Slope or Rescale Intercept is present but empty, so its HU are unknown: "
                f"the header is damaged. Remove the file or {_FIX_EXPORT}.")
        if s.bits_stored is not None and ((s.high_bit is not None and s.high_bit != s.bits_stored - 1)
                                          or (s.bits_allocated is not None and s.bits_stored > s.bits_allocated)):
            raise CorruptDicomError(
                f"{folder}: {name}: Bits Stored {s.bits_stored}, High Bit {s.high_bit}, Bits Allocated "
                f"{s.bits_allocated} do not fit together (High Bit must be Bits Stored − 1): the header is "
                f"damaged. Remove the file or {_FIX_EXPORT}.")


def _check_slices_whole(folder: Path, slices: list[_Slice]) -> None:
    """Each slice's Pixel Data must be present, whole, and as long as its header says.

    Rows × Columns × frames × samples × BitsAllocated / 8 bytes (uncompressed
    transfer syntaxes; an odd length is padded by one byte). This runs before any
    pixel is decoded, so a header declaring 20000 × 20000 over a 47 KB file is
    refused instead of allocated.
    """
    for s in _once_per_file(slices):
        name = s.path.name
        if s.pixel_data is None:
            raise CorruptDicomError(
                f"{folder}: {name} has no pixel data (the file is truncated after its header, {s.file_bytes:,} "
                f"bytes). Copy it again or {_FIX_EXPORT}.")
        length, offset = s.pixel_data
        if s.encapsulated or length == 0xFFFFFFFF:
            continue
        if offset >= 0 and offset + length > s.file_bytes:
            raise CorruptDicomError(
                f"{folder}: {name} is truncated: its pixel data should hold {length:,} bytes but the file ends "
                f"after {max(0, s.file_bytes - offset):,}. Copy it again or {_FIX_EXPORT}.")
        bits = s.bits_allocated or 16
        expected = (s.rows or 0) * (s.columns or 0) * s.frames * s.samples_per_pixel * bits // 8
        if length not in (expected, expected + 1):
            raise CorruptDicomError(
                f"{folder}: {name}: its pixel data hold {length:,} bytes but its header declares {s.rows} rows × "
                f"{s.columns} columns × {s.frames} frame(s) × {s.samples_per_pixel} sample(s) × {bits} bits = "
                f"{expected:,} bytes: the header is damaged. Remove the file or {_FIX_EXPORT}.")


#: (FFFE,E0DD) little endian: ends every encapsulated (compressed) pixel data element
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"


def _check_not_truncated(folder: Path, slices: list[_Slice]) -> None:
    """Compressed pixel data must end with its delimiter.

    Cheap (the last 64 KiB of each file), and it saves GDCM/OpenJPEG from spending
    many seconds on a codestream that was cut in the middle before failing.
    """
    for s in _once_per_file(slices):
        if not s.encapsulated:
            continue
        with s.path.open("rb") as handle:
            handle.seek(max(0, s.path.stat().st_size - 65536))
            tail = handle.read()
        if _SEQUENCE_DELIMITER not in tail:
            raise CorruptDicomError(
                f"{folder}: {s.path.name} is truncated: its compressed pixel data has no end "
                f"(sequence delimiter missing). The copy is incomplete: copy it again or {_FIX_EXPORT}."
            )


def _sop_name(header: _Slice) -> str:
    uid = header.extra.get("sop_class", "")
    try:
        return pydicom.uid.UID(uid).name if uid else ""
    except (ValueError, TypeError):
        return ""


def _no_image_by_design(header: _Slice) -> bool:
    """A DICOM file without an image that is meant to have none: a well-formed SOP Class
    UID naming no image storage (a structured report, a presentation state, a vendor's
    private object). A CT file, an image SOP Class, or a SOP Class UID that is no UID at
    all (a damaged length swallowed the elements after it, Rows and Modality among them)
    is a damaged image, and is not left out silently."""
    uid = header.extra.get("sop_class", "")
    return (bool(_UID.fullmatch(uid)) and _IMAGE_SOP not in _sop_name(header) and header.modality != "CT")


def _scan(folder: Path) -> list[_Slice]:
    """Headers of the DICOM *image* files directly in ``folder`` (sorted by name)."""
    if not folder.exists():
        raise UsageError(f"{folder}: no such folder. Check the path.")
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder. Pass the folder that holds the DICOM series.")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    headers = [h for h in (_read_header(p) for p in files) if h is not None]
    images = [h for h in headers if h.rows is not None and h.columns is not None]
    cut = [h for h in headers if (h.rows is None or h.columns is None) and not _no_image_by_design(h)]
    if cut:
        names = ", ".join(h.path.name for h in cut[:3]) + (" ..." if len(cut) > 3 else "")
        raise CorruptDicomError(
            f"{folder}: {len(cut)} file(s) hold a DICOM header without the image it should describe ({names}; "
            f"{cut[0].file_bytes:,} bytes): truncated or damaged copies. No slice is left out silently: copy the series "
            f"again or {_FIX_EXPORT}.")
    if not images:
        what = (f"{len(headers)} DICOM file(s) without image data" if headers
                else f"{len(files)} file(s), none of them DICOM")
        raise NoDicomError(
            f"{folder}: no DICOM images found ({what}; sub-folders are not searched). Pass the "
            "folder that directly holds the series' .dcm files, or an image file (NIfTI, NRRD, MHA)."
        )
    if len(images) < len(headers):
        logger.info("%s: ignored %d DICOM file(s) without image data", folder, len(headers) - len(images))
    return [frame for image in images for frame in _frames_of(image)]


# -- series ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder.

    Attributes:
        key: what to pass as ``series_uid`` / ``--series``: the SeriesInstanceUID, or
            ``"(empty)"`` (``"(empty)#2"``, ... when several series lack a UID); with
            ``#acq1``, ``#acq2``, ... when one series holds several volumes at the same
            positions that its AcquisitionNumber or TemporalPositionIdentifier (a
            frame's TemporalPositionIndex or StackID) tell apart: two contrast phases
            or a dynamic scan (:func:`_by_acquisition`).
        uid: the SeriesInstanceUID, ``None`` when the header's is empty.
        description: SeriesDescription (may be ``""``).
        modality: Modality (``"CT"``, ``"MR"``, ...; ``""`` when missing).
        slice_count: number of slices in the series (a multi-frame object's frames each count).
        series_number: SeriesNumber when present.
        files: the series' files, sorted by name (not yet by position), each once.
    """

    key: str
    uid: str | None
    description: str
    modality: str
    slice_count: int
    series_number: int | None
    files: tuple[Path, ...]

    def describe(self) -> str:
        """One line: ``key  'description'  N slices  modality``."""
        description = self.description or "no description"
        return (f"{self.key}  '{description}'  {self.slice_count} "
                f"slice{'s' if self.slice_count != 1 else ''}  {self.modality or 'no modality'}")


def _by_acquisition(members: list[_Slice]) -> list[list[_Slice]]:
    """One series' slices as the volumes it holds: split by acquisition (time point, stack)
    only where slices share positions and each acquisition alone has none twice (two
    contrast phases or a dynamic scan in one series); otherwise the series as it is."""
    normal = _normal(members[0])
    if normal is None or any(m.position is None for m in members):
        return [members]

    def repeats(group: list[_Slice]) -> bool:
        along = np.sort(np.asarray([m.position for m in group], float) @ normal)
        return bool((np.diff(along) < _DUPLICATE_TOL_MM).any())

    parts: dict[tuple, list[_Slice]] = defaultdict(list)
    for m in members:
        parts[m.acquisition].append(m)
    if len(parts) < 2 or not repeats(members) or any(len(p) < 2 or repeats(p) for p in parts.values()):
        return [members]
    return [parts[k] for k in sorted(parts, key=lambda k: tuple((len(v), v) for v in k))]


def _group(slices: Sequence[_Slice]) -> list[tuple[SeriesInfo, list[_Slice]]]:
    groups: dict[tuple, list[_Slice]] = defaultdict(list)
    for s in slices:
        if s.uid:
            key: tuple = ("uid", s.uid)
        else:  # no UID: keep apart what cannot be one series
            key = ("empty", s.frame_of_reference, s.series_number or -1, s.description,
                   s.rows, s.columns)
        groups[key].append(s)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0] == "empty", repr(kv[0][1:])))
    result = []
    empty_count = sum(1 for k in groups if k[0] == "empty")
    empty_seen = 0
    for key, members in ordered:
        if key[0] == "uid":
            name, uid = key[1], key[1]
        else:
            empty_seen += 1
            name, uid = (EMPTY_UID if empty_count == 1 or empty_seen == 1 else f"{EMPTY_UID}#{empty_seen}"), None
        volumes = _by_acquisition(members)
        for number, volume in enumerate(volumes, start=1):
            first = volume[0]
            info = SeriesInfo(
                key=name if len(volumes) == 1 else f"{name}#acq{number}", uid=uid, description=first.description,
                modality=first.modality, slice_count=len(volume), series_number=first.series_number,
                files=tuple(dict.fromkeys(m.path for m in volume)),
            )
            result.append((info, volume))
    return result


def list_series(folder: Path | str) -> list[SeriesInfo]:
    """The series in a DICOM folder (files directly inside it), grouped by SeriesInstanceUID.

    Args:
        folder: a folder of DICOM files (names and order do not matter).

    Returns:
        One :class:`SeriesInfo` per series, those with a UID first, sorted by UID.

    Raises:
        UsageError: the folder does not exist.
        NoDicomError: no DICOM image files in it.
        CorruptDicomError: a file that claims to be DICOM cannot be parsed.
    """
    return [info for info, _ in _group(_scan(Path(folder)))]


#: DICOM's defined terms for Modality, CT aside: a series with one of these is another
#: kind of study. A Modality outside the list (a damaged header, say) is no reason to pass
#: a series over: it stays a choice, and the choice is the user's.
_OTHER_MODALITIES = frozenset({
    "MR", "PT", "NM", "US", "XA", "RF", "DX", "CR", "MG", "IO", "PX", "OT", "SC", "XC", "ES", "OP", "SM", "GM",
    "SEG", "SR", "PR", "KO", "REG", "DOC", "RWV", "PLAN", "RTSTRUCT", "RTDOSE", "RTPLAN", "RTIMAGE", "RTRECORD",
    "FID", "HC", "IVOCT", "IVUS", "OCT", "OPM", "OPT", "OPV", "OSS", "BDUS", "BMD", "DG", "LS", "TG", "ECG",
    "EPS", "HD", "RESP", "AU", "M3D", "OAM", "SMR", "STAIN", "TEXTUREMAP", "XAPROTOCOL", "CTPROTOCOL",
})


def _not_a_volume(info: SeriesInfo, members: Sequence[_Slice]) -> str | None:
    """Why a series cannot be the CT volume to segment, or ``None`` when it can be (or
    when nothing says so for sure: a lone CT slice may be one of the volume's, its
    series UID damaged, so it stays a choice rather than be passed over)."""
    if info.modality in _OTHER_MODALITIES:
        return f"Modality {info.modality}, not CT"
    kind = next((k for k in map(_not_a_volume_kind, members) if k), None)
    if kind:
        return kind
    if len(members) == 1:
        return None
    normal = _normal(members[0])
    if normal is not None and all(m.position is not None for m in members):
        along = np.asarray([m.position for m in members], float) @ normal
        if float(along.max() - along.min()) < 1.0:
            return f"{len(members)} slices at one table position (bolus tracking or a dynamic series)"
    return None


def _normal(header: _Slice) -> np.ndarray | None:
    """The slice normal from a header's orientation (``None`` when it has none)."""
    if header.orientation is None:
        return None
    orientation = np.asarray(header.orientation, float)
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0.5 else None


def _on_the_grid_of(volume: Sequence[_Slice], others: Sequence[_Slice]) -> _Slice | None:
    """A slice of ``others`` whose position would extend or complete ``volume``'s grid: in
    line with its slices, one step beyond an end or in a gap (whatever else its header
    says: that may be what is damaged). A series that cannot be the CT volume (a
    localizer, a dose report, bolus tracking) does not lie there unless it is a slice of
    the volume whose header is damaged (a flipped byte in its series UID or Modality), so
    one that does is not passed over silently."""
    first = volume[0]
    normal = _normal(first)
    if normal is None or first.pixel_spacing is None or any(s.position is None for s in volume):
        return None
    origin = np.asarray(first.position, float)
    along = np.sort(np.asarray([s.position for s in volume], float) @ normal)
    step = float(np.median(np.diff(along))) if len(along) > 1 else 0.0
    if step <= 0:
        return None
    occupied = set(np.rint((along - along[0]) / step).astype(int).tolist())
    for other in others:
        if other.position is None:
            continue
        offset = np.asarray(other.position, float) - origin
        slot = (float(np.asarray(other.position, float) @ normal) - along[0]) / step
        in_line = np.linalg.norm(offset - float(offset @ normal) * normal) <= 0.1 * min(first.pixel_spacing)
        if (in_line and abs(slot - round(slot)) < 0.05 and -1 <= round(slot) <= max(occupied) + 1
                and round(slot) not in occupied):
            return other
    return None


def holds_no_ct_volume(folder: Path | str) -> str | None:
    """Why a DICOM folder holds no CT volume to segment (only localizers, secondary
    captures such as dose reports, single slices or other modalities), or ``None``.

    For a batch search, which passes such folders over: the first file's header alone
    settles a folder whose first file could belong to a CT volume; the others are read
    only when it could not. A folder that cannot be read says nothing here (``None``):
    reading it as a study names what is wrong.
    """
    folder = Path(folder)
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))
        first = next((h for h in map(_read_header, files[:1]) if h is not None), None)
        if first is None or (first.modality == "CT" and not _not_a_volume_kind(first)):
            return None
        groups = _group(_scan(folder))
    except (DicomError, UsageError, OSError):
        return None
    # a lone CT slice in a folder of its own is no slice of a volume beside it: passed over too
    reasons = [_not_a_volume(info, members) or ("a single slice" if len(members) == 1 else None)
               for info, members in groups]
    if any(reason is None for reason in reasons):
        return None
    return "; ".join(f"{info.key} '{info.description or 'no description'}': {reason}"
                     for (info, _), reason in zip(groups, reasons))


def _not_a_volume_kind(header: _Slice) -> str | None:
    """What a single file's header alone says it is, when that is no CT volume's slice."""
    if "LOCALIZER" in header.extra.get("image_type", "").split("\\"):
        return "a localizer (scout)"
    if "Secondary Capture" in _sop_name(header):
        return "a secondary capture (a screenshot or dose report)"
    if _colour(header):
        return "a colour image"
    return None


#: ImageType values (after DERIVED) of a series computed from another one's volume
_REFORMAT_TYPES = frozenset({"MPR", "MIP", "MINIP", "REFORMATTED", "PROJECTION IMAGE", "CURVED", "CPR", "VRT",
                             "VOLUME RENDERING", "3D"})


def _reformat(members: Sequence[_Slice]) -> bool:
    """A derived series that is a reformat of another volume: ImageType DERIVED with a
    reformat value (MPR, MIP, ...), or DERIVED and not axial (a coronal or sagittal
    reformat). A DERIVED axial reconstruction (some scanners mark thin iterative ones so)
    is not: it may be the volume to segment."""
    image_type = members[0].extra.get("image_type", "").split("\\")
    if image_type[0] != "DERIVED":
        return False
    normal = _normal(members[0])
    return bool(_REFORMAT_TYPES.intersection(image_type)) or (normal is not None and abs(float(normal[2])) < 0.866)


def _select(folder: Path, groups: list[tuple[SeriesInfo, list[_Slice]]],
            series_uid: str | None) -> tuple[SeriesInfo, list[_Slice], list[str]]:
    """The series to read, its slices, and the series passed over when none was named.

    With no ``series_uid`` the series that cannot be the CT volume (a localizer, a
    secondary capture such as a dose report, bolus tracking, another modality) are
    passed over, and so are reformats (MPR, MIP, coronal or sagittal views) when another
    volume is left; when one series is left it is read, and the others are named with
    why (``Study.extra``'s ``series_skipped``). Several left: the choice is the user's
    (an axial series marked DERIVED stays a choice: some scanners mark thin
    reconstructions so).

    A ``series_uid`` with ``*`` or ``?`` is a pattern for the SeriesDescription
    (case-insensitive, as :mod:`fnmatch`): the same choice among the CT volumes whose
    description it matches, so one pattern picks the arterial phase in every folder of a
    batch (``"*arter*"``)."""
    pattern = series_uid.strip().lower() if series_uid is not None and any(c in series_uid for c in "*?") else None
    if series_uid is None or pattern is not None:
        if len(groups) == 1 and pattern is None:
            return groups[0][0], groups[0][1], []
        why = {info.key: _not_a_volume(info, members) for info, members in groups}
        # where a slice of the volume with a damaged header would land (not a reformat, not another phase)
        not_volumes = [m for info, members in groups if why[info.key] is not None for m in members]
        if pattern is not None:
            for info, _ in groups:
                if why[info.key] is None and not fnmatch.fnmatchcase(info.description.lower(), pattern):
                    why[info.key] = f"its description does not match {series_uid.strip()!r}"  # type: ignore[union-attr]
        volumes = [(info, members) for info, members in groups if why[info.key] is None]
        if any(not _reformat(members) for _, members in volumes):
            for info, members in volumes:
                if _reformat(members):
                    why[info.key] = "a reformat (MPR, MIP or another view) beside an axial volume"
            volumes = [(info, members) for info, members in volumes if why[info.key] is None]
        listing = "\n".join(f"  {info.describe()}" + (f"  (passed over: {why[info.key]})"
                                                       if why[info.key] else "") for info, _ in groups)
        if len(volumes) == 1:
            chosen, members = volumes[0]
            stray = _on_the_grid_of(members, not_volumes)
            if stray is not None:
                raise SeriesSelectionError(
                    f"{folder}: {stray.name} (Modality {stray.modality or '(missing)'}, series "
                    f"{stray.uid or EMPTY_UID}) lies on the grid of series {chosen.key}, where one of its slices would "
                    "be, but belongs to another series: a slice whose header is damaged? Nothing is read: remove "
                    f"the file, {_FIX_EXPORT}, or choose a series with --series UID:\n{listing}"
                )
            skipped = [f"{info.key} '{info.description or 'no description'}': {why[info.key]}"
                       for info, _ in groups if info is not chosen]
            logger.info("%s: read series %s, the only CT volume among %d series; passed over: %s", folder,
                        chosen.key, len(groups), "; ".join(skipped))
            return chosen, members, skipped
        described = f" described as {series_uid.strip()!r}" if pattern else ""  # type: ignore[union-attr]
        raise SeriesSelectionError(
            f"{folder}: {len(groups)} series in one folder, "
            + (f"{len(volumes)} of them CT volumes{described}; choose one" if volumes
               else f"none of them a CT volume{described}; if one is, choose it")
            + f" with --series UID (Python: series_uid=...):\n{listing}"
        )
    listing = "\n".join(f"  {info.describe()}" for info, _ in groups)
    wanted = series_uid.strip()
    for info, members in groups:
        if wanted == info.key:
            return info, members, []
    by_uid = [(info, members) for info, members in groups if info.uid is not None and wanted == info.uid]
    if len(by_uid) == 1:
        return by_uid[0][0], by_uid[0][1], []
    if by_uid:
        raise SeriesSelectionError(
            f"{folder}: series {wanted} holds {len(by_uid)} volumes (contrast phases or time points at the same "
            f"positions); choose one with --series KEY:\n{listing}"
        )
    keys = [info.key for info, _ in groups]
    raise SeriesSelectionError(
        f"{folder}: no series with UID '{series_uid}'.{suggest(series_uid, keys)} "
        f"The folder holds {len(groups)} series:\n{listing}"
    )


# -- geometry checks -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    files: list[Path]
    #: each slice's frame number in its multi-frame file (0: a single-frame file)
    frames: list[int]
    spacing_xyz_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction: tuple[float, ...]


def _same(values: list, name: str, folder: Path, key: str, atol: float = 1e-4) -> None:
    first = values[0]
    for v in values[1:]:
        if (first is None) != (v is None) or (
            first is not None and not np.allclose(np.asarray(first, float), np.asarray(v, float), atol=atol)
        ):
            raise SliceGeometryError(
                f"{folder}: series {key} mixes slices with different {name} ({first} and {v}): "
                "several acquisitions or reconstructions share one series. Separate them into "
                f"folders or {_FIX_EXPORT}."
            )


def _check_grid(folder: Path, info: SeriesInfo, slices: list[_Slice]) -> _Grid:
    """Sort the slices along their normal and check they form one regular grid."""
    key = info.key
    colour = [s for s in slices if _colour(s)]
    if colour:
        raise DicomError(
            f"{folder}: {colour[0].path.name} (series {key}, Modality {colour[0].modality or '(missing)'}) is a "
            f"colour image ({colour[0].photometric or 'no PhotometricInterpretation'}, "
            f"{colour[0].samples_per_pixel} samples per pixel), not a CT in Hounsfield units (one grey value per "
            "pixel): a screenshot, rendering or secondary capture. Pass the original CT series."
        )
    unplaced = [s for s in slices if s.frames > 1 and not s.frame]
    if unplaced:
        raise DicomError(
            f"{folder}: {unplaced[0].path.name} is a multi-frame DICOM object with {unplaced[0].frames} frames "
            "but no per-frame functional groups (one Plane Position a frame), so where each frame lies is "
            "unknown. Convert the series to NIfTI (e.g. dcm2niix) or export it as Enhanced CT or classic "
            "single-frame CT images."
        )
    if len(slices) == 1:
        raise SingleSliceError(
            f"{folder}: series {key} is a single 2D slice ({slices[0].name}); renalseg needs "
            "the whole 3D CT volume (all slices of the series in one folder)."
        )
    lacking = [s for s in slices if s.position is None or s.orientation is None or s.pixel_spacing is None]
    if lacking:
        raise DicomError(
            f"{folder}: {lacking[0].name} (series {key}) has no ImagePositionPatient, "
            "ImageOrientationPatient or PixelSpacing, so its place in the patient is unknown "
            "(a scout or secondary capture?). Pass a cross-sectional CT series."
        )
    _same([(s.rows, s.columns) for s in slices], "image sizes (rows, columns)", folder, key)
    _same([s.pixel_spacing for s in slices], "pixel spacings", folder, key, atol=1e-5)
    _same([s.orientation for s in slices], "orientations", folder, key)

    orientation = np.asarray(slices[0].orientation, float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3
            or abs(float(row_dir @ col_dir)) > 1e-3):
        raise SliceGeometryError(
            f"{folder}: ImageOrientationPatient {tuple(orientation)} is not two orthogonal unit "
            f"vectors; the headers are damaged: {_FIX_EXPORT}."
        )
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    # sort along the normal (ties by instance number, then name: deterministic)
    positions = np.asarray([s.position for s in slices], float)
    along = positions @ normal
    order = sorted(range(len(slices)), key=lambda i: (along[i], slices[i].instance_number or 0,
                                                       slices[i].path.name, slices[i].frame))
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    gaps = np.diff(along)

    duplicates = np.flatnonzero(gaps < _DUPLICATE_TOL_MM)
    if duplicates.size:
        i = int(duplicates[0])
        volumes = (" (a multi-frame object holding several volumes: time points, stacks or "
                   "reconstructions; export the one to segment)" if slices[i].frame else "")
        raise DuplicateSliceError(
            f"{folder}: series {key} has {duplicates.size} duplicated slice position(s), e.g. {slices[i].name} and "
            f"{slices[i + 1].name} both at {along[i]:.3f} mm along the slice normal (duplicate files, or two "
            f"reconstructions in one series){volumes}. Remove the duplicates or {_FIX_EXPORT}."
        )
    median = float(np.median(gaps))
    big = np.flatnonzero(gaps > 1.5 * median)
    if big.size:
        i = int(big[0])
        missing = max(1, round(gaps[i] / median) - 1)
        raise MissingSliceError(
            f"{folder}: series {key} is missing slices: a gap of {gaps[i]:.3f} mm between "
            f"{slices[i].name} ({along[i]:.3f} mm) and {slices[i + 1].name} "
            f"({along[i + 1]:.3f} mm), expected {median:.3f} mm (about {missing} slice(s) "
            f"missing; {big.size} gap(s) in all). Copy the complete series or {_FIX_EXPORT}."
        )
    tolerance = max(0.01, 0.01 * median)
    off = np.abs(gaps - median)
    if float(off.max()) > tolerance:
        i = int(np.argmax(off))
        raise NonUniformSpacingError(
            f"{folder}: series {key} has non-uniform slice spacing: {float(gaps.min()):.3f} to "
            f"{float(gaps.max()):.3f} mm (median {median:.3f} mm, tolerance {tolerance:.3f} mm; "
            f"worst between {slices[i].name} and {slices[i + 1].name}). Resample it to "
            "uniform spacing (e.g. dcm2niix then a NIfTI) or export a uniformly spaced reconstruction."
        )

    # every slice must lie on the line through the first one along the normal
    offsets = positions - positions[0]
    depth = along - along[0]
    in_plane = offsets - depth[:, None] * normal[None, :]
    pixel = min(slices[0].pixel_spacing)  # type: ignore[arg-type]
    tolerance_mm = 0.1 * pixel
    worst = float(np.linalg.norm(in_plane, axis=1).max())
    tag_tilt = max((abs(s.gantry_tilt_deg) for s in slices), default=0.0)
    if worst > tolerance_mm:
        slope = (in_plane * depth[:, None]).sum(axis=0) / float((depth**2).sum())
        residual = float(np.linalg.norm(in_plane - depth[:, None] * slope[None, :], axis=1).max())
        if residual <= tolerance_mm or tag_tilt > 0:
            angle = math.degrees(math.atan(float(np.linalg.norm(slope))))
            raise GantryTiltError(
                f"{folder}: series {key} was acquired with gantry tilt: the slices step at "
                f"{angle:.2f}° to their normal (GantryDetectorTilt tag: {tag_tilt:g}°), so they do "
                "not form a rectangular grid. Reconstruct without tilt, or resample it to an "
                "untilted grid first (e.g. dcm2niix, which corrects gantry tilt) and pass the NIfTI."
            )
        j = int(np.argmax(np.linalg.norm(in_plane, axis=1)))
        raise SliceGeometryError(
            f"{folder}: series {key}: slice {slices[j].name} is displaced "
            f"{float(np.linalg.norm(in_plane[j])):.3f} mm in-plane from the others (tolerance "
            f"{tolerance_mm:.3f} mm), so the slices do not stack into one grid. {_FIX_EXPORT.capitalize()}."
        )
    if tag_tilt > 0:
        logger.warning("%s: GantryDetectorTilt is %g° but the slice positions are consistent with "
                       "their orientation; reading the series as stored.", folder, tag_tilt)

    direction = np.column_stack([row_dir, col_dir, normal])
    row_spacing, column_spacing = slices[0].pixel_spacing  # type: ignore[misc]
    return _Grid(
        files=[s.path for s in slices],
        frames=[s.frame for s in slices],
        # PixelSpacing is (between rows, between columns) = (y, x)
        spacing_xyz_mm=(float(column_spacing), float(row_spacing),
                        float((along[-1] - along[0]) / (len(slices) - 1))),
        origin_xyz_mm=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )


# -- pixels --------------------------------------------------------------------------------------
def _read_pixels(folder: Path, grid: _Grid, slices: list[_Slice]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(p) for p in grid.files])
    slopes = {s.slope for s in slices}
    intercepts = {s.intercept for s in slices}
    if len(slopes) > 1 or len(intercepts) > 1 or any(
            not float(v).is_integer() for v in (*slopes, *intercepts)):
        # GDCM picks the pixel type from the first file; keep every slice's rescale exact
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        return reader.Execute()
    except RuntimeError as err:
        bad = []
        for path in grid.files:  # find the culprit(s) only on this failure path
            try:
                sitk.ReadImage(str(path), imageIO="GDCMImageIO")
            except RuntimeError:
                bad.append(path.name)
        which = f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}" if bad else "one of the files"
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise CorruptDicomError(
            f"{folder}: pixel data cannot be decoded in {which} ({first_line}). The file is "
            f"damaged/truncated or uses an unsupported compression: {_FIX_EXPORT}."
        ) from err


def _hu_dtype(slices: Sequence[_Slice]) -> type:
    """int16 when every slice's rescale is integral and its stored range lands in int16, else float32."""
    for s in slices:
        bits = s.bits_stored or 16
        stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if s.signed else (0, 2**bits - 1)
        ends = [s.slope * v + s.intercept for v in stored]
        if not (float(s.slope).is_integer() and float(s.intercept).is_integer()) or \
                min(ends) < np.iinfo(np.int16).min or max(ends) > np.iinfo(np.int16).max:
            return np.float32
    return np.int16


def _pydicom_decodes(transfer_syntax: str) -> bool:
    """Whether pydicom can decode this transfer syntax here (native, RLE, JPEG 2000 through
    Pillow, ...; JPEG Lossless, common in PACS exports, needs a plugin it may lack)."""
    from pydicom.pixels import get_decoder

    try:
        return bool(transfer_syntax) and get_decoder(pydicom.uid.UID(transfer_syntax)).is_available
    except (NotImplementedError, ValueError):
        return False


def _read_frames(folder: Path, grid: _Grid, slices: list[_Slice]) -> sitk.Image:
    """A series holding multi-frame objects: each object's frames decoded, every frame in its
    own rescale, stacked in the grid's order and placed on the grid.

    pydicom decodes an object one frame at a time where it can (``iter_pixels``: stored
    values; 0.56 GB peak for a 400-frame 512 × 512 object, where GDCM takes 1.21 GB and
    three to five times as long: ``benchmarks/bench_read.py``); otherwise GDCM decodes the whole
    object (JPEG Lossless, say) and applies its first frame's rescale (shared or
    per-frame) to all of its frames, so a frame whose own rescale differs gets its stored
    values back from that one and its own applied. The pixels are checked against the
    headers afterwards (:func:`_check_pixels`), the geometry is the grid's
    (:func:`_check_grid`)."""
    from pydicom.pixels import iter_pixels

    rows, columns = int(slices[0].rows or 0), int(slices[0].columns or 0)
    out = np.empty((len(slices), rows, columns), dtype=_hu_dtype(slices))
    members: dict[Path, dict[int, int]] = defaultdict(dict)  # file -> {frame number: slice index}
    for index, path in enumerate(grid.files):
        members[path][max(slices[index].frame, 1)] = index
    for path, by_frame in members.items():
        first = slices[next(iter(by_frame.values()))]
        if _pydicom_decodes(first.extra.get("transfer_syntax", "")):
            try:
                for number, stored in enumerate(iter_pixels(path), start=1):
                    if number in by_frame:  # (a frame of another volume in the same object is not)
                        s = slices[by_frame[number]]
                        out[by_frame[number]] = stored * np.float64(s.slope) + s.intercept
            except Exception as err:  # pydicom and its codecs raise many types on damaged data
                raise CorruptDicomError(
                    f"{folder}: pixel data cannot be decoded in {path.name} ({type(err).__name__}: "
                    f"{str(err)[:200]}). The file is damaged/truncated: {_FIX_EXPORT}."
                ) from err
            continue
        try:
            decoded = sitk.ReadImage(str(path), imageIO="GDCMImageIO")
        except RuntimeError as err:
            first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise CorruptDicomError(
                f"{folder}: pixel data cannot be decoded in {path.name} ({first_line}). The file is "
                f"damaged/truncated or uses an unsupported compression: {_FIX_EXPORT}."
            ) from err
        frames = sitk.GetArrayViewFromImage(decoded).reshape(-1, *decoded.GetSize()[1::-1])
        if frames.shape != (first.frames, rows, columns):
            raise DicomError(
                f"{folder}: SimpleITK/GDCM decoded {path.name} as {frames.shape[0]} frame(s) of {frames.shape[1]} × "
                f"{frames.shape[2]}, but its header declares {first.frames} of {rows} × {columns}. The header is "
                f"inconsistent: convert the series with dcm2niix and pass the NIfTI, or {_FIX_EXPORT}."
            )
        # the rescale GDCM applied: frame 1's, which may be another volume's (its header read again)
        applied = slices[by_frame[1]] if 1 in by_frame else _read_header(path).frame_facts[0]  # type: ignore[union-attr]
        for number, index in by_frame.items():
            s = slices[index]
            values = frames[number - 1]
            if (s.slope, s.intercept) != (applied.slope, applied.intercept):
                values = (values.astype(np.float64) - applied.intercept) / applied.slope * s.slope + s.intercept
            out[index] = np.rint(values) if out.dtype == np.int16 and values.dtype.kind == "f" else values
        del frames, decoded
    image = sitk.GetImageFromArray(out)
    image.SetSpacing(grid.spacing_xyz_mm)
    image.SetOrigin(grid.origin_xyz_mm)
    image.SetDirection(grid.direction)
    return image


def _check_pixels(folder: Path, image: sitk.Image, grid: _Grid, slices: list[_Slice]) -> None:
    """SimpleITK's geometry and HU values must agree with the headers."""
    size_expected = (slices[0].columns, slices[0].rows, len(slices))
    problems = []
    if tuple(image.GetSize()) != size_expected:
        problems.append(f"size {image.GetSize()} vs {size_expected}")
    spacing = np.asarray(image.GetSpacing())
    if not np.allclose(spacing[:2], grid.spacing_xyz_mm[:2], rtol=0, atol=1e-6) or \
            abs(spacing[2] - grid.spacing_xyz_mm[2]) > 1e-3:
        problems.append(f"spacing {tuple(spacing)} vs {grid.spacing_xyz_mm} mm")
    if not np.allclose(image.GetOrigin(), grid.origin_xyz_mm, rtol=0, atol=1e-3):
        problems.append(f"origin {image.GetOrigin()} vs {grid.origin_xyz_mm} mm")
    if not np.allclose(image.GetDirection(), grid.direction, rtol=0, atol=1e-5):
        problems.append(f"direction {image.GetDirection()} vs {grid.direction}")

    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    lo_hu, hi_hu = stats.GetMinimum(), stats.GetMaximum()
    bits = slices[0].bits_stored
    if bits:
        stored_lo, stored_hi = ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if slices[0].signed
                                else (0, 2**bits - 1))
        bounds = [s.slope * v + s.intercept for s in slices for v in (stored_lo, stored_hi)]
        if lo_hu < min(bounds) - 1e-3 or hi_hu > max(bounds) + 1e-3:
            problems.append(f"values {lo_hu:g}…{hi_hu:g} outside the range {min(bounds):g}…"
                            f"{max(bounds):g} that {bits}-bit pixels with the header's rescale allow")
    if problems:
        raise DicomError(
            f"{folder}: SimpleITK/GDCM read the series differently from what its headers say ("
            + "; ".join(problems) + "). The headers are inconsistent: convert the series with "
            "dcm2niix and pass the NIfTI, or " + _FIX_EXPORT + "."
        )
    if all(s.smallest is not None and s.largest is not None for s in slices):
        expected_lo = min(s.slope * s.smallest + s.intercept for s in slices)  # type: ignore[operator]
        expected_hi = max(s.slope * s.largest + s.intercept for s in slices)  # type: ignore[operator]
        if abs(expected_lo - lo_hu) > 1e-3 or abs(expected_hi - hi_hu) > 1e-3:
            # optional tags, often stale after recompression: tell, do not refuse
            logger.warning("%s: decoded HU range %g…%g differs from the headers' Smallest/Largest "
                           "pixel values (%g…%g after rescale)", folder, lo_hu, hi_hu,
                           expected_lo, expected_hi)


def dicom_series_slices(folder: Path | str, *, series_uid: str | None = None
                        ) -> tuple[tuple[Path, ...], tuple[int, ...]]:
    """One CT series' slices in order, as :func:`read_dicom_study` orders them, from the
    headers alone: for outputs that reference the series (a DICOM SEG) when the image is
    not needed. Slice k of its image is file ``files[k]`` (frame ``frames[k]`` of a
    multi-frame object; ``frames`` is empty when every file is a single slice), as
    :attr:`~renalseg.study.Study.dicom_files` and ``dicom_frames`` give it. Raises as it
    does, for the same checks of the grid.
    """
    folder = Path(folder)
    info, slices, _ = _select(folder, _group(_scan(folder)), series_uid)
    grid = _check_grid(folder, info, slices)
    return tuple(grid.files), (tuple(grid.frames) if any(grid.frames) else ())


def read_dicom_study(folder: Path | str, *, series_uid: str | None = None) -> Study:
    """Read one CT series from a folder into a :class:`~renalseg.study.Study` in HU.

    The files are grouped by SeriesInstanceUID, checked (CT, 3D, one regular grid),
    sorted by position along the slice normal and decoded by SimpleITK/GDCM; the
    image's size, spacing, origin and direction are checked against the headers.
    The folder is only read, never written.

    Args:
        folder: a folder directly holding the DICOM files (any names, any order).
        series_uid: the SeriesInstanceUID to read when the folder holds several
            series (``"(empty)"`` selects a series whose UID is empty).

    Returns:
        The study: ``image`` in HU (rescale slope/intercept applied; int16 when the
        rescale is integral, else float32), ``format="dicom"``, ``series_uid``
        (``None`` when the header's is empty), ``slice_count``, and ``extra`` with
        modality, patient position, manufacturer, kernel, slice thickness and
        transfer syntax.

    Raises:
        UsageError: the folder does not exist.
        NoDicomError: no DICOM image files in the folder.
        CorruptDicomError: a file whose header or pixels cannot be read.
        SeriesSelectionError: several series and no ``series_uid``, or an unknown one.
        NotCTError: the series' Modality is not CT.
        SingleSliceError: only one slice.
        SliceGeometryError: duplicate positions, missing slices, non-uniform spacing,
            gantry tilt, or mixed sizes/orientations (subclasses name each case).
        DicomError: SimpleITK's reading disagrees with the headers.
    """
    folder = Path(folder)
    groups = _group(_scan(folder))
    info, slices, skipped = _select(folder, groups, series_uid)
    if info.modality != "CT":
        raise NotCTError(
            f"{folder}: series {info.key} is Modality {info.modality or '(missing)'}, not CT. "
            "renalseg segments CT angiography only; pass the CT series"
            + (" with --series UID." if len(groups) > 1 else ".")
        )
    grid = _check_grid(folder, info, slices)
    _check_encoding(folder, info.key, slices)
    _check_not_truncated(folder, slices)
    _check_slices_whole(folder, slices)
    by_place = {(s.path, s.frame): s for s in slices}
    ordered = [by_place[place] for place in zip(grid.files, grid.frames)]
    image = (_read_frames if any(grid.frames) else _read_pixels)(folder, grid, ordered)
    _check_pixels(folder, image, grid, ordered)
    logger.debug("%s: read series %s, %d slices", folder, info.key, len(ordered))
    extra = {"modality": info.modality, "series_number": info.series_number,
             "gantry_tilt_deg": max(abs(s.gantry_tilt_deg) for s in ordered),
             **{k: v for k, v in ordered[0].extra.items()
                if v not in (None, "") and k not in ("sop_class", "rescale_empty")},
             **({"series_skipped": skipped} if skipped else {})}
    return Study(
        image=image, path=folder, format="dicom", study_id=safe_study_id(folder),
        series_uid=info.uid, series_key=info.key, series_description=info.description or None,
        slice_count=len(ordered), extra=extra, dicom_files=tuple(grid.files),
        dicom_frames=tuple(grid.frames) if any(grid.frames) else (),
    )
