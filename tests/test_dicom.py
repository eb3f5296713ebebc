"""DICOM reading on the real fixture, and every bad input built from it in tmp_path."""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import DICOM_FIXTURE, DICOM_REFERENCE_LABELS, require
from pydicom.uid import generate_uid

from renalseg.errors import DicomError, SeriesSelectionError, UsageError
from renalseg.geometry import Geometry
from renalseg.io.dicom import (
    EMPTY_UID,
    CorruptDicomError,
    DuplicateSliceError,
    GantryTiltError,
    MissingSliceError,
    NoDicomError,
    NonUniformSpacingError,
    NotCTError,
    SingleSliceError,
    SliceGeometryError,
    list_series,
    read_dicom_study,
)
from renalseg.io.study import read_study


# -- helpers -----------------------------------------------------------------------------------
def _fixture_files() -> list[Path]:
    return sorted(require(DICOM_FIXTURE).iterdir())


def _by_z(files: list[Path]) -> list[Path]:
    """Files sorted by their z position (superior last)."""
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def copy_series(dest: Path, files: list[Path] | None = None) -> Path:
    """Writable copies of the fixture's files (copyfile: the originals are read-only)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in files if files is not None else _fixture_files():
        shutil.copyfile(path, dest / path.name)
    return dest


def edit(path: Path, **changes: object) -> None:
    """Change header fields in place; the JPEG 2000 pixel data is kept encoded as-is."""
    ds = pydicom.dcmread(path)
    for name, value in changes.items():
        setattr(ds, name, value)
    ds.save_as(path)


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def fixture_study():
    return read_dicom_study(require(DICOM_FIXTURE))


# -- the real fixture --------------------------------------------------------------------------
def test_fixture_geometry_is_exactly_the_headers(fixture_study):
    files = _fixture_files()
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    lowest = min(headers, key=lambda h: float(h.ImagePositionPatient[2]))
    g = fixture_study.geometry
    assert fixture_study.format == "dicom"
    assert g.shape_xyz == (512, 512, 20)
    row_mm, col_mm = (float(v) for v in headers[0].PixelSpacing)
    assert (row_mm, col_mm) == (0.9765625, 0.9765625)
    assert g.spacing_xyz_mm == (col_mm, row_mm, 2.0)
    # origin is the most inferior slice's position; z (index) runs superior
    assert g.origin_xyz_mm == tuple(float(v) for v in lowest.ImagePositionPatient)
    assert g.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert g.orientation == "LPS"
    assert fixture_study.series_uid is None  # the header's UID is empty
    assert fixture_study.slice_count == 20
    assert fixture_study.series_description == "CT Body 3.0"


def test_fixture_is_in_hu_with_the_headers_rescale(fixture_study):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in _fixture_files()]
    array = fixture_study.volume.array
    # stored values 0..Largest with intercept -1024: HU must be exactly that range
    expected_min = min(float(h.SmallestImagePixelValue) * float(h.RescaleSlope) + float(h.RescaleIntercept)
                       for h in headers)
    expected_max = max(float(h.LargestImagePixelValue) * float(h.RescaleSlope) + float(h.RescaleIntercept)
                       for h in headers)
    assert (float(array.min()), float(array.max())) == (expected_min, expected_max) == (-1024.0, 1839.0)


def test_every_file_lands_on_the_slice_its_position_names(fixture_study):
    g: Geometry = fixture_study.geometry
    volume = fixture_study.volume.array
    for path in _fixture_files():
        position = [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient]
        index = g.world_to_index(np.asarray([position]))[0]
        np.testing.assert_allclose(index[:2], 0.0, atol=1e-6)
        k = int(round(index[2]))
        single = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0]
        np.testing.assert_array_equal(volume[k], single)


def test_reference_labels_line_up_only_through_geometry(fixture_study):
    labels = sitk.ReadImage(str(require(DICOM_REFERENCE_LABELS)))
    assert Geometry.from_sitk(labels).orientation == "LAS"  # stored with another axis order
    resampled = sitk.Resample(labels, fixture_study.image, sitk.Transform(), sitk.sitkNearestNeighbor,
                              0, labels.GetPixelID())
    hu = fixture_study.volume.array
    aligned = sitk.GetArrayFromImage(resampled)
    assert 60 <= np.median(hu[aligned == 5]) <= 120  # liver
    assert np.median(hu[aligned == 52]) > 120  # aorta, contrast-enhanced
    # the same arrays voxel by voxel, geometry ignored, put the aorta in the wrong place
    naive = sitk.GetArrayFromImage(labels)
    assert naive.shape == hu.shape
    assert np.median(hu[naive == 52]) < 60
    overlap = np.logical_and(naive == 52, aligned == 52).sum() / (aligned == 52).sum()
    assert overlap < 0.1


def test_list_series_reports_the_empty_uid():
    (series,) = list_series(require(DICOM_FIXTURE))
    assert series.key == EMPTY_UID and series.uid is None
    assert (series.slice_count, series.modality, series.description) == (20, "CT", "CT Body 3.0")


def test_read_study_reads_folders_as_dicom_and_leaves_them_unchanged(fixture_study):
    before = hashes(require(DICOM_FIXTURE))
    study = read_study(DICOM_FIXTURE)
    assert hashes(DICOM_FIXTURE) == before
    assert study.format == "dicom" and study.geometry == fixture_study.geometry


# -- order and names do not matter; inputs are untouched ------------------------------------
def test_shuffled_renamed_files_read_identically(tmp_path, fixture_study):
    files = _fixture_files()
    random.Random(7).shuffle(files)
    folder = tmp_path / "odd names"
    folder.mkdir()
    for i, path in enumerate(files):  # names carry no order, some no extension
        name = f"Schicht ä {(i * 7919) % 97:02d}" + (".dcm" if i % 2 else "")
        shutil.copyfile(path, folder / name)
    (folder / "notes.txt").write_text("not DICOM: ignored")
    before = hashes(folder)
    study = read_dicom_study(folder)
    assert hashes(folder) == before  # nothing written, renamed or touched
    assert study.geometry == fixture_study.geometry
    np.testing.assert_array_equal(study.volume.array, fixture_study.volume.array)


# -- several series -------------------------------------------------------------------------------
@pytest.fixture
def two_series(tmp_path) -> tuple[Path, str]:
    folder = copy_series(tmp_path / "two")
    uid = generate_uid()
    for path in _fixture_files():
        copy = folder / f"second_{path.name[-5:]}"
        shutil.copyfile(path, copy)
        edit(copy, SeriesInstanceUID=uid, SeriesDescription="Arterial 1.0")
    return folder, uid


def test_two_series_without_choice_list_each_one(two_series):
    folder, uid = two_series
    with pytest.raises(SeriesSelectionError, match="2 series") as info:
        read_dicom_study(folder)
    message = str(info.value)
    assert str(folder) in message and "--series" in message
    for expected in (uid, EMPTY_UID, "Arterial 1.0", "CT Body 3.0", "20 slices", "CT"):
        assert expected in message


def test_series_uid_picks_one(two_series, fixture_study):
    folder, uid = two_series
    chosen = read_dicom_study(folder, series_uid=uid)
    assert chosen.series_uid == uid and chosen.slice_count == 20
    assert chosen.geometry == fixture_study.geometry
    assert read_dicom_study(folder, series_uid=EMPTY_UID).series_uid is None
    assert {s.key for s in list_series(folder)} == {uid, EMPTY_UID}


def test_unknown_series_uid_suggests_the_closest(two_series):
    folder, uid = two_series
    typo = uid[:-1] + ("1" if uid[-1] != "1" else "2")
    with pytest.raises(SeriesSelectionError, match=f"Did you mean '{uid}'"):
        read_dicom_study(folder, series_uid=typo)


# -- bad inputs, each its own error --------------------------------------------------------------
def test_missing_slice(tmp_path):
    files = _by_z(_fixture_files())
    folder = copy_series(tmp_path / "gap", files[:9] + files[10:])
    with pytest.raises(MissingSliceError, match=r"missing slices: a gap of 4\.000 mm.*expected 2\.000 mm"):
        read_dicom_study(folder)


def test_non_uniform_spacing(tmp_path):
    folder = copy_series(tmp_path / "uneven")
    path = folder / _by_z(_fixture_files())[6].name
    x, y, z = (float(v) for v in pydicom.dcmread(path).ImagePositionPatient)
    edit(path, ImagePositionPatient=[x, y, z + 0.7])
    with pytest.raises(NonUniformSpacingError, match=r"non-uniform slice spacing: 1\.300 to 2\.700 mm"):
        read_dicom_study(folder)


def test_duplicate_position(tmp_path):
    folder = copy_series(tmp_path / "dup")
    source = _fixture_files()[3]
    shutil.copyfile(source, folder / "copy_of_one_slice")
    with pytest.raises(DuplicateSliceError, match="duplicated slice position"):
        read_dicom_study(folder)


def test_gantry_tilt(tmp_path):
    folder = copy_series(tmp_path / "tilt")
    angle = np.radians(12.0)
    for path in folder.iterdir():  # column direction tilted about x, positions still step along z
        edit(path, ImageOrientationPatient=[1, 0, 0, 0, float(np.cos(angle)), float(np.sin(angle))],
             GantryDetectorTilt=12)
    with pytest.raises(GantryTiltError, match=r"gantry tilt: the slices step at 12\.00°"):
        read_dicom_study(folder)


def test_one_slice_shifted_in_plane(tmp_path):
    folder = copy_series(tmp_path / "shifted")
    path = folder / _by_z(_fixture_files())[10].name
    x, y, z = (float(v) for v in pydicom.dcmread(path).ImagePositionPatient)
    edit(path, ImagePositionPatient=[x + 5.0, y, z])
    with pytest.raises(SliceGeometryError, match=r"displaced 5\.000 mm in-plane") as info:
        read_dicom_study(folder)
    assert not isinstance(info.value, GantryTiltError)


@pytest.mark.parametrize("modality", ["MR", "SEG", "PT"])
def test_not_ct(tmp_path, modality):
    folder = copy_series(tmp_path / modality)
    for path in folder.iterdir():
        edit(path, Modality=modality)
    with pytest.raises(NotCTError, match=f"Modality {modality}, not CT"):
        read_dicom_study(folder)


def test_single_slice(tmp_path):
    folder = copy_series(tmp_path / "one", _fixture_files()[:1])
    with pytest.raises(SingleSliceError, match="single 2D slice"):
        read_dicom_study(folder)


def test_empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(NoDicomError, match="no DICOM images found"):
        read_dicom_study(folder)


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    (folder / "scan.raw").write_bytes(bytes(1000))
    with pytest.raises(NoDicomError, match="2 file"):
        read_dicom_study(folder)


def test_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        read_dicom_study(tmp_path / "nope")


def test_truncated_file_names_the_file(tmp_path):
    folder = copy_series(tmp_path / "trunc")
    victim = folder / _fixture_files()[4].name
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 60_000])  # cut inside the JPEG 2000 codestream
    with pytest.raises(CorruptDicomError, match=f"{victim.name} is truncated"):
        read_dicom_study(folder)


def test_undecodable_pixel_data_names_the_file(tmp_path):
    folder = copy_series(tmp_path / "broken")
    victim = folder / _fixture_files()[4].name
    data = bytearray(victim.read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")  # JPEG 2000 start of codestream
    assert start > 0
    data[start:start + 200] = bytes(200)
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptDicomError, match=f"pixel data cannot be decoded in {victim.name}"):
        read_dicom_study(folder)


def test_garbage_after_the_preamble_is_corrupt(tmp_path):
    folder = copy_series(tmp_path / "garbage")
    victim = folder / _fixture_files()[5].name
    victim.write_bytes(victim.read_bytes()[:132] + bytes(range(256)) * 10)
    with pytest.raises(CorruptDicomError, match=f"{victim.name}: starts like a DICOM file"):
        read_dicom_study(folder)


def test_dcm_named_file_that_is_not_dicom(tmp_path):
    folder = copy_series(tmp_path / "badname")
    (folder / "slice.dcm").write_text("this is not DICOM")
    with pytest.raises(CorruptDicomError, match="slice.dcm: named like a DICOM file"):
        read_dicom_study(folder)


def test_every_error_is_a_dicom_error():
    for cls in (NoDicomError, CorruptDicomError, NotCTError, SingleSliceError, DuplicateSliceError,
                MissingSliceError, NonUniformSpacingError, GantryTiltError, SeriesSelectionError):
        assert issubclass(cls, DicomError) and cls.exit_code == 1


# -- series written by SimpleITK: oblique, anisotropic, off-origin --------------------------------
def _write_series(volume, folder: Path, uid: str, description: str, names: str) -> None:
    """One file per slice, written by SimpleITK/GDCM as a scanner would (positions in mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    d = volume.geometry.direction
    orientation = "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    order = list(range(image.GetDepth()))
    random.Random(1).shuffle(order)  # written in shuffled order
    for k in order:
        one = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in [("0008|0060", "CT"), ("0020|000e", uid), ("0008|103e", description),
                           ("0020|0037", orientation),
                           ("0020|0032", "\\".join(f"{p:.6f}" for p in position)),
                           ("0008|0018", f"{uid}.{k + 1}"), ("0020|0013", str(k + 1))]:
            one.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{names}{(k * 37) % 101:03d}.dcm"))
        writer.Execute(one)


def test_two_series_written_by_simpleitk_read_back_exactly(tmp_path):
    from conftest import make_ct

    first = make_ct()  # oblique 30°, spacing (0.8, 0.7, 2.5), off-origin
    second = make_ct(shape_zyx=(9, 20, 16), spacing_xyz_mm=(0.6, 0.6, 1.25), seed=3)
    folder = tmp_path / "exported"
    _write_series(first, folder, "1.2.826.0.1.3680043.2.1125.7.1", "Arterial", "a")
    _write_series(second, folder, "1.2.826.0.1.3680043.2.1125.7.2", "Venous", "b")
    with pytest.raises(SeriesSelectionError, match="2 series"):
        read_dicom_study(folder)
    for volume, uid in ((first, "1.2.826.0.1.3680043.2.1125.7.1"),
                        (second, "1.2.826.0.1.3680043.2.1125.7.2")):
        study = read_dicom_study(folder, series_uid=uid)
        assert study.geometry.shape_zyx == volume.geometry.shape_zyx
        np.testing.assert_allclose(study.geometry.spacing_xyz_mm, volume.geometry.spacing_xyz_mm, atol=1e-5)
        np.testing.assert_allclose(study.geometry.origin_xyz_mm, volume.geometry.origin_xyz_mm, atol=1e-5)
        np.testing.assert_allclose(study.geometry.direction, volume.geometry.direction, atol=1e-6)
        np.testing.assert_array_equal(study.volume.array, volume.array)


def test_each_slices_own_rescale_is_applied(tmp_path, fixture_study):
    folder = copy_series(tmp_path / "rescale")
    by_z = [folder / p.name for p in _by_z(_fixture_files())]
    for k, path in enumerate(by_z):  # non-integral slope; slice 3 has its own intercept
        edit(path, RescaleSlope=0.5, RescaleIntercept=-1000 if k == 3 else -1024)
    study = read_dicom_study(folder)
    stored = fixture_study.volume.array.astype(np.float64) + 1024  # fixture: slope 1, intercept -1024
    expected = stored * 0.5 - 1024
    expected[3] += 24
    assert study.image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(study.volume.array, expected)


def test_two_series_without_uid_are_told_apart(tmp_path):
    folder = copy_series(tmp_path / "no_uids")
    other_frame = generate_uid()
    for path in _fixture_files()[:5]:  # a 5-slice series, also without UID, another frame of reference
        copy = folder / f"other_{path.name[-5:]}"
        shutil.copyfile(path, copy)
        edit(copy, FrameOfReferenceUID=other_frame)
    series = list_series(folder)
    assert {s.key for s in series} == {EMPTY_UID, f"{EMPTY_UID}#2"}
    assert sorted(s.slice_count for s in series) == [5, 20] and {s.uid for s in series} == {None}
    with pytest.raises(SeriesSelectionError, match=r"(?s)2 series.*\(empty\)#2"):
        read_dicom_study(folder)
    counts = {s.key: s.slice_count for s in series}
    for key, count in counts.items():
        assert read_dicom_study(folder, series_uid=key).slice_count == count


def test_tilt_tag_with_consistent_geometry_reads_with_a_warning(tmp_path, caplog, fixture_study):
    folder = copy_series(tmp_path / "tag_only")
    for path in folder.iterdir():
        edit(path, GantryDetectorTilt=7.5)
    with caplog.at_level("WARNING", logger="renalseg.io.dicom"):
        study = read_dicom_study(folder)
    assert "GantryDetectorTilt is 7.5°" in caplog.text
    assert study.geometry == fixture_study.geometry


# -- multi-frame objects (Enhanced CT, Legacy Converted Enhanced CT) ----------------------------------
def _frames_reworked(path: Path, *, sop_class: str | None = None, order_seed: int | None = None,
                     intercept_step: int = 0, rle: bool = False) -> None:
    """Rewrite a multi-frame object in place as another scanner might store the same HU.

    ``order_seed``: frames stored in a shuffled order (their functional groups with them);
    ``intercept_step``: each frame its own RescaleIntercept (frame k: the shared one minus
    k × step, its stored values raised to match), in the per-frame groups; ``rle``: the
    pixels RLE Lossless compressed.
    """
    import copy

    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.copy()
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    if intercept_step:
        shared = ds.SharedFunctionalGroupsSequence[0]
        transform = shared.PixelValueTransformationSequence
        del shared.PixelValueTransformationSequence
        intercept = float(transform[0].RescaleIntercept)
        for k, group in enumerate(groups):
            group.PixelValueTransformationSequence = copy.deepcopy(transform)
            group.PixelValueTransformationSequence[0].RescaleIntercept = f"{intercept - k * intercept_step:g}"
            stored[k] += k * intercept_step
    if order_seed is not None:
        order = list(range(len(groups)))
        random.Random(order_seed).shuffle(order)
        groups, stored = [groups[i] for i in order], stored[order]
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.PixelData = stored.astype(stored.dtype).tobytes()
    if sop_class:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    if rle:
        ds.compress(RLELossless, stored)
    ds.save_as(path)


@pytest.mark.parametrize("decoder", ["pydicom", "gdcm"])
@pytest.mark.parametrize("kind", ["legacy converted", "enhanced, shuffled, own rescale a frame, RLE"])
def test_a_multi_frame_ct_reads_as_its_single_frame_series_does(tmp_path, fixture_study, kind, decoder,
                                                                 monkeypatch):
    """Either decoder: pydicom frame by frame, or GDCM (what a transfer syntax pydicom
    cannot decode here gets), which applies the first frame's rescale to every frame."""
    from conftest import to_multi_frame

    import renalseg.io.dicom

    if decoder == "gdcm":
        monkeypatch.setattr(renalseg.io.dicom, "_pydicom_decodes", lambda transfer_syntax: False)

    folder = tmp_path / "multi"
    (path,) = to_multi_frame(_fixture_files(), folder)
    if kind != "legacy converted":
        _frames_reworked(path, sop_class="1.2.840.10008.5.1.4.1.1.2.1", order_seed=4, intercept_step=3, rle=True)
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_encapsulated
    before = hashes(folder)
    study = read_dicom_study(folder)
    assert hashes(folder) == before  # read, never written
    assert study.geometry.shape_zyx == fixture_study.geometry.shape_zyx and study.slice_count == 20
    np.testing.assert_allclose(study.geometry.spacing_xyz_mm, fixture_study.geometry.spacing_xyz_mm, atol=1e-4)
    np.testing.assert_allclose(study.geometry.origin_xyz_mm, fixture_study.geometry.origin_xyz_mm, atol=1e-4)
    np.testing.assert_allclose(study.geometry.direction, fixture_study.geometry.direction, atol=1e-6)
    np.testing.assert_array_equal(study.volume.array, fixture_study.volume.array)  # the same HU, voxel for voxel
    assert study.extra["slice_thickness_mm"] == 3.0 and study.extra["convolution_kernel"].startswith("Br38f")
    # slice k is the frame dicom_frames[k] of dicom_files[k], the frame lying where slice k does
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert study.dicom_files == (path,) * 20 and sorted(study.dicom_frames) == list(range(1, 21))
    for k, frame in enumerate(study.dicom_frames):
        position = ds.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position],
                                   study.geometry.index_to_world([[0, 0, k]])[0], atol=1e-4)
    assert [s.slice_count for s in list_series(folder)] == [20]


def test_an_oblique_series_split_over_two_multi_frame_objects_reads_whole(tmp_path):
    from conftest import make_ct, to_multi_frame

    volume = make_ct()  # oblique 30°, spacing (0.8, 0.7, 2.5), off-origin
    _write_series(volume, tmp_path / "classic", "1.2.826.0.1.3680043.2.1125.7.3", "Arterial", "s")
    files = to_multi_frame(sorted((tmp_path / "classic").iterdir()), tmp_path / "multi", objects=2)
    study = read_dicom_study(tmp_path / "multi")
    assert set(study.dicom_files) == set(files) and len(study.dicom_frames) == volume.geometry.shape_zyx[0]
    np.testing.assert_allclose(study.geometry.spacing_xyz_mm, volume.geometry.spacing_xyz_mm, atol=1e-5)
    np.testing.assert_allclose(study.geometry.origin_xyz_mm, volume.geometry.origin_xyz_mm, atol=1e-5)
    np.testing.assert_allclose(study.geometry.direction, volume.geometry.direction, atol=1e-6)
    np.testing.assert_array_equal(study.volume.array, volume.array)


def test_a_multi_frame_object_holding_two_volumes_is_refused_naming_the_frames(tmp_path):
    from conftest import to_multi_frame

    (path,) = to_multi_frame(_fixture_files(), tmp_path / "two_time_points")
    ds = pydicom.dcmread(path)
    groups = ds.PerFrameFunctionalGroupsSequence
    for k in range(10, 20):  # frames 11-20 where frames 1-10 lie: a second time point
        groups[k].PlanePositionSequence[0].ImagePositionPatient = groups[k - 10].PlanePositionSequence[0].ImagePositionPatient
    ds.save_as(path)
    with pytest.raises(DuplicateSliceError, match=r"enhanced_1\.dcm frame \d+ and enhanced_1\.dcm frame \d+ both at"
                                                  r".*several volumes: time points"):
        read_dicom_study(tmp_path / "two_time_points")


def test_a_multi_frame_object_without_per_frame_positions_is_refused(tmp_path):
    from conftest import to_multi_frame

    (path,) = to_multi_frame(_fixture_files(), tmp_path / "unplaced")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(path)
    with pytest.raises(DicomError, match=r"enhanced_1\.dcm is a multi-frame DICOM object with 20 frames but no "
                                         r"per-frame functional groups.*dcm2niix"):
        read_dicom_study(tmp_path / "unplaced")


# -- a PACS export: the CT volume among localizers, dose reports and reformats -------------------------
def _extra_series(folder: Path, name: str, files: list[Path], **changes: object) -> None:
    """Copies of fixture files as another series of the same study (its own UID)."""
    uid = generate_uid(entropy_srcs=[name])
    for k, path in enumerate(files):
        copy = folder / f"{name}_{k:02d}.dcm"
        shutil.copyfile(path, copy)
        edit(copy, SeriesInstanceUID=uid, SeriesDescription=name, **changes)


def test_the_one_ct_volume_is_read_and_the_localizer_dose_report_and_reformat_are_named(tmp_path, fixture_study):
    folder = copy_series(tmp_path / "export")
    files = _by_z(_fixture_files())
    _extra_series(folder, "Topogram", files[:1], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    _extra_series(folder, "Patient Protocol", files[:1], SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    _extra_series(folder, "Cor MPR", files[:4], ImageType=["DERIVED", "SECONDARY", "MPR"])
    _extra_series(folder, "Planning PET", files[:3], Modality="PT")
    before = hashes(folder)
    study = read_dicom_study(folder)
    assert hashes(folder) == before
    np.testing.assert_array_equal(study.volume.array, fixture_study.volume.array)
    assert study.geometry == fixture_study.geometry and study.series_uid is None  # the fixture's empty UID
    skipped = study.extra["series_skipped"]
    assert len(skipped) == 4 and study.describe()["series_skipped"] == skipped
    for description, why in [("Topogram", "a localizer (scout)"),
                             ("Patient Protocol", "a secondary capture (a screenshot or dose report)"),
                             ("Cor MPR", "a reformat (MPR, MIP or another view) beside an axial volume"),
                             ("Planning PET", "Modality PT, not CT")]:
        assert any(f"'{description}': {why}" in line for line in skipped), (description, skipped)
    # naming a series still reads it, whatever it is
    (reformat,) = [s for s in list_series(folder) if s.description == "Cor MPR"]
    assert read_dicom_study(folder, series_uid=reformat.key).slice_count == 4


@pytest.mark.parametrize("second", ["Venous", "Thin iterative"])
def test_two_ct_volumes_beside_a_localizer_are_the_users_choice(tmp_path, second):
    """A second phase, or a second axial reconstruction that its scanner marks DERIVED."""
    folder = copy_series(tmp_path / "two_phases")
    files = _by_z(_fixture_files())
    _extra_series(folder, second, files,
                  ImageType=["ORIGINAL" if second == "Venous" else "DERIVED", "PRIMARY", "AXIAL"])
    _extra_series(folder, "Topogram", files[:1], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(SeriesSelectionError, match=r"(?s)3 series in one folder, 2 of them CT volumes; choose one "
                                                   r"with --series UID.*'Topogram'  1 slice  CT  \(passed over: "
                                                   r"a localizer \(scout\)\)"):
        read_dicom_study(folder)
    only_pictures = tmp_path / "pictures"
    only_pictures.mkdir()
    _extra_series(only_pictures, "Topogram", files[:1], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    _extra_series(only_pictures, "Dose", files[:1], SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    with pytest.raises(SeriesSelectionError, match="2 series in one folder, none of them a CT volume"):
        read_dicom_study(only_pictures)


def test_bolus_tracking_is_passed_over_but_a_slice_of_the_volume_in_another_series_is_not(tmp_path, fixture_study):
    folder = copy_series(tmp_path / "cta")
    files = _by_z(_fixture_files())
    middle = float(pydicom.dcmread(files[10], stop_before_pixels=True).ImagePositionPatient[2])
    # bolus tracking: 6 images at one table position, on the volume's own slice there
    _extra_series(folder, "PreMonitoring", [files[10]] * 6, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    study = read_dicom_study(folder)
    np.testing.assert_array_equal(study.volume.array, fixture_study.volume.array)
    assert study.extra["series_skipped"] == [
        f"{list_series(folder)[0].key} 'PreMonitoring': 6 slices at one table position (bolus tracking or a "
        "dynamic series)"]
    assert middle == float(pydicom.dcmread(folder / "PreMonitoring_00.dcm", stop_before_pixels=True)
                           .ImagePositionPatient[2])
    # the volume's lowest slice with a damaged series UID and Modality: where a slice is missing, so refused
    damaged = folder / files[0].name
    edit(damaged, SeriesInstanceUID="1.2.3.4", Modality="OT")
    with pytest.raises(SeriesSelectionError, match=rf"{files[0].name} \(Modality OT, series 1\.2\.3\.4\) lies on the "
                                                   r"grid of series \(empty\), where one of its slices would be"):
        read_dicom_study(folder)


# -- one series, two volumes (two contrast phases or a dynamic scan at the same positions) --------------
def test_two_acquisitions_in_one_series_are_two_volumes_to_choose_from(tmp_path, fixture_study):
    folder = copy_series(tmp_path / "dual_phase")
    for path in _fixture_files():  # the same positions again, a later acquisition 100 HU brighter
        copy = folder / f"late_{path.name[-6:]}"
        shutil.copyfile(path, copy)
        edit(copy, AcquisitionNumber=15, RescaleIntercept=-924)
    assert [(s.key, s.slice_count) for s in list_series(folder)] == [("(empty)#acq1", 20), ("(empty)#acq2", 20)]
    with pytest.raises(SeriesSelectionError, match=r"(?s)2 series in one folder, 2 of them CT volumes.*"
                                                   r"\(empty\)#acq1 .*\(empty\)#acq2 "):
        read_dicom_study(folder)
    for key, added in (("(empty)#acq1", 0), ("(empty)#acq2", 100)):
        study = read_dicom_study(folder, series_uid=key)
        assert study.geometry == fixture_study.geometry and study.series_key == key
        assert study.describe()["series_key"] == key
        np.testing.assert_array_equal(study.volume.array, fixture_study.volume.array + added)
    assert all(p.name.startswith("late_") for p in read_dicom_study(folder, series_uid="(empty)#acq2").dicom_files)
    # slices sharing positions that nothing tells apart stay refused
    edit(folder / f"late_{_fixture_files()[0].name[-6:]}", AcquisitionNumber=14)
    with pytest.raises(DuplicateSliceError):
        read_dicom_study(folder)


@pytest.mark.parametrize("decoder", ["pydicom", "gdcm"])
def test_a_multi_frame_object_of_two_time_points_is_two_volumes(tmp_path, fixture_study, decoder, monkeypatch):
    import copy

    import renalseg.io.dicom

    if decoder == "gdcm":
        monkeypatch.setattr(renalseg.io.dicom, "_pydicom_decodes", lambda transfer_syntax: False)

    from conftest import to_multi_frame
    from pydicom.dataset import Dataset

    (path,) = to_multi_frame(_fixture_files(), tmp_path / "dynamic")
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    groups = list(ds.PerFrameFunctionalGroupsSequence) + copy.deepcopy(list(ds.PerFrameFunctionalGroupsSequence))
    for k, group in enumerate(groups):
        content = group.FrameContentSequence[0] if "FrameContentSequence" in group else Dataset()
        content.TemporalPositionIndex = 1 + k // 20
        group.FrameContentSequence = [content]
        if k >= 20:  # the later time point 100 HU brighter through its own rescale (frame 1's stays shared)
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "1", "-924", "HU"
            group.PixelValueTransformationSequence = [transform]
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.NumberOfFrames = 40
    ds.PixelData = np.concatenate([stored, stored]).tobytes()
    ds.save_as(path)
    uid = str(ds.SeriesInstanceUID)
    with pytest.raises(SeriesSelectionError, match=rf"series {uid} holds 2 volumes"):
        read_dicom_study(tmp_path / "dynamic", series_uid=uid)
    later = read_dicom_study(tmp_path / "dynamic", series_uid=f"{uid}#acq2")
    np.testing.assert_array_equal(later.volume.array, fixture_study.volume.array + 100)
    assert sorted(later.dicom_frames) == list(range(21, 41)) and later.geometry == fixture_study.geometry


def test_a_description_pattern_picks_the_phase_in_every_folder_of_a_batch(tmp_path, fixture_study):
    """``--series '*arter*'``: one option for a batch whose folders hold an arterial and a venous phase."""
    folders = []
    for patient, arterial_name in (("p1", "CTA Arterial 1.0 Br40"), ("p2", "ARTERIELL 0.75")):
        folder = tmp_path / patient
        folder.mkdir()
        files = _by_z(_fixture_files())
        _extra_series(folder, arterial_name, files)
        _extra_series(folder, "Venous 1.0", files, RescaleIntercept=-924)
        _extra_series(folder, "Topogram", files[:1], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
        folders.append(folder)
    for folder in folders:
        study = read_dicom_study(folder, series_uid="*ARTER*")  # case does not matter
        np.testing.assert_array_equal(study.volume.array, fixture_study.volume.array)
        assert any("'Venous 1.0': its description does not match '*ARTER*'" in line
                   for line in study.extra["series_skipped"])
        np.testing.assert_array_equal(read_dicom_study(folder, series_uid="*ven*").volume.array,
                                      fixture_study.volume.array + 100)
    with pytest.raises(SeriesSelectionError, match=r"3 series in one folder, none of them a CT volume described as "
                                                   r"'\*portal\*'"):
        read_dicom_study(folders[0], series_uid="*portal*")
    with pytest.raises(SeriesSelectionError, match=r"2 of them CT volumes described as '\*1\.0\*'; choose one"):
        read_dicom_study(folders[0], series_uid="*1.0*")
    # a folder of one series is read only when its description matches
    single = copy_series(tmp_path / "single")
    with pytest.raises(SeriesSelectionError, match="none of them a CT volume described as"):
        read_dicom_study(single, series_uid="*arter*")
    assert read_dicom_study(single, series_uid="*body*").slice_count == 20  # 'CT Body 3.0'


def test_another_phase_reaching_a_slice_further_is_no_stray_slice(tmp_path, fixture_study):
    """The venous phase covers one slice more than the arterial one, on the same grid: picked by
    description, the arterial volume is read; only a series that is no CT volume counts as a stray slice."""
    folder = tmp_path / "phases"
    folder.mkdir()
    files = _by_z(_fixture_files())
    _extra_series(folder, "Arterial", files[1:])
    _extra_series(folder, "Venous", files)
    study = read_dicom_study(folder, series_uid="*arterial*")
    np.testing.assert_array_equal(study.volume.array, fixture_study.volume.array[1:])


# -- a damaged header is refused with the file named, never read into other values ---------------------
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the damaged UID it is given
@pytest.mark.parametrize("damage", ["SOP Class UID swallowed the image's elements", "Pixel Representation flipped",
                                    "Photometric Interpretation flipped", "Rescale Slope empty",
                                    "Bits Stored without its High Bit"])
def test_a_slice_with_a_damaged_header_is_refused_not_read_differently(tmp_path, damage):
    """What random header byte flips do to one slice (tests/test_hostile.py): each would have
    left the slice out or decoded its pixels to other values."""
    folder = copy_series(tmp_path / "series")
    victim = folder / _by_z(_fixture_files())[5].name
    ds = pydicom.dcmread(victim)
    if damage.startswith("SOP Class UID"):
        for keyword in ("Rows", "Columns", "Modality"):
            delattr(ds, keyword)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2\x00\x08\x00garbage"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        expected = rf"{victim.name}; .* truncated or damaged copies"
    elif damage == "Pixel Representation flipped":
        ds.PixelRepresentation = 1 - int(ds.PixelRepresentation)
        expected = r"store their pixels differently"
    elif damage == "Photometric Interpretation flipped":
        ds.PhotometricInterpretation = "MONOCHROME1"
        expected = r"store their pixels differently"
    elif damage == "Rescale Slope empty":
        ds.RescaleSlope = ""
        expected = rf"{victim.name}: Rescale Slope or Rescale Intercept is present but empty"
    else:
        ds.BitsStored = 7  # unlike the other slices, and against its own High Bit
        expected = r"store their pixels differently \(.*\(16, 7, 11, "
    ds.save_as(victim)
    with pytest.raises(CorruptDicomError, match=expected):
        read_dicom_study(folder)


def test_a_dose_report_beside_the_slices_is_left_out(tmp_path, fixture_study):
    """A structured report (a valid non-image SOP Class, no pixels) is no damaged slice."""
    folder = copy_series(tmp_path / "series")
    ds = pydicom.dcmread(_fixture_files()[0], stop_before_pixels=True)
    for keyword in ("Rows", "Columns"):
        delattr(ds, keyword)
    ds.Modality, ds.SOPClassUID = "SR", "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(folder / "dose_report.dcm")
    np.testing.assert_array_equal(read_dicom_study(folder).volume.array, fixture_study.volume.array)



def test_a_multi_frame_object_whose_bits_stored_misses_its_high_bit_is_refused(tmp_path):
    from conftest import to_multi_frame

    (path,) = to_multi_frame(_fixture_files(), tmp_path / "enhanced")
    ds = pydicom.dcmread(path)
    ds.BitsStored = 7  # one object: no other slice to disagree with, its own High Bit (11) does
    ds.save_as(path)
    with pytest.raises(CorruptDicomError, match=r"enhanced_1\.dcm: Bits Stored 7, High Bit 11, Bits Allocated 16 do "
                                                r"not fit together"):
        read_dicom_study(tmp_path / "enhanced")
