"""The CPU inference fast path: the same functions as the networks' plain forms, faster.

PyTorch's plain formulation of DenseBiasNet (concatenate each layer's inputs, then
convolve) is what training differentiates and what GPUs run. Without autograd on
the CPU, :func:`densebiasnet_logits` computes the same function to float rounding
with less memory traffic (see its docstring), and :func:`conv_norm_relu` runs the
networks' 3×3×3 convolution → GroupNorm → ReLU unit channels_last through oneDNN.
DenseBiasNet takes the fast path when :func:`applies`, a ``ConvNormReLU`` whenever
autograd is off on the CPU; ``use_fast_inference(False)`` on a network
(:func:`set_fast_inference`) selects the plain formulation, kept for checking and
benchmarking. ``benchmarks/bench_model.py`` measures both.

This module depends on torch alone; the networks import it, never the reverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from renalseg.nets.dae import DAEEncoder
    from renalseg.nets.densebiasnet import DenseBiasNet

__all__ = ["applies", "set_fast_inference", "conv3d_fast", "conv_norm_relu", "group_norm_relu_", "WorkBuffers",
           "densebiasnet_logits"]


def applies(network: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``network`` takes the fast path for ``x``: CPU float32 inference
    (no autograd) with its ``fast_inference`` switch on; GPUs use the plain one."""
    return network.fast_inference and not torch.is_grad_enabled() and x.device.type == "cpu" \
        and x.dtype == torch.float32


def set_fast_inference(network: nn.Module, enabled: bool = True) -> None:
    """Switch the fast inference path of ``network`` and all its parts on or off.

    Example:
        >>> from renalseg.nets.blocks import ConvNormReLU
        >>> unit = ConvNormReLU(1, 4)
        >>> set_fast_inference(unit, False)
        >>> unit.fast_inference
        False
    """
    for module in network.modules():
        if hasattr(module, "fast_inference"):
            module.fast_inference = enabled


def conv3d_fast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3×3×3 convolution, padding 1, channels_last, always through oneDNN when present.

    PyTorch sends small inputs (and every 1-channel input) to a slow im2col path by a
    size heuristic; oneDNN is faster for all the shapes of these networks.
    """
    weight = weight.contiguous(memory_format=torch.channels_last_3d)
    if x.device.type == "cpu" and torch.backends.mkldnn.is_available() and x.dtype == torch.float32:
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, padding=1)


def group_norm_relu_(y: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``relu(norm(y))``, the ReLU in place on the normalised tensor."""
    return F.group_norm(y, norm.num_groups, norm.weight, norm.bias, norm.eps).relu_()


def conv_norm_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   norm: nn.GroupNorm) -> torch.Tensor:
    """:func:`conv3d_fast` → GroupNorm → ReLU: a ``ConvNormReLU`` unit on the fast path.

    ``weight`` may have more input channels than the unit's own (zero-padded to
    match a packed input).

    Example:
        >>> from renalseg.nets.blocks import ConvNormReLU
        >>> unit = ConvNormReLU(2, 8).eval()
        >>> x = torch.rand(1, 2, 4, 4, 8)
        >>> with torch.no_grad():
        ...     fast = conv_norm_relu(x.contiguous(memory_format=torch.channels_last_3d), unit.conv.weight,
        ...                           unit.conv.bias, unit.norm)
        ...     plain = torch.relu(unit.norm(unit.conv(x)))
        >>> bool(torch.allclose(fast, plain, atol=1e-5))
        True
    """
    return group_norm_relu_(conv3d_fast(x, weight, bias), norm)


class WorkBuffers:
    """Flat float buffers reused between calls, by name (re-touching fresh memory
    every window costs page faults); never assumed to hold zeros.

    Example:
        >>> buffers = WorkBuffers()
        >>> a = buffers.get("rows", 10, torch.zeros(1))
        >>> b = buffers.get("rows", 4, torch.zeros(1))
        >>> a.numel(), b.numel(), a.data_ptr() == b.data_ptr()
        (10, 4, True)
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, key: str, numel: int, like: torch.Tensor) -> torch.Tensor:
        """The first ``numel`` elements of buffer ``key``, on ``like``'s device and dtype."""
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel or buffer.device != like.device or buffer.dtype != like.dtype:
            buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers[key] = buffer
        return buffer[:numel]

    def clear(self) -> None:
        """Free every buffer; they are re-created on the next call."""
        self._buffers.clear()


def _upsample_into(x: torch.Tensor, out: torch.Tensor) -> None:
    """Trilinear upsampling (``align_corners=False``) of x (1, C, z, y, x) written into
    ``out`` (1, C, fz, fy, fx), contiguous."""
    factor = float(out.shape[2] // x.shape[2])
    torch._C._nn.upsample_trilinear3d(x, list(out.shape[2:]), False, factor, factor, factor, out=out)


def _rows(y: torch.Tensor) -> torch.Tensor:
    """(voxels, C) rows of a channels_last (1, C, Z, Y, X) tensor (a view)."""
    return y.permute(0, 2, 3, 4, 1).reshape(-1, y.shape[1])


def _copy_planar(block: torch.Tensor, x: torch.Tensor) -> None:
    """Copy x (1, C, Z, Y, X), either memory format, into the planar rows ``block`` (C, voxels)."""
    if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        block.copy_(x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1]).t())  # blocked transpose
    else:
        block.copy_(x.reshape(x.shape[1], -1))


def densebiasnet_logits(net: DenseBiasNet, x: torch.Tensor, priors: Sequence[torch.Tensor] | None = None, *,
                        encoder: DAEEncoder | None = None) -> torch.Tensor:
    """DenseBiasNet's logits (B, num_classes, Z, Y, X) computed faster on the CPU.

    The same function as the network's plain formulation, for inputs whose sides
    divide by 8 (``net.logits_padded``), with the DPA features from ``priors`` or,
    when ``encoder`` is given, computed here from ``x``. How:

    * Layer inputs are assembled channel-planar, (C, voxels), one buffer per level,
      in the channel order ``[b_0 … b_{l−2}, F_{l−1}, Ff, zeros]``: every bias map
      is written once per level straight into its rows (by the compressor's matrix
      product, the pooling, or the upsampling) and serves every layer there. One
      blocked transpose gives the channels_last (voxels, C) layout on which
      oneDNN's convolutions run fastest. Channel counts are padded with zero rows
      to multiples of 8 and the weights with zero input channels to match
      (oneDNN's fast kernels need multiples of 8; the zeros add exactly nothing).
    * With the DPA encoder, layer 0 and the encoder's first convolution read the
      same input and are computed as one 24-channel convolution and one
      GroupNorm, whose output is exactly layer 1's input ``[F_0, Ff1]``.
    * The last two layers (full resolution) use linearity,
      ``conv([B, F]) = conv(B) + conv(F)``: their bias maps ``B`` are packed once
      and convolved once for both layers together; their main inputs are
      convolved where they lie, without packing.
    * Batches run one item at a time. Work buffers are kept between calls in
      ``net.work_buffers`` (freed by ``net.release_buffers()``), so one network
      must not run two calls at once from different threads.
    """
    if x.shape[0] > 1:
        return torch.cat([densebiasnet_logits(net, x[i:i + 1], None if priors is None else [p[i:i + 1] for p in priors],
                                              encoder=encoder) for i in range(x.shape[0])])
    shapes = [tuple(s >> r for s in x.shape[2:]) for r in range(4)]
    voxels = [shape[0] * shape[1] * shape[2] for shape in shapes]
    offsets = [0]
    for m in net.bias_channels:
        offsets.append(offsets[-1] + m)
    in_padded = [c + (-c) % 8 for c in map(net.layer_in_channels, range(len(net.layers)))]
    last_pair = len(net.layers) - 2
    # rows each level's planar buffer needs: the packed inputs of its layers (at full
    # resolution only layer 1's and the last pair's bias maps) and every bias slot
    packed_rows = [max([c for l, c in enumerate(in_padded) if net.levels[l] == r and 0 < l < last_pair]
                       + [offsets[last_pair] + (-offsets[last_pair]) % 8 if r == 0 else 0]) for r in range(4)]
    planar = [net.work_buffers.get(f"planar{r}", voxels[r] * max(packed_rows[r], offsets[-1]), x).view(-1, voxels[r])
              for r in range(4)]
    rows_buffer = net.work_buffers.get("rows", max(v * c for v, c in zip(voxels, packed_rows)), x)
    y, priors = _first_layer(net, x, priors, encoder)
    rows = _rows(y)[:, :net.widths[0]]  # F_l as (voxels, C) channels_last rows
    for l in range(1, len(net.layers)):
        layer, level, shape = net.layers[l], net.levels[l], shapes[net.levels[l]]
        if l == last_pair and level == 0 and net.levels[l - 1] == 1:
            rows = _last_pair(net, rows, planar, rows_buffer, shapes, offsets)
            break
        if l == 1 and y.shape[1] == net.layer_in_channels(1):
            inp = y  # [F_0, Ff1] as computed together, or F_0 alone
        else:
            block, start = planar[level], offsets[l - 1]
            previous = net.levels[l - 1]
            width = rows.shape[1]
            if level > previous:  # pool F_{l-1}, then into the planar rows
                cl = rows.reshape(1, *shapes[previous], width).permute(0, 4, 1, 2, 3)
                pooled = F.max_pool3d(cl, 2).permute(0, 2, 3, 4, 1).reshape(voxels[level], width)
                block[start:start + width].copy_(pooled.t())
            elif level < previous:  # upsample F_{l-1} straight into the planar rows
                coarse = rows.t().contiguous().view(1, width, *shapes[previous])
                _upsample_into(coarse, block[start:start + width].view(1, width, *shape))
            else:
                block[start:start + width].copy_(rows.t())  # blocked transpose
            start += width
            if l in net.prior_layers and net.prior_channels[level]:
                prior = priors[level]  # type: ignore[index]
                _copy_planar(block[start:start + prior.shape[1]], prior)
                start += prior.shape[1]
            block[start:in_padded[l]].zero_()
            packed = rows_buffer[:voxels[level] * in_padded[l]].view(voxels[level], in_padded[l])
            packed.copy_(block[:in_padded[l]].t())  # blocked transpose to channels_last rows
            inp = packed.view(1, *shape, in_padded[l]).permute(0, 4, 1, 2, 3)
        if l - 1 < len(net.compressors):  # b_{l-1}'s rows are free now that layer l has its input
            _write_bias_map(net, l - 1, rows, planar, shapes, offsets)
        weight = layer.conv.weight
        if inp.shape[1] > weight.shape[1]:
            weight = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, inp.shape[1] - weight.shape[1]))
        y = conv_norm_relu(inp, weight, layer.conv.bias, layer.norm)
        rows = _rows(y)
    head = net.head
    logits = torch.addmm(head.bias[:, None], head.weight.reshape(head.out_channels, -1), rows.t())
    return logits.view(1, head.out_channels, *shapes[0])


def _first_layer(net: DenseBiasNet, x: torch.Tensor, priors: Sequence[torch.Tensor] | None,
                 encoder: DAEEncoder | None) -> tuple[torch.Tensor, Sequence[torch.Tensor] | None]:
    """Layer 0's output (channels_last), with the DPA features when ``encoder`` is given.

    Returns ``(y, priors)``: ``y`` is ``[F_0, Ff1]`` when the encoder's first stage
    could be computed together with layer 0 (same input, same GroupNorm group size),
    else ``F_0``.
    """
    layer = net.layers[0]
    x = x.contiguous(memory_format=torch.channels_last_3d)
    if x.shape[1] == 1:  # give one channel explicit channels_last strides, or oneDNN answers in NCDHW
        x = x.as_strided(x.shape, (x.numel(), 1, *x.stride()[2:]))
    stage = encoder.stages[0] if encoder is not None else None
    if stage is None or layer.conv.in_channels != stage.conv.in_channels or layer.norm.eps != stage.norm.eps \
            or layer.norm.num_channels // layer.norm.num_groups != stage.norm.num_channels // stage.norm.num_groups:
        if encoder is not None:
            priors = encoder(x)
        return conv_norm_relu(x, layer.conv.weight, layer.conv.bias, layer.norm), priors
    y = conv3d_fast(x, torch.cat([layer.conv.weight, stage.conv.weight]),
                    torch.cat([layer.conv.bias, stage.conv.bias]))
    # one GroupNorm: the groups of both lie side by side and never straddle the two
    y = F.group_norm(y, layer.norm.num_groups + stage.norm.num_groups,
                     torch.cat([layer.norm.weight, stage.norm.weight]),
                     torch.cat([layer.norm.bias, stage.norm.bias]), layer.norm.eps).relu_()
    h = y[:, layer.conv.out_channels:]
    features = [h]
    for later in encoder.stages[1:]:  # type: ignore[union-attr]
        h = later(F.max_pool3d(h, 2))
        features.append(h)
    return y, features


def _last_pair(net: DenseBiasNet, rows: torch.Tensor, planar: list[torch.Tensor], rows_buffer: torch.Tensor,
               shapes: list[tuple[int, ...]], offsets: list[int]) -> torch.Tensor:
    """The last two layers (full resolution), given F_{l−1} rows at half resolution.

    ``F_l = H_l([B_l, up(F_{l−1})])`` and ``F_{l+1} = H_{l+1}([B_{l+1}, F_l])``
    where ``B_{l+1}`` (the bias maps b_0 … b_{l−1}) extends ``B_l`` by one map.
    The bias parts of both convolutions are one convolution of ``B_{l+1}`` (the
    weights of layer l zero for b_{l−1}) with both layers' output channels.

    Returns:
        F_{l+1} as (voxels, C) rows.
    """
    l = len(net.layers) - 2
    first, second = net.layers[l], net.layers[l + 1]
    _write_bias_map(net, l - 1, rows, planar, shapes, offsets)
    n_bias = offsets[l]
    padded = n_bias + (-n_bias) % 8
    block = planar[0]
    block[n_bias:padded].zero_()
    packed = rows_buffer[:padded * block.shape[1]].view(block.shape[1], padded)
    packed.copy_(block[:padded].t())  # blocked transpose to channels_last rows
    bias_maps = packed.view(1, *shapes[0], padded).permute(0, 4, 1, 2, 3)
    w_first, w_second = first.conv.weight, second.conv.weight
    bias_weight = torch.cat([F.pad(w_first[:, :offsets[l - 1]], (0, 0, 0, 0, 0, 0, 0, padded - offsets[l - 1])),
                             F.pad(w_second[:, :n_bias], (0, 0, 0, 0, 0, 0, 0, padded - n_bias))])
    from_bias = conv3d_fast(bias_maps, bias_weight, None)
    width = rows.shape[1]
    main = F.interpolate(rows.reshape(1, *shapes[1], width).permute(0, 4, 1, 2, 3), scale_factor=2,
                         mode="trilinear", align_corners=False)
    y = conv3d_fast(main, w_first[:, offsets[l - 1]:], first.conv.bias).add_(from_bias[:, :first.conv.out_channels])
    h = group_norm_relu_(y, first.norm)
    y = conv3d_fast(h, w_second[:, n_bias:], second.conv.bias).add_(from_bias[:, first.conv.out_channels:])
    h = group_norm_relu_(y, second.norm)
    return _rows(h)


def _write_bias_map(net: DenseBiasNet, k: int, rows: torch.Tensor, planar: list[torch.Tensor],
                    shapes: list[tuple[int, ...]], offsets: list[int]) -> None:
    """b_k = Conv(F_k; m) into its rows of every level's planar buffer that needs it.

    At F_k's own level by the compressor's matrix product, deeper by repeated
    2×2×2 max-pooling, shallower by one trilinear upsampling each.
    """
    compressor, level = net.compressors[k], net.levels[k]
    m, rows_k = compressor.out_channels, slice(offsets[k], offsets[k + 1])
    own = planar[level][rows_k]
    torch.addmm(compressor.bias[:, None], compressor.weight.reshape(m, -1), rows.t(), out=own)
    targets = net.bias_targets[k]
    source = own
    for t in range(level + 1, max(targets) + 1):
        planar[t][rows_k].copy_(F.max_pool3d(source.view(1, m, *shapes[t - 1]), 2).view(m, -1))
        source = planar[t][rows_k]
    for t in targets:
        if t < level:
            _upsample_into(own.view(1, m, *shapes[level]), planar[t][rows_k].view(1, m, *shapes[t]))
