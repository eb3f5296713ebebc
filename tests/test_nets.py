"""The networks: shapes, parameter counts, dense biased connectivity, DPA wiring, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from renalseg.errors import ModelError
from renalseg.nets import NETWORKS, build_network, network_name
from renalseg.nets.dae import DenoisingAutoencoder, corrupt
from renalseg.nets.densebiasnet import LEVELS, PRIOR_LAYERS, DenseBiasNet, DPADenseBiasNet

torch.set_num_threads(2)


def _seeded(name: str, **hyper):
    torch.manual_seed(0)
    net = build_network(name, **hyper).eval()
    if hasattr(net, "use_fast_inference"):
        net.use_fast_inference(False)  # the plain formulation, unless a test asks for the fast one
    return net


@pytest.mark.parametrize("name", ["densebiasnet", "dpa_densebiasnet", "unet3d"])
@pytest.mark.parametrize("shape_zyx", [(8, 8, 16), (3, 5, 7)])
def test_segmentation_output_is_probabilities_of_input_shape(name, shape_zyx):
    net = _seeded(name)
    x = torch.rand(1, 1, *shape_zyx)
    if hasattr(net, "use_fast_inference"):
        net.use_fast_inference(True)
    with torch.inference_mode():
        p = net(x)
        logits = net.logits(x)
    assert p.shape == (1, 2, *shape_zyx)
    assert p.dtype == torch.float32
    assert torch.allclose(p.sum(1), torch.ones(1, *shape_zyx), atol=1e-6)
    assert torch.allclose(p, torch.softmax(logits, 1), atol=1e-6)
    assert float(p.min()) >= 0.0


def test_padding_is_centred_and_cropped_back():
    net = _seeded("densebiasnet")
    x = torch.rand(1, 1, 9, 13, 17)
    padded = F.pad(x, (3, 4, 1, 2, 3, 4))  # 17→24 (3+4), 13→16 (1+2), 9→16 (3+4)
    with torch.inference_mode():
        expected = net.logits_padded(padded)[:, :, 3:12, 1:14, 3:20]
        assert torch.allclose(net.logits(x), expected, atol=1e-6)


def test_parameter_counts_are_the_documented_ones():
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(build_network("densebiasnet")) == 1_738_498
    dpa = build_network("dpa_densebiasnet")
    assert count(dpa) == 1_875_394
    assert count(dpa.encoder) == 15_936
    assert count(build_network("dae")) == 31_593
    # the paper's Table 3 bias quantities: integers, or ratios of the layer width
    assert build_network("densebiasnet", bias_quantity=1).bias_channels == (1,) * 12
    assert build_network("densebiasnet", bias_quantity=0.1).bias_channels == (
        2, 2, 3, 3, 6, 6, 13, 13, 6, 6, 3, 3)
    assert build_network("densebiasnet", bias_quantity=0.2).bias_channels[6] == 26


def _record_layer_inputs(net: DenseBiasNet):
    inputs: dict[int, torch.Tensor] = {}
    net.use_fast_inference(False)  # hooks see the plain formulation; the fast path is checked against it
    handles = [layer.conv.register_forward_pre_hook(
        lambda m, args, l=l: inputs.__setitem__(l, args[0].detach().clone())) for l, layer in enumerate(net.layers)]
    return inputs, handles


def _resize(bias: torch.Tensor, source: int, target: int) -> torch.Tensor:
    if target >= source:
        return F.max_pool3d(bias, 2 ** (target - source)) if target > source else bias
    return F.interpolate(bias, scale_factor=2 ** (source - target), mode="trilinear", align_corners=False)


#: narrow widths keep the wiring tests fast; the wiring does not depend on them
NARROW = [8, 8, 8, 8, 12, 12, 16, 16, 12, 12, 8, 8, 8, 8]


def test_every_bias_map_enters_every_later_layer_and_only_those():
    net = _seeded("densebiasnet", widths=NARROW, bias_quantity=0.25)
    x = torch.rand(1, 1, 8, 8, 16)
    compressed: dict[int, torch.Tensor] = {}
    hooks = [c.register_forward_hook(lambda m, a, out, k=k: compressed.__setitem__(k, out.detach().clone()))
             for k, c in enumerate(net.compressors)]
    inputs, handles = _record_layer_inputs(net)
    with torch.no_grad():
        net.logits(x)
    for h in hooks + handles:
        h.remove()
    offsets = [0]
    for m in net.bias_channels:
        offsets.append(offsets[-1] + m)
    for l in range(2, 14):  # layer l's input starts with b_0 … b_{l-2}, each resized to its level
        for k in range(l - 1):
            got = inputs[l][:, offsets[k]:offsets[k + 1]]
            want = _resize(compressed[k], LEVELS[k], LEVELS[l])
            assert torch.allclose(got, want, atol=1e-5), (k, l)
        assert inputs[l].shape[1] == offsets[l - 1] + net.widths[l - 1]  # then F_{l-1}, and nothing else

    # zeroing one compressor's output changes the final output, and leaves the
    # inputs of layers up to k+1 untouched (b_k is not fed to layer k+1)
    reference_inputs, handles = _record_layer_inputs(net)
    with torch.no_grad():
        reference = net.logits(x)
    for h in handles:
        h.remove()
    for k, compressor in enumerate(net.compressors):
        handle = compressor.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
        inputs, handles = _record_layer_inputs(net)
        with torch.no_grad():
            changed = net.logits(x)
        for h in [handle, *handles]:
            h.remove()
        assert float((changed - reference).abs().max()) > 1e-6, k
        for l in range(k + 2):
            assert torch.equal(inputs[l], reference_inputs[l]), (k, l)
        assert not torch.equal(inputs[k + 2], reference_inputs[k + 2]), k


def test_gradient_reaches_every_compressor():
    net = _seeded("densebiasnet", widths=NARROW).train()
    x = torch.rand(1, 1, 16, 16, 16)
    weights = torch.rand(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    (net(x) * weights).sum().backward()
    for k, compressor in enumerate(net.compressors):
        assert compressor.weight.grad is not None and float(compressor.weight.grad.abs().sum()) > 0, k


def test_dpa_features_enter_exactly_at_the_second_conv_of_each_analysis_level():
    net = _seeded("dpa_densebiasnet", widths=NARROW)
    plain = DenseBiasNet(widths=NARROW)
    for l in range(14):
        extra = net.encoder.widths[PRIOR_LAYERS[l]] if l in PRIOR_LAYERS else 0
        assert net.segmenter.layer_in_channels(l) == plain.layer_in_channels(l) + extra
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        features = net.encoder(x)
    inputs, handles = _record_layer_inputs(net.segmenter)
    with torch.no_grad():
        net.logits(x)
    for h in handles:
        h.remove()
    for l, level in PRIOR_LAYERS.items():  # the last channels of layers 1, 3, 5, 7 are Ff1..Ff4
        assert torch.equal(inputs[l][:, -net.encoder.widths[level]:], features[level])

    # knocking out encoder stage r changes no layer input before layer 2r+1,
    # and changes layer 2r+1's input only in its DPA channels
    for level, stage in enumerate(net.encoder.stages):
        saved = {k: v.clone() for k, v in stage.state_dict().items()}
        with torch.no_grad():
            stage.conv.bias.add_(1.0)  # after ReLU(GroupNorm) a shift alone does nothing: scale too
            stage.norm.weight.mul_(-1.0)
        changed, handles = _record_layer_inputs(net.segmenter)
        with torch.no_grad():
            net.logits(x)
        for h in handles:
            h.remove()
        stage.load_state_dict(saved)
        first = 2 * level + 1
        for l in range(first):
            assert torch.equal(changed[l], inputs[l]), (level, l)
        width = net.encoder.widths[level]
        assert torch.equal(changed[first][:, :-width], inputs[first][:, :-width])
        assert not torch.equal(changed[first][:, -width:], inputs[first][:, -width:])


def test_encoder_is_frozen_and_stays_in_eval_mode():
    net = _seeded("dpa_densebiasnet").train()
    assert not net.encoder.training and net.segmenter.training
    assert all(not p.requires_grad for p in net.encoder.parameters())
    net.logits(torch.rand(1, 1, 8, 8, 8)).sum().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.segmenter.parameters())


def test_load_encoder_from_a_trained_dae():
    torch.manual_seed(3)
    dae = DenoisingAutoencoder()
    net = DPADenseBiasNet()
    net.load_encoder_from(dae)
    for key, value in dae.encoder.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[key], value)
    assert all(not p.requires_grad for p in net.encoder.parameters())
    with pytest.raises(ModelError, match=r"encoder widths \(8, 8, 8, 8\)"):
        net.load_encoder_from(DenoisingAutoencoder(widths=(8, 8, 8, 8)))


def test_dae_reconstructs_in_unit_range_and_corruption_drops_voxels():
    dae = _seeded("dae")
    x = torch.rand(1, 1, 9, 12, 16)
    with torch.inference_mode():
        y = dae(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    g = torch.Generator().manual_seed(0)
    corrupted = dae.corrupt(torch.full((1, 1, 16, 16, 16), 0.5), generator=g)
    dropped = corrupted == 0
    assert 0.15 < float(dropped.float().mean()) < 0.25  # dropout_p = 0.2
    assert torch.all(corrupted[~dropped] == 0.5)  # kept voxels are not rescaled
    assert torch.equal(corrupt(x, 0.0), x)
    with pytest.raises(ModelError, match=r"outside \[0, 1\)"):
        corrupt(x, 1.0)


def test_registry_lookup_and_clear_errors():
    assert set(NETWORKS) >= {"densebiasnet", "dpa_densebiasnet", "dae", "unet3d"}
    assert network_name(build_network("dae")) == "dae"
    with pytest.raises(ModelError, match=r"unknown network 'DenseBiasNet'.*Did you mean 'densebiasnet'"):
        build_network("DenseBiasNet")
    with pytest.raises(ModelError, match=r"does not take bias_quantiy.*Did you mean 'bias_quantity'"):
        build_network("densebiasnet", bias_quantiy=4)
    with pytest.raises(ModelError, match="bias_quantity"):
        build_network("densebiasnet", bias_quantity=1.5)
    with pytest.raises(ModelError, match="14 layer widths"):
        build_network("densebiasnet", widths=[16] * 13)
    with pytest.raises(ModelError, match="sides"):
        build_network("densebiasnet").logits_padded(torch.rand(1, 1, 9, 8, 8))


@pytest.mark.parametrize("name,hyper,shape", [
    ("densebiasnet", {}, (2, 1, 8, 16, 16)),
    ("densebiasnet", {"bias_quantity": 0.1, "num_classes": 3}, (1, 1, 9, 7, 13)),
    ("dpa_densebiasnet", {}, (1, 1, 16, 8, 16)),
    ("dpa_densebiasnet", {"bias_quantity": 1, "encoder_widths": [4, 8, 8, 12]}, (2, 1, 8, 16, 8)),
])
def test_fast_inference_path_computes_the_same_function(name, hyper, shape):
    net = _seeded(name, **hyper)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        net.use_fast_inference(False)
        reference = net.logits(x)
        net.use_fast_inference(True)
        fast = net.logits(x)
        again = net.logits(x[:1, :, :8, :8, :8])  # reused work buffers, another shape
        net.use_fast_inference(False)
        again_reference = net.logits(x[:1, :, :8, :8, :8])
    assert fast.shape == reference.shape
    assert torch.allclose(fast, reference, atol=2e-5, rtol=1e-5), float((fast - reference).abs().max())
    assert torch.allclose(again, again_reference, atol=2e-5, rtol=1e-5)
    net.release_buffers()


@pytest.mark.slow
def test_fast_path_equals_the_plain_formulation_on_a_full_window():
    net = _seeded("dpa_densebiasnet")
    x = torch.rand(1, 1, 64, 152, 152, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        net.use_fast_inference(False)
        reference = net(x)
        net.use_fast_inference(True)
        fast = net(x)
    assert float((fast - reference).abs().max()) < 1e-3
    # labels differ only where the (random-weight) network is undecided, p ≈ 0.5
    differ = fast.argmax(1) != reference.argmax(1)
    assert bool(((reference[:, 1][differ] - 0.5).abs() < 1e-3).all())
