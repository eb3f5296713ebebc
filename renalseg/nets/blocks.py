"""The pieces every network here is built from.

All networks (DenseBiasNet, the DAE, the U-Net baseline) share one unit, a 3×3×3
convolution → GroupNorm → ReLU (:class:`ConvNormReLU`), move between four
resolution levels by 2×2×2 max-pooling down and trilinear ×2 upsampling up
(:func:`upsample`), and take inputs of any size by zero-padding them to a multiple
of 8 (:func:`pad_to_multiple`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from renalseg.errors import ModelError
from renalseg.nets.cpu_fast import conv_norm_relu

__all__ = ["ConvNormReLU", "pad_to_multiple", "upsample", "down_path"]


class ConvNormReLU(nn.Module):
    """3×3×3 convolution (padding 1) → GroupNorm → ReLU, the unit of every network here.

    Args:
        in_channels: input channels.
        out_channels: output channels; must divide by ``group_size``.
        group_size: channels per GroupNorm group (the authors' code: 4, i.e.
            ``out_channels // 4`` groups).

    Example:
        >>> unit = ConvNormReLU(1, 8)
        >>> tuple(unit(torch.rand(1, 1, 4, 6, 8)).shape), sorted(unit.state_dict())
        ((1, 8, 4, 6, 8), ['conv.bias', 'conv.weight', 'norm.bias', 'norm.weight'])
    """

    def __init__(self, in_channels: int, out_channels: int, *, group_size: int = 4) -> None:
        super().__init__()
        if out_channels % group_size:
            raise ModelError(f"width {out_channels} does not divide into GroupNorm groups of "
                             f"{group_size} channels; choose widths that are multiples of {group_size}.")
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.GroupNorm(out_channels // group_size, out_channels)
        #: without autograd, run channels_last through oneDNN (same math, faster on CPUs)
        self.fast_inference = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, in_channels, Z, Y, X) → float (B, out_channels, Z, Y, X), ≥ 0."""
        if torch.is_grad_enabled() or not self.fast_inference or x.device.type != "cpu":
            return F.relu(self.norm(self.conv(x)), inplace=True)
        return conv_norm_relu(x.contiguous(memory_format=torch.channels_last_3d), self.conv.weight,
                              self.conv.bias, self.norm)


def upsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Trilinear upsampling of (B, C, Z, Y, X) by ``factor``, ``align_corners=False``.

    This maps a coarse voxel's centre to the centre of the fine block it was
    max-pooled from: the geometrically consistent way back up.

    Example:
        >>> tuple(upsample(torch.ones(1, 2, 2, 3, 4), 4).shape)
        (1, 2, 8, 12, 16)
    """
    return F.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)


def down_path(blocks: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """Run ``blocks`` one per resolution level, 2×2×2 max-pooling between them.

    Returns:
        The output of every block, full resolution first (an encoder's features, a
        U-Net's skips).

    Example:
        >>> [tuple(f.shape[2:]) for f in down_path([nn.Identity()] * 3, torch.rand(1, 1, 8, 8, 16))]
        [(8, 8, 16), (4, 4, 8), (2, 2, 4)]
    """
    features = []
    h = x
    for k, block in enumerate(blocks):
        h = block(F.max_pool3d(h, 2) if k else h)
        features.append(h)
    return features


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the three spatial sides of ``x`` (B, C, Z, Y, X) to multiples of ``multiple``.

    The padding is split evenly before and after (the extra voxel after), so the
    image stays centred in the padded field of view.

    Returns:
        The padded tensor and the index that crops a result of the padded size back
        to ``x``'s spatial size.

    Example:
        >>> y, crop = pad_to_multiple(torch.ones(1, 1, 5, 8, 9), 8)
        >>> tuple(y.shape), tuple(y[crop].shape)
        ((1, 1, 8, 8, 16), (1, 1, 5, 8, 9))
    """
    if x.ndim != 5:
        raise ModelError(f"expected a 5-D tensor (B, C, Z, Y, X), got shape {tuple(x.shape)}.")
    extra = [(-s) % multiple for s in x.shape[2:]]
    if not any(extra):
        return x, (slice(None),) * 5
    before = [e // 2 for e in extra]
    pad: list[int] = []
    for e, b in zip(reversed(extra), reversed(before)):  # F.pad wants the last axis first
        pad += [b, e - b]
    crop = (slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, x.shape[2:])))
    return F.pad(x, pad), crop
