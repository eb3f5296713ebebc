"""A plain 3D U-Net, the paper's baseline (Çiçek et al. 2016, as compared in He et al. 2020).

Two ConvNormReLU per level (the same unit as DenseBiasNet), 2×2×2 max-pooling
down, trilinear ×2 upsampling up, and full-width skip connections by
concatenation — exactly what DenseBiasNet's dense biased connections replace.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from renalseg.errors import ModelError
from renalseg.nets.blocks import ConvNormReLU, down_path, pad_to_multiple, upsample

__all__ = ["UNet3D"]


class UNet3D(nn.Module):
    """3D U-Net baseline with four resolution levels.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: output classes, background included.
        widths: channels of the four levels (full … 1/8 resolution).
        group_size: channels per GroupNorm group.

    With the defaults (widths 16, 32, 64, 128; 2 classes) the network has 1,461,010
    parameters.

    Example:
        >>> net = UNet3D().eval()
        >>> tuple(net(torch.rand(1, 1, 8, 12, 16)).shape)
        (1, 2, 8, 12, 16)
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, *, widths: Sequence[int] = (16, 32, 64, 128),
                 group_size: int = 4) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4:
            raise ModelError(f"UNet3D needs 4 widths (one per level), got {widths}.")
        self.hyperparameters = {"in_channels": in_channels, "num_classes": num_classes, "widths": list(widths),
                                "group_size": group_size}
        chans = (in_channels, *widths)
        self.down = nn.ModuleList(
            nn.Sequential(ConvNormReLU(chans[k], widths[k], group_size=group_size),
                          ConvNormReLU(widths[k], widths[k], group_size=group_size)) for k in range(4))
        self.up = nn.ModuleList(
            nn.Sequential(ConvNormReLU(widths[k + 1] + widths[k], widths[k], group_size=group_size),
                          ConvNormReLU(widths[k], widths[k], group_size=group_size)) for k in (2, 1, 0))
        self.head = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, num_classes, Z, Y, X) for x float32 (B, in_channels, Z, Y, X), any size."""
        return torch.softmax(self.logits(x), dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax scores (B, num_classes, Z, Y, X)."""
        padded, crop = pad_to_multiple(x, 8)
        skips = down_path(self.down, padded)
        h = skips[-1]
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = block(torch.cat([upsample(h), skip], 1))
        return self.head(h)[crop]
