"""From class probabilities to a clean label map.

* :func:`probabilities_to_labels`: the most probable class per voxel.
* :func:`remove_small_components`: drop disconnected specks smaller than a physical
  volume (26-connectivity, so a thin vessel running diagonally through voxels stays
  one piece). Off by default in ``renalseg segment``: near the tree, small pieces are
  mostly fragments of thin branches, and far ones go with :func:`keep_main_tree`.
* :func:`count_components`: connected pieces per label (reported per side).
* :func:`keep_main_tree`: per label, the largest piece and the pieces within a gap
  of it (default 10 mm). One kidney ROI holds one renal artery tree; the other bright
  arteries crossing it (superior mesenteric, splenic, hepatic, iliac) are separate
  pieces centimetres away from it once the aorta is not labelled. The same idea as
  nnU-Net's "largest connected component" post-processing, less strict: nearby
  fragments of the tree (a thin branch the network interrupted) stay.
* :func:`keep_tumours_on_kidney`: tumour pieces are kept where they touch the kidney,
  whatever their size, and dropped elsewhere. A renal tumour grows from the kidney; a
  tumour label in the spleen or the bowel beside it is not one, and a patient may have
  more than one tumour (multifocal renal cell carcinoma), so the largest-piece rule of
  :func:`keep_main_tree` is wrong for this class: there the largest tumour piece was
  often the false one. A piece that only lies against the kidney, under 5% kidney among the
  voxels around it (:func:`claw_share`: the claw sign), is not one either.
* :func:`clean_labels`: what ``renalseg segment`` applies to each ROI: the main tree
  (the tumour by kidney contact when the model labels both; vessels that passed the
  topology check are left as it kept them), then the speck removal.
* :func:`reassign_by_topology`: for a model that labels both vessels, artery pieces
  must belong to a tree reaching the aorta and vein pieces one reaching the IVC
  (:mod:`renalseg.great_vessels` finds both); a piece on the other vessel's tree is
  reassigned by the network's probabilities, a piece on neither is dropped; a piece
  against the kidney that the network is sure of stays (the hilum, where artery and vein
  run side by side).
* :func:`drop_fluid_tumour`: a tumour piece of water attenuation (median at most 20 HU)
  with no enhancing wall or septum is a simple cyst (the Bosniak 2019 threshold), not a
  tumour; its voxels go to the most probable other class.
* :func:`take_thin_branches`: inside the kidney, the artery probability becomes the
  larger of the four-structure model's and a second, artery-only model's
  (``renalseg segment``'s thin-branch pass). The interlobar arteries run inside the
  parenchyma, where the artery-only weights find more of them; outside it the
  four-structure model alone decides, because the artery-only weights take every bright
  artery (superior mesenteric, splenic) for a renal one.

scipy's ``ndimage.label`` is used rather than ``skimage.morphology.remove_small_objects``
because the latter thresholds in voxels and its keyword changed across releases; here
the threshold is in mm³ and the labelling is shared with the component count and the
main-tree filter.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
from scipy import ndimage

from renalseg.components import STRUCTURE_26
from renalseg.errors import UsageError

__all__ = [
    "DEFAULT_MIN_COMPONENT_MM3",
    "probabilities_to_labels",
    "remove_small_components",
    "count_components",
    "keep_main_tree",
    "keep_tumours_on_kidney",
    "DEFAULT_TUMOUR_CONTACT_MM",
    "claw_share",
    "DEFAULT_TUMOUR_CLAW_SHARE",
    "clean_labels",
    "clean_labels_logged",
    "DEFAULT_MAX_GAP_MM",
    "reassign_by_topology",
    "HILUM_MIN_PROBABILITY",
    "take_thin_branches",
    "thin_branch_region",
    "THIN_BRANCH_MARGIN_VOXELS",
    "drop_fluid_tumour",
    "artery_level_hu",
    "artery_ceiling_hu",
    "drop_bright_artery",
    "FLUID_MAX_HU",
    "drop_bright_parenchyma",
    "parenchyma_ceiling_hu",
    "PARENCHYMA_MAX_HU",
    "PARENCHYMA_AORTA_SHARE",
]

#: pieces farther than this from the largest piece of their label are dropped (chosen on
#: validation phantoms 9000-9001 among 5, 10, 15, 20, 30 mm: 10 mm; re-checked on 24 more
#: (seeds 9200-9223), where 20 mm gained 0.003 but cost 0.035 on phantoms of unseen
#: contrast; see docs/training.md)
DEFAULT_MAX_GAP_MM: float = 10.0

#: default speck size for ``renalseg segment``: 0, keep every piece. Far specks (ribs,
#: bowel contrast) go with :func:`keep_main_tree`; the pieces near the tree are mostly
#: fragments of thin branches: with the shipped weights on the held-out phantoms,
#: removing pieces under 20 mm³ after the main-tree filter lost a third of the sub-2 mm
#: centerline found (0.76 -> 0.54) and 0.026 Dice (20 was the default before that filter).
DEFAULT_MIN_COMPONENT_MM3: float = 0.0

#: a tumour piece is kept when one of its voxels lies this close (voxel centres, mm) to the
#: kidney label: touching, with a voxel's slack for anisotropic grids (see
#: :func:`keep_tumours_on_kidney` and docs/training.md)
DEFAULT_TUMOUR_CONTACT_MM: float = 2.0

#: ... and when at least this share of the tissue around it (the voxels within
#: :data:`DEFAULT_TUMOUR_CONTACT_MM` of the piece) is kidney: a mass that arises from the
#: kidney is held in a cup of its parenchyma (the claw sign), while a bowel loop or the
#: spleen lying against the kidney touches it along a seam (see :func:`keep_tumours_on_kidney`).
#: On the 44 held-out crops the true pieces had 0.13-0.83, the false tumour in the bowel
#: and spleen 0-0.044; 0.05 leaves room for a tumour more exophytic than the phantoms'
#: (at most 70% of their surface outside the kidney; docs/validation.md)
DEFAULT_TUMOUR_CLAW_SHARE: float = 0.05

#: a tumour piece whose interior has a median at or below this (HU) is of fluid
#: attenuation: Bosniak 2019 calls a homogeneous renal mass of -9 to 20 HU on
#: contrast-enhanced CT a simple cyst, while a renal cell carcinoma enhances (20-45 HU
#: unenhanced, 20 HU or more above that with contrast). On the held-out phantoms the
#: written pieces in renal cysts were the largest false tumour (6-12 ml; docs/validation.md)
FLUID_MAX_HU: float = 20.0
#: ... unless more than this share of its interior is above :data:`_ENHANCING_HU`: an
#: enhancing wall, septum or nodule makes it a cystic mass, which stays tumour (a simple
#: cyst under CT noise of 20-30 HU has 1-7% of its voxels there)
_FLUID_MAX_ENHANCING_SHARE: float = 0.1
_ENHANCING_HU: float = 60.0

#: contrast in a renal artery is never brighter than in the aorta it comes from; a voxel
#: labelled artery more than this above the study's arterial level (HU, or
#: :data:`ARTERY_CEILING_SHARE` of that level when more) is something brighter than contrast
#: in blood: a stone, contrast excreted into the collecting system, calcification or bone.
#: On the 44 held-out crops the true artery's voxels lie at most 274 HU above the aorta's
#: median in the brightest thousandth (the blur of calcified plaques on the wall) and its
#: median lies below the aorta's (docs/validation.md, "Stones and excreted contrast")
ARTERY_CEILING_MARGIN_HU: float = 150.0
ARTERY_CEILING_SHARE: float = 0.3

_FULL_3D = STRUCTURE_26


def artery_level_hu(aorta_hu: float | None, artery_hu: np.ndarray) -> float | None:
    """The study's arterial level (HU): the larger of the aorta's HU (as the quality check
    measures it) and the median of the voxels labelled artery (a guard against an aorta
    measured too dark); ``None`` when neither is known.

    Example:
        >>> artery_level_hu(400.0, np.array([320.0, 350.0, 1200.0])), artery_level_hu(None, np.array([]))
        (400.0, None)
    """
    levels = [float(aorta_hu)] if aorta_hu is not None and np.isfinite(aorta_hu) else []
    if np.size(artery_hu):
        levels.append(float(np.median(artery_hu)))
    return max(levels) if levels else None


def artery_ceiling_hu(level_hu: float) -> float:
    """The brightest HU contrast in an artery can have in a study whose arterial level is
    ``level_hu`` (:func:`artery_level_hu`): the level plus :data:`ARTERY_CEILING_MARGIN_HU`
    or :data:`ARTERY_CEILING_SHARE` of it, whichever is more.

    Example:
        >>> artery_ceiling_hu(400.0), artery_ceiling_hu(180.0)
        (550.0, 330.0)
    """
    return level_hu + max(ARTERY_CEILING_MARGIN_HU, ARTERY_CEILING_SHARE * level_hu)


def drop_bright_artery(labels: np.ndarray, *, artery_value: int, hu: np.ndarray, ceiling_hu: float,
                       spacing_xyz_mm: tuple[float, float, float],
                       probabilities: Mapping[int, np.ndarray] | None = None,
                       rim_mm: float = 0.0, grow_above_hu: float | None = None,
                       kidney: np.ndarray | None = None, kidney_mm: float = 3.0) -> tuple[np.ndarray, dict]:
    """Artery voxels brighter than contrast in an artery can be (:func:`artery_ceiling_hu`).

    A stone in a calyx or contrast excreted into the collecting system is a bright
    structure inside the kidney, as the interlobar arteries are, and the network labels it
    artery. Its voxels above ``ceiling_hu``, and the artery voxels within ``rim_mm`` of
    them (the blurred edge of a stone), and with ``grow_above_hu`` the artery voxels joined
    to them (26-connected) through artery voxels above that HU (contrast in the collecting
    system whose level lies under the ceiling in places), go to the most probable other class of
    ``probabilities`` (kidney, for a stone in the collecting system), or to background
    without them; the clean-up that follows drops the artery pieces this leaves cut off.

    Args:
        labels: integer ``(Z, Y, X)`` label map (0 = background).
        artery_value: the artery's label value.
        hu: the image in HU on the same grid.
        ceiling_hu: the brightest an artery voxel may be.
        spacing_xyz_mm: voxel spacing (x, y, z) mm.
        probabilities: label value (0 = background) → float ``(Z, Y, X)`` probability.
        rim_mm: also the artery voxels this close to one above the ceiling.
        grow_above_hu: also the artery voxels above this HU joined to one above the ceiling.
        kidney: a mask of the kidney (and tumour) on the same grid: the removed dict then also
            gives ``bright_artery_in_kidney_ml``, what was taken within ``kidney_mm`` of it
            (a stone or excreted contrast, where calcified plaques at the artery's origin are not).

    Returns:
        ``(labels, removed)``: a copy and ``{"bright_artery_ml"}``, the artery taken away.

    Example:
        >>> labels = np.full((3, 3, 8), 3, np.uint8)
        >>> hu = np.where(np.arange(8) < 6, 380.0, 1100.0) * np.ones((3, 3, 1))
        >>> out, removed = drop_bright_artery(labels, artery_value=3, hu=hu, ceiling_hu=550.0,
        ...                                   spacing_xyz_mm=(1, 1, 1))
        >>> np.flatnonzero(out[1, 1] == 3).tolist(), removed
        ([0, 1, 2, 3, 4, 5], {'bright_artery_ml': 0.018})
    """
    out = np.array(labels, copy=True)
    if np.shape(hu) != out.shape:
        raise UsageError(f"drop_bright_artery: labels {out.shape} and the image {np.shape(hu)} are not on one grid.")
    artery = out == artery_value
    bright = artery & (np.asarray(hu) > ceiling_hu)
    if bright.any() and grow_above_hu is not None:
        pieces, _ = ndimage.label(artery & (np.asarray(hu) > grow_above_hu), structure=_FULL_3D)
        seeded = np.unique(pieces[bright])
        bright |= np.isin(pieces, seeded[seeded > 0])
    if bright.any() and rim_mm > 0:
        box = _reach_box(bright, rim_mm, spacing_xyz_mm)
        bright[box] |= artery[box] & _near_mask(bright[box], rim_mm, spacing_xyz_mm)
    voxels = int(bright.sum())
    voxel_ml = float(np.prod(spacing_xyz_mm)) / 1000.0
    removed = {"bright_artery_ml": round(voxels * voxel_ml, 4)}
    if kidney is not None:
        in_kidney = 0
        if voxels and np.any(kidney):
            box = _reach_box(bright, kidney_mm, spacing_xyz_mm)
            near = _near_mask(np.asarray(kidney[box], dtype=bool), kidney_mm, spacing_xyz_mm) if kidney[box].any() else None
            in_kidney = int((bright[box] & near).sum()) if near is not None else 0
        removed["bright_artery_in_kidney_ml"] = round(in_kidney * voxel_ml, 4)
    if voxels:
        others = probabilities is not None and any(v != artery_value for v in probabilities)
        everywhere = (slice(None),) * out.ndim
        out[bright] = (_most_probable_other(probabilities, artery_value, everywhere, bright, out.dtype)  # type: ignore[arg-type]
                       if others else 0)
    return out, removed


def probabilities_to_labels(probabilities: np.ndarray) -> np.ndarray:
    """The most probable class per voxel.

    Args:
        probabilities: float ``(C, Z, Y, X)``, C ≥ 2 (channel 0 = background).

    Returns:
        uint8 ``(Z, Y, X)`` label values 0 … C−1 (ties go to the lower label,
        so 0.5/0.5 is background).

    Example:
        >>> p = np.array([[[[0.6, 0.5, 0.2]]], [[[0.4, 0.5, 0.8]]]], dtype=np.float32)
        >>> probabilities_to_labels(p).tolist()
        [[[0, 0, 1]]]
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4 or probabilities.shape[0] < 2:
        raise UsageError(f"Expected probabilities (C ≥ 2, Z, Y, X); got shape {probabilities.shape}.")
    if probabilities.shape[0] == 2:
        return (probabilities[1] > probabilities[0]).astype(np.uint8)
    # channel by channel, each a contiguous pass: np.argmax over the first axis strides
    # through memory, 16 times slower on a study's box (6.2 s against 0.39 s, 5 × 17 M voxels)
    best = probabilities[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for channel in range(1, probabilities.shape[0]):
        labels[probabilities[channel] > best] = channel  # strictly: a tie stays with the lower label
        np.maximum(best, probabilities[channel], out=best)
    return labels


def remove_small_components(labels: np.ndarray, *, min_volume_mm3: float,
                            voxel_volume_mm3: float) -> np.ndarray:
    """Set to 0 every connected piece of each label smaller than ``min_volume_mm3``.

    Args:
        labels: integer ``(Z, Y, X)`` label map (0 = background).
        min_volume_mm3: smallest piece kept, in mm³ (0 keeps everything).
        voxel_volume_mm3: volume of one voxel in mm³.

    Returns:
        A cleaned copy, same dtype.

    Example:
        >>> labels = np.zeros((5, 5, 5), np.uint8)
        >>> labels[0:3, 0:3, 0:3] = 1; labels[4, 4, 4] = 1
        >>> int(remove_small_components(labels, min_volume_mm3=2, voxel_volume_mm3=1).sum())
        27
    """
    if min_volume_mm3 < 0:
        raise UsageError(f"--min-component-mm3 must be ≥ 0; got {min_volume_mm3}.")
    out = np.array(labels, copy=True)
    if min_volume_mm3 == 0:
        return out
    min_voxels = min_volume_mm3 / voxel_volume_mm3
    for value in np.unique(out):
        if value == 0:
            continue
        pieces, count = ndimage.label(out == value, structure=_FULL_3D)
        sizes = np.bincount(pieces.ravel(), minlength=count + 1)
        small = sizes < min_voxels
        small[0] = False
        if small.any():
            out[small[pieces]] = 0
    return out


def count_components(mask: np.ndarray) -> int:
    """Number of 26-connected pieces of a boolean mask.

    Example:
        >>> m = np.zeros((4, 4, 4), bool); m[0, 0, 0] = m[1, 1, 1] = m[3, 3, 3] = True
        >>> count_components(m)
        2
    """
    return int(ndimage.label(np.asarray(mask, dtype=bool), structure=_FULL_3D)[1])


def _grow_box(box: tuple, shape: tuple, distance_mm: float, spacing_xyz_mm: tuple[float, float, float]) -> tuple:
    """``box`` grown by ``distance_mm`` (and a voxel), clipped to ``shape``: every voxel within
    ``distance_mm`` of what ``box`` holds lies inside it."""
    if not np.isfinite(distance_mm):
        return tuple(slice(0, n) for n in shape)
    reach = np.ceil(distance_mm / np.asarray(spacing_xyz_mm, dtype=float)[::-1]).astype(int) + 1
    return tuple(slice(max(b.start - r, 0), min(b.stop + r, n)) for b, r, n in zip(box, reach, shape))


def _reach_box(mask: np.ndarray, distance_mm: float, spacing_xyz_mm: tuple[float, float, float]) -> tuple:
    """The bounding box of a non-empty ``mask`` grown as :func:`_grow_box` grows it."""
    return _grow_box(ndimage.find_objects(np.asarray(mask, dtype=np.uint8))[0], mask.shape, distance_mm,
                     spacing_xyz_mm)


def _distance_mm(reference: np.ndarray, spacing_xyz_mm: tuple[float, float, float]) -> np.ndarray:
    """Each voxel's distance (mm) to ``reference`` (a crop that holds all of it)."""
    sampling = tuple(float(s) for s in spacing_xyz_mm[::-1])
    return ndimage.distance_transform_edt(~reference, sampling=sampling)


def _near_mask(reference: np.ndarray, max_distance_mm: float, spacing_xyz_mm: tuple[float, float, float]) -> np.ndarray:
    """The voxels of the array within ``max_distance_mm`` of ``reference`` (a crop that holds all of it)."""
    return _distance_mm(reference, spacing_xyz_mm) <= max_distance_mm


def _most_probable_other(probabilities: Mapping[int, np.ndarray], value: int, where: tuple,
                         piece: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """For each voxel of ``piece`` (a mask inside the crop ``where``): the label value other than
    ``value`` with the highest probability (``probabilities``: value → full-grid array)."""
    choices = [v for v in probabilities if v != value]
    stacked = np.stack([np.asarray(probabilities[v])[where][piece] for v in choices])
    return np.asarray(choices, dtype=dtype)[np.argmax(stacked, axis=0)]


def _pieces_near(pieces: np.ndarray, count: int, reference: np.ndarray, max_distance_mm: float,
                 spacing_xyz_mm: tuple[float, float, float]) -> np.ndarray:
    """The labelled ``pieces`` (1 … count) with a voxel within ``max_distance_mm`` of a non-empty ``reference``."""
    # the distance transform only over the reference's box grown by the distance (exact:
    # nothing outside it is that close), often a small part of the ROI
    box = _reach_box(reference, max_distance_mm, spacing_xyz_mm)
    near = _near_mask(reference[box], max_distance_mm, spacing_xyz_mm)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(pieces[box][near])] = True
    keep[0] = False
    return keep[pieces]


def keep_main_tree(labels: np.ndarray, *, max_gap_mm: float, spacing_xyz_mm: tuple[float, float, float],
                   skip: Collection[int] = ()) -> np.ndarray:
    """Per label, the largest 26-connected piece and the pieces within ``max_gap_mm`` of it.

    Args:
        labels: integer ``(Z, Y, X)`` label map of one kidney ROI (0 = background).
        max_gap_mm: how far (voxel centres, mm) a piece may lie from the largest one;
            ``inf`` keeps everything.
        spacing_xyz_mm: voxel spacing (x, y, z) mm.
        skip: label values left as they are (the tumour, cleaned by kidney contact).

    Returns:
        A cleaned copy, same dtype.

    Example:
        >>> labels = np.zeros((1, 1, 30), np.uint8)
        >>> labels[0, 0, 0:10] = 1; labels[0, 0, 13] = 1; labels[0, 0, 25:28] = 1
        >>> keep_main_tree(labels, max_gap_mm=5, spacing_xyz_mm=(1, 1, 1)).nonzero()[2].tolist()
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13]
    """
    if not max_gap_mm >= 0:
        raise UsageError(f"--max-gap-mm must be ≥ 0 (inf keeps every piece); got {max_gap_mm}.")
    out = np.array(labels, copy=True)
    if not np.isfinite(max_gap_mm):
        return out
    for value in np.unique(out):
        if value == 0 or value in skip:
            continue
        mask = out == value
        pieces, count = ndimage.label(mask, structure=_FULL_3D)
        if count < 2:
            continue
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        keep = _pieces_near(pieces, count, pieces == int(sizes.argmax()), max_gap_mm, spacing_xyz_mm)
        out[mask & ~keep] = 0
    return out


def keep_tumours_on_kidney(labels: np.ndarray, *, tumour_value: int, kidney: np.ndarray,
                           spacing_xyz_mm: tuple[float, float, float],
                           max_distance_mm: float = DEFAULT_TUMOUR_CONTACT_MM,
                           min_claw_share: float = DEFAULT_TUMOUR_CLAW_SHARE) -> np.ndarray:
    """Tumour pieces that arise from the kidney, whatever their size; the others set to 0.

    A renal tumour grows from the kidney, so a tumour piece with no voxel within
    ``max_distance_mm`` of the kidney is not one (the network's false tumour lies in the
    spleen and the bowel beside the kidney). Nor is a piece that only lies against it:
    a mass arising from the kidney sits in a cup of parenchyma (the claw sign), so of
    the voxels around it (within ``max_distance_mm`` of the piece, outside it) at least
    ``min_claw_share`` must be kidney. Every piece that passes is kept, not only the
    largest: a kidney may hold more than one tumour, and the largest piece is not always
    the true one. Where ``kidney`` is empty (not labelled in this ROI) the contact
    cannot be judged and the tumour is left as it is.

    Args:
        labels: integer ``(Z, Y, X)`` label map of one kidney ROI (0 = background).
        tumour_value: the tumour's label value.
        kidney: bool ``(Z, Y, X)``, the kidney label (taken before any structure is
            left out of the output, so ``--structures tumour`` judges the same way).
        spacing_xyz_mm: voxel spacing (x, y, z) mm.
        max_distance_mm: how close (voxel centres, mm) a piece must come to the kidney.
        min_claw_share: the least share of kidney among the voxels around a piece
            (:func:`claw_share`); ``0`` keeps every piece that touches.

    Returns:
        A cleaned copy, same dtype.

    Example:
        >>> labels = np.zeros((1, 1, 30), np.uint8)
        >>> labels[0, 0, 0:10] = 2; labels[0, 0, 10:12] = 4; labels[0, 0, 20:28] = 4
        >>> out = keep_tumours_on_kidney(labels, tumour_value=4, kidney=labels == 2, spacing_xyz_mm=(1, 1, 1))
        >>> np.flatnonzero(out[0, 0] == 4).tolist()
        [10, 11]
    """
    out = np.array(labels, copy=True)
    kidney = np.asarray(kidney, dtype=bool)
    tumour = out == tumour_value
    if not kidney.any() or not tumour.any():
        return out
    pieces, count = ndimage.label(tumour, structure=_FULL_3D)
    near = _pieces_near(pieces, count, kidney, max_distance_mm, spacing_xyz_mm)
    out[tumour & ~near] = 0
    if min_claw_share > 0:
        for k, box in enumerate(ndimage.find_objects(pieces), start=1):
            if box is None or not near[box][pieces[box] == k].any():
                continue
            grown = _grow_box(box, pieces.shape, max_distance_mm, spacing_xyz_mm)
            piece = pieces[grown] == k
            if claw_share(piece, kidney[grown], spacing_xyz_mm, max_distance_mm) < min_claw_share:
                out[grown][piece] = 0
    return out


def claw_share(piece: np.ndarray, kidney: np.ndarray, spacing_xyz_mm: tuple[float, float, float],
               reach_mm: float = DEFAULT_TUMOUR_CONTACT_MM) -> float:
    """The share of kidney among the voxels within ``reach_mm`` of ``piece`` (outside it).

    Example:
        >>> kidney = np.zeros((1, 1, 20), bool); kidney[0, 0, :8] = True
        >>> piece = np.zeros_like(kidney); piece[0, 0, 8:12] = True
        >>> claw_share(piece, kidney, (1, 1, 1))  # 2 of the 4 voxels around it
        0.5
    """
    box = _reach_box(piece, reach_mm, spacing_xyz_mm)
    inside = piece[box]
    around = _near_mask(inside, reach_mm, spacing_xyz_mm) & ~inside
    return float(kidney[box][around].mean()) if around.any() else 0.0


def _clean_steps(labels: np.ndarray, *, spacing_xyz_mm: tuple[float, float, float], min_component_mm3: float,
                 max_gap_mm: float, tumour_value: int | None, kidney: np.ndarray | None,
                 rooted: Collection[int] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clean-up's three stages: after the tumour's kidney-contact rule, after the main tree, after the specks.

    The tumour's contact is judged against the kidney as the main-tree rule keeps it: a
    stray kidney piece by the spleen or the bowel, which that rule drops, anchored the
    false tumour around it (held-out phantoms: docs/validation.md)."""
    by_contact = tumour_value is not None and kidney is not None and bool(np.any(kidney))
    if by_contact:
        kidney = keep_main_tree(np.asarray(kidney, dtype=np.uint8), max_gap_mm=max_gap_mm,
                                spacing_xyz_mm=spacing_xyz_mm).astype(bool)
    on_kidney = (keep_tumours_on_kidney(labels, tumour_value=tumour_value, kidney=kidney,  # type: ignore[arg-type]
                                        spacing_xyz_mm=spacing_xyz_mm) if by_contact else labels)
    near = keep_main_tree(on_kidney, max_gap_mm=max_gap_mm, spacing_xyz_mm=spacing_xyz_mm,
                          skip=((tumour_value,) if by_contact else ()) + tuple(rooted))
    out = remove_small_components(near, min_volume_mm3=min_component_mm3,
                                  voxel_volume_mm3=float(np.prod(spacing_xyz_mm)))
    return on_kidney, near, out


def clean_labels(labels: np.ndarray, *, spacing_xyz_mm: tuple[float, float, float], min_component_mm3: float,
                 max_gap_mm: float, tumour_value: int | None = None,
                 kidney: np.ndarray | None = None, rooted: Collection[int] = ()) -> np.ndarray:
    """What ``renalseg segment`` does to each ROI's label map: :func:`keep_main_tree`,
    then :func:`remove_small_components`; with ``tumour_value`` and a non-empty
    ``kidney``, the tumour goes through :func:`keep_tumours_on_kidney` instead of
    the main-tree rule.

    ``rooted``: label values whose pieces have each passed :func:`reassign_by_topology`
    (a chain of gaps up to ``max_gap_mm`` reaching their own root, the aorta or the IVC);
    the main-tree rule leaves them as they are. A renal artery the network interrupted
    between the aorta and the hilum is one tree joined at the aorta, and the main-tree
    rule, which measures from the largest piece only, dropped its trunk (held-out
    phantoms: see docs/validation.md)."""
    return _clean_steps(labels, spacing_xyz_mm=spacing_xyz_mm, min_component_mm3=min_component_mm3,
                        max_gap_mm=max_gap_mm, tumour_value=tumour_value, kidney=kidney, rooted=rooted)[2]


def clean_labels_logged(labels: np.ndarray, *, spacing_xyz_mm: tuple[float, float, float],
                        min_component_mm3: float, max_gap_mm: float, tumour_value: int | None = None,
                        kidney: np.ndarray | None = None, rooted: Collection[int] = ()) -> tuple[np.ndarray, dict]:
    """:func:`clean_labels` (the same result) and what each step removed.

    Returns:
        ``(cleaned, removed)``: ``removed`` holds ``far_pieces``/``far_ml`` (pieces
        farther than ``max_gap_mm`` from their label's largest piece) and
        ``small_pieces``/``small_ml`` (pieces under ``min_component_mm3``), over all
        foreground labels, 26-connected pieces; with ``tumour_value`` also
        ``off_kidney_tumour_pieces``/``off_kidney_tumour_ml`` (tumour pieces that do
        not arise from the kidney: not touching it, or only lying against it; counted
        apart from the far pieces).

    Example:
        >>> labels = np.zeros((1, 1, 30), np.uint8)
        >>> labels[0, 0, 0:10] = 1; labels[0, 0, 13] = 1; labels[0, 0, 25:28] = 1
        >>> cleaned, removed = clean_labels_logged(labels, spacing_xyz_mm=(1, 1, 1), min_component_mm3=2,
        ...                                        max_gap_mm=5)
        >>> int(cleaned.sum()), removed
        (10, {'far_pieces': 1, 'far_ml': 0.003, 'small_pieces': 1, 'small_ml': 0.001})
    """
    on_kidney, near, out = _clean_steps(labels, spacing_xyz_mm=spacing_xyz_mm, min_component_mm3=min_component_mm3,
                                        max_gap_mm=max_gap_mm, tumour_value=tumour_value, kidney=kidney,
                                        rooted=rooted)
    voxel_ml = float(np.prod(spacing_xyz_mm)) / 1000.0

    def ml(mask: np.ndarray) -> float:
        return round(float(np.sum(mask)) * voxel_ml, 4)

    far = small = 0
    for value in np.unique(labels):
        if value == 0:
            continue
        before, middle, after = (count_components(a == value) for a in (on_kidney, near, out))
        far += before - middle
        small += middle - after
    removed = {"far_pieces": far, "far_ml": ml((on_kidney > 0) & (near == 0)),
               "small_pieces": small, "small_ml": ml((near > 0) & (out == 0))}
    if tumour_value is not None:
        removed["off_kidney_tumour_pieces"] = (count_components(labels == tumour_value)
                                               - count_components(on_kidney == tumour_value))
        removed["off_kidney_tumour_ml"] = ml((labels == tumour_value) & (on_kidney != tumour_value))
    return out, removed


def drop_fluid_tumour(labels: np.ndarray, *, tumour_value: int, hu: np.ndarray,
                      spacing_xyz_mm: tuple[float, float, float],
                      probabilities: Mapping[int, np.ndarray] | None = None,
                      max_hu: float = FLUID_MAX_HU) -> tuple[np.ndarray, dict]:
    """Tumour pieces of fluid attenuation taken for simple cysts.

    A tumour piece (26-connected) is fluid when the median HU of its interior (the piece
    less its one-voxel rim, where partial volume with the kidney or fat blurs the value;
    the whole piece when that leaves under 27 voxels) is at most ``max_hu`` and at most
    10% of that interior is above 60 HU (no enhancing wall or septum). Its voxels go to
    the most probable other class of ``probabilities``, or to background without them.

    Args:
        labels: integer ``(Z, Y, X)`` label map (0 = background).
        tumour_value: the tumour's label value.
        hu: the image in HU on the same grid.
        spacing_xyz_mm: voxel spacing (x, y, z) mm, for the volumes.
        probabilities: label value (0 = background) → float ``(Z, Y, X)`` probability.
        max_hu: the fluid threshold (:data:`FLUID_MAX_HU`).

    Returns:
        ``(labels, removed)``: a copy and ``{"fluid_tumour_pieces", "fluid_tumour_ml"}``.

    Example:
        >>> labels = np.zeros((5, 5, 12), np.uint8); labels[:, :, 0:5] = 4; labels[:, :, 7:12] = 4
        >>> hu = np.where(np.arange(12) < 6, 10.0, 90.0) * np.ones((5, 5, 1))
        >>> out, removed = drop_fluid_tumour(labels, tumour_value=4, hu=hu, spacing_xyz_mm=(1, 1, 1))
        >>> np.flatnonzero(out[2, 2] == 4).tolist(), removed
        ([7, 8, 9, 10, 11], {'fluid_tumour_pieces': 1, 'fluid_tumour_ml': 0.125})
    """
    out = np.array(labels, copy=True)
    if np.shape(hu) != out.shape:
        raise UsageError(f"drop_fluid_tumour: labels {out.shape} and the image {np.shape(hu)} are not on one grid.")
    pieces, count = ndimage.label(out == tumour_value, structure=_FULL_3D)
    dropped, voxels = 0, 0
    for k, box in enumerate(ndimage.find_objects(pieces), start=1):
        piece = pieces[box] == k
        interior = ndimage.binary_erosion(piece)
        values = np.asarray(hu[box], dtype=np.float32)[interior if interior.sum() >= 27 else piece]
        if np.median(values) > max_hu or np.mean(values > _ENHANCING_HU) > _FLUID_MAX_ENHANCING_SHARE:
            continue
        others = probabilities is not None and any(v != tumour_value for v in probabilities)
        out[box][piece] = _most_probable_other(probabilities, tumour_value, box, piece, out.dtype) if others else 0
        dropped += 1
        voxels += int(piece.sum())
    ml = round(voxels * float(np.prod(spacing_xyz_mm)) / 1000.0, 4)
    return out, {"fluid_tumour_pieces": dropped, "fluid_tumour_ml": ml}


#: renal parenchyma and renal tumours enhance to about 300 HU at most at 100-120 kVp (the
#: cortex in the arterial phase; held-out phantoms: every true kidney and tumour piece's
#: interior median at most 290 HU): a kidney or tumour piece brighter than this lies on
#: contrast-filled vessels or bone. On the real arterial CTA crop in tests/data the default
#: weights' kidney and tumour pieces (14, the largest 69 ml) lie on the aorta, a great vessel and the
#: spine at medians of about 450-550 HU
PARENCHYMA_MAX_HU = 400.0
#: ... or, in a study whose aorta is brighter (70-80 kVp, low-keV images), this share of
#: the aorta's HU: every true kidney and tumour piece of 6 held-out arterial crops drawn with
#: iodine twice as bright lies at most at 436 HU and 0.68 of the aorta measured there
PARENCHYMA_AORTA_SHARE = 0.8


def parenchyma_ceiling_hu(aorta_hu: float | None) -> float:
    """The brightest a kidney or tumour piece's interior median can be in a study whose aorta
    measures ``aorta_hu`` (``None``: not found): :data:`PARENCHYMA_MAX_HU`, or
    :data:`PARENCHYMA_AORTA_SHARE` of a brighter aorta.

    Example:
        >>> parenchyma_ceiling_hu(None), parenchyma_ceiling_hu(420.0), parenchyma_ceiling_hu(900.0)
        (400.0, 400.0, 720.0)
    """
    if aorta_hu is None:
        return PARENCHYMA_MAX_HU
    return max(PARENCHYMA_MAX_HU, PARENCHYMA_AORTA_SHARE * float(aorta_hu))


def drop_bright_parenchyma(labels: np.ndarray, *, values: Sequence[int], hu: np.ndarray, ceiling_hu: float,
                           spacing_xyz_mm: tuple[float, float, float]) -> tuple[np.ndarray, dict]:
    """Kidney and tumour pieces brighter than any parenchyma: the network read vessels or bone.

    Where a scan is unlike its training phantoms the network may call the aorta, a great
    vessel or the spine "kidney" or "tumour" (the real CTA crop in tests/data: 101 ml of
    kidney and 60 ml of tumour there). Each 26-connected piece of each of ``values`` whose
    interior (the piece less its one-voxel rim; the whole piece when that leaves under 27
    voxels) has a median above ``ceiling_hu`` (:func:`parenchyma_ceiling_hu`) goes to
    background: not to another class, since a piece of the aorta made artery would
    become the artery's largest piece and take the tree's place.

    Args:
        labels: integer ``(Z, Y, X)`` label map (0 = background).
        values: the label values judged (kidney, tumour), each on its own pieces.
        hu: the image in HU on the same grid.
        ceiling_hu: the brightest median a piece may have.
        spacing_xyz_mm: voxel spacing (x, y, z) mm, for the volumes.

    Returns:
        ``(labels, removed)``: a copy and ``{"bright_parenchyma_pieces", "bright_parenchyma_ml",
        "bright_parenchyma_median_hu"}`` (the largest removed piece's median; ``None`` when
        nothing was removed).

    Example:
        >>> labels = np.zeros((5, 5, 12), np.uint8); labels[:, :, 0:5] = 2; labels[:, :, 7:12] = 4
        >>> hu = np.where(np.arange(12) < 6, 180.0, 520.0) * np.ones((5, 5, 1))
        >>> out, removed = drop_bright_parenchyma(labels, values=(2, 4), hu=hu, ceiling_hu=400.0,
        ...                                       spacing_xyz_mm=(1, 1, 1))
        >>> np.unique(out[2, 2]).tolist(), removed
        ([0, 2], {'bright_parenchyma_pieces': 1, 'bright_parenchyma_ml': 0.125, 'bright_parenchyma_median_hu': 520.0})
    """
    out = np.array(labels, copy=True)
    if np.shape(hu) != out.shape:
        raise UsageError(f"drop_bright_parenchyma: labels {out.shape} and the image {np.shape(hu)} are not on one "
                         "grid.")
    dropped, voxels, largest, largest_median = 0, 0, 0, None
    for value in values:
        pieces, _ = ndimage.label(out == value, structure=_FULL_3D)
        for k, box in enumerate(ndimage.find_objects(pieces), start=1):
            if box is None:
                continue
            piece = pieces[box] == k
            interior = ndimage.binary_erosion(piece)
            median = float(np.median(np.asarray(hu[box], dtype=np.float32)[interior if interior.sum() >= 27
                                                                            else piece]))
            if median <= ceiling_hu:
                continue
            out[box][piece] = 0
            size = int(piece.sum())
            dropped, voxels = dropped + 1, voxels + size
            if size > largest:
                largest, largest_median = size, round(median, 1)
    ml = round(voxels * float(np.prod(spacing_xyz_mm)) / 1000.0, 4)
    return out, {"bright_parenchyma_pieces": dropped, "bright_parenchyma_ml": ml,
                 "bright_parenchyma_median_hu": largest_median}


def _tree_reaching(pieces: np.ndarray, count: int, root: np.ndarray, max_gap_mm: float,
                   spacing_xyz_mm: tuple[float, float, float]) -> np.ndarray:
    """Bool per piece number (0 … count): the piece belongs to a chain of pieces, each within
    ``max_gap_mm`` of the last, that starts within ``max_gap_mm`` of ``root``."""
    reached = np.zeros(count + 1, dtype=bool)
    # only the pieces reached last need a look: those reached before were looked around then
    frontier = np.asarray(root, dtype=bool)
    while count and frontier.any():
        near = np.zeros(count + 1, dtype=bool)
        near[np.unique(pieces[_pieces_near(pieces, count, frontier, max_gap_mm, spacing_xyz_mm)])] = True
        near[0] = False
        new = near & ~reached
        if not new.any():
            break
        reached |= new
        frontier = new[pieces]
    return reached


#: how sure (mean probability of its class) the network must be of a vessel piece against
#: the kidney for the topology clean-up to keep it off its root's tree (chosen on the
#: selection phantoms, docs/validation.md)
HILUM_MIN_PROBABILITY = 0.85


def _sure_at_kidney(piece: np.ndarray, distance_mm: np.ndarray, kidney: np.ndarray, probability: np.ndarray,
                    min_probability: float) -> bool:
    """Whether ``piece`` lies within :data:`DEFAULT_TUMOUR_CONTACT_MM` of ``kidney``
    (``distance_mm``: each voxel's distance to the piece; all crops of one box) and its mean
    ``probability`` is at least ``min_probability``."""
    if float(probability[piece].mean()) < min_probability:
        return False
    return bool((distance_mm[kidney] <= DEFAULT_TUMOUR_CONTACT_MM).any())


def reassign_by_topology(labels: np.ndarray, *, roots: Mapping[int, np.ndarray],
                         probabilities: Mapping[int, np.ndarray] | None, max_gap_mm: float,
                         spacing_xyz_mm: tuple[float, float, float], kidney: np.ndarray | None = None,
                         hilum_min_probability: float = HILUM_MIN_PROBABILITY,
                         ) -> tuple[np.ndarray, dict[int, dict]]:
    """Vessel pieces must belong to the tree of their own root: the artery the aorta's, the vein the IVC's.

    For each vessel label value with a non-empty root mask, every 26-connected piece of
    that value is checked: a piece in a chain of pieces (gaps at most ``max_gap_mm``)
    reaching its own root is kept; a piece that reaches another vessel's tree instead
    (that vessel's root or its own rooted pieces) contradicts its class and is
    reassigned voxel by voxel to the most probable other value (background included,
    so voxels the network gave no other class are dropped); a piece reaching no root
    is dropped. Values without a root (not in ``roots`` or an empty mask: the root is
    not in view) are left alone.

    With ``kidney`` and ``probabilities``, a piece off its own tree that lies against the
    kidney (within :data:`DEFAULT_TUMOUR_CONTACT_MM`) and that the network is sure of
    (mean probability of its class at least ``hilum_min_probability``) stays as it is: at
    the hilum the renal artery and vein run side by side into the kidney, so touching the
    other vessel there is no contradiction, and a piece cut off from its root by a gap in
    the network's vessel is still that vessel (held-out phantoms: docs/validation.md).

    Args:
        labels: integer ``(Z, Y, X)`` label values.
        roots: vessel label value → bool ``(Z, Y, X)`` mask of its root (e.g.
            ``{3: aorta, 1: ivc}``), on the grid of ``labels``.
        probabilities: label value (0 = background) → float ``(Z, Y, X)`` probability,
            the network's; ``None`` moves a contradicting piece whole to the vessel whose
            tree it reaches.
        max_gap_mm: largest gap in a tree (mm).
        spacing_xyz_mm: voxel spacing (x, y, z) mm.
        kidney: bool ``(Z, Y, X)``, the kidney label, or ``None``.
        hilum_min_probability: how sure the network must be of a piece at the kidney.

    Returns:
        ``(labels, changes)``: a cleaned copy and, per checked value, ``{"reassigned_pieces",
        "reassigned_ml", "dropped_pieces", "dropped_ml", "kept_at_kidney_pieces",
        "kept_at_kidney_ml"}``.

    Example (an artery piece, value 3, touching the IVC goes to the vein, value 1):
        >>> labels = np.zeros((1, 1, 12), np.uint8); labels[0, 0, 1:3] = 3; labels[0, 0, 8:10] = 3
        >>> aorta = np.zeros_like(labels, bool); aorta[0, 0, 0] = True
        >>> ivc = np.zeros_like(labels, bool); ivc[0, 0, 11] = True
        >>> out, changes = reassign_by_topology(labels, roots={3: aorta, 1: ivc}, probabilities=None,
        ...                                     max_gap_mm=2, spacing_xyz_mm=(1, 1, 1))
        >>> out[0, 0].tolist(), changes[3]["reassigned_pieces"]
        ([0, 3, 3, 0, 0, 0, 0, 0, 1, 1, 0, 0], 1)
    """
    if not max_gap_mm >= 0:
        raise UsageError(f"--max-gap-mm must be ≥ 0 (inf keeps every piece); got {max_gap_mm}.")
    labels = np.asarray(labels)
    out = labels.copy()
    voxel_ml = float(np.prod(spacing_xyz_mm)) / 1000.0
    checked = [v for v, root in roots.items() if root is not None and np.asarray(root).any()]
    trees: dict[int, tuple[np.ndarray, int, np.ndarray]] = {}
    for value in checked:
        pieces, count = ndimage.label(labels == value, structure=_FULL_3D)
        trees[value] = (pieces, count, _tree_reaching(pieces, count, roots[value], max_gap_mm, spacing_xyz_mm))
    # each root with the pieces on its tree, for the pieces of the other vessel
    whole_trees = {value: np.asarray(roots[value], dtype=bool) | trees[value][2][trees[value][0]] for value in checked}
    at_kidney = (kidney is not None and probabilities is not None and np.asarray(kidney).any())
    changes: dict[int, dict] = {}
    for value in checked:
        pieces, count, rooted = trees[value]
        stats = {"reassigned_pieces": 0, "reassigned_ml": 0.0, "dropped_pieces": 0, "dropped_ml": 0.0,
                 "kept_at_kidney_pieces": 0, "kept_at_kidney_ml": 0.0}
        for number, box in enumerate(ndimage.find_objects(pieces), start=1):
            if box is None or rooted[number]:
                continue
            # the piece, in its box grown by the gap: all that can lie within the gap of it
            grown = _grow_box(box, pieces.shape, max_gap_mm, spacing_xyz_mm)
            piece = pieces[grown] == number
            distance = _distance_mm(piece, spacing_xyz_mm)  # once: for the kidney contact and the gap
            if at_kidney and _sure_at_kidney(piece, distance, np.asarray(kidney)[grown],
                                             np.asarray(probabilities[value])[grown], hilum_min_probability):
                stats["kept_at_kidney_pieces"] += 1
                stats["kept_at_kidney_ml"] += float(piece.sum()) * voxel_ml
                continue
            near = distance <= max_gap_mm
            other = next((c for c in checked if c != value and whole_trees[c][grown][near].any()), None)
            view = out[grown]
            if other is None:
                view[piece] = 0
                stats["dropped_pieces"] += 1
                stats["dropped_ml"] += float(piece.sum()) * voxel_ml
                continue
            view[piece] = other if probabilities is None else _most_probable_other(probabilities, value, grown, piece,
                                                                                   out.dtype)
            stats["reassigned_pieces"] += 1
            stats["reassigned_ml"] += float(piece.sum()) * voxel_ml
        changes[value] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}
    return out, changes


#: how far around the labelled kidney (and tumour) the artery-only model's artery counts,
#: in voxels of the model grid (3: about 2 mm in-plane, 3 mm head to foot; the hilar
#: branches entering the sinus)
THIN_BRANCH_MARGIN_VOXELS = 3


def thin_branch_region(probabilities: np.ndarray, kidney_channels: Collection[int], *,
                       spacing_xyz_mm: tuple[float, float, float], max_gap_mm: float = DEFAULT_MAX_GAP_MM,
                       margin_voxels: int = THIN_BRANCH_MARGIN_VOXELS) -> np.ndarray:
    """Where the thin-branch pass takes the artery-only model's artery: the kidney.

    That is the voxels whose arg-max in ``probabilities`` is one of ``kidney_channels``
    (kidney, tumour), only the largest piece and those within ``max_gap_mm`` of it (the
    pieces the kidney's clean-up keeps, :func:`keep_main_tree`), grown by
    ``margin_voxels`` (26-connected steps). A false speck of kidney beside the aorta, where
    the artery-only weights take every bright artery for a renal one, is left out, and the
    artery-only model need run only over the box around the rest
    (:func:`renalseg.windows.box_around`).

    Example:
        >>> p = np.zeros((3, 1, 1, 30), np.float32); p[0] = 1; p[1, 0, 0, [0, 1, 2, 25]] = 2
        >>> thin_branch_region(p, [1], spacing_xyz_mm=(1, 1, 1), max_gap_mm=10, margin_voxels=1)[0, 0].nonzero()[0].tolist()
        [0, 1, 2, 3]
    """
    kidney = np.isin(np.argmax(probabilities, axis=0), list(kidney_channels))
    region = keep_main_tree(kidney.view(np.uint8), max_gap_mm=max_gap_mm, spacing_xyz_mm=spacing_xyz_mm) > 0
    if margin_voxels > 0 and region.any():
        region = ndimage.binary_dilation(region, structure=STRUCTURE_26, iterations=margin_voxels)
    return region


def take_thin_branches(probabilities: np.ndarray, artery_probability: np.ndarray, *, artery_channel: int,
                       region: np.ndarray) -> None:
    """Inside ``region`` (:func:`thin_branch_region`: the kidney), the artery probability
    of a second (artery-only) model where it is higher.

    There the artery channel becomes ``max(p_artery, artery_probability)`` and the other
    channels are scaled so that every voxel still sums to 1 (their ratios kept); elsewhere
    nothing changes, and ``artery_probability`` is not read.

    Args:
        probabilities: float32 ``(C, Z, Y, X)`` of the four-structure model; changed in place.
        artery_probability: float ``(Z, Y, X)`` artery probability of the artery-only model
            on the same grid.
        artery_channel: the artery's channel in ``probabilities``.
        region: bool ``(Z, Y, X)``.

    Example:
        >>> p = np.zeros((3, 1, 1, 4), np.float32); p[0] = 0.2; p[1] = [0.7, 0.7, 0.1, 0.1]; p[2] = 0.1
        >>> p[:, 0, 0, 2:] = [[0.8], [0.1], [0.1]]            # background far from the kidney
        >>> q = np.array([[[0.9, 0.1, 0.9, 0.9]]], np.float32)
        >>> region = thin_branch_region(p, [1], spacing_xyz_mm=(1, 1, 1), margin_voxels=1)
        >>> region[0, 0].tolist()
        [True, True, True, False]
        >>> take_thin_branches(p, q, artery_channel=2, region=region)
        >>> [round(float(v), 3) for v in p[2, 0, 0]], [round(float(v), 3) for v in p.sum(axis=0)[0, 0]]
        ([0.9, 0.1, 0.9, 0.1], [1.0, 1.0, 1.0, 1.0])
    """
    if probabilities.ndim != 4 or artery_probability.shape != probabilities.shape[1:] \
            or region.shape != probabilities.shape[1:]:
        raise UsageError(f"take_thin_branches: probabilities {probabilities.shape}, the artery probability "
                         f"{artery_probability.shape} and the region {region.shape} are not on one grid.")
    old = probabilities[artery_channel][region]
    new = np.maximum(old, np.asarray(artery_probability, np.float32)[region])
    scale = (1.0 - new) / np.maximum(1.0 - old, 1e-6)
    for channel in range(probabilities.shape[0]):
        if channel != artery_channel:
            probabilities[channel][region] *= scale
    probabilities[artery_channel][region] = new
