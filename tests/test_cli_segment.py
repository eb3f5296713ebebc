"""``renalseg segment`` through typer's CliRunner: batches, failures, shards, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_pipeline import SPEC, dice, threshold_predictor, tube_ct, write_dicom_series
from typer.testing import CliRunner

import renalseg.segmenter
from renalseg.cli.app import app
from renalseg.io.image import write_image
from renalseg.pipeline import SYNTHETIC_NOTICE
from renalseg.segmenter import ModelSpec, Segmenter

runner = CliRunner()


@pytest.fixture
def analytic_model(monkeypatch):
    """``load_model`` returns the intensity-threshold predictor (synthetic-only card)."""
    calls = []

    def fake_load_model(weights=None, device="auto", **_):
        calls.append((weights, device))
        spec = ModelSpec(window_zyx=SPEC.window_zyx, name="threshold", sha256="cd" * 32,
                         synthetic_training_only=True)
        return Segmenter(predictor=threshold_predictor, spec=spec, device="cpu", device_reason="cpu (test)")

    monkeypatch.setattr(renalseg.segmenter, "load_model", fake_load_model)
    return calls


@pytest.fixture
def batch(tmp_path) -> tuple[Path, np.ndarray]:
    """a.nii.gz (tube), b.nii.gz (corrupt: damaged header), c/ (DICOM series of the tube)."""
    root = tmp_path / "batch"
    volume, mask = tube_ct()
    write_image(volume, root / "a.nii.gz")
    (root / "b.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    write_dicom_series(volume, root / "c")
    return root, mask


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_batch_with_one_corrupt_study(batch, tmp_path, analytic_model):
    root, mask = batch
    out = tmp_path / "out"
    result = _run("segment", root, "--out", out, "--input-is-roi", "--min-component-mm3", "0")
    assert result.exit_code == 1, result.output
    assert len(analytic_model) == 1  # the model is loaded once per run
    for good in ("a", "c"):
        folder = out / good
        # a DICOM SEG, its volumes as an SR and the preview as a Secondary Capture for the DICOM study only
        dicom = ["labels.seg.dcm", "labels.sr.dcm", "preview.sc.dcm"] if good == "c" else []
        assert sorted(p.name for p in folder.iterdir()) == sorted([
            "labels.json", "labels.nii.gz", "labels.seg.nrrd", "preview.png", "report.json", *dicom])
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nii.gz")))
        assert dice(labels, mask) >= 0.9
        assert json.loads((folder / "report.json").read_text())["status"] == "ok"
    bad = out / "b"
    assert [p.name for p in bad.iterdir()] == ["error.json"]  # no label map, nothing partial
    error = json.loads((bad / "error.json").read_text())
    assert error["status"] == "error" and error["error"] == "InputError" and "b.nii.gz" in error["message"]
    assert "b:" in result.stderr and "error" in result.stderr
    assert result.stderr.count("synthetic phantoms only") == 1  # said once per run
    assert result.stderr.count("device:") == 1
    assert "a" in result.stdout and "ok" in result.stdout  # the final table
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_json_summary_and_shards(batch, tmp_path, analytic_model):
    root, _ = batch
    out = tmp_path / "out"
    result = _run("segment", root, "--out", out, "--input-is-roi", "--json", "--shard", "1/3")
    assert result.exit_code == 1  # shard 1 of 3 is b, the corrupt one
    summary = json.loads(result.stdout)
    assert [row["study"] for row in summary["studies"]] == ["b"]
    assert summary["failed"] == 1 and summary["ok"] == 0
    result = _run("segment", root, "--out", out, "--input-is-roi", "--json", "--shard", "0/3", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] == 1 and summary["studies"][0]["study"] == "a"
    assert summary["studies"][0]["artery_ml"]["right"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    # once b is fixed, a rerun retries it without --overwrite (its folder held only error.json)
    write_image(tube_ct()[0], root / "b.nii.gz", overwrite=True)
    result = _run("segment", root / "b.nii.gz", "--out", out, "--input-is-roi", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "b" / "labels.nii.gz").exists() and not (out / "b" / "error.json").exists()


def test_existing_output_needs_overwrite(tmp_path, analytic_model):
    volume, _ = tube_ct()
    study = write_image(volume, tmp_path / "case.nii.gz")
    out = tmp_path / "out"
    assert _run("segment", study, "--out", out, "--input-is-roi").exit_code == 0
    before = (out / "case" / "report.json").read_bytes()
    result = _run("segment", study, "--out", out, "--input-is-roi")
    assert result.exit_code == 1
    assert "--overwrite" in result.stderr
    assert (out / "case" / "report.json").read_bytes() == before  # never silently replaced
    assert not (out / "case" / "error.json").exists()
    result = _run("segment", study, "--out", out, "--input-is-roi", "--overwrite", "--save-probabilities")
    assert result.exit_code == 0, result.output
    assert (out / "case" / "probabilities.nii.gz").exists()


def test_cli_cleans_up_with_the_documented_defaults(tmp_path, analytic_model):
    """`renalseg segment` without options uses the library's clean-up defaults (report settings)."""
    from renalseg.pipeline import SegmentConfig

    volume, _ = tube_ct()
    study = write_image(volume, tmp_path / "case.nii.gz")
    assert _run("segment", study, "--out", tmp_path / "out", "--input-is-roi").exit_code == 0
    settings = json.loads((tmp_path / "out" / "case" / "report.json").read_text())["settings"]
    library = SegmentConfig()
    assert settings["max_gap_mm"] == library.max_gap_mm == 10.0
    assert settings["min_component_mm3"] == library.min_component_mm3
    assert settings["keep_bright_artery"] is library.keep_bright_artery is False
    assert _run("segment", study, "--out", tmp_path / "kept", "--input-is-roi", "--keep-bright-artery").exit_code == 0
    assert json.loads((tmp_path / "kept" / "case" / "report.json").read_text())["settings"]["keep_bright_artery"]


def test_segment_report_writes_the_page_beside_the_outputs(tmp_path, analytic_model):
    pytest.importorskip("plotly")
    volume, _ = tube_ct()
    study = write_image(volume, tmp_path / "case.nii.gz")
    result = _run("segment", study, "--out", tmp_path / "out", "--input-is-roi", "--report")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "case" / "report.html").read_text(encoding="utf-8")
    assert "renal" in page.lower() and "<script src=" not in page  # plotly.js inlined, nothing fetched


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2"], "shard"),
    (["--shard", "x"], "shard"),
    (["--side", "middle"], "side"),
    (["--overlap", "1.5"], "overlap"),
    (["--device", "gpu"], "device"),
])
def test_bad_options_are_usage_errors(tmp_path, args, message):
    volume, _ = tube_ct()
    study = write_image(volume, tmp_path / "case.nii.gz")
    result = _run("segment", study, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "out" / "case").exists()


def test_missing_input_is_a_usage_error(tmp_path):
    result = _run("segment", tmp_path / "nope.nii.gz", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "nope.nii.gz" in result.stderr


def test_real_network_weights_through_the_cli(tmp_path):
    """A tiny randomly initialised DPA-DenseBiasNet saved with save_model: load, run, report."""
    torch = pytest.importorskip("torch")
    from renalseg.nets import build_network
    from renalseg.weights import ModelCard, save_model

    torch.manual_seed(0)
    network = build_network("dpa_densebiasnet", widths=(4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 4, 4),
                            encoder_widths=(4, 4, 4, 4), bias_quantity=1)
    card = ModelCard(name="dpa_densebiasnet", window_zyx=(16, 32, 32), spacing_xyz_mm=(1.4, 1.4, 2.0))
    weights = save_model(network, card, tmp_path / "tiny.safetensors")
    volume, _ = tube_ct(shape_zyx=(12, 24, 24), spacing_xyz_mm=(1.4, 1.4, 2.5))
    study = write_image(volume, tmp_path / "small.nii.gz")
    out = tmp_path / "out"
    result = _run("segment", study, "--out", out, "--input-is-roi", "--weights", weights, "--device", "cpu",
                  "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "small" / "report.json").read_text())
    saved_card = json.loads(weights.with_suffix(".json").read_text())
    assert report["model"]["name"] == "dpa_densebiasnet"
    assert report["model"]["sha256"] == saved_card["sha256"]
    assert report["device"] == "cpu"
    assert report["notice"] == SYNTHETIC_NOTICE
    labels = sitk.ReadImage(str(out / "small" / "labels.nii.gz"))
    assert labels.GetSize() == (24, 24, 12) and labels.GetPixelID() == sitk.sitkUInt8


@pytest.mark.slow
def test_shipped_weights_segment_a_held_out_phantom(tmp_path):
    """The whole CLI with the shipped weights on a phantom seed not used in training: each
    structure near its documented Dice.

    The demo's phantom (arterial phase), segmented as `segment` does by default (its phase
    called arterial, so with the thin-branch pass), whose Dice `segment` gives as artery
    0.811, vein 0.811, kidney 0.953 and 81% of the sub-2 mm centerline found
    (docs/validation.md, "The demo"); the
    bars sit a little below. The 0.85 artery target of the issues is a mean over held-out
    sets (`recipes/evaluate_shipped.py`), not a bar for one phantom.
    """
    from renalseg.cli.demo import DEMO_SEED
    from renalseg.metrics import found_by_diameter
    from renalseg.phantom import synthesize_abdomen
    from renalseg.weights import DEFAULT_WEIGHTS_PATH

    # weights ship in weights/: their absence is a packaging bug, not a reason to skip
    assert Path(DEFAULT_WEIGHTS_PATH).exists(), f"no shipped weights at {DEFAULT_WEIGHTS_PATH}"
    case = synthesize_abdomen(DEMO_SEED)
    study = write_image(case.image, tmp_path / "heldout.nii.gz")
    result = _run("segment", study, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    thin = json.loads((tmp_path / "out" / "heldout" / "report.json").read_text())["thin_branches"]
    assert thin["applied"] and thin["automatic"] and "arterial phase" in thin["reason"], thin
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "heldout" / "labels.nii.gz")))
    for value, name, bar in ((3, "artery", 0.78), (1, "vein", 0.78), (2, "kidney", 0.93)):
        assert dice(labels == value, case.label.array == value) >= bar, name
    found = found_by_diameter(labels == 3, case.label.array == 3, case.image.geometry.spacing_xyz_mm)
    assert found["found_0-2mm"] >= 0.7, found


def test_demo_runs_phantom_segment_and_meshes(tmp_path, analytic_model, monkeypatch):
    """The demo's plumbing with a small tube 'phantom', stub ROIs and the analytic model."""
    import types

    import renalseg.phantom
    import renalseg.roi
    from renalseg.pipeline import roi_from_extent
    from renalseg.volume import Volume

    volume, mask = tube_ct(shape_zyx=(20, 30, 30), spacing_xyz_mm=(0.7, 0.7, 1.0), radius_mm=3.0)
    volume.array[:, :2, :] = -1000  # air beside the body: a whole scan passes the HU plausibility check
    truth = Volume(np.where(mask, 3, 0).astype(np.uint8), volume.geometry)  # KiPA22: 3 = artery
    monkeypatch.setattr(renalseg.phantom, "synthesize_abdomen",
                        lambda seed, **_: types.SimpleNamespace(image=volume, label=truth, territory=None, truth=None))
    roi = roi_from_extent(volume.geometry, SPEC.spacing_xyz_mm)
    monkeypatch.setattr(renalseg.roi, "locate_kidneys", lambda study, **_: [roi])
    out = tmp_path / "demo"
    result = _run("demo", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "input" / "phantom.nii.gz").exists() and (out / "input" / "phantom_truth.nii.gz").exists()
    assert (out / "phantom" / "labels.nii.gz").exists() and (out / "phantom" / "preview.png").exists()
    meshes = sorted(p.name for p in (out / "phantom" / "meshes").iterdir())
    assert "tree.json" in meshes and any(name.endswith(".stl") for name in meshes)
    score = float(result.stdout.split("artery Dice vs the phantom's truth:")[1].split()[0])
    assert score >= 0.9
    # the 6 mm tube's centerline is found; no thinner vessel exists to find
    assert "by vessel diameter: 0–2 mm n/a, 2–4 mm n/a, 4 mm and wider 100%" in result.stdout.replace("\n", " ")
    # the threshold model labels no kidney, so there is nothing to plan, and the demo says why
    assert "not made: this model labels no kidney" in result.stdout.replace("\n", " ")
    assert not (out / "phantom" / "plan.json").exists()
    assert _run("demo", "--out", out).exit_code == 1  # an earlier demo is not replaced silently


def test_thin_branches_with_an_artery_only_model_is_a_usage_error(tmp_path):
    """--thin-branches adds the artery-only model's artery inside the kidney the main model
    labels: with the artery-only weights as the main model there is no kidney, so it stops
    before the first study (exit 2, nothing written)."""
    volume, _ = tube_ct()
    study = write_image(volume, tmp_path / "study.nii.gz")
    result = _run("segment", study, "--out", tmp_path / "out", "--weights", "dpa_densebiasnet_artery",
                  "--thin-branches")
    assert result.exit_code == 2, result.output
    assert "--thin-branches" in result.output and "kidney" in result.output
    assert not (tmp_path / "out" / "study").exists()


def test_segment_runs_the_thin_branch_pass_by_default_and_not_with_no_thin_branches(tmp_path, monkeypatch):
    """On an arterial study the default weights alone find 65% of the sub-2 mm branches and
    94% with the artery-only weights' pass: by default `segment` loads that model once for
    the batch and leaves the phase to decide (thin_branches None); --no-thin-branches loads
    nothing and asks for one pass; a model without a kidney label goes without, silently."""
    import types

    import renalseg.cli.segment as cli_segment
    import renalseg.pipeline

    four = {"0": "background", "1": "renal_artery", "2": "renal_vein", "3": "kidney", "4": "tumour"}
    seen: list[tuple] = []

    def model(classes):
        return types.SimpleNamespace(spec=types.SimpleNamespace(classes=classes, synthetic_training_only=False),
                                     device_reason="cpu (test)", current_device="cpu")

    monkeypatch.setattr(renalseg.pipeline, "thin_branch_segmenter", lambda segmenter, device: "artery-only")
    monkeypatch.setattr(cli_segment, "_run", lambda studies, out, config, segmenter, **k: seen.append(
        (config.thin_branches, k["artery_segmenter"])) or [
        {"study": "study", "status": "ok", "output": str(out / "study"), "seconds": 1.0, "verdict": "ok",
         "phase": "late_arterial", "warnings": []}])
    volume, _ = tube_ct()
    study = write_image(volume, tmp_path / "study.nii.gz")
    monkeypatch.setattr(renalseg.segmenter, "load_model", lambda *a, **k: model(four))
    for flags in ((), ("--no-thin-branches",), ("--thin-branches",)):
        shown = _run("segment", study, "--out", tmp_path / f"out{len(seen)}", "--quiet", *flags)
        assert shown.exit_code == 0, shown.output
    assert seen == [(None, "artery-only"), (False, None), (True, "artery-only")]
    monkeypatch.setattr(renalseg.segmenter, "load_model", lambda *a, **k: model({"0": "background",
                                                                                  "1": "renal_artery"}))
    assert _run("segment", study, "--out", tmp_path / "out9", "--quiet").exit_code == 0
    assert seen[-1] == (None, None)
