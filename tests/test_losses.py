"""HRA cross-entropy (Eq. 2) and the baseline losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from renalseg.errors import UsageError
from renalseg.training.losses import (
    IGNORE_INDEX,
    LOSSES,
    ce_dice_cldice_loss,
    ce_dice_loss,
    cross_entropy_loss,
    get_loss,
    hra_dice_loss,
    hra_loss,
    hra_mask,
    soft_cldice,
    soft_dice,
    soft_skeleton,
)


def _case(classes: int = 2, seed: int = 0, scale: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, classes, 4, 5, 6, generator=g) * scale).requires_grad_()
    target = torch.randint(0, classes, (2, 4, 5, 6), generator=g)
    return logits, target


@pytest.mark.parametrize("threshold", [0.05, 0.1, 0.3])
def test_mask_is_where_prediction_misses_the_one_hot_label_by_more_than_t(threshold):
    logits, target = _case()
    p = torch.softmax(logits.detach(), 1)
    y = F.one_hot(target, 2).movedim(-1, 1).float()
    # Eq. 2 for two classes: |y − ŷ| > T (the same for either class)
    expected = ((y - p).abs() > threshold)[:, 1]
    mask = hra_mask(logits, target, threshold=threshold)
    assert torch.equal(mask, expected)
    assert 0 < int(mask.sum()) < mask.numel()  # the case exercises both kinds of voxel


def test_easy_voxels_get_zero_gradient_and_hard_ones_do_not():
    logits, target = _case()
    mask = hra_mask(logits, target, threshold=0.1)
    hra_loss(logits, target, threshold=0.1).backward()
    per_voxel = logits.grad.abs().sum(1)
    assert torch.all(per_voxel[~mask] == 0)
    assert torch.all(per_voxel[mask] > 0)


def test_loss_is_the_mean_cross_entropy_over_hard_voxels():
    logits, target = _case(classes=3, seed=2)
    mask = hra_mask(logits, target, threshold=0.2)
    ce = F.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(hra_loss(logits, target, threshold=0.2), ce[mask].mean())


def test_zero_threshold_is_plain_cross_entropy_even_when_saturated():
    logits, target = _case(scale=60.0)  # softmax rounds to exactly 1 at some voxels
    assert bool((torch.softmax(logits, 1).gather(1, target[:, None]) == 1).any())
    assert torch.allclose(hra_loss(logits, target, threshold=0.0), F.cross_entropy(logits, target))
    assert torch.allclose(cross_entropy_loss(logits, target[:, None]), F.cross_entropy(logits, target))


def test_no_hard_voxel_gives_zero_loss_and_zero_gradient():
    target = torch.randint(0, 2, (1, 3, 3, 3), generator=torch.Generator().manual_seed(0))
    logits = (F.one_hot(target, 2).movedim(-1, 1).float() * 20).requires_grad_()
    loss = hra_loss(logits, target)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(logits.grad == 0)


def test_ce_dice_adds_one_minus_soft_dice():
    logits, target = _case(seed=5)
    p1 = torch.softmax(logits, 1)[:, 1]
    y1 = (target == 1).float()
    dice = (2 * (p1 * y1).sum() + 1e-5) / (p1.sum() + y1.sum() + 1e-5)
    assert torch.allclose(soft_dice(logits, target), dice[None])
    assert torch.allclose(ce_dice_loss(logits, target), F.cross_entropy(logits, target) + 1 - dice)
    perfect = F.one_hot(target, 2).movedim(-1, 1).float() * 30
    assert float(ce_dice_loss(perfect, target)) < 1e-4


def test_hra_dice_adds_dice_only_for_classes_in_the_patch():
    logits, target = _case(seed=6)
    dice = soft_dice(logits, target)
    assert torch.allclose(hra_dice_loss(logits, target, threshold=0.1),
                          hra_loss(logits, target, threshold=0.1) + 1 - dice.mean())
    # an artery-free patch: only HRA, so its false positives get the whole gradient
    empty = torch.zeros_like(target)
    logits = logits.detach().clone().requires_grad_(True)
    hra_dice_loss(logits, empty).backward()
    fp = torch.softmax(logits, 1)[:, 1] > 0.5
    assert torch.allclose(hra_dice_loss(logits, empty), hra_loss(logits, empty))
    assert (logits.grad[:, 1][fp] > 0).all()  # gradient descent lowers every false positive's artery logit


def test_registry_and_errors():
    assert LOSSES["hra"] is hra_loss and get_loss("ce_dice") is ce_dice_loss
    with pytest.raises(UsageError, match="unknown loss 'hra_ce'.*Did you mean 'hra"):
        get_loss("hra_ce")
    logits, target = _case()
    with pytest.raises(UsageError, match="does not match logits"):
        hra_loss(logits, target[:, :2])
    with pytest.raises(UsageError, match="integer class indices"):
        hra_loss(logits, target.float())
    with pytest.raises(UsageError, match="threshold"):
        hra_loss(logits, target, threshold=1.0)


def _logits_of(mask: torch.Tensor) -> torch.Tensor:
    """Confident two-class logits (B, 2, ...) for a boolean mask (B, ...)."""
    return (torch.stack([~mask, mask], dim=1).float() * 2 - 1) * 12


def test_soft_skeleton_of_a_rod_is_its_axis():
    rod = torch.zeros(1, 1, 15, 15, 20)
    rod[..., 4:11, 4:11, :] = 1  # a 7 x 7 voxel rod along x
    skeleton = soft_skeleton(rod)
    assert skeleton.max() <= 1.0 + 1e-6 and skeleton.min() >= 0.0
    axis = skeleton[0, 0, 7, 7, 2:-2]
    assert torch.all(axis > 0.99)  # the centre line, away from the rod's flat ends
    assert float(skeleton[0, 0][rod[0, 0] == 0].sum()) == 0.0  # nothing outside the rod
    assert float(skeleton.sum()) < 0.2 * float(rod.sum())


def test_cldice_rewards_a_vessel_found_end_to_end_over_one_found_half_way():
    truth = torch.zeros(1, 12, 12, 40, dtype=torch.bool)
    truth[:, 4:8, 4:8, 2:38] = True  # a 4-voxel-wide vessel, 36 voxels long
    thin_whole = torch.zeros_like(truth)
    thin_whole[:, 5:7, 5:7, 2:38] = True  # too thin, but all of it
    thick_half = torch.zeros_like(truth)
    thick_half[:, 4:8, 4:8, 2:20] = True  # the right width, half of it
    target = truth.long()
    # plain soft Dice prefers the half (more voxels right); clDice the whole vessel
    assert float(soft_dice(_logits_of(thick_half), target)) > float(soft_dice(_logits_of(thin_whole), target))
    assert float(soft_cldice(_logits_of(thin_whole), target)) > float(soft_cldice(_logits_of(thick_half), target))
    assert float(soft_cldice(_logits_of(truth), target)) > 0.99
    logits = _logits_of(thick_half).requires_grad_()
    ce_dice_cldice_loss(logits, target).backward()
    # the missing half of the vessel is pushed towards artery
    assert (logits.grad[:, 1][truth & ~thick_half] < 0).all()
    assert LOSSES["ce_dice_cldice"] is ce_dice_cldice_loss


def test_ce_dice_present_does_not_push_an_absent_class_to_zero_beyond_cross_entropy():
    """A class missing from a patch (a tumour away from the patch) gets cross-entropy's push only.
    ce_dice's Dice of an absent class, 1e-5 / (Σp + 1e-5), pushes far harder once Σp is near 1e-5."""
    from renalseg.training.losses import ce_dice_present_loss

    logits, _ = _case(classes=3, seed=4)
    logits = logits.detach()
    logits[:, 2] -= 16  # the class is already rare: Σp over the patch about 1e-5
    target = torch.randint(0, 2, (2, 4, 5, 6), generator=torch.Generator().manual_seed(5))  # class 2 absent
    grads = {}
    for name, fn in (("ce", cross_entropy_loss), ("present", ce_dice_present_loss), ("ce_dice", ce_dice_loss)):
        x = logits.detach().clone().requires_grad_()
        fn(x, target).backward()
        grads[name] = x.grad[:, 2].abs().sum().item()
    assert grads["present"] < 1.5 * grads["ce"]
    assert grads["ce_dice"] > 10 * grads["ce"]
    # a class present in one sample of the batch counts there, not in the other
    target[0, 0, 0, 0] = 2
    x = logits.detach().clone().requires_grad_()
    ce_dice_present_loss(x, target).backward()
    assert x.grad[0, 2].abs().sum() > x.grad[1, 2].abs().sum()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_an_ignored_voxel_counts_in_no_loss(name):
    """A voxel marked IGNORE_INDEX (a thin branch a coarse scan cannot show) must give no
    gradient and leave the loss as it is whatever the network says there, in every loss;
    without such voxels the loss is what it was."""
    logits, target = _case(classes=3, seed=4)
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, 1:3, 2:4, 1:5] = True
    marked = target.masked_fill(ignored, IGNORE_INDEX)
    loss = LOSSES[name](logits, marked)
    loss.backward()
    assert torch.isfinite(loss)
    assert float(logits.grad.abs().sum(dim=1)[ignored].max()) == 0.0
    assert float(logits.grad.abs().sum(dim=1)[~ignored].max()) > 0.0
    changed = logits.detach().clone()
    changed[:, :, 1:3, 2:4, 1:5] = torch.randn(2, 3, 2, 2, 4) * 9
    assert float(LOSSES[name](changed, marked)) == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-6)
    if name == "ce":
        with torch.no_grad():
            assert float(LOSSES[name](logits, target)) == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-6)
