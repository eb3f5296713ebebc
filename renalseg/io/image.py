"""Image files (NIfTI, NRRD, MetaImage) in and out, geometry exact, writes atomic."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import SimpleITK as sitk

from renalseg.errors import InputError, OutputExistsError, UsageError
from renalseg.io.integrity import verify_image_file
from renalseg.io.plausibility import check_image_information, integer_labels
from renalseg.volume import Volume

__all__ = ["IMAGE_SUFFIXES", "image_format", "read_image", "read_label_image", "write_image"]

#: file suffix -> format name
IMAGE_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def image_format(path: Path) -> str | None:
    """``"nifti"``, ``"nrrd"``, ``"metaimage"`` or ``None`` from the file name.

    Example:
        >>> image_format(Path("a/labels.nii.gz")), image_format(Path("x.dcm"))
        ('nifti', None)
    """
    suffix = _suffix(Path(path))
    return IMAGE_SUFFIXES[suffix] if suffix else None


def read_image(path: Path | str) -> sitk.Image:
    """Read a 3D image file with SimpleITK, geometry exact.

    The file is checked first (:func:`renalseg.io.integrity.verify_image_file`:
    header against data, gzip CRC), then its header is read alone, so a colour,
    2D/4D or zero-spacing image is refused before its pixels are allocated.

    Raises:
        UsageError: the path does not exist.
        InputError: unsupported suffix, damaged or truncated file, or not 3D scalar.
        GeometryError: zero, negative or non-finite voxel spacing.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file. Check the path.")
    fmt = image_format(path)
    if fmt is None:
        raise InputError(
            f"{path}: unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder."
        )
    verify_image_file(path, fmt)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(f"{path}: cannot be read as {fmt} ({_last_line(err)}).") from err
    check_image_information(path, dimension=reader.GetDimension(), size=reader.GetSize(),
                            components=reader.GetNumberOfComponents(), spacing=reader.GetSpacing())
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise InputError(f"{path}: cannot be read as {fmt} ({_last_line(err)}). Is the file complete?") from err
    except MemoryError as err:
        raise InputError(f"{path}: its {'×'.join(map(str, reader.GetSize()))} voxels do not fit in memory.") from err


def read_label_image(path: Path | str) -> sitk.Image:
    """A label map read as :func:`read_image` reads an image, its values checked to be
    whole numbers (:func:`renalseg.io.plausibility.integer_labels`): a float label map of
    whole values is read as integers, one of fractions (a probability map) refused
    naming the file.
    """
    return integer_labels(read_image(path), path)


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else "unknown reason"


def write_image(image: sitk.Image | Volume, path: Path | str, *, overwrite: bool = False,
                compress: bool = True) -> Path:
    """Write an image atomically: to a temporary name beside ``path``, then rename.

    A crash never leaves a half-written ``path``. Geometry is written exactly as held.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if isinstance(image, Volume):
        image = image.to_sitk()
    suffix = _suffix(path)
    if suffix is None:
        raise UsageError(f"{path}: cannot write this file type; use one of {', '.join(IMAGE_SUFFIXES)}.")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write into a private folder beside the target under the final name (MetaImage
    # headers record their data file's name), then rename each file into place.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name[:120]}.", suffix=".tmp", dir=path.parent))
    try:
        sitk.WriteImage(image, str(staging / path.name), compress)
        for produced in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
