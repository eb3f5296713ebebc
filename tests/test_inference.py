"""Sliding-window stitching with analytic predictors, devices and the OOM fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from renalseg.errors import ModelError, UsageError
from renalseg.inference import NetworkPredictor, is_out_of_memory, select_device, sliding_window

WINDOW = (16, 16, 16)


def _random(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def plus_one(batch):
    if batch.shape[2:] != WINDOW:
        raise AssertionError(f"predictor got {batch.shape}")
    return batch + 1


@pytest.mark.parametrize("shape", [(33, 37, 35), (16, 16, 16), (17, 40, 23), (50, 19, 31)])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
@pytest.mark.parametrize("importance", ["gaussian", "constant"])
def test_identity_and_plus_one_are_reproduced_exactly(shape, overlap, importance):
    x = _random(shape)
    same = sliding_window(x, lambda b: b, window_zyx=WINDOW, overlap=overlap, importance=importance)
    shifted = sliding_window(x, plus_one, window_zyx=WINDOW, overlap=overlap, importance=importance)
    assert same.shape == shifted.shape == (1, *shape) and same.dtype == np.float32
    assert np.abs(same[0] - x).max() < 1e-6
    assert np.abs(shifted[0] - (x + 1)).max() < 1e-6


def test_every_voxel_is_covered():
    # a predictor of ones: a voxel no window covers would come out 0 (or NaN)
    out = sliding_window(np.zeros((33, 37, 35), np.float32), lambda b: np.ones_like(b),
                         window_zyx=(16, 8, 16), overlap=0.25)
    assert np.isfinite(out).all()
    assert np.abs(out - 1).max() < 1e-6


def test_roi_smaller_than_a_window_is_padded_and_cropped_back():
    x = _random((10, 20, 7))
    seen = []

    def predict(batch):
        seen.append(batch.shape)
        return batch + 1

    out = sliding_window(x, predict, window_zyx=(16, 32, 16), pad_value=-5.0)
    assert seen == [(1, 1, 16, 32, 16)]  # one full-size window
    assert out.shape == (1, 10, 20, 7)
    assert np.abs(out[0] - (x + 1)).max() < 1e-6


def test_padding_is_centred_and_uses_pad_value():
    x = np.zeros((4, 4, 4), np.float32)
    captured = {}

    def predict(batch):
        captured["batch"] = batch.copy()
        return batch

    sliding_window(x, predict, window_zyx=(8, 8, 8), pad_value=-1.0)
    b = captured["batch"][0, 0]
    assert (b[2:6, 2:6, 2:6] == 0).all()
    assert (b == -1).sum() == 8 ** 3 - 4 ** 3


def test_one_window_roi_equals_the_single_window_result():
    x = _random(WINDOW)

    def spatial(batch):  # position-dependent, not translation invariant
        return np.cumsum(batch, axis=-1) * np.linspace(0.5, 2.0, WINDOW[1])[None, None, None, :, None]

    out = sliding_window(x, spatial, window_zyx=WINDOW)
    expected = spatial(x[None, None])[0]
    assert np.abs(out - expected).max() < 1e-5


def test_batching_gives_the_same_result_and_respects_batch_size():
    x = _random((40, 30, 35))
    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        return np.concatenate([1 - batch, batch], axis=1) * 0.5

    one = sliding_window(x, predict, window_zyx=WINDOW, batch_size=1)
    sizes.clear()
    three = sliding_window(x, predict, window_zyx=WINDOW, batch_size=3)
    assert max(sizes) == 3
    assert one.shape == (2, 40, 30, 35)
    assert np.abs(one - three).max() < 1e-6


def test_mirroring_tta_averages_all_eight_flips():
    x = _random(WINDOW)
    calls = []

    def cumsum_x(batch):
        calls.append(batch.shape)
        return np.cumsum(batch, axis=-1)

    out = sliding_window(x, cumsum_x, window_zyx=WINDOW, mirror_axes=(0, 1, 2))
    assert len(calls) == 8
    expected = np.mean([np.flip(np.cumsum(np.flip(x, axes), axis=-1), axes)
                        for axes in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]], axis=0)
    assert np.abs(out[0] - expected).max() < 1e-5
    # a flip-equivariant predictor is unchanged by TTA
    tta = sliding_window(_random((20, 25, 18)), plus_one, window_zyx=WINDOW, mirror_axes=(0, 1, 2))
    assert np.abs(tta[0] - (_random((20, 25, 18)) + 1)).max() < 1e-6


def test_progress_reports_every_window():
    events = []
    sliding_window(_random((33, 16, 16)), plus_one, window_zyx=WINDOW, batch_size=2,
                   on_progress=lambda done, total: events.append((done, total)))
    assert events[-1][0] == events[-1][1] == 4  # z: 0, 6, 11, 17
    assert [d for d, _ in events] == sorted(d for d, _ in events)


def test_wrong_predictor_output_is_a_model_error():
    with pytest.raises(ModelError, match="expected"):
        sliding_window(_random((20, 20, 20)), lambda b: b[:, :, :8], window_zyx=WINDOW)


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError):
        sliding_window(_random((20, 20)), plus_one, window_zyx=WINDOW)
    with pytest.raises(UsageError):
        sliding_window(_random((20, 20, 20)), plus_one, window_zyx=WINDOW, importance="gauss")
    with pytest.raises(UsageError):
        sliding_window(_random((20, 20, 20)), plus_one, window_zyx=WINDOW, batch_size=0)


# -- devices ------------------------------------------------------------------------------


def test_select_device():
    assert select_device("cpu")[0] == torch.device("cpu")
    device, reason = select_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "auto" in reason
    with pytest.raises(UsageError, match="Did you mean 'cpu'"):
        select_device("cpuu")
    with pytest.raises(UsageError, match="cuda:N"):
        select_device("cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_usage_error():
    with pytest.raises(UsageError, match="CUDA is not available"):
        select_device("cuda")


class FakeNet(torch.nn.Module):
    """Doubles its input as 2 channels; simulates out-of-memory errors.

    ``max_batch``: batches larger than this raise CUDA OOM; ``oom_on_meta``: any
    input on the (simulated accelerator) meta device raises CUDA OOM.
    """

    def __init__(self, max_batch=64, oom_on_meta=False):
        super().__init__()
        self.max_batch, self.oom_on_meta = max_batch, oom_on_meta
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.batches = []

    def forward(self, x):
        if (self.oom_on_meta and x.is_meta) or len(x) > self.max_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(len(x))
        return torch.cat([1 - x, x], dim=1) * self.scale


def test_out_of_memory_retries_with_smaller_batches():
    net = FakeNet(max_batch=2)
    predictor = NetworkPredictor(net, "cpu")
    batch = _random((5, 1, 4, 4, 4))
    out = predictor(batch)
    assert np.allclose(out[:, 1:], batch) and out.shape == (5, 2, 4, 4, 4)
    assert max(net.batches) <= 2
    assert predictor.max_batch is not None and predictor.max_batch <= 2
    net.batches.clear()
    predictor(batch)  # remembered: no failed attempts, straight to small batches
    assert max(net.batches) <= 2


def test_out_of_memory_for_one_window_falls_back_to_the_cpu_with_a_warning(caplog):
    net = FakeNet(oom_on_meta=True)
    messages = []
    predictor = NetworkPredictor(net, torch.device("meta"), on_fallback=messages.append)
    batch = _random((1, 1, 4, 4, 4))
    with caplog.at_level(logging.WARNING, logger="renalseg.inference"):
        out = predictor(batch)
    assert predictor.device.type == "cpu"
    assert np.allclose(out[:, 1:], batch)
    assert any("continuing on the CPU" in m for m in messages)
    assert any("continuing on the CPU" in r.getMessage() for r in caplog.records)
    out2 = sliding_window(_random((20, 4, 4)), predictor, window_zyx=(8, 4, 4))
    assert out2.shape == (2, 20, 4, 4)


def test_out_of_memory_on_the_cpu_is_a_model_error_and_other_errors_propagate():
    with pytest.raises(ModelError, match="Out of memory on the CPU"):
        NetworkPredictor(FakeNet(max_batch=0), "cpu")(_random((1, 1, 4, 4, 4)))

    class Broken(FakeNet):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        NetworkPredictor(Broken(), "cpu")(_random((2, 1, 4, 4, 4)))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_float32_accumulator_reproduces_the_prediction_to_2e_6(monkeypatch):
    """Kidney ROIs of the five-output model accumulate in float32 to bound memory."""
    import renalseg.inference as inference

    monkeypatch.setattr(inference, "_FLOAT64_ACCUMULATOR_BYTES", 0)
    x = _random((33, 37, 35))
    shifted = sliding_window(x, plus_one, window_zyx=WINDOW, overlap=0.75)
    assert shifted.dtype == np.float32
    assert np.abs(shifted[0] - (x + 1)).max() < 2e-6
