"""Results other software opens: DICOM SEG (highdicom, pydicom) and Slicer's labels.seg.nrrd (pynrrd)."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import DICOM_FIXTURE, require
from test_cli_segment import analytic_model  # noqa: F401  (fixture)
from test_pipeline import tube_ct, write_dicom_series
from typer.testing import CliRunner

from renalseg.cli.app import app
from renalseg.geometry import Geometry
from renalseg.io.dicom import read_dicom_study
from renalseg.io.dicom_seg import series_description, write_dicom_seg
from renalseg.io.slicer import seg_nrrd_header
from renalseg.io.terminology import structure_for

runner = CliRunner()

#: Type 1 attributes of the Segmentation IOD checked in every SEG, by module (PS3.3 A.51):
#: what dciodvfy would refuse when missing or empty
SEG_TYPE1 = {
    "SOP Common": ("SOPClassUID", "SOPInstanceUID"),
    "General Study": ("StudyInstanceUID",),
    "General Series / Segmentation Series": ("Modality", "SeriesInstanceUID", "SeriesNumber"),
    "Frame of Reference": ("FrameOfReferenceUID",),
    "Enhanced General Equipment": ("Manufacturer", "ManufacturerModelName", "DeviceSerialNumber",
                                   "SoftwareVersions"),
    "Image Pixel": ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation", "PixelData"),
    "Segmentation Image": ("ImageType", "ContentLabel", "SegmentationType", "SegmentSequence"),
    "Multi-frame Functional Groups": ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
                                      "NumberOfFrames", "InstanceNumber", "ContentDate", "ContentTime"),
    "Multi-frame Dimension": ("DimensionIndexSequence", "DimensionOrganizationSequence"),
    "Common Instance Reference": ("ReferencedSeriesSequence",),
}
#: Type 1 attributes of each Segment Sequence item (SegmentAlgorithmName is 1C: required when automatic)
SEGMENT_TYPE1 = ("SegmentNumber", "SegmentLabel", "SegmentedPropertyCategoryCodeSequence",
                 "SegmentedPropertyTypeCodeSequence", "SegmentAlgorithmType", "SegmentAlgorithmName")
#: Type 2 attributes: present, may be empty
SEG_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
             "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator")


def check_seg_iod(ds: pydicom.Dataset) -> None:
    """Required attributes of the Segmentation IOD present (Type 1 non-empty), as dciodvfy checks them."""
    missing = [f"{module}: {k}" for module, keywords in SEG_TYPE1.items() for k in keywords
               if k not in ds or ds[k].value in (None, "", [])]
    missing += [k for k in SEG_TYPE2 if k not in ds]
    for item in ds.SegmentSequence:
        missing += [f"segment {item.get('SegmentNumber')}: {k}" for k in SEGMENT_TYPE1
                    if k not in item or item[k].value in (None, "", [])]
    shared = ds.SharedFunctionalGroupsSequence[0]
    for k in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if k not in shared:
            missing.append(f"shared {k}")
    for frame in ds.PerFrameFunctionalGroupsSequence:
        for k in ("FrameContentSequence", "PlanePositionSequence", "SegmentIdentificationSequence",
                  "DerivationImageSequence"):
            if k not in frame and k not in shared:  # one segment: identified once, in the shared groups
                missing.append(f"per-frame {k}")
                break
    assert not missing, missing
    assert ds.Modality == "SEG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID and len(referenced.ReferencedInstanceSequence) > 0


def seg_to_labels(path: Path, source_files: list[Path]) -> tuple[np.ndarray, hd.seg.Segmentation]:
    """The SEG read back with highdicom onto the source slices (label values from the tracking ids)."""
    seg = hd.seg.segread(str(path))
    uids = []
    for p in source_files:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        uids.append(str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID))
    present = {u[2] for u in seg.get_source_image_uids()}
    stacked = seg.get_pixels_by_source_instance(
        [u for u in uids if u in present], segment_numbers=None, combine_segments=True, relabel=False)
    number_to_value = {int(item.SegmentNumber): int(item.TrackingID.split("label ")[1].rstrip(")"))
                       for item in seg.SegmentSequence}
    out = np.zeros((len(uids), int(seg.Rows), int(seg.Columns)), np.uint8)
    lookup = np.zeros(max(number_to_value) + 1, np.uint8)
    for number, value in number_to_value.items():
        lookup[number] = value
    rows = [i for i, u in enumerate(uids) if u in present]
    out[rows] = lookup[stacked]
    return out, seg


def _segment(folder: Path, out: Path, *extra: str):
    return runner.invoke(app, ["segment", str(folder), "--out", str(out), "--input-is-roi", *extra])


def test_dicom_seg_of_a_segmented_series_matches_the_label_map(tmp_path, analytic_model):
    volume, _ = tube_ct()
    series = write_dicom_series(volume, tmp_path / "tube")
    result = _segment(series, tmp_path / "out")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "tube"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nii.gz")))
    assert labels.any()
    files = list(read_dicom_study(series).dicom_files)
    back, seg = seg_to_labels(folder / "labels.seg.dcm", files)
    assert np.array_equal(back, labels)  # voxel for voxel on the source slices
    check_seg_iod(pydicom.dcmread(str(folder / "labels.seg.dcm")))
    source = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert "FrameOfReferenceUID" not in source  # SimpleITK's writer leaves it out: made up, and said so
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {
        pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID for p in files}
    assert seg.SeriesDescription == "renalseg: research use; trained on synthetic phantoms"
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Renal artery"
    assert (segment.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("2841007", "SCT")
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "threshold" and "cd" * 32 in algorithm.AlgorithmParameters
    assert len(segment.RecommendedDisplayCIELabValue) == 3
    report = json.loads((folder / "report.json").read_text())
    assert report["dicom_seg"]["filled_in"] == ["FrameOfReferenceUID"] and "labels.seg.dcm" in report["outputs"]
    # preview.png as a Secondary Capture in the study, for PACS viewers that show no SEG
    from PIL import Image

    sc = pydicom.dcmread(str(folder / "preview.sc.dcm"))
    check_sc_iod(sc, np.asarray(Image.open(folder / "preview.png").convert("RGB")))
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesNumber == 9002
    assert report["dicom_sc"]["path"] == "preview.sc.dcm" and "preview.sc.dcm" in report["outputs"]
    # the volumes as a Structured Report on the SEG's segment, the figures report.json gives
    sr = read_measurement_report(folder / "labels.sr.dcm")
    artery = report["structures"]["artery"]
    assert sr["dataset"].StudyInstanceUID == source.StudyInstanceUID and report["dicom_sr"]["path"] == "labels.sr.dcm"
    assert list(sr["groups"]) == [1] and sr["groups"][1]["seg"] == seg.SOPInstanceUID
    assert sr["groups"][1]["figures"][("Volume", None)][0] == pytest.approx(
        sum(f["volume_ml"] for f in artery.values()), abs=1e-3) and sr["groups"][1]["figures"][("Volume", None)][0] > 0
    assert {side for _, side in sr["groups"][1]["figures"]} == {None} | {s.capitalize() for s in artery}
    assert sr["verdict"] == report["quality"]["verdict"]  # the warning the preview shows, beside the figures
    # and --no-dicom-seg, --no-dicom-sc leave them out
    assert _segment(series, tmp_path / "out2", "--no-dicom-seg", "--no-dicom-sc").exit_code == 0
    assert not list((tmp_path / "out2" / "tube").glob("*.dcm"))


def test_dicom_seg_of_the_real_fixture_with_empty_uids(tmp_path):
    """The real series (JPEG 2000, empty Study/Series/SOP UIDs): UIDs are made up and said so."""
    study = read_dicom_study(require(DICOM_FIXTURE))
    hu = sitk.GetArrayFromImage(study.image)
    labels = np.zeros(hu.shape, np.uint8)
    labels[(hu > 200) & (np.indices(hu.shape)[2] < 256)] = 1  # bone and contrast, right half: "artery"
    labels[(hu > 200) & (np.indices(hu.shape)[2] >= 256)] = 2  # left half: "kidney"
    info = write_dicom_seg(labels, study.geometry, {"0": "background", "1": "renal_artery", "2": "kidney"},
                           study.dicom_files, tmp_path / "x.seg.dcm", model_name="m", weights_sha256=None,
                           synthetic_training_only=False)
    assert "StudyInstanceUID" in info["filled_in"] and "SeriesInstanceUID" in info["filled_in"]
    assert any(g.startswith("SOPInstanceUID (from the file meta header") for g in info["filled_in"])
    back, seg = seg_to_labels(tmp_path / "x.seg.dcm", list(study.dicom_files))
    assert np.array_equal(back, labels)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Renal artery", "Kidney"]
    assert seg.SeriesDescription == series_description(False) == "renalseg: research use"
    check_seg_iod(pydicom.dcmread(str(tmp_path / "x.seg.dcm")))
    again = write_dicom_seg(labels, study.geometry, {"1": "renal_artery", "2": "kidney"}, study.dicom_files,
                            tmp_path / "y.seg.dcm", model_name="m", weights_sha256=None,
                            synthetic_training_only=False)
    # generated UIDs are derived from the series: the same series, the same study
    assert pydicom.dcmread(str(tmp_path / "y.seg.dcm")).StudyInstanceUID == seg.StudyInstanceUID
    assert again["filled_in"] == info["filled_in"]


#: Type 1 attributes of the Secondary Capture Image IOD (PS3.3 A.8.1) checked in every one written
SC_TYPE1 = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "ConversionType",
            "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
            "HighBit", "PixelRepresentation", "PlanarConfiguration", "PixelData")


def check_sc_iod(ds: pydicom.Dataset, picture: np.ndarray) -> None:
    """A Secondary Capture of ``picture`` (RGB): its required attributes and its pixels exactly."""
    missing = [k for k in SC_TYPE1 if k not in ds or ds[k].value in (None, "", [])]
    missing += [k for k in ("PatientName", "PatientID", "StudyDate", "StudyID", "AccessionNumber",
                            "PatientOrientation") if k not in ds]
    assert not missing, missing
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and ds.Modality == "OT"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert np.array_equal(ds.pixel_array, picture)


def _with_patient(series: Path) -> None:
    for path in series.iterdir():
        ds = pydicom.dcmread(str(path))
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "Test^Patient", "RS-0042", "ACC7"
        ds.save_as(str(path))


def test_a_secondary_capture_is_the_picture_filed_in_the_source_study(tmp_path):
    """The picture's pixels exactly, as a new series in the CT's study and patient; the real
    fixture's empty UIDs are derived as its SEG derives them, so the two share one study."""
    from PIL import Image

    from renalseg.errors import InputError
    from renalseg.io.dicom_sc import write_secondary_capture

    volume, _ = tube_ct()
    series = write_dicom_series(volume, tmp_path / "tube")
    _with_patient(series)
    files = list(read_dicom_study(series).dicom_files)
    picture = np.zeros((90, 160, 3), np.uint8)
    picture[10:40, 20:90] = (200, 30, 30)
    picture[50:, :] = np.random.default_rng(0).integers(0, 256, (40, 160, 3))
    info = write_secondary_capture(Image.fromarray(picture), files, tmp_path / "p.sc.dcm", series_number=9002,
                                   synthetic_training_only=True, what="preview", identifying_text=True)
    ds = pydicom.dcmread(str(tmp_path / "p.sc.dcm"))
    check_sc_iod(ds, picture)
    source = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    assert (ds.StudyInstanceUID, ds.PatientID, str(ds.PatientName), ds.AccessionNumber) == (
        source.StudyInstanceUID, "RS-0042", "Test^Patient", "ACC7")
    assert ds.SeriesInstanceUID not in (source.SeriesInstanceUID, "") and ds.SeriesNumber == 9002
    assert ds.SeriesDescription == "renalseg preview: research use; trained on synthetic phantoms"
    assert source.SeriesInstanceUID in ds.DerivationDescription and ds.BurnedInAnnotation == "YES"
    assert info["filled_in"] == [] and info["study_instance_uid"] == source.StudyInstanceUID

    real = read_dicom_study(require(DICOM_FIXTURE))
    info = write_secondary_capture(picture, real.dicom_files, tmp_path / "r.sc.dcm", series_number=9003,
                                   synthetic_training_only=False, what="plan", identifying_text=False)
    seg = write_dicom_seg(np.ones(real.geometry.shape_zyx, np.uint8), real.geometry, {"1": "kidney"},
                          real.dicom_files, tmp_path / "r.seg.dcm", model_name="m", weights_sha256=None,
                          synthetic_training_only=False)
    ds = pydicom.dcmread(str(tmp_path / "r.sc.dcm"))
    check_sc_iod(ds, picture)
    assert ds.StudyInstanceUID == pydicom.dcmread(str(tmp_path / "r.seg.dcm")).StudyInstanceUID
    assert "StudyInstanceUID" in info["filled_in"] and "StudyInstanceUID" in seg["filled_in"]
    assert ds.SeriesDescription == "renalseg plan: research use" and ds.BurnedInAnnotation == "NO"
    with pytest.raises(InputError, match="RGB picture"):
        write_secondary_capture(picture[..., 0], files, tmp_path / "g.sc.dcm", series_number=9002,
                                synthetic_training_only=True, what="preview", identifying_text=True)
    with pytest.raises(InputError, match="needs the source DICOM files"):
        write_secondary_capture(picture, [], tmp_path / "n.sc.dcm", series_number=9002,
                                synthetic_training_only=True, what="preview", identifying_text=True)
    assert not (tmp_path / "g.sc.dcm").exists() and not (tmp_path / "n.sc.dcm").exists()


def test_a_series_without_every_patient_attribute_still_gets_its_seg_and_secondary_capture(
        tmp_path, analytic_model):
    """A series as `renalseg synth --format dicom` writes it (no PatientBirthDate, PatientSex,
    AccessionNumber ...: anonymisers drop them too) is segmented with both DICOM objects, those
    attributes empty in them, where highdicom used to fail the whole study."""
    from renalseg.phantom.writer import write_dicom_series as write_phantom_series

    volume, _ = tube_ct()
    write_phantom_series(volume, tmp_path / "tube", uid_key="tube", patient_id="PHANTOM^tube")
    source = pydicom.dcmread(str(sorted((tmp_path / "tube").iterdir())[0]), stop_before_pixels=True)
    assert "PatientBirthDate" not in source and "AccessionNumber" not in source
    result = _segment(tmp_path / "tube", tmp_path / "out")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "tube"
    for name in ("labels.seg.dcm", "preview.sc.dcm", "labels.sr.dcm"):
        ds = pydicom.dcmread(str(folder / name))
        assert (ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber) == ("PHANTOM^tube", "", "")
        assert ds.StudyInstanceUID == source.StudyInstanceUID


def test_a_one_part_patient_name_is_copied_into_every_dicom_object_without_a_warning(tmp_path, analytic_model):
    """Anonymised exports name the patient in one part ("ANONYMOUS"): the SEG, the Secondary
    Capture and the SR copy it as it is, and none of them warns about it on the way."""
    import warnings

    from renalseg.phantom.writer import write_dicom_series as write_phantom_series

    volume, _ = tube_ct()
    write_phantom_series(volume, tmp_path / "tube", uid_key="tube", patient_id="ANONYMOUS")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _segment(tmp_path / "tube", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "person name" in str(w.message)], [str(w.message) for w in caught]
    for name in ("labels.seg.dcm", "preview.sc.dcm", "labels.sr.dcm"):
        assert pydicom.dcmread(str(tmp_path / "out" / "tube" / name)).PatientName == "ANONYMOUS"


@pytest.mark.parametrize("module,writer,key,name", [
    ("dicom_sc", "write_secondary_capture", "dicom_sc", "preview.sc.dcm"),
    ("dicom_sr", "write_measurement_report", "dicom_sr", "labels.sr.dcm")])
def test_a_pacs_copy_that_cannot_be_made_leaves_the_results_whole(tmp_path, analytic_model, monkeypatch,
                                                                  module, writer, key, name):
    import importlib

    def broken(*args, **kwargs):
        raise ValueError("no pixels today")

    monkeypatch.setattr(importlib.import_module(f"renalseg.io.{module}"), writer, broken)
    volume, _ = tube_ct()
    series = write_dicom_series(volume, tmp_path / "tube")
    assert _segment(series, tmp_path / "out").exit_code == 0
    folder = tmp_path / "out" / "tube"
    report = json.loads((folder / "report.json").read_text())
    assert report[key] == {"path": None, "reason": "ValueError: no pixels today"}
    assert {"labels.nii.gz", "labels.seg.dcm", "preview.png"} <= set(report["outputs"])
    assert name not in report["outputs"] and not (folder / name).exists()


def read_measurement_report(path: Path) -> dict:
    """A TID 1500 SR read back with highdicom: per referenced segment number, its structure code,
    tracking identifier and ``{(name, laterality or None): (value, unit)}``; per structure code of
    a group without a segment, its qualitative evaluations; the quality verdict (its code value,
    checked against the scheme the object declares) or None."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(str(path)))
    groups = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        segment = group.referenced_segment
        figures = {}
        for m in group.get_measurements():
            sides = [s.laterality.meaning for s in (m.finding_sites or []) if s.laterality is not None]
            name = m.name.meaning + (" (maximum)" if m.derivation is not None and m.derivation.meaning == "Maximum"
                                     else "")
            figures[(name, sides[0] if sides else None)] = (m.value, m.unit.value)
        groups[int(segment.referenced_segment_numbers[0])] = {
            "type": group.finding_type.value, "tracking": group.tracking_identifier,
            "seg": segment.referenced_sop_instance_uid, "series": segment.source_series_for_segmentation.value,
            "figures": figures}
    absent, verdict = {}, None
    for group in sr.content.get_image_measurement_groups():
        evaluations = [e for e in group.get_qualitative_evaluations() if e.name.meaning != "Finding category"]
        if group.finding_type is not None:
            absent[group.finding_type.value] = [(e.name.meaning, e.value.meaning) for e in evaluations]
            continue
        assert group.tracking_identifier == "Quality verdict" and len(evaluations) == 1
        (e,) = evaluations
        assert (e.name.scheme_designator, e.name.value, e.value.scheme_designator) == ("99RSEG", "verdict", "99RSEG")
        assert "99RSEG" in {s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence}
        verdict = e.value.value
    return {"dataset": sr, "groups": groups, "absent": absent, "verdict": verdict}


def test_the_volumes_and_tumour_diameter_are_a_structured_report_on_the_segs_segments(tmp_path):
    """labels.sr.dcm: one TID 1500 group per SEG segment, naming it; the volume in all and per
    side (laterality), the tumour's largest diameter per side; in the SEG's study, unverified."""
    from renalseg.io.dicom_sr import write_measurement_report

    study = read_dicom_study(require(DICOM_FIXTURE))
    hu = sitk.GetArrayFromImage(study.image)
    labels = np.zeros(hu.shape, np.uint8)
    labels[(hu > 200) & (np.indices(hu.shape)[2] < 256)] = 2  # "kidney"
    labels[5:9, 200:240, 300:340] = 4  # "tumour"
    names = {"0": "background", "1": "renal_vein", "2": "kidney", "3": "renal_artery", "4": "tumour"}
    seg = write_dicom_seg(labels, study.geometry, names, study.dicom_files, tmp_path / "x.seg.dcm",
                          model_name="four", weights_sha256="ab" * 32, synthetic_training_only=True)
    structures = {"kidney": {"right": {"volume_ml": 151.25}, "left": {"volume_ml": 0.0}},
                  "tumour": {"right": {"volume_ml": 0.0, "largest_diameter_mm": 0.0},
                             "left": {"volume_ml": 12.5, "largest_diameter_mm": 41.7}}}
    info = write_measurement_report(tmp_path / "x.seg.dcm", seg["segments"], names, structures,
                                    tmp_path / "x.sr.dcm", model_name="four", weights_sha256="ab" * 32,
                                    synthetic_training_only=True, verdict="unreliable")
    back = read_measurement_report(tmp_path / "x.sr.dcm")
    ds, groups = back["dataset"], back["groups"]
    seg_ds = pydicom.dcmread(str(tmp_path / "x.seg.dcm"), stop_before_pixels=True)
    assert ds.StudyInstanceUID == seg_ds.StudyInstanceUID and ds.SeriesNumber == 9004
    assert ds.SeriesInstanceUID not in (seg_ds.SeriesInstanceUID, "") and ds.Modality == "SR"
    assert (ds.VerificationFlag, ds.CompletionFlag) == ("UNVERIFIED", "COMPLETE")
    assert ds.SeriesDescription == "renalseg volumes: research use; trained on synthetic phantoms"
    numbers = {s["name"]: s["number"] for s in seg["segments"]}
    assert set(groups) == {numbers["Kidney"], numbers["Kidney tumour"]}
    kidney, tumour = groups[numbers["Kidney"]], groups[numbers["Kidney tumour"]]
    assert kidney["seg"] == tumour["seg"] == seg_ds.SOPInstanceUID
    assert kidney["series"] == seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID  # the CT series
    assert (kidney["type"], tumour["type"]) == ("64033007", "108369006")  # SNOMED CT: kidney, neoplasm
    assert kidney["figures"] == {("Volume", None): (151.25, "ml"), ("Volume", "Right"): (151.25, "ml"),
                                 ("Volume", "Left"): (0.0, "ml")}
    assert tumour["figures"] == {
        ("Volume", None): (12.5, "ml"), ("Volume", "Right"): (0.0, "ml"), ("Volume", "Left"): (12.5, "ml"),
        ("Diameter (maximum)", "Right"): (0.0, "mm"), ("Diameter (maximum)", "Left"): (41.7, "mm")}
    assert [g["structure"] for g in info["groups"]] == ["kidney", "tumour", "vein", "artery", "quality"]
    assert back["verdict"] == "unreliable"  # the quality verdict rides with the figures a PACS shows
    # labels.json names the vein and the artery, the SEG has no segment of them: "not found", not left out
    assert back["absent"] == {structure_for("renal_vein").type_code.value: [("Presence of property", "Absent")],
                              structure_for("renal_artery").type_code.value: [("Presence of property", "Absent")]}
    from renalseg.errors import InputError

    with pytest.raises(InputError, match="x.seg.dcm"):  # nothing to report: refused, nothing written
        write_measurement_report(tmp_path / "x.seg.dcm", seg["segments"], names, {}, tmp_path / "n.sr.dcm",
                                 model_name="four", weights_sha256=None, synthetic_training_only=True)
    assert not (tmp_path / "n.sr.dcm").exists()
    with pytest.raises(ValueError, match="'fine'.*ok, check, unreliable"):  # only the three verdicts
        write_measurement_report(tmp_path / "x.seg.dcm", seg["segments"], names, structures, tmp_path / "v.sr.dcm",
                                 model_name="four", weights_sha256=None, synthetic_training_only=True, verdict="fine")
    assert not (tmp_path / "v.sr.dcm").exists()


def test_the_structured_report_leaves_out_a_diameter_the_verdict_says_is_not_the_tumours_size(tmp_path):
    """A tumour label whose longest piece is too thin to be a tumour (quality.tumour_too_thin):
    a PACS shows the SR's measurement without the verdict's reasons, so its diameter is not
    stated there; the volume still is, and the other side's diameter."""
    from renalseg.io.dicom_sr import write_measurement_report

    study = read_dicom_study(require(DICOM_FIXTURE))
    hu = sitk.GetArrayFromImage(study.image)
    labels = np.zeros(hu.shape, np.uint8)
    labels[5:9, 200:240, 300:340] = 4
    names = {"0": "background", "4": "tumour"}
    seg = write_dicom_seg(labels, study.geometry, names, study.dicom_files, tmp_path / "x.seg.dcm",
                          model_name="four", weights_sha256=None, synthetic_training_only=True)
    structures = {"tumour": {  # a 60 mm sliver of 4 ml (4% of a 60 mm ball); a 30 mm tumour of 9 ml (64%)
        "right": {"volume_ml": 4.0, "largest_diameter_mm": 60.0, "largest_diameter_piece_ml": 4.0},
        "left": {"volume_ml": 9.0, "largest_diameter_mm": 30.0, "largest_diameter_piece_ml": 9.0}}}
    info = write_measurement_report(tmp_path / "x.seg.dcm", seg["segments"], names, structures,
                                    tmp_path / "x.sr.dcm", model_name="four", weights_sha256=None,
                                    synthetic_training_only=True, verdict="check")
    (group,) = read_measurement_report(tmp_path / "x.sr.dcm")["groups"].values()
    assert group["figures"] == {("Volume", None): (13.0, "ml"), ("Volume", "Right"): (4.0, "ml"),
                                ("Volume", "Left"): (9.0, "ml"), ("Diameter (maximum)", "Left"): (30.0, "mm")}
    words = info["groups"][0]["measurements"]
    assert any(w.startswith("right largest diameter not stated") for w in words)


def test_dicom_seg_refuses_a_label_map_off_the_series_grid(tmp_path):
    from renalseg.errors import GeometryError

    study = read_dicom_study(require(DICOM_FIXTURE))
    g = study.geometry
    with pytest.raises(GeometryError, match="not on the DICOM series' grid"):
        write_dicom_seg(np.ones((g.shape_zyx[0] - 1, *g.shape_zyx[1:]), np.uint8), g.crop((0, 0, 0), (
            g.shape_zyx[0] - 1, *g.shape_zyx[1:])), {"1": "renal_artery"}, study.dicom_files,
            tmp_path / "x.dcm", model_name="m", weights_sha256=None, synthetic_training_only=True)


def test_seg_nrrd_equals_the_label_map_on_its_grid(tmp_path, analytic_model):
    volume, _ = tube_ct()  # oblique, anisotropic, off-origin
    from renalseg.io.image import write_image

    write_image(volume, tmp_path / "in" / "tube.nii.gz")
    assert _segment(tmp_path / "in" / "tube.nii.gz", tmp_path / "out").exit_code == 0
    folder = tmp_path / "out" / "tube"
    image = sitk.ReadImage(str(folder / "labels.nii.gz"))
    labels = sitk.GetArrayFromImage(image)
    data, header = nrrd.read(str(folder / "labels.seg.nrrd"), index_order="C")
    assert data.dtype == np.uint8 and np.array_equal(data, labels)
    assert header["space"] == "left-posterior-superior"
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.allclose(header["space origin"], image.GetOrigin(), atol=1e-4)
    assert np.allclose(header["space directions"], (direction * np.asarray(image.GetSpacing())).T, atol=1e-4)
    assert header["Segment0_Name"] == "Renal artery" and header["Segment0_LabelValue"] == "3"
    assert header["Segment0_Layer"] == "0" and header["Segment0_Color"] == "0.839216 0.152941 0.156863"
    assert "TerminologyEntry:Segmentation category and type - DICOM master list~SCT^91723000^" \
           "Anatomical Structure~SCT^2841007^Renal artery~" in header["Segment0_Tags"]
    nz = np.argwhere(labels == 3)
    lo, hi = nz.min(axis=0)[::-1], nz.max(axis=0)[::-1]  # x, y, z
    assert header["Segment0_Extent"] == " ".join(str(int(v)) for pair in zip(lo, hi) for v in pair)
    # ITK reads the same grid back (what Slicer's reader does)
    again = sitk.ReadImage(str(folder / "labels.seg.nrrd"))
    assert np.allclose(again.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(again.GetSpacing(), image.GetSpacing(), atol=1e-4)
    assert np.allclose(again.GetDirection(), image.GetDirection(), atol=1e-4)


def test_seg_nrrd_header_names_each_structure():
    g = Geometry((2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, 0], labels[0, 0, 1], labels[1, 2, 3], labels[1, 1, 1] = 1, 2, 3, 4
    h = seg_nrrd_header(labels, g, {"0": "background", "1": "renal_vein", "2": "kidney", "3": "renal_artery",
                                    "4": "tumour"})
    assert [h[f"Segment{i}_Name"] for i in range(4)] == ["Renal vein", "Kidney", "Renal artery", "Kidney tumour"]
    assert [h[f"Segment{i}_LabelValue"] for i in range(4)] == ["1", "2", "3", "4"]
    assert "SCT^108369006^Neoplasm" in h["Segment3_Tags"] and "SCT^64033007^Kidney~" in h["Segment3_Tags"]


# -- centerlines -------------------------------------------------------------------------------


def _y_tree(direction) -> "Volume":
    """A trunk that forks in two, 3 voxels thick, on an oblique anisotropic grid."""
    from renalseg.volume import Volume

    g = Geometry((60, 40, 40), (0.7, 0.8, 0.9), (-30.0, 12.0, 400.0), direction)
    mask = np.zeros(g.shape_zyx, bool)
    mask[5:30, 19:22, 19:22] = True
    for k in range(0, 25):
        mask[30 + k, 19:22, 19 + k // 2:22 + k // 2] = True
        mask[30 + k, 19:22, 19 - k // 2:22 - k // 2] = True
    return Volume(mask.astype(np.uint8), g)


def _read_vtp(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    piece = ET.parse(path).getroot().find("PolyData/Piece")
    arrays = {a.get("Name"): np.array(a.text.split(), float) for a in piece.iter("DataArray")}
    return {"points": arrays["Points"].reshape(-1, 3), "radius": arrays["MaximumInscribedSphereRadius"],
            "branch": arrays["BranchId"].astype(int), "offsets": arrays["offsets"].astype(int),
            "connectivity": arrays["connectivity"].astype(int),
            "lines": int(piece.get("NumberOfLines")), "points_count": int(piece.get("NumberOfPoints"))}


def test_centerline_files_lie_on_the_label_and_share_tree_json_ids(tmp_path):
    from conftest import OBLIQUE_30DEG

    from renalseg.mesh import export_meshes

    labels = _y_tree(OBLIQUE_30DEG)
    summary = export_meshes(labels, tmp_path, label_names={1: "renal_artery"}, split=False)
    vtp = _read_vtp(tmp_path / "renal_artery_centerline.vtp")
    tree = json.loads((tmp_path / "tree.json").read_text())["trees"]["renal_artery"]["all"]
    assert tree["branch_points"] == 1 and tree["segments"] == 3
    assert sorted(vtp["branch"].tolist()) == sorted(s["id"] for s in tree["segment_list"]) == [1, 2, 3]
    assert vtp["lines"] == 3 and vtp["offsets"][-1] == vtp["points_count"] == len(vtp["radius"])
    assert (vtp["radius"] > 0).all()
    index = np.rint(labels.geometry.world_to_index(vtp["points"])).astype(int)  # LPS mm -> (x, y, z)
    assert labels.array[index[:, 2], index[:, 1], index[:, 0]].all()  # every point on the label
    markups = json.loads((tmp_path / "renal_artery_centerline.mrk.json").read_text())
    assert markups["@schema"].endswith("markups-schema-v1.0.3.json#")
    curves = markups["markups"]
    assert [c["type"] for c in curves] == ["Curve"] * 3 and {c["coordinateSystem"] for c in curves} == {"LPS"}
    assert [c["name"] for c in curves] == [f"renal_artery branch {i}" for i in vtp["branch"]]
    first = np.array([p["position"] for p in curves[0]["controlPoints"]])
    assert np.allclose(first, vtp["points"][:vtp["offsets"][0]], atol=1e-3)
    assert len(summary["centerlines"]) == 2


def test_centerlines_in_ras(tmp_path):
    from conftest import LPS

    from renalseg.mesh import export_meshes

    labels = _y_tree(LPS)
    export_meshes(labels, tmp_path / "lps", label_names={1: "renal_artery"}, split=False)
    export_meshes(labels, tmp_path / "ras", label_names={1: "renal_artery"}, split=False, space="ras")
    lps = _read_vtp(tmp_path / "lps" / "renal_artery_centerline.vtp")["points"]
    ras = _read_vtp(tmp_path / "ras" / "renal_artery_centerline.vtp")["points"]
    assert np.allclose(ras, lps * [-1, -1, 1])
    assert "SPACE=RAS" in (tmp_path / "ras" / "renal_artery_centerline.vtp").read_text()


def test_the_plan_of_a_dicom_study_writes_its_territories_as_a_dicom_seg(tmp_path):
    """A study segmented from DICOM: `renalseg plan --dicom-seg` finds the series again
    from report.json and writes territories.seg.dcm referencing it, one segment per territory
    named after its artery and coded as kidney, voxel for voxel those of
    territories.nii.gz; with the series gone, the plan is still written and says why
    there is no SEG."""
    import shutil

    from test_plan import _t_tree

    from renalseg.io.image import write_image
    from renalseg.plan import plan_study
    from renalseg.volume import Volume

    labels = _t_tree(tumour=True)
    ct = Volume(np.where(labels > 0, 200, 0).astype(np.int16),
                Geometry(labels.shape, (0.8, 0.8, 1.0), (10.0, -20.0, 300.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    series = write_dicom_series(ct, tmp_path / "series")
    study = read_dicom_study(series)
    folder = tmp_path / "out" / "series"
    write_image(Volume(labels, study.geometry), folder / "labels.nii.gz")
    (folder / "labels.json").write_text(json.dumps({"0": "background", "2": "kidney", "3": "renal_artery",
                                                    "4": "tumour"}))
    report = {"input": {"path": str(series), "format": "dicom", "series_uid": study.series_uid}, "rois": [],
              "model": {"sha256": "ab" * 32, "synthetic_training_only": True}}
    (folder / "report.json").write_text(json.dumps(report))
    assert not plan_study(folder).plan["study"].get("dicom_seg")  # asked for only
    assert not (folder / "territories.seg.dcm").exists()
    # plan.png as a Secondary Capture in the study: by default
    from PIL import Image

    assert json.loads((folder / "plan.json").read_text())["study"]["dicom_sc"] == {
        "path": str(folder / "plan.sc.dcm"), "reason": None}
    sc = pydicom.dcmread(str(folder / "plan.sc.dcm"))
    check_sc_iod(sc, np.asarray(Image.open(folder / "plan.png").convert("RGB")))
    source = pydicom.dcmread(str(study.dicom_files[0]), stop_before_pixels=True)
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesNumber == 9003
    assert sc.BurnedInAnnotation == "NO"  # the plan's own text, no file named
    cli = runner.invoke(app, ["plan", str(folder), "--dicom-seg", "--overwrite"])
    assert cli.exit_code == 0, cli.output
    result = plan_study(folder, out_dir=tmp_path / "same", dicom_seg=True)  # the same territories, for the check
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["study"]["dicom_seg"] == {"path": str(folder / "territories.seg.dcm"), "reason": None}
    back, seg = seg_to_labels(folder / "territories.seg.dcm", list(study.dicom_files))
    assert np.array_equal(back, result.territories.array)
    check_seg_iod(pydicom.dcmread(str(folder / "territories.seg.dcm")))
    names = json.loads((folder / "territories.json").read_text())
    assert sorted(s.SegmentLabel for s in seg.SegmentSequence) == sorted(
        f"{t['side']} kidney: {t['name']}" for v, t in names.items() if int(v) > 0)
    assert {s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence} == {"64033007"}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    assert seg.SeriesDescription == "renalseg plan: perfusion territories (research use)"
    shutil.rmtree(series)
    plan_study(folder, overwrite=True, dicom_seg=True)
    gone = json.loads((folder / "plan.json").read_text())["study"]
    for written in ("dicom_seg", "dicom_sc"):
        assert gone[written]["path"] is None and str(series) in gone[written]["reason"]
    assert not list(folder.glob("*.dcm"))  # not the earlier plan's left behind
    assert runner.invoke(app, ["plan", str(folder), "--no-dicom-sc", "--overwrite"]).exit_code == 0
    assert "dicom_sc" not in json.loads((folder / "plan.json").read_text())["study"]


def test_dicom_seg_of_a_multi_frame_series_references_each_frame_it_labels(tmp_path, analytic_model):
    """An Enhanced CT (one multi-frame object, oblique, frames stored out of order) through
    ``renalseg segment``: the SEG's frames reference the source frames their slices lie on."""
    import random

    from conftest import to_multi_frame

    volume, _ = tube_ct()
    classic = write_dicom_series(volume, tmp_path / "classic")
    (source,) = to_multi_frame(sorted(classic.iterdir()), tmp_path / "tube")
    ds = pydicom.dcmread(source)
    order = list(range(int(ds.NumberOfFrames)))
    random.Random(2).shuffle(order)
    ds.PerFrameFunctionalGroupsSequence = [ds.PerFrameFunctionalGroupsSequence[i] for i in order]
    ds.PixelData = ds.pixel_array[order].tobytes()
    ds.save_as(source)
    result = _segment(tmp_path / "tube", tmp_path / "out")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "tube"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nii.gz")))
    assert labels.any()
    study = read_dicom_study(tmp_path / "tube")
    seg = hd.seg.segread(str(folder / "labels.seg.dcm"))
    check_seg_iod(pydicom.dcmread(str(folder / "labels.seg.dcm")))
    back = np.zeros_like(labels)
    for item in seg.PerFrameFunctionalGroupsSequence:
        frame = int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        k = study.dicom_frames.index(frame)  # the label map's slice on that source frame
        np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                   study.geometry.index_to_world([[0, 0, k]])[0], atol=1e-4)
    for frame in range(1, int(ds.NumberOfFrames) + 1):
        k = study.dicom_frames.index(frame)
        try:
            back[k] = 3 * seg.get_pixels_by_source_frame(str(ds.SOPInstanceUID), [frame], combine_segments=True)[0]
        except ValueError:  # no SEG frame references it: nothing labelled there
            pass
    assert np.array_equal(back, labels)
    assert json.loads((folder / "report.json").read_text())["dicom_seg"]["path"] == "labels.seg.dcm"


def _seg_frames_on_the_label_map(path: Path, labels: np.ndarray, study) -> dict[tuple[int, int], np.ndarray]:
    """Check every frame of a SEG of a multi-frame series against the label map and the source:
    it lies on a slice k of the label grid (1e-4 mm), its pixels are label map slice k's for its
    segment's label value, and its one Source Image Sequence item names the object and frame
    holding slice k (``study.dicom_files[k]``, ``study.dicom_frames[k]``). Every (slice, label)
    pair with a voxel has exactly one frame. Returns ``{(k, label value): (position, pixels)}``."""
    ds = pydicom.dcmread(str(path))
    uid_of = {p: str(pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID) for p in set(study.dicom_files)}
    value_of = {int(s.SegmentNumber): int(s.TrackingID.split("label ")[1].rstrip(")")) for s in ds.SegmentSequence}
    shared = ds.SharedFunctionalGroupsSequence[0]
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    frames: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        k = int(round(study.geometry.world_to_index([position])[0][2]))
        np.testing.assert_allclose(position, study.geometry.index_to_world([[0, 0, k]])[0], atol=1e-4)
        identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        value = value_of[int(identification[0].ReferencedSegmentNumber)]
        (source,) = item.DerivationImageSequence[0].SourceImageSequence
        assert (source.ReferencedSOPInstanceUID, int(source.ReferencedFrameNumber)) == (
            uid_of[study.dicom_files[k]], study.dicom_frames[k]), f"SEG frame {i + 1} (slice {k})"
        assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert item.DerivationImageSequence[0].DerivationCodeSequence[0].CodeValue == "113076"
        assert (k, value) not in frames
        frames[(k, value)] = np.asarray(position), pixels[i]
        np.testing.assert_array_equal(pixels[i], labels[k] == value)
    assert set(frames) == {(k, int(v)) for k in range(labels.shape[0]) for v in np.unique(labels[k]) if v}
    assert int(ds.NumberOfFrames) == len(frames)  # every labelled slice of every segment, nothing else
    return frames


@pytest.mark.parametrize("sizes", [(20, 20), (7, 20, 13)], ids=["2 objects", "3 unequal objects"])
def test_a_series_split_over_several_multi_frame_objects_gets_one_dicom_seg_as_one_object_does(
        tmp_path, analytic_model, sizes):
    """``renalseg segment`` of a series a scanner split over several Enhanced CT objects: one
    SEG, read back with highdicom voxel for voxel where the label map has them, each frame
    naming the object and frame that hold its slice, every object referenced; the same
    segments, positions and pixels as the SEG of that series stored as one object."""
    from conftest import to_multi_frame

    volume, _ = tube_ct()  # oblique, anisotropic, off-origin; 40 slices
    classic = write_dicom_series(volume, tmp_path / "classic")
    objects = to_multi_frame(sorted(classic.iterdir()), tmp_path / "split", sizes=sizes)
    to_multi_frame(sorted(classic.iterdir()), tmp_path / "whole")
    for name in ("split", "whole"):
        result = _segment(tmp_path / name, tmp_path / "out")
        assert result.exit_code == 0, result.output
    split, whole = tmp_path / "out" / "split", tmp_path / "out" / "whole"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(split / "labels.nii.gz")))
    assert labels.any() and np.array_equal(labels, sitk.GetArrayFromImage(sitk.ReadImage(str(whole / "labels.nii.gz"))))
    study = read_dicom_study(tmp_path / "split")
    assert set(study.dicom_files) == set(objects) and len(objects) == len(sizes)
    assert json.loads((split / "report.json").read_text())["dicom_seg"]["path"] == "labels.seg.dcm"
    assert sorted(p.name for p in split.glob("*.seg.dcm")) == ["labels.seg.dcm"]  # one SEG

    ds = pydicom.dcmread(str(split / "labels.seg.dcm"))
    check_seg_iod(ds)
    frames = _seg_frames_on_the_label_map(split / "labels.seg.dcm", labels, study)
    uids = {str(pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID) for p in objects}
    (referenced,) = ds.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == pydicom.dcmread(str(objects[0]), stop_before_pixels=True).SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == uids
    assert {r.ReferencedSOPInstanceUID for r in ds.SourceImageSequence} == uids
    assert {r.ReferencedSOPInstanceUID for item in ds.PerFrameFunctionalGroupsSequence
            for r in item.DerivationImageSequence[0].SourceImageSequence} == uids  # each object holds a label here

    # highdicom finds every labelled voxel through the frame references, object by object
    seg = hd.seg.segread(str(split / "labels.seg.dcm"))
    back = np.zeros_like(labels)
    for path in objects:
        uid = str(pydicom.dcmread(str(path), stop_before_pixels=True).SOPInstanceUID)
        for k in (k for k, p in enumerate(study.dicom_files) if p == path):
            if any(key[0] == k for key in frames):
                back[k] = 3 * seg.get_pixels_by_source_frame(uid, [study.dicom_frames[k]], combine_segments=True)[0]
    assert np.array_equal(back, labels)

    # as the same series stored as one multi-frame object
    one_study = read_dicom_study(tmp_path / "whole")
    for attribute in ("shape_zyx", "spacing_xyz_mm", "origin_xyz_mm", "direction"):
        np.testing.assert_allclose(getattr(one_study.geometry, attribute), getattr(study.geometry, attribute),
                                   atol=1e-6)
    one = pydicom.dcmread(str(whole / "labels.seg.dcm"))
    one_frames = _seg_frames_on_the_label_map(whole / "labels.seg.dcm", labels, one_study)
    assert frames.keys() == one_frames.keys()
    for key, (position, pixels) in frames.items():
        np.testing.assert_allclose(position, one_frames[key][0], atol=1e-4)
        np.testing.assert_array_equal(pixels, one_frames[key][1])
    segment_facts = [(s.SegmentNumber, s.SegmentLabel, s.TrackingID, s.SegmentedPropertyTypeCodeSequence[0].CodeValue)
                     for s in ds.SegmentSequence]
    assert segment_facts == [(s.SegmentNumber, s.SegmentLabel, s.TrackingID,
                              s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in one.SegmentSequence]
    shared, one_shared = ds.SharedFunctionalGroupsSequence[0], one.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               one_shared.PlaneOrientationSequence[0].ImageOrientationPatient, atol=1e-6)
    for keyword in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"):
        np.testing.assert_allclose(np.asarray(shared.PixelMeasuresSequence[0][keyword].value, float),
                                   np.asarray(one_shared.PixelMeasuresSequence[0][keyword].value, float), atol=1e-6)
    assert [d.DimensionIndexPointer for d in ds.DimensionIndexSequence] == [
        d.DimensionIndexPointer for d in one.DimensionIndexSequence]


def test_a_dicom_seg_of_single_frame_files_and_a_multi_frame_object_in_one_series(tmp_path):
    """A series holding single-frame files and a multi-frame object: one SEG, the frames on
    single-frame files referencing the file, the others the object's frame."""
    from conftest import to_multi_frame

    volume, mask = tube_ct()
    classic = write_dicom_series(volume, tmp_path / "classic")
    files = sorted(classic.iterdir(), key=lambda p: float(pydicom.dcmread(str(p)).ImagePositionPatient[2]))
    (enhanced,) = to_multi_frame(files[12:], tmp_path / "mixed")
    header = pydicom.dcmread(str(enhanced), stop_before_pixels=True)
    for path in files[:12]:  # the same series, study and frame of reference as the object
        ds = pydicom.dcmread(str(path))
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            setattr(ds, keyword, getattr(header, keyword))
        ds.save_as(tmp_path / "mixed" / path.name)
    study = read_dicom_study(tmp_path / "mixed")
    assert len(set(study.dicom_files)) == 13 and study.dicom_frames.count(0) == 12
    labels = mask.astype(np.uint8) * 3
    assert labels[[study.dicom_frames.index(0)]].any()  # a single-frame file holds a label
    write_dicom_seg(labels, study.geometry, {"3": "renal_artery"}, study.dicom_files, tmp_path / "x.seg.dcm",
                    model_name="m", weights_sha256=None, synthetic_training_only=True,
                    source_frames=study.dicom_frames)
    ds = pydicom.dcmread(str(tmp_path / "x.seg.dcm"))
    check_seg_iod(ds)
    uid_of = {p: str(pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID) for p in set(study.dicom_files)}
    assert {r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(
        uid_of.values())
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    seen = set()
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        k = int(round(study.geometry.world_to_index([position])[0][2]))
        np.testing.assert_allclose(position, study.geometry.index_to_world([[0, 0, k]])[0], atol=1e-4)
        (source,) = item.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID == uid_of[study.dicom_files[k]]
        assert int(source.get("ReferencedFrameNumber") or 0) == study.dicom_frames[k]  # none for a whole file
        np.testing.assert_array_equal(pixels[i], labels[k] == 3)
        seen.add(k)
    assert seen == {k for k in range(labels.shape[0]) if labels[k].any()} and int(ds.NumberOfFrames) == len(seen)


def test_dicom_seg_refuses_a_split_series_whose_frame_is_off_the_label_grid_naming_it(tmp_path):
    """One frame inside the series (neither the first nor the last slice) moved 0.5 mm along
    the slice normal after the label map was made: GeometryError naming the object and frame."""
    from conftest import to_multi_frame

    from renalseg.errors import GeometryError

    volume, _ = tube_ct()
    classic = write_dicom_series(volume, tmp_path / "classic")
    objects = to_multi_frame(sorted(classic.iterdir()), tmp_path / "split", sizes=(7, 20, 13))
    study = read_dicom_study(tmp_path / "split")
    labels = np.zeros(study.geometry.shape_zyx, np.uint8)
    labels[10:30, 20:28, 20:28] = 3

    def write(out: str) -> dict:
        return write_dicom_seg(labels, study.geometry, {"3": "renal_artery"}, study.dicom_files, tmp_path / out,
                               model_name="m", weights_sha256=None, synthetic_training_only=True,
                               source_frames=study.dicom_frames)

    write("before.seg.dcm")  # the files as read: on the grid
    k = 25  # a slice inside the label, in the middle object
    path, frame = study.dicom_files[k], study.dicom_frames[k]
    assert path == objects[1] and 0 < k < labels.shape[0] - 1
    ds = pydicom.dcmread(str(path))
    plane = ds.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0]
    normal = np.asarray(study.geometry.direction).reshape(3, 3)[:, 2]
    plane.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(plane.ImagePositionPatient, float) + 0.5 * normal]
    ds.save_as(str(path))
    with pytest.raises(GeometryError, match=rf"Slice {k} of the label map .*{path.name} frame {frame}, .*0\.500 mm"):
        write("after.seg.dcm")
    assert not (tmp_path / "after.seg.dcm").exists()
