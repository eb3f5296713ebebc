"""Segmentation losses: hard region adaptation (HRA) cross-entropy and the paper's baselines.

Reference:
    He Y, Yang G, Yang J, et al. Dense biased networks with deep priori anatomy and
    hard region adaptation: Semi-supervised learning for fine renal artery
    segmentation. Medical Image Analysis 63 (2020) 101722, Sec. 2.3, Eq. 2.

HRA (Eq. 2) counts the cross-entropy only where the prediction is still wrong by
more than a threshold T: ``|y − ŷ| > T``. Easy voxels (most of the background,
quickly learnt) stop contributing, so the rare thin arteries and the vessel borders
dominate the gradient. With one-hot ``y``, the cross-entropy of a voxel is
``−log ŷ_t`` for its true class ``t`` (the other classes' terms are zero), so the
mask that matters is ``|1 − ŷ_t| > T``, i.e. ``ŷ_t < 1 − T``; for two classes it is
the same as ``|y_c − ŷ_c| > T`` for either class.

Normalisation (the paper leaves it open): the sum of the selected voxels'
cross-entropy is divided by the *number of selected voxels* in the batch (at least
1). Dividing by all voxels instead would shrink the loss and its gradient as more
voxels become easy — reintroducing the very imbalance between the few hard artery
voxels and the many background voxels that HRA removes — and would tie the
effective learning rate to the crop size. With ``T = 0`` every voxel is selected
and the loss is exactly the mean cross-entropy.

``ce_dice_cldice`` adds the centerline Dice of Shit et al. (clDice, CVPR 2021): the
share of the predicted soft skeleton inside the label and of the label's skeleton
inside the prediction, whose harmonic mean rewards thin vessels found end to end
rather than their volume; the soft skeleton is iterated 3-D min/max pooling
(morphological opening), differentiable.

All losses take ``logits`` float (B, C, Z, Y, X) and ``target`` integer class
indices (B, Z, Y, X) (or (B, 1, Z, Y, X)), and return a scalar tensor. A voxel whose
target is :data:`IGNORE_INDEX` counts in no loss, neither as its class nor as
background: training marks so what a patch's image cannot show (the thin branches a
coarse scan blurs away, ``renalseg train --spare-thin-branches``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from renalseg.errors import UsageError, suggest
from renalseg.training.data import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "hra_loss", "hra_mask", "cross_entropy_loss", "ce_dice_loss", "ce_dice_present_loss",
           "hra_dice_loss", "soft_dice", "LOSSES", "get_loss", "soft_skeleton", "soft_cldice", "ce_dice_cldice_loss"]


def _counted(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(safe, counted)``: the target with ignored voxels set to class 0, and where it counts."""
    counted = target != IGNORE_INDEX
    return torch.where(counted, target, torch.zeros_like(target)), counted


def _target_indices(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise UsageError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
                         "expected class indices (B, Z, Y, X).")
    if target.is_floating_point():
        raise UsageError(f"target must hold integer class indices, got {target.dtype}.")
    return target.long()


def hra_mask(logits: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.1) -> torch.Tensor:
    """The hard voxels of Eq. 2: where ``|y − ŷ| > T`` for the true class.

    Args:
        logits: float (B, C, Z, Y, X).
        target: integer class indices (B, Z, Y, X).
        threshold: T in [0, 1); T = 0 selects every voxel.

    Returns:
        bool (B, Z, Y, X), computed without gradient.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0], [0.0, 4.0]]).reshape(1, 2, 1, 1, 2)
        >>> hra_mask(logits, torch.tensor([1, 1]).reshape(1, 1, 1, 2)).flatten().tolist()
        [True, False]
    """
    if not 0.0 <= threshold < 1.0:
        raise UsageError(f"HRA threshold {threshold} is outside [0, 1); the paper uses 0.1.")
    target = _target_indices(logits, target)
    if threshold == 0.0:  # plain cross-entropy, even where softmax rounds to exactly 1
        return target != IGNORE_INDEX
    safe, counted = _counted(target)
    with torch.no_grad():
        p_true = torch.softmax(logits.detach(), dim=1).gather(1, safe[:, None])[:, 0]
        return ((1.0 - p_true).abs() > threshold) & counted


def hra_loss(logits: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.1) -> torch.Tensor:
    """Hard region adaptation cross-entropy (Eq. 2), mean over the selected voxels.

    Args:
        logits: float (B, C, Z, Y, X).
        target: integer class indices (B, Z, Y, X).
        threshold: T; voxels whose true-class probability is within T of 1 are
            left out. T = 0 gives plain (mean) cross-entropy.

    Returns:
        Scalar: sum of −log ŷ_t over hard voxels / max(1, number of hard voxels).
        Zero (with a gradient of zero) when no voxel is hard.

    Example:
        >>> logits = torch.zeros(1, 2, 2, 2, 2)
        >>> target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
        >>> round(float(hra_loss(logits, target)), 4)  # all voxels at p = 0.5: ln 2
        0.6931
    """
    target = _target_indices(logits, target)
    mask = hra_mask(logits, target, threshold=threshold)
    voxel_ce = F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE_INDEX)
    return (voxel_ce * mask).sum() / mask.sum().clamp(min=1)


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy, mean over all counted voxels (the paper's baseline)."""
    target = _target_indices(logits, target)
    voxel_ce = F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE_INDEX)
    return voxel_ce.sum() / (target != IGNORE_INDEX).sum().clamp(min=1)


def _foreground(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground class probabilities and one-hot labels, both (B, C − 1, Z, Y, X), both
    zero where the target is :data:`IGNORE_INDEX`."""
    safe, counted = _counted(_target_indices(logits, target))
    weight = counted[:, None]
    probs = torch.softmax(logits, dim=1)[:, 1:] * weight
    return probs, (F.one_hot(safe, logits.shape[1]).movedim(-1, 1)[:, 1:] * weight).to(probs.dtype)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice of each foreground class over the whole batch.

    Returns:
        float (C − 1,): ``(2 Σ p·y + s) / (Σ p + Σ y + s)`` per foreground class.
    """
    probs, onehot = _foreground(logits, target)
    dims = (0, *range(2, logits.ndim))
    intersection = (probs * onehot).sum(dims)
    return (2 * intersection + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0,
                 smooth: float = 1e-5) -> torch.Tensor:
    """Cross-entropy plus ``dice_weight`` × (1 − mean foreground soft Dice) (the paper's baseline)."""
    return cross_entropy_loss(logits, target) + dice_weight * (1 - soft_dice(logits, target, smooth=smooth).mean())


def _present_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor | None:
    """Mean (1 − soft Dice) of the foreground classes present in ``target`` (indices);
    ``None`` when none is: an absent class gets no Dice term."""
    present = torch.bincount(target[target != IGNORE_INDEX], minlength=logits.shape[1])[1:logits.shape[1]] > 0
    if not bool(present.any()):
        return None
    return (1 - soft_dice(logits, target, smooth=smooth)[present]).mean()


def ce_dice_present_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1e-5) -> torch.Tensor:
    """Cross-entropy plus (1 − mean soft Dice of the foreground classes present in each sample).

    Why: :func:`ce_dice_loss`'s Dice of a class absent from a patch is ``s / (Σp + s)``
    (``s`` = 1e-5): flat while the class is predicted somewhere in the patch, but once its
    probability summed over the patch falls near ``s`` its gradient (``s / (Σp + s)²`` a
    voxel) dwarfs everything else and holds the class there. A class absent from most
    patches (a tumour) meets that often. Here an absent class gets no Dice term
    (cross-entropy still penalises it), per sample, so a batch counts each patch's
    classes alone.

    Example:
        >>> logits = torch.zeros(1, 3, 2, 2, 2)
        >>> only_class_1 = torch.ones(1, 2, 2, 2, dtype=torch.long)
        >>> dice_1 = float(soft_dice(logits, only_class_1)[0])  # class 2 is absent: not counted
        >>> round(float(ce_dice_present_loss(logits, only_class_1)) - float(cross_entropy_loss(logits, only_class_1)), 4) == round(1 - dice_1, 4)
        True
    """
    target = _target_indices(logits, target)
    loss = cross_entropy_loss(logits, target)
    terms = [_present_dice_loss(logits[i:i + 1], target[i:i + 1], smooth) for i in range(len(target))]
    terms = [t for t in terms if t is not None]
    if terms:
        loss = loss + torch.stack(terms).mean()
    return loss


def hra_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.1,
                  smooth: float = 1e-5) -> torch.Tensor:
    """HRA plus (1 − soft Dice) of the foreground classes present in the batch.

    Why both: with batch 1 and patches placed away from the artery (uniform or hard-
    negative patches), the soft Dice of an absent class is ≈ 0 whatever the network
    does — a constant loss with no gradient — and mean cross-entropy dilutes a few
    hundred false-positive voxels among ~400,000. HRA counts exactly those hard voxels
    at full weight; the Dice term keeps the overlap objective on patches that hold
    the class. Absent classes get no Dice term (rather than a constant 1).

    Example:
        >>> logits = torch.zeros(1, 2, 2, 2, 2)
        >>> empty = torch.zeros(1, 2, 2, 2, dtype=torch.long)
        >>> bool(hra_dice_loss(logits, empty) == hra_loss(logits, empty))
        True
    """
    target = _target_indices(logits, target)
    loss = hra_loss(logits, target, threshold=threshold)
    dice_term = _present_dice_loss(logits, target, smooth)
    return loss if dice_term is None else loss + dice_term


def _soft_erode(x: torch.Tensor) -> torch.Tensor:
    # the minimum over a 3-D cross (each axis apart), as a max-pool of the negation
    return -torch.amax(torch.stack([F.max_pool3d(-x, (3, 1, 1), 1, (1, 0, 0)),
                                    F.max_pool3d(-x, (1, 3, 1), 1, (0, 1, 0)),
                                    F.max_pool3d(-x, (1, 1, 3), 1, (0, 0, 1))]), dim=0)


def _soft_open(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool3d(_soft_erode(x), 3, 1, 1)


def soft_skeleton(x: torch.Tensor, iterations: int = 8) -> torch.Tensor:
    """A differentiable skeleton of soft masks ``x`` (B, C, Z, Y, X) in [0, 1].

    What each erosion step removes that an opening cannot restore is kept; enough
    ``iterations`` for the thickest structure's radius in voxels (8: a 16-voxel vessel).

    Example:
        >>> rod = torch.zeros(1, 1, 9, 9, 9); rod[..., 2:7, 2:7, :] = 1
        >>> skeleton = soft_skeleton(rod)
        >>> bool(skeleton[0, 0, 4, 4, 4] == 1), bool(skeleton[0, 0, 2, 2, 4] == 0)
        (True, True)
    """
    skeleton = F.relu(x - _soft_open(x))
    for _ in range(iterations):
        x = _soft_erode(x)
        delta = F.relu(x - _soft_open(x))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton


def soft_cldice(logits: torch.Tensor, target: torch.Tensor, *, iterations: int = 8,
                smooth: float = 1.0) -> torch.Tensor:
    """Soft centerline Dice of each foreground class over the batch (float (C − 1,)).

    ``2 · Tprec · Tsens / (Tprec + Tsens)`` with ``Tprec`` the share of the predicted
    skeleton inside the label and ``Tsens`` the share of the label's skeleton inside
    the prediction (Shit et al. 2021).
    """
    probs, onehot = _foreground(logits, target)
    dims = (0, *range(2, logits.ndim))
    skel_pred, skel_true = soft_skeleton(probs, iterations), soft_skeleton(onehot, iterations)
    precision = ((skel_pred * onehot).sum(dims) + smooth) / (skel_pred.sum(dims) + smooth)
    sensitivity = ((skel_true * probs).sum(dims) + smooth) / (skel_true.sum(dims) + smooth)
    return 2 * precision * sensitivity / (precision + sensitivity)


def ce_dice_cldice_loss(logits: torch.Tensor, target: torch.Tensor, *, cldice_weight: float = 0.5) -> torch.Tensor:
    """CE + (1 − soft Dice) + ``cldice_weight`` × (1 − soft clDice), foreground classes averaged."""
    return ce_dice_loss(logits, target) + cldice_weight * (1 - soft_cldice(logits, target).mean())


#: loss name (as in ``renalseg train --loss``) → loss function ``(logits, target, **options)``
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "hra": hra_loss,
    "ce": cross_entropy_loss,
    "ce_dice": ce_dice_loss,
    "ce_dice_present": ce_dice_present_loss,
    "hra_dice": hra_dice_loss,
    "ce_dice_cldice": ce_dice_cldice_loss,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """The loss registered as ``name``.

    Raises:
        UsageError: unknown name (lists the valid ones).
    """
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}." + suggest(name, LOSSES))
    return LOSSES[name]
