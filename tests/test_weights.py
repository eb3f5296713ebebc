"""The weights format: bit-exact round trip, checksum and card checks, no pickle, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import renalseg.weights as weights_module
from renalseg.cli.app import app
from renalseg.errors import ModelError
from renalseg.nets import build_network
from renalseg.weights import (
    DEFAULT_WEIGHTS_PATH,
    ModelCard,
    load_model_files,
    model_paths,
    normalize_hu,
    read_card,
    save_model,
    sha256_file,
)

REPO = Path(__file__).resolve().parents[1]

SMALL_DBN = {"widths": [8, 8, 8, 8, 12, 12, 16, 16, 12, 12, 8, 8, 8, 8], "bias_quantity": 2}


def _saved(tmp_path: Path, name: str = "densebiasnet", **hyper) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    net = build_network(name, **hyper)
    path = save_model(net, ModelCard(name=name, metrics={"dice": 0.5}), tmp_path / "model.safetensors")
    return net, path


@pytest.mark.parametrize("name,hyper", [("densebiasnet", SMALL_DBN), ("dpa_densebiasnet", {}), ("dae", {}),
                                        ("unet3d", {"widths": [8, 8, 16, 16]})])
def test_round_trip_is_bit_exact(tmp_path, name, hyper):
    net, path = _saved(tmp_path, name, **hyper)
    loaded, card = load_model_files(path)
    assert type(loaded) is type(net) and not loaded.training
    original, restored = net.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    assert card.sha256 == sha256_file(path)
    assert card.parameter_count == sum(p.numel() for p in net.parameters())
    assert card.hyperparameters == json.loads(json.dumps(net.hyperparameters))
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.inference_mode():
        assert torch.equal(net.eval()(x), loaded(x))


def test_card_json_round_trip_and_both_paths_load(tmp_path):
    _, path = _saved(tmp_path, **SMALL_DBN)
    weights, card_path = model_paths(path)
    assert card_path.is_file() and weights == path
    card = read_card(card_path)
    assert ModelCard.from_dict(json.loads(card.to_json())) == card
    assert card.normalization == {"clip_hu": [-1024.0, 1024.0], "scale": [0.0, 1.0]}
    assert card.window_zyx == (64, 152, 152) and card.metrics == {"dice": 0.5}
    assert load_model_files(card_path)[1] == load_model_files(tmp_path / "model")[1] == card


def test_tampered_weights_fail_the_checksum(tmp_path):
    _, path = _saved(tmp_path, **SMALL_DBN)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"checksum mismatch: .*model.safetensors.*corrupted or was changed"):
        load_model_files(path)


def _rewrite_card(path: Path, **changes) -> None:
    card_path = model_paths(path)[1]
    data = json.loads(card_path.read_text())
    data.update(changes)
    card_path.write_text(json.dumps(data))


def test_card_that_does_not_describe_the_tensors_is_refused(tmp_path):
    _, path = _saved(tmp_path, **SMALL_DBN)
    card = read_card(path)
    _rewrite_card(path, hyperparameters={**card.hyperparameters, "bias_quantity": 3})
    with pytest.raises(ModelError, match=r"does not match its card model.json.*compressors\.0\.weight is torch.float32 \(2, 8, 1, 1, 1\)"):
        load_model_files(path)
    _rewrite_card(path, hyperparameters=card.hyperparameters, name="unet3d")
    with pytest.raises(ModelError, match="does not take bias_quantity"):
        load_model_files(path)
    _rewrite_card(path, name="densebiasnet", parameter_count=card.parameter_count + 1)
    with pytest.raises(ModelError, match="the card says .* parameters"):
        load_model_files(path)


def test_missing_files_and_the_unshipped_default_give_clear_errors(tmp_path, monkeypatch):
    _, path = _saved(tmp_path, **SMALL_DBN)
    model_paths(path)[1].unlink()
    with pytest.raises(ModelError, match=r"model card .*model.json not found beside model.safetensors"):
        load_model_files(path)
    with pytest.raises(ModelError, match=r"weights file .*nothing.safetensors not found"):
        load_model_files(tmp_path / "nothing.safetensors")
    absent = tmp_path / "shipped" / "dpa_densebiasnet.safetensors"
    monkeypatch.setattr(weights_module, "DEFAULT_WEIGHTS_PATH", absent)
    with pytest.raises(ModelError, match="shipped weights .* are not present"):
        load_model_files(absent)


def test_default_weights_live_in_the_repository_weights_folder():
    assert DEFAULT_WEIGHTS_PATH.name == "dpa_densebiasnet.safetensors"
    assert DEFAULT_WEIGHTS_PATH.parent.resolve() == (REPO / "weights").resolve()
    if not DEFAULT_WEIGHTS_PATH.exists():
        with pytest.raises(ModelError, match="shipped weights"):
            load_model_files(DEFAULT_WEIGHTS_PATH)


def test_the_default_model_labels_kipa22s_four_structures_and_the_artery_model_ships_beside_it():
    """The default weights write KiPA22's vein, kidney, artery and tumour; the artery-only
    weights are still shipped under their own name; both cards match their tensors."""
    from renalseg.labels import output_values
    from renalseg.weights import resolve_weights

    default = read_card(DEFAULT_WEIGHTS_PATH)
    assert sorted(output_values(default.classes).values()) == [1, 2, 3, 4]
    assert default.synthetic_training_only
    assert {"four_art", "four_pv"} <= set(default.metrics["held_out"])
    assert "portal_venous" in default.limits["validated_on"]["phases"]
    artery_path = resolve_weights("dpa_densebiasnet_artery")
    artery = read_card(artery_path)
    assert sorted(output_values(artery.classes).values()) == [3]
    for path, card in ((DEFAULT_WEIGHTS_PATH, default), (artery_path, artery)):
        assert sha256_file(path) == card.sha256, path


def test_a_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("executed",))

    path = tmp_path / "evil.safetensors"
    torch.save({"x": Payload()}, path)
    card = ModelCard(name="densebiasnet", hyperparameters=SMALL_DBN, sha256=sha256_file(path))
    model_paths(path)[1].write_text(card.to_json())
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model_files(path)
    assert not marker.exists()


def test_save_refuses_a_card_that_does_not_describe_the_network(tmp_path):
    net = build_network("densebiasnet", **SMALL_DBN)
    with pytest.raises(ModelError, match="names network 'dae' but the network is 'densebiasnet'"):
        save_model(net, ModelCard(name="dae"), tmp_path / "m")
    with pytest.raises(ModelError, match="hyperparameters .* differ"):
        save_model(net, ModelCard(name="densebiasnet", hyperparameters={"bias_quantity": 4}), tmp_path / "m")
    with pytest.raises(ModelError, match="3 classes"):
        save_model(net, ModelCard(name="densebiasnet", classes={"0": "bg", "1": "artery", "2": "vein"}),
                   tmp_path / "m")
    assert not list(tmp_path.iterdir())


def test_invalid_cards_are_refused():
    base = ModelCard(name="dae").to_dict()
    with pytest.raises(ModelError, match="unknown model card field.*Did you mean 'metrics'"):
        ModelCard.from_dict({**base, "metric": {}})
    with pytest.raises(ModelError, match="newer than this renalseg supports"):
        ModelCard.from_dict({**base, "format_version": 99})
    with pytest.raises(ModelError, match="lacks sha256"):
        ModelCard.from_dict({k: v for k, v in base.items() if k != "sha256"})
    with pytest.raises(ModelError, match="normalization"):
        ModelCard.from_dict({**base, "normalization": {"clip_hu": [100, -100], "scale": [0, 1]}})


def test_normalize_hu_follows_the_card():
    hu = np.array([[-3000, -1024, -512], [0, 512, 4000]], dtype=np.int16)
    out = normalize_hu(hu, ModelCard(name="dpa_densebiasnet"))
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out, [[0, 0, 0.25], [0.5, 0.75, 1]])
    custom = normalize_hu(hu, {"clip_hu": [-200.0, 600.0], "scale": [-1.0, 1.0]})
    np.testing.assert_allclose(custom, [[-1, -1, -1], [-0.5, 0.78, 1]], rtol=1e-6)


def test_cli_weights_info_and_list(tmp_path):
    _, path = _saved(tmp_path, **SMALL_DBN)
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "info", str(path)])
    assert result.exit_code == 0, result.output
    assert "densebiasnet" in result.output and "renal_artery" in result.output and "ok" in result.output
    as_json = runner.invoke(app, ["weights", "info", str(model_paths(path)[1]), "--json"])
    assert json.loads(as_json.output)["sha256"] == sha256_file(path)
    listing = runner.invoke(app, ["weights", "list", str(tmp_path)])
    assert listing.exit_code == 0 and "networks: dae, densebiasnet, dpa_densebiasnet" in listing.output
    listed = json.loads(runner.invoke(app, ["weights", "list", str(tmp_path), "--json"]).output)
    assert [(Path(m["file"]).name, m["network"], m["sha256"]) for m in listed["models"]] == [
        ("model.safetensors", "densebiasnet", sha256_file(path))]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    tampered = runner.invoke(app, ["weights", "info", str(path)])
    assert "MISMATCH" in tampered.output and tampered.exit_code == 1  # a script checking $? sees it
    missing = runner.invoke(app, ["weights", "info", str(tmp_path / "none.safetensors")])
    assert missing.exit_code == 2 and "no such file" in missing.output and "--weights" not in missing.output


def test_weights_info_takes_a_shipped_models_name_and_list_needs_no_torch():
    import subprocess
    import sys

    from renalseg.nets import NETWORKS
    from renalseg.weights import NETWORK_NAMES

    assert sorted(NETWORKS) == sorted(NETWORK_NAMES)
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "info", "dpa_densebiasnet"])
    assert result.exit_code == 0, result.output
    assert "dpa_densebiasnet" in result.output and "--weights" not in result.output
    wrong = runner.invoke(app, ["weights", "info", "dpa_densebiasnt"])
    assert wrong.exit_code == 2 and "dpa_densebiasnet" in wrong.output
    code = ("import sys; from typer.testing import CliRunner; from renalseg.cli.app import app; "
            "r = CliRunner().invoke(app, ['weights', 'list']); "
            "print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["0", "False"]


def test_segment_takes_a_shipped_model_by_name(tmp_path):
    """--weights NAME picks a shipped model (an installed wheel keeps them inside the package);
    a misspelt name is a usage error that lists the shipped models."""
    from renalseg.weights import resolve_weights

    assert resolve_weights("densebiasnet") == DEFAULT_WEIGHTS_PATH.parent / "densebiasnet.safetensors"
    study = tmp_path / "study.nii.gz"
    study.write_bytes(b"")
    wrong = CliRunner().invoke(app, ["segment", str(study), "--out", str(tmp_path / "out"),
                                     "--weights", "densebiasnt"])
    assert wrong.exit_code == 2
    assert "neither a file nor a shipped model" in wrong.output and "densebiasnet" in wrong.output
    assert not (tmp_path / "out").exists()
