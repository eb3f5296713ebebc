"""A CT study as read from disk: the image in HU with its geometry and provenance."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from renalseg.geometry import Geometry
from renalseg.volume import Volume

__all__ = ["Study", "safe_study_id", "unpack_study", "MAX_STUDY_ID_BYTES"]


#: longest study id (ASCII, so bytes): leaves room under the 255-byte name limit for the
#: staging names built from it (``.<id>.<random>.partial``, ``.<id>.old-<pid>``) and ``_N``
MAX_STUDY_ID_BYTES = 200


def safe_study_id(path: Path) -> str:
    """A filesystem-safe study id from a file or folder name (extensions dropped).

    A name longer than :data:`MAX_STUDY_ID_BYTES` is cut and ends with a hash of the
    whole name, so two long names that differ only at the end stay apart.

    Example:
        >>> safe_study_id(Path("/data/Patient 01.nii.gz"))
        'Patient_01'
        >>> safe_study_id(Path("case-7/"))
        'case-7'
        >>> long_id = safe_study_id(Path("x" * 300 + ".nii.gz"))
        >>> len(long_id), long_id[-17:]
        (200, '_0d4e2ca9e9cbced7')
    """
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if len(cleaned) > MAX_STUDY_ID_BYTES:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        cleaned = f"{cleaned[: MAX_STUDY_ID_BYTES - 17]}_{digest}"
    return cleaned or "study"


@dataclass(frozen=True, eq=False)
class Study:
    """One CT volume in Hounsfield units and where it came from.

    Attributes:
        image: the CT as a ``SimpleITK.Image`` (HU, rescale applied), geometry exact.
        path: the file or DICOM folder it was read from.
        format: ``"nifti"``, ``"nrrd"``, ``"metaimage"`` or ``"dicom"``.
        study_id: filesystem-safe name used for output folders.
        series_uid: DICOM SeriesInstanceUID (``None`` for files or when empty).
        series_key: what selects this series in its folder again (``--series``): the UID,
            ``"(empty)"``, or with ``#acqN`` where one series holds several volumes
            (:class:`renalseg.io.dicom.SeriesInfo`); ``None`` for files.
        series_description: DICOM SeriesDescription when present.
        slice_count: number of DICOM files / slices read.
        extra: other header facts worth reporting (modality, patient position, ...).
        dicom_files: a DICOM series' files in slice order (slice k of ``image`` is file
            k), for outputs that reference them (DICOM SEG); empty for other formats.
            A multi-frame object's file appears once for each of its frames.
        dicom_frames: for a series of multi-frame objects, slice k's frame number
            (1-based) in ``dicom_files[k]``; empty when every file is one slice.
    """

    image: sitk.Image
    path: Path
    format: str
    study_id: str
    series_uid: str | None = None
    series_description: str | None = None
    slice_count: int | None = None
    extra: dict = field(default_factory=dict)
    dicom_files: tuple[Path, ...] = ()
    dicom_frames: tuple[int, ...] = ()
    series_key: str | None = None

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_sitk(self.image)

    @property
    def volume(self) -> Volume:
        """The pixels as a :class:`Volume` (a copy, numpy ``(z, y, x)``)."""
        return Volume.from_sitk(self.image)

    def describe(self) -> dict:
        """JSON-ready description for reports: path, format, size, spacing, UID."""
        geometry = self.geometry
        return {
            "path": str(self.path),
            "format": self.format,
            "size_xyz": list(geometry.shape_xyz),
            "spacing_xyz_mm": list(geometry.spacing_xyz_mm),
            "origin_xyz_mm": list(geometry.origin_xyz_mm),
            "direction": list(geometry.direction),
            "orientation": geometry.orientation,
            "series_uid": self.series_uid,
            **({"series_key": self.series_key} if self.series_key not in (None, self.series_uid) else {}),
            # series of the same DICOM folder passed over as not the CT volume (a localizer, ...)
            **({"series_skipped": list(self.extra["series_skipped"])} if self.extra.get("series_skipped") else {}),
        }


def unpack_study(source: Study | Volume | sitk.Image) -> tuple[sitk.Image, str]:
    """The SimpleITK image of a study, volume or image, and a name for messages.

    Raises:
        TypeError: ``source`` is none of the three.

    Example:
        >>> import numpy as np
        >>> g = Geometry((1, 2, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> image, name = unpack_study(Volume(np.zeros((1, 2, 3), np.int16), g))
        >>> image.GetSize(), name
        ((3, 2, 1), 'the volume')
    """
    if isinstance(source, Study):
        return source.image, str(source.path)
    if isinstance(source, Volume):
        return source.to_sitk(), "the volume"
    if isinstance(source, sitk.Image):
        return source, "the image"
    raise TypeError(f"expected a Study, a Volume or a SimpleITK image; got {type(source).__name__}.")
