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
path computes the same function to float rounding
(:func:`renalseg.nets.cpu_fast.densebiasnet_logits`); ``use_fast_inference(False)``
selects the plain formulation, which training (autograd on) and GPUs always use.
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
from renalseg.nets import cpu_fast
from renalseg.nets.blocks import ConvNormReLU, pad_to_multiple, upsample
from renalseg.nets.dae import DEFAULT_DAE_WIDTHS, DAEEncoder, DenoisingAutoencoder

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
        #: the fast path's work buffers, kept between calls (see :meth:`release_buffers`)
        self.work_buffers = cpu_fast.WorkBuffers()
        #: the layout the fast path follows: each layer's level and the DPA layers
        self.levels, self.prior_layers = LEVELS, PRIOR_LAYERS
        #: levels each bias map is needed at: those of layers k+2 … 13
        self.bias_targets = tuple(tuple(sorted({LEVELS[j] for j in range(k + 2, len(widths))}))
                                  for k in range(len(widths) - 2))

    def use_fast_inference(self, enabled: bool = True) -> None:
        """Switch the fast inference path (used whenever autograd is off) on or off.

        Both paths compute the same function; off is the plain formulation, kept for
        checking and benchmarking.
        """
        cpu_fast.set_fast_inference(self, enabled)

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
        if cpu_fast.applies(self, x):
            return cpu_fast.densebiasnet_logits(self, x, priors)
        return self._logits_reference(x, priors)

    def _check_input(self, x: torch.Tensor, priors: Sequence[torch.Tensor] | None = None,
                     *, with_encoder: bool = False) -> None:
        if x.ndim != 5 or x.shape[1] != self.hyperparameters["in_channels"] or any(s % 8 for s in x.shape[2:]):
            raise ModelError(f"expected input (B, {self.hyperparameters['in_channels']}, Z, Y, X) with sides "
                             f"divisible by 8, got {tuple(x.shape)}.")
        if any(self.prior_channels) and not with_encoder and (priors is None or len(priors) != 4):
            raise ModelError("this DenseBiasNet takes DPA features (prior_channels "
                             f"{self.prior_channels}) but none were given; use DPADenseBiasNet.")

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
                resized[t] = upsample(bias, 2 ** (level - t))
        return resized

    def _logits_reference(self, x: torch.Tensor, priors: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """The plain formulation: concatenate, convolve (autograd-friendly; used in training)."""
        resized: list[dict[int, torch.Tensor]] = []
        h = x
        for l, layer in enumerate(self.layers):
            level = LEVELS[l]
            if l and level != LEVELS[l - 1]:
                h = F.max_pool3d(h, 2) if level > LEVELS[l - 1] else upsample(h, 2)
            parts = [resized[k][level] for k in range(l - 1)] + [h]
            if l in PRIOR_LAYERS and self.prior_channels[level]:
                parts.append(priors[level])  # type: ignore[index]
            joined = torch.cat(parts, dim=1) if len(parts) > 1 else h
            h = F.relu(layer.norm(layer.conv(joined)), inplace=True)
            if l < len(self.compressors):
                resized.append(self._resize_bias(self.compressors[l](h), level, self.bias_targets[l]))
        return self.head(h)

    def release_buffers(self) -> None:
        """Free the work buffers the fast inference path keeps between calls (about
        0.6 GB for a 64 × 152 × 152 window); they are re-created on the next call."""
        self.work_buffers.clear()


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
        cpu_fast.set_fast_inference(self, enabled)

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
        if cpu_fast.applies(self.segmenter, padded):
            self.segmenter._check_input(padded, with_encoder=True)
            return cpu_fast.densebiasnet_logits(self.segmenter, padded, encoder=self.encoder)[crop]
        with torch.no_grad():  # frozen, and nothing trainable lies upstream of it
            priors = self.encoder(padded)
        return self.segmenter.logits_padded(padded, priors)[crop]

