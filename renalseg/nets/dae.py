"""The convolutional denoising autoencoder (DAE) behind deep priori anatomy (DPA).

Reference:
    He Y, Yang G, Yang J, et al. Dense biased networks with deep priori anatomy and
    hard region adaptation: Semi-supervised learning for fine renal artery
    segmentation. Medical Image Analysis 63 (2020) 101722, Sec. 2.1.

The DAE is trained first, on *unlabelled* kidney ROIs: the input is corrupted by
dropout (voxels set to zero) and the network reconstructs the clean volume (MSE).
Its encoder, frozen, then gives DPA-DenseBiasNet four feature maps
``{Ff1..Ff4}``, one per resolution stage (full, 1/2, 1/4, 1/8), which carry the
anatomy learnt from unlabelled data into the segmentation network.

Widths: the paper leaves them open. The default ``(8, 8, 16, 24)`` keeps the
encoder light (15,936 parameters; one 3×3×3 convolution per stage) because its
features are concatenated into DenseBiasNet's inputs: every prior channel costs a
full 3×3×3 convolution's worth of weights at that resolution. The widths are also
chosen so that the concatenated inputs of DenseBiasNet's second analysis
convolutions come to multiples of 8 channels (24, 48, 96, 176 with m = 4), which
is where oneDNN's fast convolution kernels run. The encoder has no skip
connections to the decoder, so the bottleneck must carry the anatomy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from renalseg.errors import ModelError
from renalseg.nets.blocks import ConvNormReLU, down_path, pad_to_multiple, upsample

__all__ = ["DAEEncoder", "DenoisingAutoencoder", "corrupt", "DEFAULT_DAE_WIDTHS"]

#: encoder widths per resolution stage (full, 1/2, 1/4, 1/8)
DEFAULT_DAE_WIDTHS: tuple[int, int, int, int] = (8, 8, 16, 24)


def corrupt(x: torch.Tensor, p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dropout corruption of the DAE's input: each voxel set to 0 with probability ``p``.

    Unlike :func:`torch.nn.functional.dropout` the kept voxels are *not* rescaled by
    1 / (1 − p): the corrupted volume stays in the clean volume's intensity range,
    which is what the reconstruction target (the clean volume) expects.

    Args:
        x: float (B, C, Z, Y, X), normalised to [0, 1].
        p: drop probability in [0, 1).
        generator: optional random generator, for reproducible corruption.

    Returns:
        float (B, C, Z, Y, X): ``x`` with dropped voxels zeroed (a new tensor).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = corrupt(torch.ones(1, 1, 8, 8, 8), 0.25, generator=g)
        >>> 0.15 < float((y == 0).float().mean()) < 0.35, float(y.max())
        (True, 1.0)
    """
    if not 0.0 <= p < 1.0:
        raise ModelError(f"DAE dropout probability {p} is outside [0, 1); use e.g. 0.2.")
    if p == 0.0:
        return x.clone()
    keep = torch.rand(x.shape, generator=generator, device=x.device if generator is None else generator.device)
    return x * (keep.to(x.device) >= p).to(x.dtype)


def _check_widths(widths: Sequence[int], what: str) -> tuple[int, int, int, int]:
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4 or min(widths) < 1:
        raise ModelError(f"{what} needs 4 positive widths (one per resolution stage), got {widths}.")
    return widths  # type: ignore[return-value]


class DAEEncoder(nn.Module):
    """The DAE's encoder: four stages, one ConvNormReLU each, 2×2×2 max-pooling between.

    Args:
        in_channels: image channels (1 for CT).
        widths: channels of the four stages (full, 1/2, 1/4, 1/8 resolution).
        group_size: channels per GroupNorm group.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = DEFAULT_DAE_WIDTHS, *,
                 group_size: int = 4) -> None:
        super().__init__()
        self.widths = _check_widths(widths, "DAEEncoder")
        chans = (in_channels, *self.widths)
        self.stages = nn.ModuleList(
            ConvNormReLU(chans[k], chans[k + 1], group_size=group_size) for k in range(4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the four stages.

        Args:
            x: float (B, in_channels, Z, Y, X), sides divisible by 8.

        Returns:
            ``[Ff1, Ff2, Ff3, Ff4]``: float (B, widths[k], Z/2^k, Y/2^k, X/2^k).
        """
        return down_path(self.stages, x)


class DenoisingAutoencoder(nn.Module):
    """Convolutional denoising autoencoder (paper Sec. 2.1): the DPA prior's source.

    Encoder: :class:`DAEEncoder`. Decoder: mirrored, trilinear ×2 upsampling then a
    ConvNormReLU per stage, no skip connections, and a 1×1×1 convolution with a
    sigmoid so the reconstruction lies in [0, 1] like the normalised input.

    Training: ``loss = mse(dae(corrupt(x, dae.dropout_p)), x)``; ``forward`` itself
    never corrupts its input, so inference and feature extraction are deterministic.

    Args:
        in_channels: image channels (1 for CT).
        widths: encoder widths of the four stages; see the module docstring for the
            choice of ``(8, 8, 16, 24)``.
        group_size: channels per GroupNorm group.
        dropout_p: the corruption probability used in training (kept with the
            weights so the model card records it).

    With the defaults the network has 31,593 parameters, 15,936 of them in the encoder.

    Example:
        >>> dae = DenoisingAutoencoder()
        >>> x = torch.rand(1, 1, 16, 24, 24)
        >>> dae(x).shape, [tuple(f.shape[1:]) for f in dae.encoder(x)]
        (torch.Size([1, 1, 16, 24, 24]), [(8, 16, 24, 24), (8, 8, 12, 12), (16, 4, 6, 6), (24, 2, 3, 3)])
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = DEFAULT_DAE_WIDTHS, *,
                 group_size: int = 4, dropout_p: float = 0.2) -> None:
        super().__init__()
        widths = _check_widths(widths, "DenoisingAutoencoder")
        if not 0.0 <= dropout_p < 1.0:
            raise ModelError(f"DAE dropout_p {dropout_p} is outside [0, 1); use e.g. 0.2.")
        self.hyperparameters = {"in_channels": in_channels, "widths": list(widths),
                                "group_size": group_size, "dropout_p": dropout_p}
        self.dropout_p = dropout_p
        self.encoder = DAEEncoder(in_channels, widths, group_size=group_size)
        self.decoder = nn.ModuleList(
            ConvNormReLU(widths[k + 1], widths[k], group_size=group_size) for k in (2, 1, 0))
        self.head = nn.Conv3d(widths[0], in_channels, 1)

    def corrupt(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """:func:`corrupt` with this autoencoder's ``dropout_p``."""
        return corrupt(x, self.dropout_p, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``.

        Args:
            x: float (B, in_channels, Z, Y, X) in [0, 1]; sides not divisible by 8 are
                padded with zeros and the result cropped back.

        Returns:
            float (B, in_channels, Z, Y, X) in [0, 1].
        """
        padded, crop = pad_to_multiple(x, 8)
        h = self.encoder(padded)[-1]
        for stage in self.decoder:
            h = stage(upsample(h))
        return torch.sigmoid(self.head(h))[crop]
