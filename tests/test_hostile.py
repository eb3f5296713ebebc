"""Hostile input and hostile filesystems: the fuzz catalogue (issue 28).

Each family is one parametrised table. A study case is run through ``renalseg
locate`` (localisation stubbed: reading and its checks are real) and must give exit
code 1, a message naming the file and the cause, and an output folder holding only
``error.json``; a usage case must give exit code 2 before any output exists. Then a
seeded random-mutation test flips bytes in small NIfTI and DICOM inputs: each read
must give a clear error or exactly the clean image, never another image and never
a traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import make_ct
from test_pipeline import write_dicom_series
from typer.testing import CliRunner

import renalseg.io.output
import renalseg.roi
from renalseg.batch import BatchStudy, plan_batch, run_batch
from renalseg.cli.app import app
from renalseg.errors import RenalsegError
from renalseg.io.image import read_image, write_image
from renalseg.io.output import StagedDir
from renalseg.io.study import read_study
from renalseg.pipeline import roi_from_extent
from renalseg.volume import Volume

runner = CliRunner()

SHAPE_ZYX = (8, 12, 16)


def _ct(**kw) -> Volume:
    """A small CT with air around a soft-tissue 'kidney' (passes the HU plausibility checks)."""
    return make_ct(shape_zyx=SHAPE_ZYX, kidneys=((4, 6, 8, 3, 4, 5),), **kw)


@pytest.fixture
def stub_locate(monkeypatch):
    """``locate_kidneys`` gives one ROI over the whole image: only reading is exercised."""
    calls: list[str] = []

    def locate_kidneys(study, **_):
        calls.append(study.study_id)
        return [roi_from_extent(study.geometry, (1.4, 1.4, 2.0))]

    monkeypatch.setattr(renalseg.roi, "locate_kidneys", locate_kidneys)
    return calls


def _locate(*args) -> object:
    return runner.invoke(app, ["locate", *(str(a) for a in args)])


def _hidden(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")] if folder.exists() else []


# -- builders: each writes one hostile study into a folder and returns its path --------------------

def _nii(folder: Path, name: str = "scan.nii", volume: Volume | None = None) -> Path:
    return write_image(volume if volume is not None else _ct(), folder / name, compress=False)


def _edit_nifti(folder: Path, edit: Callable[[bytearray], None], *, gz: bool = True,
                volume: Volume | None = None) -> Path:
    raw = bytearray(_nii(folder, "plain.nii", volume).read_bytes())
    (folder / "plain.nii").unlink()
    edit(raw)
    path = folder / ("scan.nii.gz" if gz else "scan.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


def _put(offset: int, fmt: str, *values) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    return edit


def _crc_flip(folder: Path) -> Path:
    """64 bytes flipped in the middle, gzip stream still valid (stored blocks): only the CRC tells."""
    raw = _nii(folder, "plain.nii").read_bytes()
    data = bytearray(gzip.compress(raw, compresslevel=0))
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path = folder / "scan.nii.gz"
    path.write_bytes(bytes(data))
    return path


def _cut(path: Path, keep: int | float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(keep if keep >= 1 else len(data) * keep)])
    return path


def _series(folder: Path, volume: Volume | None = None) -> Path:
    return write_dicom_series(volume if volume is not None else _ct(), folder / "series")


def _edit_dicom(folder: Path, edit: Callable[[pydicom.Dataset], None], which: slice = slice(None)) -> Path:
    series = _series(folder)
    for path in sorted(series.iterdir())[which]:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
    return series


def _rgb(ds: pydicom.Dataset) -> None:
    grey = (ds.pixel_array.astype(np.int32) // 16 + 64).clip(0, 255).astype(np.uint8)
    ds.PixelData = np.stack([grey] * 3, axis=-1).tobytes()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0


def _patch_dicom_value(folder: Path, tag: int, value: bytes, index: int = 2) -> Path:
    """Overwrite one element's value bytes in one file (same length): a damaged header."""
    series = _series(folder)
    path = sorted(series.iterdir())[index]
    data = bytearray(path.read_bytes())
    ds = pydicom.dcmread(path, defer_size=0)
    element = ds.get_item(tag, keep_deferred=True)
    start = element.value_tell
    data[start:start + len(value)] = value
    path.write_bytes(bytes(data))
    return series


def _array_image(folder: Path, array: np.ndarray, name: str = "scan.nii.gz", spacing=(0.8, 0.7, 2.5),
                 vector: bool = False) -> Path:
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(spacing)
    path = folder / name
    sitk.WriteImage(image, str(path), True)
    return path


def _hu(dtype, lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(lo, hi, SHAPE_ZYX).astype(dtype)


def _with(array: np.ndarray, value: float, count: int) -> np.ndarray:
    array = array.astype(np.float32)
    array.reshape(-1)[:count] = value
    return array


def _mha(folder: Path, edit: Callable[[str], str], compress: bool = False) -> Path:
    path = write_image(_ct(), folder / "scan.mha", compress=compress)
    data = path.read_bytes()
    end = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    path.write_bytes(edit(data[:end].decode()).encode() + data[end:])
    return path


#: family, case id, builder(folder) -> study path, regex the message must match (after the file's name)
STUDY_CASES: list[tuple[str, str, Callable[[Path], Path], str]] = [
    # archive corruption
    ("archive", "gzip-crc-wrong-length-right", _crc_flip, r"checksum failed"),
    ("archive", "gzip-cut", lambda d: _cut(write_image(_ct(), d / "scan.nii.gz"), 0.6), r"damaged or truncated"),
    ("archive", "gzip-junk-after", lambda d: (p := write_image(_ct(), d / "scan.nii.gz")).write_bytes(
        p.read_bytes() + b"junk") and p, r"unexpected bytes after the end"),
    ("archive", "gzip-length-trailer-wrong", lambda d: (p := write_image(_ct(), d / "scan.nii.gz")).write_bytes(
        p.read_bytes()[:-4] + struct.pack("<I", 12345)) and p, r"damaged or truncated"),
    ("archive", "mha-zlib-flipped", lambda d: (p := write_image(_ct(), d / "scan.mha")).write_bytes(
        (b := bytearray(p.read_bytes())).__setitem__(slice(len(b) - 40, len(b) - 20),
                                                     bytes(20)) or bytes(b)) and p, r"damaged|checksum"),
    ("archive", "nrrd-gzip-cut", lambda d: _cut(write_image(_ct(), d / "scan.nrrd"), 0.7), r"damaged or truncated"),
    ("archive", "nhdr-data-file-missing", lambda d: (p := write_image(_ct(), d / "scan.nhdr"),
                                                     (d / "scan.raw.gz").unlink())[0], r"data file .* is missing"),
    ("archive", "plain-nifti-named-gz", lambda d: (p := d / "scan.nii.gz").write_bytes(
        _nii(d).read_bytes()) and p, r"not a gzip-compressed NIfTI"),
    ("archive", "nrrd-named-nii", lambda d: (p := d / "scan.nii").write_bytes(
        write_image(_ct(), d / "x.nrrd", compress=False).read_bytes()) and p, r"content is NRRD"),
    ("archive", "gzip-named-nii", lambda d: (p := d / "scan.nii").write_bytes(
        write_image(_ct(), d / "x.nii.gz").read_bytes()) and p, r"rename it to scan\.nii\.gz"),
    ("archive", "pdf-named-nii-gz", lambda d: (p := d / "scan.nii.gz").write_bytes(b"%PDF-1.4\n" * 50) and p,
     r"content is PDF"),
    # header and size lies
    ("header", "nifti-1000x1000x750-in-368-bytes", lambda d: (p := d / "scan.nii").write_bytes(
        bytes(_nii(d, "x.nii").read_bytes()[:348] + b"\0" * 20)) and _edit_header_dims(p, (1000, 1000, 750)),
     r"holds 368 of the 1,500,000,352 bytes"),
    ("header", "nifti-dims-smaller-than-data", lambda d: _edit_nifti(d, _put(42, "<h", 6)), r"does not match its data"),
    ("header", "nifti-datatype-vs-bitpix", lambda d: _edit_nifti(d, _put(72, "<h", 32)), r"datatype 4 with 32 bits"),
    ("header", "nifti-negative-extent", lambda d: _edit_nifti(d, _put(44, "<h", -12)), r"extent below 1"),
    ("header", "nifti-dim0-zero", lambda d: _edit_nifti(d, _put(40, "<h", 0)), r"dim\[0\] = 0"),
    ("header", "nifti-vox-offset-in-header", lambda d: _edit_nifti(d, _put(108, "<f", 100.0)), r"vox_offset"),
    ("header", "nifti-bad-magic", lambda d: _edit_nifti(d, _put(344, "4s", b"abc\0")), r"magic"),
    ("header", "mha-dimsize-larger", lambda d: _mha(d, lambda h: h.replace("DimSize = 16 12 8", "DimSize = 16 12 80")),
     r"truncated: it holds 3,072 of the 30,720 bytes"),
    ("header", "mha-dimsize-garbage", lambda d: _mha(d, lambda h: h.replace("DimSize = 16 12 8", "DimSize = 16 1x 8")),
     r"DimSize"),
    ("header", "dicom-rows-20000", lambda d: _edit_dicom(d, lambda ds: setattr(ds, "Rows", 20000) or setattr(
        ds, "Columns", 20000)), r"declares 20000 rows × 20000 columns"),
    ("header", "dicom-rescale-intercept-damaged", lambda d: _patch_dicom_value(d, 0x00281052, b"x"),
     r"slice_002\.dcm: (RescaleIntercept|DICOM header has invalid values)"),
    # truncated and missing slices
    ("slices", "dicom-last-cut-to-400-bytes", lambda d: _cut(sorted(_series(d).iterdir())[-1], 400).parent,
     r"slice_007\.dcm"),
    ("slices", "dicom-last-cut-to-800-bytes", lambda d: _cut(sorted(_series(d).iterdir())[-1], 800).parent,
     r"slice_007\.dcm.*truncated"),
    ("slices", "dicom-cut-inside-pixels", lambda d: _cut(f := sorted(_series(d).iterdir())[3],
                                                         len(f.read_bytes()) - 100).parent,
     r"slice_003\.dcm is truncated"),
    ("slices", "dicom-middle-slice-missing", lambda d: (sorted((s := _series(d)).iterdir())[4].unlink(), s)[1],
     r"missing slices"),
    ("slices", "dicom-no-pixel-data", lambda d: _edit_dicom(d, lambda ds: delattr(ds, "PixelData"), slice(2, 3)),
     r"slice_002\.dcm has no pixel data"),
    # colour and non-CT images
    ("colour", "rgb-nifti", lambda d: _array_image(d, np.zeros((*SHAPE_ZYX, 3), np.uint8), vector=True),
     r"colour \(RGB\) image"),
    ("colour", "rgb-dicom-labelled-ct", lambda d: _edit_dicom(d, _rgb), r"colour image \(RGB, 3 samples"),
    ("colour", "2d-image", lambda d: _array_image(d, np.zeros((12, 16), np.int16), spacing=(0.7, 0.7)),
     r"single 2D image"),
    ("colour", "4d-image", lambda d: _array_image(d, np.zeros((2, *SHAPE_ZYX), np.int16), spacing=(1, 1, 1, 1)),
     r"4D image"),
    ("colour", "mr-like-uint16-0-2000", lambda d: _array_image(d, _hu(np.uint16, 0, 2000)),
     r"no value below 0.*not a CT in Hounsfield units\?"),
    ("colour", "uint8", lambda d: _array_image(d, _hu(np.uint8, 0, 255)), r"8-bit voxels"),
    ("colour", "int8", lambda d: _array_image(d, _hu(np.int8, -128, 127)), r"8-bit voxels"),
    # non-finite and non-HU values
    ("values", "some-nan", lambda d: _array_image(d, _with(_ct().array, np.nan, 17)), r"17 of 1,536 voxels are NaN"),
    ("values", "all-nan", lambda d: _array_image(d, np.full(SHAPE_ZYX, np.nan, np.float32)),
     r"1,536 of 1,536 voxels are NaN or infinite"),
    ("values", "inf", lambda d: _array_image(d, _with(_ct().array, -np.inf, 3)), r"3 of 1,536 voxels"),
    ("values", "no-air-whole-scan", lambda d: _array_image(d, _hu(np.int16, -150, 300)), r"no air below -500 HU"),
    ("values", "normalised-float", lambda d: _array_image(d, _hu(np.float32, -1, 1)), r"no air|span less than 200"),
    # degenerate geometry
    ("geometry", "nifti-zero-spacing", lambda d: _edit_nifti(d, _put(84, "<f", 0.0)), r"voxel spacing .* spacing"),
    ("geometry", "nifti-nan-spacing", lambda d: _edit_nifti(d, _put(80, "<f", float("nan"))), r"voxel spacing"),
    ("geometry", "nifti-negative-spacing", lambda d: _edit_nifti(d, _put(76 + 4, "<f", -0.8)), r"voxel spacing"),
    ("geometry", "mha-zero-spacing", lambda d: _mha(d, lambda h: re.sub(r"ElementSpacing = .*",
                                                                         "ElementSpacing = 0.8 0 2.5", h)),
     r"voxel spacing"),
    ("geometry", "dicom-zero-pixel-spacing", lambda d: _edit_dicom(d, lambda ds: setattr(ds, "PixelSpacing", [0, 0])),
     r"spacing"),
]


def _edit_header_dims(path: Path, dims_xyz: tuple[int, int, int]) -> Path:
    raw = bytearray(path.read_bytes())
    raw[40:48] = struct.pack("<4h", 3, *dims_xyz)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("family, case, build, cause", STUDY_CASES, ids=[f"{c[0]}:{c[1]}" for c in STUDY_CASES])
def test_hostile_study_fails_alone_with_a_clear_error(tmp_path, stub_locate, family, case, build, cause):
    folder = tmp_path / "in"
    folder.mkdir()
    study = build(folder)
    out = tmp_path / "out"
    result = _locate(study, "--out", out, "--json")
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    row = json.loads(result.stdout)["studies"][0]
    assert row["status"] == "error" and not stub_locate  # refused while reading: no work spent on it
    assert row["error"] in _renalseg_error_names(), row  # ours, with its message: not a library's traceback
    assert row["message"].startswith(str(study)), row["message"]
    assert re.search(cause, row["message"], re.S | re.I), row["message"]
    folders = list(out.iterdir())
    assert [p.name for p in folders[0].iterdir()] == ["error.json"] and len(folders) == 1
    assert not _hidden(out)


def test_force_processes_a_scan_that_does_not_look_like_hu(tmp_path, stub_locate):
    study = _array_image(tmp_path, _hu(np.uint16, 0, 2000), name="mr.nii.gz")
    assert _locate(study, "--out", tmp_path / "a").exit_code == 1
    result = _locate(study, "--out", tmp_path / "b", "--force")
    assert result.exit_code == 0, result.output
    nan = _array_image(tmp_path, _with(_ct().array, np.nan, 1), name="nan.nii.gz")
    assert _locate(nan, "--out", tmp_path / "c", "--force").exit_code == 1  # NaN: refused regardless


def _renalseg_error_names() -> set[str]:
    names, todo = set(), [RenalsegError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


# -- the batch goes on, whatever a study raises ----------------------------------------------------

@pytest.mark.parametrize("raised", [RuntimeError("sitk::ERROR: boom"), MemoryError(), KeyError("x")],
                         ids=["RuntimeError", "MemoryError", "KeyError"])
def test_any_exception_fails_only_its_study(tmp_path, raised):
    for name in ("a", "b", "c"):
        write_image(_ct(), tmp_path / "in" / f"{name}.nii.gz")

    def process(study: BatchStudy, destination: Path, overwrite: bool) -> dict:
        with StagedDir(destination, overwrite=overwrite) as staging:
            (staging / "x.txt").write_text("partial")
            if study.study_id == "b":
                raise raised
        return {}

    out = tmp_path / "out"
    rows = run_batch(plan_batch([tmp_path / "in"]), out, process, debug=True)
    assert [row["status"] for row in rows] == ["ok", "error", "ok"]
    report = json.loads((out / "b" / "error.json").read_text())
    assert report["error"] == type(raised).__name__ and "Traceback" in report["traceback"]
    assert [p.name for p in (out / "b").iterdir()] == ["error.json"] and not _hidden(out)
    rows = run_batch(plan_batch([tmp_path / "in"]), tmp_path / "out2", process)
    assert "traceback" not in json.loads((tmp_path / "out2" / "b" / "error.json").read_text())


def test_cli_batch_survives_a_library_runtime_error(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        write_image(_ct(), tmp_path / "in" / f"{name}.nii.gz")

    def locate_kidneys(study, **_):
        if study.study_id == "b":
            raise RuntimeError("Exception thrown in SimpleITK: itk::ERROR")
        return [roi_from_extent(study.geometry, (1.4, 1.4, 2.0))]

    monkeypatch.setattr(renalseg.roi, "locate_kidneys", locate_kidneys)
    result = _locate(tmp_path / "in", "--out", tmp_path / "out", "--json")
    assert result.exit_code == 1, result.output
    rows = {row["study"]: row for row in json.loads(result.stdout)["studies"]}
    assert rows["a"]["status"] == rows["c"]["status"] == "ok" and rows["b"]["error"] == "RuntimeError"
    assert "unexpected RuntimeError" in result.stderr and "a bug" in result.stderr


# -- filesystem traps ----------------------------------------------------------------------------

def _read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` unwritable: chmod, and (as root, who ignores modes) the write probe refused."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = renalseg.io.output.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == folder.resolve():
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(renalseg.io.output.tempfile, "mkstemp", mkstemp)


@pytest.fixture
def labels_study(tmp_path) -> Path:
    volume = _ct()
    labels = Volume((volume.array > 0).astype(np.uint8), volume.geometry)
    return write_image(labels, tmp_path / "seg" / "case1" / "labels.nii.gz")


@pytest.mark.parametrize("command", ["segment", "locate", "export-mesh", "evaluate"])
def test_read_only_out_is_a_usage_error_before_any_work(tmp_path, monkeypatch, stub_locate, labels_study, command):
    locked = tmp_path / "locked"
    _read_only(monkeypatch, locked)
    study = write_image(_ct(), tmp_path / "in" / "a.nii.gz")
    loaded = []
    monkeypatch.setattr("renalseg.segmenter.load_model", lambda *a, **k: loaded.append(1))
    args = {"segment": ["segment", study, "--out", locked / "out"],
            "locate": ["locate", study, "--out", locked],
            "export-mesh": ["export-mesh", labels_study, "--out", locked],
            "evaluate": ["evaluate", labels_study, "--gt", labels_study, "--out", locked / "m.csv"]}[command]
    try:
        result = runner.invoke(app, [str(a) for a in args])
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert "cannot write" in result.stderr and str(locked) in result.stderr.replace("\n", "")
    assert not loaded and not stub_locate and not list(locked.iterdir())


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_out_that_is_a_file_is_a_usage_error(tmp_path, stub_locate, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "sub"
    result = _locate(write_image(_ct(), tmp_path / "a.nii.gz"), "--out", out)
    assert result.exit_code == 2 and "a file" in result.stderr


def test_a_file_that_is_no_image_fails_before_the_model_loads(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr("renalseg.segmenter.load_model", lambda *a, **k: loaded.append(1))
    (tmp_path / "notes.txt").write_text("not a study")
    dicom_file = sorted(_series(tmp_path).iterdir())[0]
    for bad, hint in ((tmp_path / "notes.txt", "not an image file"), (dicom_file, "single DICOM file")):
        result = runner.invoke(app, ["segment", str(bad), "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and hint in result.stderr and str(bad) in result.stderr.replace("\n", "")
    assert not loaded and not (tmp_path / "out").exists()


def test_long_names_fit_the_filesystem(tmp_path, stub_locate):
    long_name = "Patient " + "x" * 230 + ".nii.gz"  # 245 bytes: legal, but '.<id>.<random>.partial' is not
    study = write_image(_ct(), tmp_path / "in" / long_name)
    result = _locate(study, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    folder = Path(json.loads(result.stdout)["studies"][0]["output"])
    assert len(folder.name) == 200 and (folder / "report.json").exists() and not _hidden(tmp_path / "out")


def test_symlink_loops_are_followed_once(tmp_path, stub_locate):
    root = tmp_path / "in"
    write_image(_ct(), root / "sub" / "a.nii.gz")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "again").symlink_to(root / "sub", target_is_directory=True)
    studies = plan_batch([root])
    assert [s.path.name for s in studies] == ["a.nii.gz"]


def test_out_inside_the_input_folder_is_not_read_as_studies(tmp_path, stub_locate):
    root = tmp_path / "in"
    write_image(_ct(), root / "a.nii.gz")
    assert _locate(root, "--out", root / "rois", "--crop").exit_code == 0
    assert (root / "rois" / "a" / "roi_right.nii.gz").exists() or list((root / "rois" / "a").glob("roi_*.nii.gz"))
    result = _locate(root, "--out", root / "rois", "--crop", "--overwrite", "--json")
    assert result.exit_code == 0, result.output
    assert [row["study"] for row in json.loads(result.stdout)["studies"]] == ["a"]


def test_outputs_follow_the_umask(tmp_path, stub_locate, labels_study):
    previous = os.umask(0o022)
    try:
        assert _locate(write_image(_ct(), tmp_path / "a.nii.gz"), "--out", tmp_path / "out").exit_code == 0
        assert runner.invoke(app, ["export-mesh", str(labels_study), "--out", str(tmp_path / "mesh"),
                                   "--min-component-mm3", "0"]).exit_code == 0
    finally:
        os.umask(previous)
    written = [*(tmp_path / "out").rglob("*"), *(tmp_path / "mesh").rglob("*")]
    assert written and {oct(p.stat().st_mode & 0o777) for p in written} <= {"0o644", "0o755"}
    assert any(p.suffix == ".stl" for p in written) and any(p.name == "tree.json" for p in written)


def test_evaluate_never_overwrites_its_json_silently(tmp_path, labels_study):
    out = tmp_path / "metrics.csv"
    (tmp_path / "metrics.json").write_text("earlier")
    result = runner.invoke(app, ["evaluate", str(labels_study), "--gt", str(labels_study), "--out", str(out)])
    assert result.exit_code == 1 and "metrics.json" in result.stderr and "--overwrite" in result.stderr
    assert (tmp_path / "metrics.json").read_text() == "earlier" and not out.exists()
    result = runner.invoke(app, ["evaluate", str(labels_study), "--gt", str(labels_study), "--out", str(out),
                                 "--overwrite"])
    assert result.exit_code == 0 and json.loads((tmp_path / "metrics.json").read_text())["cases"]


def test_export_mesh_refuses_a_float_label_map(tmp_path):
    volume = _ct()
    half = Volume(np.where(volume.array > 0, 0.5, 0.0).astype(np.float32), volume.geometry)
    path = write_image(half, tmp_path / "prob" / "labels.nii.gz")
    result = runner.invoke(app, ["export-mesh", str(path), "--out", str(tmp_path / "mesh")])
    assert result.exit_code == 1 and "not whole numbers" in result.stderr and "0.5" in result.stderr
    assert not (tmp_path / "mesh" / "prob").exists() and not _hidden(tmp_path / "mesh")
    whole = Volume(np.where(volume.array > 0, 1.0, 0.0).astype(np.float32), volume.geometry)
    write_image(whole, path, overwrite=True)  # whole-valued floats are labels, read exactly
    result = runner.invoke(app, ["export-mesh", str(path), "--out", str(tmp_path / "mesh"), "--json"])
    assert result.exit_code == 0, result.output


# -- signals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("how, code, said", [
    (lambda: os.kill(os.getpid(), signal.SIGTERM), 143, "SIGTERM"),
    (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), 130, "Ctrl-C"),
], ids=["SIGTERM", "SIGINT"])
def test_interruption_while_writing_leaves_no_staging_folder(tmp_path, stub_locate, monkeypatch, how, code, said):
    import renalseg.preview

    real = renalseg.preview.render_locate_preview
    calls = []

    def render(*args, **kwargs):  # runs inside the study's staging folder
        calls.append(1)
        if len(calls) == 2:
            how()
        return real(*args, **kwargs)

    monkeypatch.setattr(renalseg.preview, "render_locate_preview", render)
    for name in ("a", "b", "c"):
        write_image(_ct(), tmp_path / "in" / f"{name}.nii.gz")
    previous = signal.getsignal(signal.SIGTERM)
    result = _locate(tmp_path / "in", "--out", tmp_path / "out")
    assert result.exit_code == code, result.output
    assert said in result.stderr and "interrupted" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]  # finished kept, b removed, c not begun
    assert not _hidden(tmp_path / "out")
    assert signal.getsignal(signal.SIGTERM) == previous


# -- seeded random mutation ------------------------------------------------------------------------

def _same_image(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def _mutations(rng: np.random.Generator, data: bytes, span: tuple[int, int], count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(*span))
            mutated[i] ^= int(rng.integers(1, 256))
        out.append(bytes(mutated))
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the values it is given
def test_random_byte_flips_in_a_multi_frame_header_give_an_error_or_the_same_image(tmp_path):
    """Header bytes of an Enhanced CT object, its functional groups included: each flip is
    refused with the folder named, or changes nothing the image depends on."""
    from conftest import to_multi_frame

    rng = np.random.default_rng(31)
    classic = _series(tmp_path, make_ct(shape_zyx=(6, 8, 10), kidneys=((3, 4, 5, 2, 2, 3),)))
    (path,) = to_multi_frame(sorted(classic.iterdir()), tmp_path / "enhanced")
    reference = read_study(path.parent).image
    clean = path.read_bytes()
    pixels = pydicom.dcmread(path, defer_size=0).get_item(0x7FE00010, keep_deferred=True).value_tell
    outcomes = {"error": 0, "same": 0}
    for k, mutated in enumerate(_mutations(rng, clean, (128, pixels), 200)):
        path.write_bytes(mutated)
        try:
            image = read_study(path.parent).image
        except RenalsegError as err:
            assert str(path.parent) in str(err)
            outcomes["error"] += 1
        else:
            assert _same_image(image, reference), f"mutation {k} read as a different image"
            outcomes["same"] += 1
    assert outcomes["error"] >= 5 and outcomes["same"] >= 5, outcomes


def test_random_byte_flips_in_a_nifti_gz_give_an_error_or_the_same_image(tmp_path):
    """Every byte of a .nii.gz is covered by its gzip CRC-32, header included."""
    rng = np.random.default_rng(28)
    clean = write_image(_ct(), tmp_path / "clean.nii.gz")
    reference = read_image(clean)
    data = clean.read_bytes()
    outcomes = {"error": 0, "same": 0}
    for k, mutated in enumerate(_mutations(rng, data, (0, len(data)), 150)):
        path = tmp_path / f"m{k}.nii.gz"
        path.write_bytes(mutated)
        try:
            image = read_image(path)
        except RenalsegError as err:
            assert str(path) in str(err)
            outcomes["error"] += 1
            continue
        assert _same_image(image, reference), f"mutation {k} read as a different image"
        outcomes["same"] += 1
    assert outcomes["error"] > 100, outcomes  # nearly every flip is caught; the rest are gzip's mtime/OS bytes


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the values it is given
def test_random_byte_flips_in_dicom_headers_give_an_error_or_the_same_image(tmp_path):
    """Header bytes of one slice of a series (pixel bytes carry no checksum in DICOM)."""
    rng = np.random.default_rng(28)
    series = _series(tmp_path, make_ct(shape_zyx=(4, 8, 10), kidneys=((2, 4, 5, 1, 2, 3),)))
    reference = read_study(series).image
    files = sorted(series.iterdir())
    outcomes = {"error": 0, "same": 0}
    for k in range(80):
        victim = files[int(rng.integers(len(files)))]
        clean = victim.read_bytes()
        pixels = pydicom.dcmread(victim, defer_size=0).get_item(0x7FE00010, keep_deferred=True).value_tell
        victim.write_bytes(_mutations(rng, clean, (128, pixels), 1)[0])
        try:
            image = read_study(series).image
        except RenalsegError as err:
            assert str(series) in str(err)
            outcomes["error"] += 1
        else:
            assert _same_image(image, reference), f"mutation {k} of {victim.name} read as a different image"
            outcomes["same"] += 1
        finally:
            victim.write_bytes(clean)
    assert outcomes["error"] >= 10 and outcomes["same"] >= 10, outcomes
