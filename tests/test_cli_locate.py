"""``renalseg locate`` through typer's CliRunner: the batch options it shares with ``segment``.

Localisation itself is stubbed (the ROI covers the whole image) so these tests check
the batch plumbing in seconds; tests/test_roi.py runs the real registration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_pipeline import tube_ct
from typer.testing import CliRunner

import renalseg.roi
from renalseg.cli.app import app
from renalseg.io.image import write_image
from renalseg.pipeline import roi_from_extent

runner = CliRunner()


@pytest.fixture
def stub_locate(monkeypatch):
    """``locate_kidneys`` gives one ROI over the whole image; its calls are recorded."""
    calls = []

    def locate_kidneys(study, **options):
        calls.append(study.study_id)
        return [roi_from_extent(study.geometry, (1.4, 1.4, 2.0))]

    monkeypatch.setattr(renalseg.roi, "locate_kidneys", locate_kidneys)
    return calls


@pytest.fixture
def batch(tmp_path) -> Path:
    """a.nii.gz, b.nii.gz (corrupt), c.nii.gz: small tube CTs."""
    root = tmp_path / "batch"
    volume, _ = tube_ct(shape_zyx=(12, 24, 24))
    volume.array[:, :2, :] = -1000  # air beside the body: a whole scan passes the HU plausibility check
    write_image(volume, root / "a.nii.gz")
    (root / "b.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    write_image(volume, root / "c.nii.gz")
    return root


def _run(*args):
    return runner.invoke(app, ["locate", *(str(a) for a in args)])


def test_shard_json_and_quiet(batch, tmp_path, stub_locate):
    out = tmp_path / "out"
    result = _run(batch, "--out", out, "--shard", "0/2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [row["study"] for row in summary["studies"]] == ["a", "c"] and summary["failed"] == 0
    assert summary["studies"][0]["sides"] and summary["studies"][0]["output"] == str(out / "a")
    assert sorted(p.name for p in (out / "a").iterdir()) == ["preview.png", "report.json"]
    result = _run(batch, "--out", out, "--shard", "1/2", "--quiet")
    assert result.exit_code == 1
    assert result.stdout == ""  # no table
    assert "b:" in result.stderr and "locating" not in result.stderr
    assert [p.name for p in (out / "b").iterdir()] == ["error.json"]
    assert json.loads((out / "b" / "error.json").read_text())["study_id"] == "b"
    result = _run(batch / "a.nii.gz", "--out", out, "--shard", "1/2", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["studies"] == []  # an empty shard is no error


def test_failed_study_is_retried_without_overwrite(batch, tmp_path, stub_locate):
    out = tmp_path / "out"
    assert _run(batch, "--out", out, "--quiet").exit_code == 1
    (batch / "b.nii.gz").write_bytes((batch / "a.nii.gz").read_bytes())  # b is fixed
    result = _run(batch, "--out", out, "--json")
    assert result.exit_code == 1  # a and c exist: errors for them, kept as they were
    rows = {row["study"]: row for row in json.loads(result.stdout)["studies"]}
    assert rows["b"]["status"] == "ok" and rows["a"]["error"] == "OutputExistsError"
    assert sorted(p.name for p in (out / "b").iterdir()) == ["preview.png", "report.json"]
    assert (out / "a" / "report.json").exists() and not (out / "a" / "error.json").exists()
    assert stub_locate.count("a") == 1  # an existing output is not computed again


def test_overwrite_replaces_and_crop_writes_the_roi(batch, tmp_path, stub_locate):
    study = batch / "a.nii.gz"
    out = tmp_path / "out"
    assert _run(study, "--out", out).exit_code == 0
    result = _run(study, "--out", out)
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    result = _run(study, "--out", out, "--overwrite", "--crop")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "a" / "report.json").read_text())
    side = report["rois"][0]["side"]
    assert sorted(p.name for p in (out / "a").iterdir()) == ["preview.png", "report.json", f"roi_{side}.nii.gz"]
    assert report["study_id"] == "a" and "a" in result.stdout  # the table


@pytest.mark.parametrize("args, message", [
    (["--shard", "2/2"], "shard"),
    (["--shard", "x"], "shard"),
    (["--atlas", "no/such/atlas"], "atlas"),
])
def test_bad_options_are_usage_errors(batch, tmp_path, args, message):
    result = _run(batch, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "out").exists()
