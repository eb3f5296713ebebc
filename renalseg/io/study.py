"""``read_study``: one entry point for image files and DICOM series folders."""

from __future__ import annotations

from pathlib import Path

from renalseg.errors import InputError, UsageError
from renalseg.io.image import image_format, read_image
from renalseg.study import Study, safe_study_id

__all__ = ["read_study"]


def read_study(path: Path | str, *, series_uid: str | None = None) -> Study:
    """Read one CT study: a NIfTI/NRRD/MetaImage file or a DICOM series folder.

    Pixels are in Hounsfield units (DICOM rescale slope/intercept applied) and the
    geometry (size, spacing, origin, direction) is kept exactly.

    Args:
        path: an image file, or a folder holding one DICOM series.
        series_uid: which series to read when a DICOM folder holds several.

    Raises:
        UsageError: the path does not exist.
        InputError: (and subclasses) the study cannot be read or used.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder. Check the path.")
    if path.is_dir():
        from renalseg.io.dicom import read_dicom_study

        return read_dicom_study(path, series_uid=series_uid)
    fmt = image_format(path)
    if fmt is None:
        raise InputError(
            f"{path}: not a supported study file (NIfTI .nii/.nii.gz, NRRD, MetaImage .mha/.mhd) "
            "and not a folder. For DICOM, pass the folder that holds the series."
        )
    image = read_image(path)
    return Study(image=image, path=path, format=fmt, study_id=safe_study_id(path))
