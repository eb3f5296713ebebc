"""Integrity of image files before anything is allocated for their pixels.

SimpleITK trusts a file's header: it allocates whatever size the header declares,
fills a truncated file's missing part with zeros, and (through zlib's gzread) does
not stop at a gzip CRC error. A damaged download would then be segmented as if it
were whole. :func:`verify_image_file` reads the header itself, checks it, and
streams the data once in fixed-size blocks (no allocation that grows with the
image) to compare the bytes present with the bytes declared:

- NIfTI-1/2 (``.nii``, ``.nii.gz``): dimensions, datatype against bitpix, spacing
  (``pixdim``), ``vox_offset``; the payload must hold exactly ``vox_offset`` +
  voxels × bytes per voxel. A ``.nii.gz`` is decompressed end to end so its gzip
  CRC-32 and length are verified (every member of a multi-member file). Float
  voxels are counted for NaN/Inf on the way, because ITK's NIfTI reader reads NaN
  as 0 without a word.
- MetaImage (``.mha``, ``.mhd``) and NRRD (``.nrrd``, ``.nhdr``): the text header's
  sizes and element type against the data present, raw or compressed (zlib with
  its Adler-32, gzip with its CRC-32), in the same file or a detached one.

A file whose content is another known format (a NRRD named ``.nii.gz``) is named
as such. What is not checked here: uncompressed voxel bytes carry no checksum in
any of these formats, so a flipped voxel in a ``.nii`` cannot be told from a real
value; bzip2/ASCII NRRD encodings and file lists are left to SimpleITK.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from renalseg.errors import InputError
from renalseg.io.plausibility import NonFiniteError, check_spacing

__all__ = ["verify_image_file", "sniff_format", "BLOCK_BYTES"]

#: bytes decompressed per step: the only buffer the checks hold
BLOCK_BYTES = 1 << 22

_COPY_AGAIN = "Copy it again from its source."

#: NIfTI datatype code -> bits per voxel (nifti1.h)
_NIFTI_BITS = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32,
               1024: 64, 1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}

#: MetaImage ElementType / NRRD type -> bytes per component
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}
_NRRD_BYTES = {**{t: 1 for t in ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t")},
               **{t: 2 for t in ("short", "short int", "signed short", "signed short int", "int16", "int16_t",
                                 "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t")},
               **{t: 4 for t in ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32",
                                 "uint32_t", "float")},
               **{t: 8 for t in ("longlong", "long long", "long long int", "signed long long",
                                 "signed long long int", "int64", "int64_t", "ulonglong", "unsigned long long",
                                 "unsigned long long int", "uint64", "uint64_t", "double")}}


def sniff_format(head: bytes) -> str | None:
    """The format the first bytes of a file show, whatever its name says.

    Example:
        >>> sniff_format(b"NRRD0004\\n"), sniff_format(b"\\x1f\\x8b\\x08"), sniff_format(b"hello")
        ('NRRD', 'gzip', None)
    """
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"NRRD"):
        return "NRRD"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    if re.match(rb"\s*(ObjectType|NDims)\s*=", head):
        return "MetaImage"
    if len(head) >= 4 and (struct.unpack("<i", head[:4])[0] in (348, 540)
                           or struct.unpack(">i", head[:4])[0] in (348, 540)):
        return "NIfTI"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"%PDF", b"PK\x03\x04")):
        return {b"\x89P": "PNG", b"\xff\xd8": "JPEG", b"%P": "PDF", b"PK": "ZIP"}[head[:2]]
    return None


def _damaged(path: Path, err: BaseException) -> InputError:
    reason = str(err) or type(err).__name__
    if "crc" in reason.lower() or "data check" in reason:
        reason = "checksum failed (gzip CRC-32 or zlib Adler-32): the data changed after they were compressed"
    elif isinstance(err, EOFError):
        reason = "the compressed data end before the end of the stream: the file is cut short"
    return InputError(f"{path}: the file is damaged or truncated ({reason}). {_COPY_AGAIN}")


def _inflate(path: Path, offset: int, wbits: int) -> Iterator[bytes]:
    """Decompressed blocks of the compressed stream(s) from ``offset``, each at most :data:`BLOCK_BYTES`.

    zlib verifies each stream's own checksum at its end (gzip: CRC-32 and length;
    zlib: Adler-32). Further gzip members are read in turn; zero padding after the
    last is allowed, anything else is damage.

    Raises:
        InputError: a checksum fails, the stream is invalid or ends early.
    """
    inflater = zlib.decompressobj(wbits)
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(BLOCK_BYTES):
                while chunk:
                    block = inflater.decompress(chunk, BLOCK_BYTES)
                    if block:
                        yield block
                    chunk = inflater.unconsumed_tail
                    if inflater.eof:
                        rest = inflater.unused_data + chunk
                        if not rest.startswith(b"\x1f\x8b") or wbits != 31:
                            if rest.strip(b"\0") or handle.read(BLOCK_BYTES).strip(b"\0"):
                                raise InputError(f"{path}: the file is damaged: unexpected bytes after the end of "
                                                 f"its compressed data. {_COPY_AGAIN}")
                            return
                        inflater, chunk = zlib.decompressobj(wbits), rest  # the next gzip member
    except zlib.error as err:
        raise _damaged(path, err) from err
    if not inflater.eof:
        raise _damaged(path, EOFError("cut short"))


def _gzip_blocks(path: Path) -> Iterator[bytes]:
    return _inflate(path, 0, 31)


def _zlib_count(path: Path, offset: int) -> int:
    """Bytes a zlib (or gzip) stream starting at ``offset`` decompresses to; its checksum verified."""
    return sum(len(block) for block in _inflate(path, offset, 47))  # 32 + 15: zlib or gzip header


def _check_count(path: Path, present: int, expected: int, what: str) -> None:
    if present < expected:
        raise InputError(f"{path}: the file is truncated: it holds {present:,} of the {expected:,} bytes {what}. "
                         f"{_COPY_AGAIN}")
    if present > expected:
        raise InputError(f"{path}: the file holds {present:,} bytes where {what} {expected:,}: its header "
                         f"(image size or voxel type) does not match its data. {_COPY_AGAIN}")


# -- NIfTI -------------------------------------------------------------------------------------------
def _parse_nifti(path: Path, header: bytes, *, compressed: bool) -> tuple[int, int, int, np.dtype | None]:
    """``(voxel data offset, file bytes expected, voxel count, float dtype or None)``, the header checked."""
    for endian in ("<", ">"):
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] in (348, 540):
            break
    else:
        found = sniff_format(header)
        if found == "gzip" and not compressed:
            hint = f"it is gzip-compressed: rename it to {path.name}.gz"
        elif found:
            hint = f"its content is {found}" + (", not NIfTI: give it the right extension" if found != "NIfTI" else "")
        else:
            hint = "its content is no NIfTI header (wrong extension, or not an image)"
        raise InputError(f"{path}: not a NIfTI file: {hint}.")
    size = struct.unpack(endian + "i", header[:4])[0]
    if len(header) < size:
        raise InputError(f"{path}: the file is truncated inside its {size}-byte NIfTI header. {_COPY_AGAIN}")
    if size == 348:
        dims = struct.unpack(endian + "8h", header[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
        pixdim = struct.unpack(endian + "8f", header[76:108])
        offset = struct.unpack(endian + "f", header[108:112])[0]
        magic = header[344:348]
    else:
        datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
        dims = struct.unpack(endian + "8q", header[16:80])
        pixdim = struct.unpack(endian + "8d", header[104:168])
        offset = struct.unpack(endian + "q", header[168:176])[0]
        magic = header[4:8]
    if magic[:3] not in (b"n+1", b"ni1", b"n+2", b"ni2"):
        raise InputError(f"{path}: damaged NIfTI header (magic {magic!r}, expected b'n+1'). {_COPY_AGAIN}")
    rank = int(dims[0])
    if not 1 <= rank <= 7:
        raise InputError(f"{path}: damaged NIfTI header: dim[0] = {rank}, expected 1…7. {_COPY_AGAIN}")
    extents = [int(d) for d in dims[1:1 + rank]]
    if any(d < 1 for d in extents):
        raise InputError(f"{path}: damaged NIfTI header: image size {tuple(extents)} has an extent below 1. "
                         f"{_COPY_AGAIN}")
    if _NIFTI_BITS.get(int(datatype)) != int(bitpix):
        raise InputError(f"{path}: damaged NIfTI header: datatype {datatype} with {bitpix} bits per voxel "
                         f"(datatype {datatype} has {_NIFTI_BITS.get(int(datatype), 'no known')} bits). "
                         f"{_COPY_AGAIN}")
    if not (math.isfinite(offset) and offset == int(offset) and int(offset) >= size):
        if not (offset == 0 and magic[1:2] == b"i"):  # a two-file .hdr/.img pair: not read here
            raise InputError(f"{path}: damaged NIfTI header: vox_offset {offset} lies inside the header. "
                             f"{_COPY_AGAIN}")
    check_spacing(path, [float(p) for p in pixdim[1:1 + min(rank, 3)]], "NIfTI pixdim")
    count = math.prod(extents)
    floats = {16: "f4", 64: "f8"}.get(int(datatype))
    dtype = np.dtype(("<" if endian == "<" else ">") + floats) if floats else None
    return int(offset), int(offset) + count * int(bitpix) // 8, count, dtype


class _NonFiniteCount:
    """Counts NaN/Inf among float voxels fed in blocks of any length, from byte ``start`` on.

    ITK's NIfTI reader turns NaN into 0 without a word, so an all-NaN volume would be
    read as an all-zero one: the count must come from the file's bytes.
    """

    def __init__(self, dtype: np.dtype, start: int) -> None:
        self.dtype, self.start, self.position, self.carry, self.bad = dtype, start, 0, b"", 0

    def feed(self, block: bytes) -> None:
        skip = max(0, self.start - self.position)
        self.position += len(block)
        if skip >= len(block):
            return
        data = self.carry + block[skip:]
        usable = len(data) - len(data) % self.dtype.itemsize
        values = np.frombuffer(data, self.dtype, usable // self.dtype.itemsize)
        self.bad += int(values.size - np.count_nonzero(np.isfinite(values)))
        self.carry = data[usable:]

    def check(self, path: Path, count: int) -> None:
        if self.bad:
            raise NonFiniteError(f"{path}: {self.bad:,} of {count:,} voxels are NaN or infinite "
                                 f"({100 * self.bad / max(count, 1):.2g}%); a CT holds finite Hounsfield units "
                                 "everywhere. Fix the conversion that produced this file.")


def _file_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(BLOCK_BYTES):
            yield block


def _verify_nifti(path: Path) -> None:
    compressed = path.name.lower().endswith(".gz")
    with path.open("rb") as handle:
        head = handle.read(540)
    if not compressed and sniff_format(head) == "gzip":
        raise InputError(f"{path}: gzip-compressed data in a file named .nii: rename it to {path.name}.gz.")
    if compressed and not head.startswith(b"\x1f\x8b"):
        found = sniff_format(head)
        what = f"its content is {found}" if found else "its content is not gzip-compressed"
        raise InputError(f"{path}: not a gzip-compressed NIfTI file ({what}); give it the right extension.")
    if not compressed:
        offset, expected, count, dtype = _parse_nifti(path, head, compressed=False)
        _check_count(path, path.stat().st_size, expected, "its NIfTI header announces")
        if dtype is not None:
            counter = _NonFiniteCount(dtype, offset)
            for block in _file_blocks(path):
                counter.feed(block)
            counter.check(path, count)
        return
    # one pass over all of it: zlib checks each member's CRC-32 and length at its end
    pending: list[bytes] = []
    counter: _NonFiniteCount | None = None
    total = 0
    parsed: tuple[int, int, int, np.dtype | None] | None = None
    for block in _gzip_blocks(path):
        total += len(block)
        if parsed is None:
            pending.append(block)
            if total < 540:
                continue
            parsed = _parse_nifti(path, b"".join(pending)[:540], compressed=True)
            counter = _NonFiniteCount(parsed[3], parsed[0]) if parsed[3] is not None else None
            block = b"".join(pending)
            pending = []
        if counter is not None:
            counter.feed(block)
    if parsed is None:
        parsed = _parse_nifti(path, b"".join(pending), compressed=True)
    _check_count(path, total, parsed[1], "its NIfTI header announces")
    if counter is not None:
        counter.check(path, parsed[2])


# -- MetaImage and NRRD ----------------------------------------------------------------------------
def _text_header(path: Path, *, stop: re.Pattern[bytes]) -> tuple[list[tuple[str, str]], int]:
    """``(key, value)`` lines of a text header and the byte offset just after it."""
    fields: list[tuple[str, str]] = []
    offset = 0
    with path.open("rb") as handle:
        for line in iter(lambda: handle.readline(65536), b""):
            offset += len(line)
            if stop.match(line):
                fields.append(("__stop__", line.decode("latin-1").strip()))
                break
            text = line.decode("latin-1").strip()
            for separator in (":=", "=", ":"):
                key, found, value = text.partition(separator)
                if found:
                    fields.append((key.strip().lower(), value.strip()))
                    break
            if offset > 1 << 20:
                break
    return fields, offset


def _numbers(path: Path, text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split()]
    except ValueError as err:
        raise InputError(f"{path}: damaged header: {what} {text!r} is not a list of whole numbers. "
                         f"{_COPY_AGAIN}") from err


def _verify_payload(path: Path, data_path: Path, offset: int, expected: int, compressed: bool,
                    declared_compressed: int | None) -> None:
    if not data_path.is_file():
        raise InputError(f"{path}: its data file {data_path} is missing. Copy it alongside the header.")
    if compressed:
        present = _zlib_count(data_path, offset)
    else:
        present = data_path.stat().st_size - offset
    _check_count(path, present, expected, "its header announces")
    if declared_compressed is not None and compressed:
        on_disk = data_path.stat().st_size - offset
        if on_disk < declared_compressed:
            raise InputError(f"{path}: the file is truncated: {on_disk:,} of the {declared_compressed:,} "
                             f"compressed bytes its header announces. {_COPY_AGAIN}")


def _verify_metaimage(path: Path) -> None:
    fields, offset = _text_header(path, stop=re.compile(rb"\s*ElementDataFile\s*=", re.I))
    values = dict(fields)
    if "ndims" not in values and "dimsize" not in values:
        found = sniff_format(path.open("rb").read(540))
        raise InputError(f"{path}: not a MetaImage file (no NDims or DimSize in its header"
                         + (f"; its content is {found}" if found else "") + "); give it the right extension.")
    stop = values.get("__stop__", "")
    data_name = stop.partition("=")[2].strip()
    if not data_name or "dimsize" not in values or "elementtype" not in values:
        return  # incomplete header: SimpleITK names what is missing
    sizes = _numbers(path, values["dimsize"], "DimSize")
    if any(s < 1 for s in sizes):
        raise InputError(f"{path}: damaged header: DimSize {tuple(sizes)} has an extent below 1. {_COPY_AGAIN}")
    if "elementspacing" in values:
        try:
            spacing = [float(v) for v in values["elementspacing"].split()]
        except ValueError:
            spacing = [math.nan]
        check_spacing(path, spacing, "MetaImage ElementSpacing")
    element = _MET_BYTES.get(values["elementtype"].upper())
    channels = _numbers(path, values.get("elementnumberofchannels", "1"), "ElementNumberOfChannels")[0]
    if element is None or "%" in data_name or data_name.upper() == "LIST":
        return
    expected = math.prod(sizes) * element * channels
    compressed = values.get("compresseddata", "false").lower() == "true"
    declared = int(values["compresseddatasize"]) if compressed and values.get("compresseddatasize", "").isdigit() \
        else None
    header_size = int(values.get("headersize", "0") or 0) if values.get("headersize", "0").lstrip("-").isdigit() \
        else 0
    if data_name.upper() == "LOCAL":
        _verify_payload(path, path, offset, expected, compressed, declared)
    elif header_size >= 0:
        _verify_payload(path, path.parent / data_name, header_size, expected, compressed, declared)


def _verify_nrrd(path: Path) -> None:
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head.startswith(b"NRRD"):
        found = sniff_format(head + path.open("rb").read(540)[8:])
        raise InputError(f"{path}: not a NRRD file (no NRRD magic" + (f"; its content is {found}" if found else "")
                         + "); give it the right extension.")
    fields, offset = _text_header(path, stop=re.compile(rb"\r?\n$"))
    values = {k: v for k, v in fields if not k.startswith("#")}
    if "sizes" not in values or "type" not in values:
        return
    sizes = _numbers(path, values["sizes"], "sizes")
    if any(s < 1 for s in sizes):
        raise InputError(f"{path}: damaged header: sizes {tuple(sizes)} has an extent below 1. {_COPY_AGAIN}")
    if "spacings" in values:
        try:
            spacing = [float(v) for v in values["spacings"].split() if v.lower() != "nan"]
        except ValueError:
            spacing = [math.nan]
        check_spacing(path, spacing, "NRRD spacings")
    element = _NRRD_BYTES.get(values["type"].lower())
    encoding = values.get("encoding", "raw").lower()
    data_name = values.get("data file") or values.get("datafile")
    skips = [values.get(k, "0") for k in ("byte skip", "byteskip", "line skip", "lineskip")]
    if element is None or encoding not in ("raw", "gzip", "gz") or any(s.strip() != "0" for s in skips):
        return
    if data_name is not None and (" " in data_name or data_name.upper().startswith("LIST")):
        return
    expected = math.prod(sizes) * element
    data_path, start = (path, offset) if data_name is None else (path.parent / data_name, 0)
    _verify_payload(path, data_path, start, expected, encoding != "raw", None)


def verify_image_file(path: Path | str, fmt: str) -> None:
    """Check an image file's header against its data before SimpleITK reads it.

    Args:
        path: the image file.
        fmt: ``"nifti"``, ``"nrrd"`` or ``"metaimage"`` (from the file name).

    Raises:
        InputError: the content is another format, the header is damaged, the data
            are truncated or longer than declared, or a checksum fails.
        GeometryError: a zero, negative or non-finite voxel spacing.
    """
    path = Path(path)
    try:
        if fmt == "nifti":
            _verify_nifti(path)
        elif fmt == "metaimage":
            _verify_metaimage(path)
        elif fmt == "nrrd":
            _verify_nrrd(path)
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err}). Check the file and its permissions.") \
            from err
