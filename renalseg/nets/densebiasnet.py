"""DenseBiasNet and DPA-DenseBiasNet: dense biased connections for fine renal arteries.

Reference:
    He Y, Yang G, Yang J, et al. Dense biased networks with deep priori anatomy and
    hard region adaptation: Semi-supervised learning for fine renal artery
    segmentation. Medical Image Analysis 63 (2020) 101722, Sec. 2.2 (DenseBiasNet)
    and Sec. 2.1 (deep priori anatomy, DPA).

Architecture (facts from the paper; the authors' public code agrees):

* 14 layers, each a 3×3×3 convolution → GroupNorm (4 channels per group) → ReLU,
  widths ``(16, 16, 32, 32, 64, 64, 128, 128, 64, 64, 32, 32, 16, 16)`` over four
  resolution levels ``(0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 1, 1, 0, 0)``: two layers per
  level down the analysis path with 2×2×2 max-pooling between levels, two per level
  up the synthesis path after trilinear ×2 upsampling.
* Dense biased connection (Eq. 1): the output ``F_k`` of every layer but the last
  two (layer 12's output reaches layer 13 in full) is compressed by a 1×1×1 convolution to ``m_k`` channels (the bias quantity), and
  that *bias map* is resized to each later resolution — by max-pooling when going
  down, trilinear upsampling when going up — and concatenated into the input of
  every later layer: ``F_l = H_l(F_{l-1} ∘ Conv(F_{l-2}; m) ∘ … ∘ Conv(F_0; m))``.
  Layer ``l`` thus sees the full ``F_{l-1}`` (pooled or upsampled at a level
  change) and the bias maps of layers ``0 … l−2``. There are no full-width U-Net
  skip connections: the bias maps carry the encoder's information to the decoder.
* Output: 1×1×1 convolution to the classes, softmax over classes.
* DPA (Fig. 5): the frozen DAE encoder's four feature maps ``Ff1..Ff4`` are
  concatenated into the input of the *second* convolution of each analysis level
  (layers 1, 3, 5, 7).

Choices the paper leaves open, made here:

* Channel order of each layer's input: ``[b_0, …, b_{l−2}, F_{l−1}, Ff]``.
* Each bias map is resized once per target level and reused by every layer there.
  Going down, repeated 2×2×2 max-pooling (identical to one 2^k pooling);
  going up, one trilinear upsampling by 2^k with ``align_corners=False``, which
  maps a coarse voxel's centre to the centre of the fine block it was pooled from
  (the geometrically consistent inverse of the pooling).
* Sides not divisible by 8 are zero-padded (centred) and the output cropped back.

Speed: with autograd off on the CPU (``torch.inference_mode()``/``no_grad``), a fast
path computes the same function to float rounding (see
``DenseBiasNet._logits_fast``); ``use_fast_inference(False)`` selects the plain
formulation, which training (autograd on) and GPUs always use.
``benchmarks/bench_model.py`` measures both.

Parameter counts (2 classes, 1 input channel): DenseBiasNet with m = 4 has
1,738,498 parameters; DPA-DenseBiasNet with m = 4 and the default DAE encoder has
1,875,394 (136,896 more: 15,936 frozen encoder parameters plus the wider second
convolutions of each analysis level, which take the 8+8+16+24 DPA channels).
The paper reports 1.612M for DenseBiasNet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from renalseg.errors import ModelError
from renalseg.nets.dae import (
    DEFAULT_DAE_WIDTHS,
    ConvNormReLU,
    DAEEncoder,
    DenoisingAutoencoder,
    conv3d_fast,
    pad_to_multiple,
)

__all__ = ["DenseBiasNet", "DPADenseBiasNet", "DEFAULT_WIDTHS", "LEVELS", "PRIOR_LAYERS"]

#: the authors' widths of the 14 layers
DEFAULT_WIDTHS: tuple[int, ...] = (16, 16, 32, 32, 64, 64, 128, 128, 64, 64, 32, 32, 16, 16)
#: resolution level of each layer (0 = full resolution, 3 = 1/8)
LEVELS: tuple[int, ...] = (0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 1, 1, 0, 0)
#: layer index → level of the DAE feature map concatenated into its input (DPA)
PRIOR_LAYERS: dict[int, int] = {1: 0, 3: 1, 5: 2, 7: 3}


def _bias_channels(bias_quantity: int | float, width: int) -> int:
    """``m`` of one layer: an integer count, or a ratio (0 < r < 1) of the layer's width."""
    if isinstance(bias_quantity, bool):
        raise ModelError(f"bias_quantity must be an integer ≥ 1 or a ratio in (0, 1), got {bias_quantity!r}.")
    if isinstance(bias_quantity, int) or float(bias_quantity).is_integer() and bias_quantity >= 1:
        m = int(bias_quantity)
        if m < 1:
            raise ModelError(f"bias_quantity {bias_quantity} must be ≥ 1 (channels) or a ratio in (0, 1).")
        return m
    if not 0.0 < float(bias_quantity) < 1.0:
        raise ModelError(f"bias_quantity {bias_quantity} must be an integer ≥ 1 or a ratio in (0, 1) "
                         "such as 0.1 (paper Table 3: 1, 2, 4, 0.1r, 0.2r).")
    return max(1, round(float(bias_quantity) * width))


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)


def _upsample_into(x: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`_upsample` of x (1, C, z, y, x) written into ``out`` (1, C, fz, fy, fx), contiguous."""
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


class DenseBiasNet(nn.Module):
    """DenseBiasNet (He et al. 2020, Sec. 2.2), optionally with DPA feature inputs.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: output classes, background included (2: background, renal artery).
        widths: the 14 layer widths (default: the authors').
        bias_quantity: ``m``, channels of each bias map: an integer (paper: 1, 2, 4),
            or a ratio of the producing layer's width in (0, 1) (paper: 0.1r, 0.2r;
            rounded, at least 1).
        group_size: channels per GroupNorm group (the authors': 4).
        prior_channels: channels of the DPA feature map concatenated into the second
            convolution of each analysis level (layers 1, 3, 5, 7); zeros for plain
            DenseBiasNet. Use :class:`DPADenseBiasNet` for the full model.

    With the defaults (m = 4, 2 classes) the network has 1,738,498 parameters.

    Example:
        >>> net = DenseBiasNet().eval()
        >>> with torch.inference_mode():
        ...     p = net(torch.rand(1, 1, 8, 16, 12))
        >>> tuple(p.shape), bool(torch.allclose(p.sum(1), torch.ones(1)))
        ((1, 2, 8, 16, 12), True)
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, *, widths: Sequence[int] = DEFAULT_WIDTHS,
                 bias_quantity: int | float = 4, group_size: int = 4,
                 prior_channels: Sequence[int] = (0, 0, 0, 0)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != len(LEVELS):
            raise ModelError(f"DenseBiasNet needs {len(LEVELS)} layer widths, got {len(widths)}: {widths}.")
        prior_channels = tuple(int(c) for c in prior_channels)
        if len(prior_channels) != 4 or min(prior_channels) < 0:
            raise ModelError(f"prior_channels needs 4 non-negative counts (one per level), got {prior_channels}.")
        if num_classes < 2 or in_channels < 1:
            raise ModelError(f"need in_channels ≥ 1 and num_classes ≥ 2, got {in_channels} and {num_classes}.")
        self.hyperparameters = {"in_channels": in_channels, "num_classes": num_classes, "widths": list(widths),
                                "bias_quantity": bias_quantity, "group_size": group_size,
                                "prior_channels": list(prior_channels)}
        self.widths = widths
        self.prior_channels = prior_channels
        #: m_k of the bias map of layer k (layers 0 … 11: the last two layers feed no bias map
        #: to a later one, since layer 13 takes F_12 in full)
        self.bias_channels = tuple(_bias_channels(bias_quantity, w) for w in widths[:-2])
        self.layers = nn.ModuleList(
            ConvNormReLU(self.layer_in_channels(l), widths[l], group_size=group_size) for l in range(len(widths)))
        self.compressors = nn.ModuleList(nn.Conv3d(w, m, 1) for w, m in zip(widths, self.bias_channels))
        self.head = nn.Conv3d(widths[-1], num_classes, 1)
        #: use the fast inference path whenever no gradient is being recorded (same math)
        self.fast_inference = True
        self._buffers_cache: dict[str, torch.Tensor] = {}
        #: levels each bias map is needed at: those of layers k+2 … 13
        self._bias_targets = tuple(sorted({LEVELS[j] for j in range(k + 2, len(widths))})
                                   for k in range(len(widths) - 2))

    def use_fast_inference(self, enabled: bool = True) -> None:
        """Switch the fast inference path (used whenever autograd is off) on or off.

        Both paths compute the same function; off is the plain formulation, kept for
        checking and benchmarking.
        """
        for module in self.modules():
            if hasattr(module, "fast_inference"):
                module.fast_inference = enabled

    def layer_in_channels(self, l: int) -> int:
        """Input channels of layer ``l``: bias maps of layers 0…l−2, then F_{l−1}, then DPA features."""
        main = self.hyperparameters["in_channels"] if l == 0 else self.widths[l - 1]
        bias = sum(_bias_channels(self.hyperparameters["bias_quantity"], w) for w in self.widths[:max(l - 1, 0)])
        prior = self.prior_channels[PRIOR_LAYERS[l]] if l in PRIOR_LAYERS else 0
        return bias + main + prior

    def forward(self, x: torch.Tensor, priors: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Class probabilities (softmax over classes).

        Args:
            x: float32 (B, in_channels, Z, Y, X), normalised to [0, 1]. Any size:
                sides not divisible by 8 are zero-padded and the output cropped back.
            priors: DPA feature maps for the padded input, one per level (only when
                ``prior_channels`` is non-zero; :class:`DPADenseBiasNet` supplies them).

        Returns:
            float32 (B, num_classes, Z, Y, X), summing to 1 over classes.
        """
        return torch.softmax(self.logits(x, priors), dim=1)

    def logits(self, x: torch.Tensor, priors: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Pre-softmax scores (B, num_classes, Z, Y, X); what the training losses take."""
        padded, crop = pad_to_multiple(x, 8)
        return self.logits_padded(padded, priors)[crop]

    def logits_padded(self, x: torch.Tensor, priors: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """:meth:`logits` for an input whose sides already divide by 8."""
        self._check_input(x, priors)
        if self._fast_path_applies(x):
            return self._logits_fast(x, priors)
        return self._logits_reference(x, priors)

    def _check_input(self, x: torch.Tensor, priors: Sequence[torch.Tensor] | None = None,
                     *, with_encoder: bool = False) -> None:
        if x.ndim != 5 or x.shape[1] != self.hyperparameters["in_channels"] or any(s % 8 for s in x.shape[2:]):
            raise ModelError(f"expected input (B, {self.hyperparameters['in_channels']}, Z, Y, X) with sides "
                             f"divisible by 8, got {tuple(x.shape)}.")
        if any(self.prior_channels) and not with_encoder and (priors is None or len(priors) != 4):
            raise ModelError("this DenseBiasNet takes DPA features (prior_channels "
                             f"{self.prior_channels}) but none were given; use DPADenseBiasNet.")

    def _fast_path_applies(self, x: torch.Tensor) -> bool:
        """The fast path serves CPU float32 inference (no autograd); GPUs use the plain one."""
        return self.fast_inference and not torch.is_grad_enabled() and x.device.type == "cpu" \
            and x.dtype == torch.float32

    def _resize_bias(self, bias: torch.Tensor, level: int, targets: Sequence[int]) -> dict[int, torch.Tensor]:
        """One bias map at every level in ``targets`` (computed once, reused by every layer there)."""
        resized: dict[int, torch.Tensor] = {}
        pooled, pooled_level = bias, level
        for t in targets:
            if t == level:
                resized[t] = bias
            elif t > level:
                while pooled_level < t:
                    pooled, pooled_level = F.max_pool3d(pooled, 2), pooled_level + 1
                resized[t] = pooled
            else:
                resized[t] = _upsample(bias, 2 ** (level - t))
        return resized

    def _logits_reference(self, x: torch.Tensor, priors: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """The plain formulation: concatenate, convolve (autograd-friendly; used in training)."""
        resized: list[dict[int, torch.Tensor]] = []
        h = x
        for l, layer in enumerate(self.layers):
            level = LEVELS[l]
            if l and level != LEVELS[l - 1]:
                h = F.max_pool3d(h, 2) if level > LEVELS[l - 1] else _upsample(h, 2)
            parts = [resized[k][level] for k in range(l - 1)] + [h]
            if l in PRIOR_LAYERS and self.prior_channels[level]:
                parts.append(priors[level])  # type: ignore[index]
            joined = torch.cat(parts, dim=1) if len(parts) > 1 else h
            h = F.relu(layer.norm(layer.conv(joined)), inplace=True)
            if l < len(self.compressors):
                resized.append(self._resize_bias(self.compressors[l](h), level, self._bias_targets[l]))
        return self.head(h)

    def release_buffers(self) -> None:
        """Free the work buffers the fast inference path keeps between calls (about
        0.6 GB for a 64 × 152 × 152 window); they are re-created on the next call."""
        self._buffers_cache.clear()

    def _work_buffer(self, key: str, numel: int, like: torch.Tensor) -> torch.Tensor:
        """A flat float buffer reused between calls (re-touching fresh memory every
        window costs page faults); never assumed to hold zeros."""
        buffer = self._buffers_cache.get(key)
        if buffer is None or buffer.numel() < numel or buffer.device != like.device or buffer.dtype != like.dtype:
            buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers_cache[key] = buffer
        return buffer[:numel]

    def _logits_fast(self, x: torch.Tensor, priors: Sequence[torch.Tensor] | None,
                     encoder: DAEEncoder | None = None) -> torch.Tensor:
        """The inference path: the same function as :meth:`_logits_reference`, computed faster.

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
        * Batches run one item at a time. Work buffers are kept between calls (see
          :meth:`release_buffers`), so one network must not run two calls at once
          from different threads.
        """
        if x.shape[0] > 1:
            return torch.cat([self._logits_fast(x[i:i + 1], None if priors is None else [p[i:i + 1] for p in priors],
                                                encoder) for i in range(x.shape[0])])
        shapes = [tuple(s >> r for s in x.shape[2:]) for r in range(4)]
        voxels = [shape[0] * shape[1] * shape[2] for shape in shapes]
        offsets = [0]
        for m in self.bias_channels:
            offsets.append(offsets[-1] + m)
        in_padded = [c + (-c) % 8 for c in map(self.layer_in_channels, range(len(self.layers)))]
        last_pair = len(self.layers) - 2
        # rows each level's planar buffer needs: the packed inputs of its layers (at full
        # resolution only layer 1's and the last pair's bias maps) and every bias slot
        packed_rows = [max([c for l, c in enumerate(in_padded) if LEVELS[l] == r and 0 < l < last_pair]
                           + [offsets[last_pair] + (-offsets[last_pair]) % 8 if r == 0 else 0]) for r in range(4)]
        planar = [self._work_buffer(f"planar{r}", voxels[r] * max(packed_rows[r], offsets[-1]), x).view(-1, voxels[r])
                  for r in range(4)]
        rows_buffer = self._work_buffer("rows", max(v * c for v, c in zip(voxels, packed_rows)), x)
        y, priors = self._first_layer_fast(x, priors, encoder)
        rows = _rows(y)[:, :self.widths[0]]  # F_l as (voxels, C) channels_last rows
        for l in range(1, len(self.layers)):
            layer, level, shape = self.layers[l], LEVELS[l], shapes[LEVELS[l]]
            if l == last_pair and level == 0 and LEVELS[l - 1] == 1:
                rows = self._last_pair_fast(rows, planar, rows_buffer, shapes, offsets)
                break
            if l == 1 and y.shape[1] == self.layer_in_channels(1):
                inp = y  # [F_0, Ff1] as computed together, or F_0 alone
            else:
                block, start = planar[level], offsets[l - 1]
                previous = LEVELS[l - 1]
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
                if l in PRIOR_LAYERS and self.prior_channels[level]:
                    prior = priors[level]  # type: ignore[index]
                    _copy_planar(block[start:start + prior.shape[1]], prior)
                    start += prior.shape[1]
                block[start:in_padded[l]].zero_()
                packed = rows_buffer[:voxels[level] * in_padded[l]].view(voxels[level], in_padded[l])
                packed.copy_(block[:in_padded[l]].t())  # blocked transpose to channels_last rows
                inp = packed.view(1, *shape, in_padded[l]).permute(0, 4, 1, 2, 3)
            if l - 1 < len(self.compressors):  # b_{l-1}'s rows are free now that layer l has its input
                self._write_bias_map(l - 1, rows, planar, shapes, offsets)
            weight = layer.conv.weight
            if inp.shape[1] > weight.shape[1]:
                weight = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, inp.shape[1] - weight.shape[1]))
            y = conv3d_fast(inp, weight, layer.conv.bias)
            y = F.group_norm(y, layer.norm.num_groups, layer.norm.weight, layer.norm.bias, layer.norm.eps).relu_()
            rows = _rows(y)
        head = self.head
        logits = torch.addmm(head.bias[:, None], head.weight.reshape(head.out_channels, -1), rows.t())
        return logits.view(1, head.out_channels, *shapes[0])

    def _first_layer_fast(self, x: torch.Tensor, priors: Sequence[torch.Tensor] | None,
                          encoder: DAEEncoder | None) -> tuple[torch.Tensor, Sequence[torch.Tensor] | None]:
        """Layer 0's output (channels_last), with the DPA features when ``encoder`` is given.

        Returns ``(y, priors)``: ``y`` is ``[F_0, Ff1]`` when the encoder's first stage
        could be computed together with layer 0 (same input, same GroupNorm group size),
        else ``F_0``.
        """
        layer = self.layers[0]
        x = x.contiguous(memory_format=torch.channels_last_3d)
        if x.shape[1] == 1:  # give one channel explicit channels_last strides, or oneDNN answers in NCDHW
            x = x.as_strided(x.shape, (x.numel(), 1, *x.stride()[2:]))
        stage = encoder.stages[0] if encoder is not None else None
        if stage is None or layer.conv.in_channels != stage.conv.in_channels or layer.norm.eps != stage.norm.eps \
                or layer.norm.num_channels // layer.norm.num_groups != stage.norm.num_channels // stage.norm.num_groups:
            if encoder is not None:
                priors = encoder(x)
            y = conv3d_fast(x, layer.conv.weight, layer.conv.bias)
            return F.group_norm(y, layer.norm.num_groups, layer.norm.weight, layer.norm.bias,
                                layer.norm.eps).relu_(), priors
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

    def _last_pair_fast(self, rows: torch.Tensor, planar: list[torch.Tensor], rows_buffer: torch.Tensor,
                        shapes: list[tuple[int, ...]], offsets: list[int]) -> torch.Tensor:
        """The last two layers (full resolution), given F_{l−1} rows at half resolution.

        ``F_l = H_l([B_l, up(F_{l−1})])`` and ``F_{l+1} = H_{l+1}([B_{l+1}, F_l])``
        where ``B_{l+1}`` (the bias maps b_0 … b_{l−1}) extends ``B_l`` by one map.
        The bias parts of both convolutions are one convolution of ``B_{l+1}`` (the
        weights of layer l zero for b_{l−1}) with both layers' output channels.

        Returns:
            F_{l+1} as (voxels, C) rows.
        """
        l = len(self.layers) - 2
        first, second = self.layers[l], self.layers[l + 1]
        self._write_bias_map(l - 1, rows, planar, shapes, offsets)
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
        h = F.group_norm(y, first.norm.num_groups, first.norm.weight, first.norm.bias, first.norm.eps).relu_()
        y = conv3d_fast(h, w_second[:, n_bias:], second.conv.bias).add_(from_bias[:, first.conv.out_channels:])
        h = F.group_norm(y, second.norm.num_groups, second.norm.weight, second.norm.bias, second.norm.eps).relu_()
        return _rows(h)

    def _write_bias_map(self, k: int, rows: torch.Tensor, planar: list[torch.Tensor],
                        shapes: list[tuple[int, ...]], offsets: list[int]) -> None:
        """b_k = Conv(F_k; m) into its rows of every level's planar buffer that needs it.

        At F_k's own level by the compressor's matrix product, deeper by repeated
        2×2×2 max-pooling, shallower by one trilinear upsampling each.
        """
        compressor, level = self.compressors[k], LEVELS[k]
        m, rows_k = compressor.out_channels, slice(offsets[k], offsets[k + 1])
        own = planar[level][rows_k]
        torch.addmm(compressor.bias[:, None], compressor.weight.reshape(m, -1), rows.t(), out=own)
        targets = self._bias_targets[k]
        source = own
        for t in range(level + 1, max(targets) + 1):
            planar[t][rows_k].copy_(F.max_pool3d(source.view(1, m, *shapes[t - 1]), 2).view(m, -1))
            source = planar[t][rows_k]
        for t in targets:
            if t < level:
                _upsample_into(own.view(1, m, *shapes[level]), planar[t][rows_k].view(1, m, *shapes[t]))


class DPADenseBiasNet(nn.Module):
    """DPA-DenseBiasNet: DenseBiasNet fed by a frozen DAE encoder (He et al. 2020, Fig. 5).

    ``network.encoder`` is a :class:`~renalseg.nets.dae.DAEEncoder` whose parameters
    have ``requires_grad=False`` and which stays in eval mode even when the network
    is put in train mode. Load a trained DAE into it with :meth:`load_encoder_from`
    before training the segmentation stage; pass only
    ``[p for p in net.parameters() if p.requires_grad]`` to the optimiser.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: output classes, background included.
        widths: DenseBiasNet's 14 layer widths.
        bias_quantity: ``m`` (integer, or ratio of the layer width in (0, 1)).
        group_size: channels per GroupNorm group.
        encoder_widths: the DAE encoder's four widths (must match the DAE loaded
            with :meth:`load_encoder_from`).

    With the defaults (m = 4, 2 classes) the network has 1,875,394 parameters,
    15,936 of them in the frozen encoder.

    Example:
        >>> net = DPADenseBiasNet().eval()
        >>> with torch.inference_mode():
        ...     p = net(torch.rand(1, 1, 8, 16, 16))
        >>> tuple(p.shape), sum(t.numel() for t in net.parameters())
        ((1, 2, 8, 16, 16), 1875394)
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, *, widths: Sequence[int] = DEFAULT_WIDTHS,
                 bias_quantity: int | float = 4, group_size: int = 4,
                 encoder_widths: Sequence[int] = DEFAULT_DAE_WIDTHS) -> None:
        super().__init__()
        self.encoder = DAEEncoder(in_channels, encoder_widths, group_size=group_size)
        self.segmenter = DenseBiasNet(in_channels, num_classes, widths=widths, bias_quantity=bias_quantity,
                                      group_size=group_size, prior_channels=self.encoder.widths)
        self.hyperparameters = {"in_channels": in_channels, "num_classes": num_classes, "widths": list(widths),
                                "bias_quantity": bias_quantity, "group_size": group_size,
                                "encoder_widths": list(self.encoder.widths)}
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def use_fast_inference(self, enabled: bool = True) -> None:
        """Switch the fast inference path on or off (see :meth:`DenseBiasNet.use_fast_inference`)."""
        for module in self.modules():
            if hasattr(module, "fast_inference"):
                module.fast_inference = enabled

    def release_buffers(self) -> None:
        """Free the fast path's work buffers (see :meth:`DenseBiasNet.release_buffers`)."""
        self.segmenter.release_buffers()

    def train(self, mode: bool = True) -> DPADenseBiasNet:
        """Set train/eval mode; the frozen encoder always stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def load_encoder_from(self, dae: DenoisingAutoencoder | DAEEncoder) -> None:
        """Copy a trained DAE's encoder weights into ``self.encoder`` (and keep it frozen).

        Raises:
            ModelError: the DAE's encoder widths differ from ``encoder_widths``, or it
                normalises another number of channels per GroupNorm group (the
                parameters have the same shapes for any grouping, so only this catches it).
        """
        source = dae.encoder if isinstance(dae, DenoisingAutoencoder) else dae
        if not isinstance(source, DAEEncoder):
            raise ModelError(f"load_encoder_from needs a DenoisingAutoencoder, got {type(dae).__name__}.")
        if source.widths != self.encoder.widths:
            raise ModelError(f"the DAE's encoder widths {source.widths} differ from this network's "
                             f"encoder_widths {self.encoder.widths}; build the network with "
                             f"encoder_widths={list(source.widths)}.")
        theirs = [s.norm.num_channels // s.norm.num_groups for s in source.stages]
        ours = [s.norm.num_channels // s.norm.num_groups for s in self.encoder.stages]
        if theirs != ours:
            raise ModelError(f"the DAE normalises {theirs[0]} channels per GroupNorm group, this network "
                             f"{ours[0]}; train the DAE with the same group_size (--network-options).")
        with torch.no_grad():
            self.encoder.load_state_dict(source.state_dict(), strict=True)
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities.

        Args:
            x: float32 (B, in_channels, Z, Y, X) normalised to [0, 1]; any size (sides
                not divisible by 8 are zero-padded and cropped back).

        Returns:
            float32 (B, num_classes, Z, Y, X), summing to 1 over classes.
        """
        return torch.softmax(self.logits(x), dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax scores (B, num_classes, Z, Y, X); what the training losses take."""
        padded, crop = pad_to_multiple(x, 8)
        if self.segmenter._fast_path_applies(padded):
            self.segmenter._check_input(padded, with_encoder=True)
            return self.segmenter._logits_fast(padded, None, encoder=self.encoder)[crop]
        with torch.no_grad():  # frozen, and nothing trainable lies upstream of it
            priors = self.encoder(padded)
        return self.segmenter.logits_padded(padded, priors)[crop]

