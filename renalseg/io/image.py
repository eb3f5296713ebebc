"""Image files (NIfTI, NRRD, MetaImage) in and out, geometry exact, writes atomic."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import SimpleITK as sitk

from renalseg.errors import InputError, OutputExistsError, UsageError
from renalseg.volume import Volume

__all__ = ["IMAGE_SUFFIXES", "image_format", "read_image", "write_image"]

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

    Raises:
        UsageError: the path does not exist.
        InputError: unsupported suffix, unreadable file, or not 3D scalar.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file. Check the path.")
    if image_format(path) is None:
        raise InputError(
            f"{path}: unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder."
        )
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reason"
        raise InputError(f"{path}: cannot be read as an image ({first}). Is the file complete?") from err
    if image_format(path) == "nifti":
        _check_nifti_complete(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: expected a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel."
        )
    return image


def _nifti_payload_bytes(header: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (``vox_offset`` + voxel data), from its header."""
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", header[:4])[0]
        if size == 348 and len(header) >= 348:  # NIfTI-1
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if size == 540 and len(header) >= 540:  # NIfTI-2
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    count = 1
    for extent in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
        count *= max(int(extent), 1)
    return max(offset, size) + count * max(int(bitpix), 8) // 8


def _check_nifti_complete(path: Path) -> None:
    """Refuse a truncated NIfTI file.

    SimpleITK (ITK's NIfTI reader) fills the missing part of a truncated file with
    zeros without any error, so a cut-off download would be segmented as if complete.
    The gzip trailer stores the uncompressed size (mod 2³²), which makes the check
    cheap for the usual single-member ``.nii.gz``; only on a mismatch is the stream
    decompressed to be sure (multi-member gzip files are legal).
    """
    compressed = path.name.lower().endswith(".gz")
    try:
        opener = gzip.open if compressed else open
        with opener(path, "rb") as handle:
            expected = _nifti_payload_bytes(handle.read(540))
        if expected is None:
            return
        if not compressed:
            actual = path.stat().st_size
        else:
            with open(path, "rb") as raw:
                raw.seek(-4, os.SEEK_END)
                trailer = struct.unpack("<I", raw.read(4))[0]
            if trailer == expected % 2**32:
                return
            actual = 0
            with gzip.open(path, "rb") as handle:
                while block := handle.read(1 << 24):
                    actual += len(block)
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(f"{path}: the file is truncated or damaged ({err}). Copy it again from its source.") from err
    if actual < expected:
        raise InputError(
            f"{path}: the file is truncated: it holds {actual} of the {expected} bytes its header announces. "
            "Copy it again from its source."
        )


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
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        sitk.WriteImage(image, str(staging / path.name), compress)
        for produced in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
