"""The batch runner shared by ``segment`` and ``locate``: ids, shards, error.json, retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from renalseg.batch import BatchStudy, parse_shard, plan_batch, run_batch, unique_study_ids, write_error_report
from renalseg.errors import InputError, OutputExistsError, UsageError
from renalseg.io.output import StagedDir


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Four image files; two of them named alike in different folders."""
    for name in ("x/case.nii.gz", "y/case.nii.gz", "y/other.nrrd", "y/z/last one.mha"):
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return tmp_path / "in"


def _work(fail: set[str]):
    """A study's work: write ``result.txt``, or fail for the ids in ``fail``."""
    def process(study: BatchStudy, destination: Path, overwrite: bool) -> dict:
        if study.study_id in fail:
            raise InputError(f"{study.path} is unreadable")
        with StagedDir(destination, overwrite=overwrite) as staging:
            (staging / "result.txt").write_text(study.study_id)
        return {"extra": 1}
    return process


def test_ids_are_unique_in_the_whole_batch_and_the_same_in_every_shard(inputs):
    everything = plan_batch([inputs])
    assert [s.study_id for s in everything] == ["case", "case_2", "other", "last_one"]
    shards = [plan_batch([inputs], shard=(k, 3)) for k in range(3)]
    assert sorted((s for shard in shards for s in shard), key=everything.index) == everything
    assert [s.study_id for s in shards[1]] == ["case_2"]  # not "case": shard 0 writes that folder
    assert unique_study_ids([Path("a b.nii.gz")] * 3) == ["a_b", "a_b_2", "a_b_3"]


@pytest.mark.parametrize("text", ["3/2", "x", "1/0", "-1/2", "1:2"])
def test_bad_shards_are_usage_errors(text):
    with pytest.raises(UsageError, match="shard"):
        parse_shard(text)


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nope.nii.gz"):
        plan_batch([tmp_path / "nope.nii.gz"])


def test_a_failing_study_gets_only_error_json_and_the_batch_goes_on(inputs, tmp_path):
    out = tmp_path / "out"
    finished = []
    rows = run_batch(plan_batch([inputs]), out, _work({"case_2"}),
                     on_finish=lambda study, row, error: finished.append((study.study_id, type(error).__name__)))
    assert [row["status"] for row in rows] == ["ok", "error", "ok", "ok"]
    assert finished[1] == ("case_2", "InputError") and finished[0] == ("case", "NoneType")
    assert list(rows[0]) == ["study", "input", "status", "seconds", "extra", "output"]
    assert [p.name for p in (out / "case_2").iterdir()] == ["error.json"]
    report = json.loads((out / "case_2" / "error.json").read_text())
    assert report["study_id"] == "case_2" and report["error"] == "InputError" and report["status"] == "error"
    assert rows[1]["output"] == str(out / "case_2" / "error.json")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # nothing half-written


def test_error_only_folders_are_retried_and_results_never_replaced(inputs, tmp_path):
    out = tmp_path / "out"
    studies = plan_batch([inputs])
    run_batch(studies, out, _work({"case_2"}))
    # a rerun retries the failed study without --overwrite; the others' folders exist
    rows = run_batch(studies, out, _work(set()))
    assert [row["status"] for row in rows] == ["error", "ok", "error", "error"]
    assert rows[0]["error"] == "OutputExistsError" and rows[0]["output"] is None
    assert (out / "case_2" / "result.txt").read_text() == "case_2"
    assert (out / "case" / "result.txt").exists() and not (out / "case" / "error.json").exists()
    # without overwrite a failure never replaces an earlier result; with it, the folder says it failed
    assert not write_error_report(out / "other", inputs / "y" / "other.nrrd", InputError("bad"))
    assert (out / "other" / "result.txt").exists()
    rows = run_batch(studies[:1], out, _work({"case"}), overwrite=True)
    assert rows[0]["status"] == "error" and [p.name for p in (out / "case").iterdir()] == ["error.json"]


def test_raise_errors_stops_at_the_first_failure(inputs, tmp_path):
    with pytest.raises(InputError):
        run_batch(plan_batch([inputs]), tmp_path / "out", _work({"case"}), raise_errors=True)
    with pytest.raises(OutputExistsError):
        (tmp_path / "taken" / "case").mkdir(parents=True)
        run_batch(plan_batch([inputs]), tmp_path / "taken", _work(set()), raise_errors=True)


def test_a_failed_study_folder_sends_plan_report_mesh_and_evaluate_to_the_failure(tmp_path):
    """Each command after segment, given the folder of a study segment failed on (only
    error.json), names that failure, not a missing labels.nii.gz the user would look for."""
    from typer.testing import CliRunner

    from renalseg.cli.app import app

    folder = tmp_path / "out" / "patient_7"
    write_error_report(folder, Path("scans/patient_7"), InputError("scans/patient_7: no kidney in the field of view"))
    runner = CliRunner()
    for command in (["plan", str(folder)], ["report", str(folder)],
                    ["export-mesh", str(folder), "--out", str(tmp_path / "meshes")],
                    ["evaluate", str(folder), "--gt", str(folder)]):
        result = runner.invoke(app, command)
        assert result.exit_code != 0, command
        text = " ".join(result.output.split())
        assert "renalseg segment failed on this study" in text, (command, text)
        assert "InputError: scans/patient_7: no kidney in the field of view" in text, (command, text)
    assert sorted(p.name for p in folder.iterdir()) == ["error.json"]  # nothing written beside it
    assert not (tmp_path / "meshes").exists()
