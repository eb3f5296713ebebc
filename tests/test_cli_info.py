"""``renalseg info`` through typer's CliRunner, and study discovery behind it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import DICOM_FIXTURE, LAS, make_ct, require
from typer.testing import CliRunner

from renalseg.cli.app import app
from renalseg.errors import UsageError
from renalseg.io.discover import discover_studies
from renalseg.io.image import write_image

runner = CliRunner()


def _copy_dicom(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for path in sorted(require(DICOM_FIXTURE).iterdir()):
        shutil.copyfile(path, dest / path.name)
    return dest


@pytest.fixture
def batch(tmp_path) -> Path:
    """A batch: a DICOM series, a NIfTI (LAS) and an MHA, nested one level for the MHA."""
    root = tmp_path / "batch"
    _copy_dicom(root / "patient_a")
    write_image(make_ct(direction=LAS), root / "patient_b.nii.gz")
    write_image(make_ct(), root / "more" / "patient_c.mha")
    (root / "notes.txt").write_text("not a study")
    (root / ".hidden").mkdir()
    return root


# -- discovery ------------------------------------------------------------------------------------
def test_discover_expands_a_batch_sorted(batch):
    assert discover_studies([batch]) == [
        batch / "more" / "patient_c.mha", batch / "patient_a", batch / "patient_b.nii.gz",
    ]


def test_discover_keeps_argument_order_and_drops_repeats(batch):
    file, series = batch / "patient_b.nii.gz", batch / "patient_a"
    assert discover_studies([file, series, file]) == [file, series]


def test_a_series_folder_is_one_study():
    assert discover_studies([require(DICOM_FIXTURE)]) == [DICOM_FIXTURE]


def test_discover_finds_series_nested_under_a_dicomdir(tmp_path):
    """DICOM media layout: DICOMDIR at the root, the series three folders down."""
    root = tmp_path / "cdrom"
    series = _copy_dicom(root / "PA000000" / "ST000000" / "SE000000")
    shutil.copyfile(next(series.iterdir()), root / "DICOMDIR")  # the index file is not a series
    assert discover_studies([root]) == [series]


def test_discover_refuses_empty_folders_and_missing_paths(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UsageError, match="empty: no study found"):
        discover_studies([tmp_path / "empty"])
    with pytest.raises(UsageError, match=r"a\.nii\.gz, .*b: no such file or folder"):
        discover_studies([tmp_path / "a.nii.gz", tmp_path / "b"])
    with pytest.raises(UsageError, match="No study given"):
        discover_studies([])


# -- the command ------------------------------------------------------------------------------------
def test_info_on_the_real_dicom_series():
    result = runner.invoke(app, ["info", str(require(DICOM_FIXTURE))])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "ts_abdomen_ct_dicom" in line)
    for expected in ("dicom", "512×512×20", "0.977×0.977×2", "LPS", "-1024…1839", "(empty)", " 20"):
        assert expected in row


def test_info_on_a_batch_prints_one_row_per_study(batch):
    result = runner.invoke(app, ["info", str(batch)])
    assert result.exit_code == 0, result.output
    rows = {name: line for line in result.stdout.splitlines()
            for name in ("patient_a", "patient_b", "patient_c") if line.lstrip().startswith(name)}
    assert set(rows) == {"patient_a", "patient_b", "patient_c"}
    assert "512×512×20" in rows["patient_a"] and "dicom" in rows["patient_a"]
    assert "40×32×24" in rows["patient_b"] and "LAS" in rows["patient_b"]  # x × y × z
    assert "0.8×0.7×2.5" in rows["patient_c"] and "metaimage" in rows["patient_c"]


def test_a_failing_study_is_reported_and_the_others_still_print(batch):
    broken = batch / "patient_d"
    _copy_dicom(broken)
    for path in sorted(broken.iterdir())[:19]:  # one slice left
        path.unlink()
    result = runner.invoke(app, ["info", str(batch)])
    assert result.exit_code == 1
    assert "single 2D slice" in result.stderr and "patient_d" in result.stderr
    assert "1 of 4 studies could not be read" in result.stderr
    assert "Traceback" not in result.output
    for name in ("patient_a", "patient_b", "patient_c"):
        assert name in result.stdout


def test_missing_path_exits_2(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such file or folder" in result.stderr


def test_unknown_series_exits_1_and_lists_the_series():
    result = runner.invoke(app, ["info", "--series", "1.2.3", str(require(DICOM_FIXTURE))])
    assert result.exit_code == 1
    assert "no series with UID '1.2.3'" in result.stderr and "(empty)" in result.stderr


def test_series_option_selects_the_empty_uid():
    result = runner.invoke(app, ["info", "--series", "(empty)", str(require(DICOM_FIXTURE))])
    assert result.exit_code == 0, result.output


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "x.txt").write_text("not an image")
    quiet = runner.invoke(app, ["info", str(tmp_path / "x.txt")])
    assert quiet.exit_code == 1 and "not a supported study file" in quiet.stderr
    loud = runner.invoke(app, ["--debug", "info", str(tmp_path / "x.txt")])
    assert loud.exit_code != 0
    assert loud.exception is not None and type(loud.exception).__name__ == "InputError"


def test_info_on_a_label_map_lists_its_labels_not_an_hu_range(tmp_path):
    import numpy as np

    ct = make_ct()
    labels = ct.with_array((ct.array > 100).astype(np.uint8) * 3)
    write_image(ct, tmp_path / "ct.nii.gz")
    write_image(labels, tmp_path / "labels.nii.gz")
    result = CliRunner().invoke(app, ["info", str(tmp_path / "ct.nii.gz"), str(tmp_path / "labels.nii.gz")])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip().startswith(("ct", "labels"))}
    assert "labels 0, 3" in rows["labels"] and "HU" not in rows["labels"]
    assert "HU" in rows["ct"] and "HU range" not in result.output


@pytest.mark.parametrize(("command", "option", "shown"), [
    ("segment", "--side", "<both|left|right>"), ("segment", "--device", "<auto|cpu|cuda|cuda:N|mps>"),
    ("export-mesh", "--space", "<lps|ras>"), ("export-mesh", "--format", "<stl|ply|obj>"),
    ("synth", "--format", "<nifti|dicom>"), ("demo", "--device", "<auto|cpu|cuda|cuda:N|mps>"),
])
def test_help_shows_the_choices(command, option, shown):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    lines = [line for line in result.output.splitlines() if line.startswith("│") and
             line.lstrip("│ ").startswith(option + " ")]
    assert len(lines) == 1 and shown in lines[0] and "<str>" not in lines[0]


def test_cli_choices_are_the_librarys():
    from renalseg.cli.export_mesh import MeshFormat, Space
    from renalseg.cli.segment import Side
    from renalseg.mesh import MESH_FORMATS, SPACES
    from renalseg.pipeline import SIDES

    assert [m.value for m in Space] == list(SPACES) and [m.value for m in MeshFormat] == list(MESH_FORMATS)
    assert [m.value for m in Side] == list(SIDES)


def test_a_batch_passes_over_series_folders_without_a_ct_volume_and_names_them(tmp_path, caplog):
    """A PACS export, one folder per series: the topogram and the dose report are no studies."""
    import pydicom

    patient = tmp_path / "patient"
    arterial = _copy_dicom(patient / "2_arterial")
    first = next(iter(sorted(arterial.iterdir())))
    for name, changes in [("1_topogram", {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}),
                          ("9_dose_report", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"})]:
        (patient / name).mkdir()
        ds = pydicom.dcmread(first)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(patient / name / "IM0001")
    with caplog.at_level("WARNING", logger="renalseg.io.discover"):
        assert discover_studies([patient]) == [arterial]
    assert "1_topogram: passed over, no CT volume in it ((empty) 'CT Body 3.0': a localizer (scout))" in caplog.text
    assert "9_dose_report: passed over" in caplog.text and "a secondary capture" in caplog.text
    # named on the command line, a folder is read, and says what it is
    assert discover_studies([patient / "1_topogram"]) == [patient / "1_topogram"]
    result = runner.invoke(app, ["info", str(patient / "1_topogram")])
    assert result.exit_code == 1 and "single 2D slice" in result.output


def test_info_names_the_series_a_pacs_export_folder_passed_over(tmp_path):
    import pydicom

    folder = _copy_dicom(tmp_path / "export")
    ds = pydicom.dcmread(next(iter(sorted(folder.iterdir()))))
    ds.SeriesInstanceUID, ds.SeriesDescription = "1.2.826.0.1.3680043.2.1125.9.9", "Topogram"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(folder / "topogram.dcm")
    result = runner.invoke(app, ["info", str(folder)])
    assert result.exit_code == 0, result.output
    assert "512×512×20" in result.stdout
    assert "export: passed over series 1.2.826.0.1.3680043.2.1125.9.9 'Topogram': a localizer (scout)" in result.stdout
