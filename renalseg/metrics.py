"""The paper's accuracy metrics, in millimetres, and pairing of prediction/truth files.

For a predicted mask P and a truth mask G on the same grid (He et al. 2020, Sec. 4):

* **Dice** = 2 |P ∩ G| / (|P| + |G|);
* **MCD** (mean centerline distance): both masks are thinned to 3D centerlines
  (:func:`renalseg.tree.centerline`), then the paper's Eq. 4 on the centerline voxels,
  HDmean(G, P) = max(mean_g min_p ‖g − p‖, mean_p min_g ‖p − g‖);
* **MSD** (mean surface distance): Eq. 4 on the surface voxels (mask voxels with a
  6-neighbour outside the mask, the image border counting as outside);
* **HD**: the largest surface-to-surface distance, max of both directions, on the
  KiPA22 evaluator's surface: mask voxels with a background voxel anywhere in their
  3 × 3 × 3 neighbourhood (what ITK's ``SimpleContourExtractorImageFilter`` gives,
  which the challenge's ``evaluation.py`` uses), so figures compare with the
  challenge's;
* **HD95**: the larger of the two directed 95th percentiles of the same surface
  distances (the MedPy / nnU-Net convention, on the KiPA22 surface).

Distances are Euclidean between voxel centres in mm, using the spacing (the direction
matrix is orthonormal and does not change distances). Nearest points are found with a
KD-tree over the surface (or centerline) voxels: exact, and on vessel trees, whose
surfaces are a few thousand voxels in a box of millions, about 9× faster than a
distance transform of the box (0.03 s against 0.30 s CPU for the two directions on
the benchmark's 152 × 152 × 150 ROI; ``benchmarks/bench_mesh_metrics.py``).

Empty masks, by definition (never an exception):

* both empty: Dice 1, every distance 0 (perfect agreement);
* exactly one empty: Dice 0 and every distance ``NaN`` (undefined); summaries skip
  NaN and report how many cases they used (``n``).

Which label is the structure: ``pred_label`` / ``gt_label`` select a value; ``None``
(the default) means "the only non-zero value in the file" (a binary mask, whatever
value it uses) and refuses a file with several labels, e.g. KiPA22 truth where
3 is the artery: pass ``gt_label=3`` (``--gt-label 3``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from renalseg.errors import InputError, UsageError, suggest
from renalseg.geometry import assert_same_grid, resample_to_grid
from renalseg.tree import centerline
from renalseg.volume import Volume

__all__ = [
    "METRIC_NAMES",
    "dice",
    "surface_voxels",
    "directed_distances",
    "evaluate_masks",
    "DIAMETER_BANDS_MM",
    "vessel_diameter_mm",
    "centerline_recall_by_diameter",
    "FOUND_NAMES",
    "FOUND_LABELS",
    "found_by_diameter",
    "structure_scores",
    "evaluate_case",
    "evaluate_structures",
    "collect_label_files",
    "match_pairs",
    "evaluate_pairs",
    "summarize",
]

logger = logging.getLogger(__name__)

#: per-case metrics, in table order
METRIC_NAMES: tuple[str, ...] = ("dice", "mcd_mm", "msd_mm", "hd_mm", "hd95_mm")
_FACE = ndimage.generate_binary_structure(3, 1)
_CUBE = np.ones((3, 3, 3), dtype=bool)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice overlap of two masks; 1.0 when both are empty.

    Example:
        >>> a = np.zeros((1, 1, 4), bool); a[..., :2] = True
        >>> b = np.zeros((1, 1, 4), bool); b[..., 1:] = True
        >>> round(dice(a, b), 3)
        0.4
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def surface_voxels(mask: np.ndarray, *, connectivity: int = 6) -> np.ndarray:
    """Mask voxels with a background neighbour (image border = outside).

    Args:
        mask: bool ``(Z, Y, X)``.
        connectivity: 6 (a face neighbour outside: MSD's surface) or 26 (any voxel of
            the 3 × 3 × 3 neighbourhood outside: the KiPA22 evaluator's, for HD and HD95).

    Example:
        >>> m = np.zeros((5, 5, 5), bool); m[1:4, 1:4, 1:4] = True; m[1, 1, 1] = False
        >>> int(surface_voxels(m).sum()), int(surface_voxels(m, connectivity=26).sum())
        (25, 26)
    """
    if connectivity not in (6, 26):
        raise UsageError(f"surface connectivity must be 6 or 26; got {connectivity}.")
    mask = np.asarray(mask, bool)
    structure = _FACE if connectivity == 6 else _CUBE
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def directed_distances(source: np.ndarray, target: np.ndarray, spacing_xyz_mm: Sequence[float]) -> np.ndarray:
    """For each voxel of ``source``, the distance in mm to the nearest voxel of ``target``.

    Args:
        source, target: bool ``(Z, Y, X)`` on the same grid; ``target`` non-empty.
        spacing_xyz_mm: voxel size (x, y, z) in mm.

    Returns:
        float64 ``(n_source,)`` distances in mm, in ``np.argwhere(source)`` order.

    Example:
        >>> a = np.zeros((1, 1, 5), bool); a[0, 0, 0] = True
        >>> b = np.zeros((1, 1, 5), bool); b[0, 0, 4] = True
        >>> directed_distances(a, b, (0.5, 1.0, 1.0)).tolist()
        [2.0]
    """
    from scipy.spatial import cKDTree

    source, target = np.asarray(source, bool), np.asarray(target, bool)
    if not target.any():
        raise InputError("directed_distances needs a non-empty target mask.")
    if not source.any():
        return np.zeros(0)
    spacing_zyx = np.asarray(tuple(spacing_xyz_mm), dtype=float)[::-1]
    distance, _ = cKDTree(np.argwhere(target) * spacing_zyx).query(np.argwhere(source) * spacing_zyx)
    return np.asarray(distance, dtype=np.float64)


def _symmetric(a: np.ndarray, b: np.ndarray, spacing_xyz_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    return directed_distances(a, b, spacing_xyz_mm), directed_distances(b, a, spacing_xyz_mm)


def evaluate_masks(pred: np.ndarray, gt: np.ndarray, spacing_xyz_mm: Sequence[float], *,
                   centerlines: bool = True) -> dict[str, float]:
    """Dice, MCD, MSD, HD and HD95 (mm) of two masks on the same grid.

    Args:
        pred, gt: bool ``(Z, Y, X)`` masks on one grid.
        spacing_xyz_mm: voxel size (x, y, z) in mm.
        centerlines: compute MCD, a vessel's figure; ``False`` gives it NaN (a kidney's
            skeleton is a medial surface, and thinning it takes most of the time).

    Returns:
        ``{"dice", "mcd_mm", "msd_mm", "hd_mm", "hd95_mm"}`` (see the module
        docstring for empty masks).

    Example:
        >>> m = np.zeros((9, 9, 9), bool); m[2:7, 2:7, 2:7] = True
        >>> evaluate_masks(m, m, (1.0, 1.0, 1.0))["hd_mm"]
        0.0
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise InputError(f"Prediction {pred.shape} and truth {gt.shape} have different shapes (z, y, x).")
    result = {"dice": dice(pred, gt)}
    if not pred.any() and not gt.any():
        result.update({name: 0.0 for name in METRIC_NAMES[1:]})
        return result
    if not pred.any() or not gt.any():
        result.update({name: math.nan for name in METRIC_NAMES[1:]})
        return result
    box = ndimage.find_objects((pred | gt).astype(np.uint8))[0]
    # pad by one so thinning and surfaces see the background around the masks
    pred_box, gt_box = np.pad(pred[box], 1), np.pad(gt[box], 1)
    p_to_g, g_to_p = _symmetric(surface_voxels(pred_box), surface_voxels(gt_box), spacing_xyz_mm)
    kipa_p_to_g, kipa_g_to_p = _symmetric(surface_voxels(pred_box, connectivity=26),
                                          surface_voxels(gt_box, connectivity=26), spacing_xyz_mm)
    if centerlines:
        c_to_c = _symmetric(centerline(pred_box, tuple(spacing_xyz_mm)), centerline(gt_box, tuple(spacing_xyz_mm)),
                            spacing_xyz_mm)
    result.update({
        "mcd_mm": float(max(c_to_c[0].mean(), c_to_c[1].mean())) if centerlines else math.nan,
        "msd_mm": float(max(p_to_g.mean(), g_to_p.mean())),
        "hd_mm": float(max(kipa_p_to_g.max(), kipa_g_to_p.max())),
        "hd95_mm": float(max(np.percentile(kipa_p_to_g, 95), np.percentile(kipa_g_to_p, 95))),
    })
    return result


def _select(volume: Volume, label: int | None, what: str) -> np.ndarray:
    array = volume.array
    if label is not None:
        return array == label
    values = [int(v) for v in np.unique(array) if v != 0]
    if len(values) > 1:
        raise UsageError(
            f"The {what} has several labels {values}; say which one is the artery "
            f"(--{'gt-label' if what == 'truth' else 'label'} N; KiPA22 truth: 3), or score each "
            "structure against KiPA22 truth with --structures artery,vein,kidney,tumour."
        )
    return array != 0


def _resample_nearest(moving: Volume, reference: Volume) -> Volume:
    import SimpleITK as sitk

    image = resample_to_grid(moving.to_sitk(), reference.geometry, interpolator=sitk.sitkNearestNeighbor,
                             default_value=0)
    return Volume.from_sitk(image)


def _on_truth_grid(pred: Volume, gt: Volume, resample: bool, names: tuple[str, str]) -> Volume:
    """``pred`` on the truth's grid: resampled (nearest neighbour) when asked and the grids
    differ; otherwise differing grids raise :class:`GeometryError` naming both."""
    if resample and not pred.geometry.is_same_grid(gt.geometry):
        pred = _resample_nearest(pred, gt)
    assert_same_grid(pred.geometry, gt.geometry, names=names)
    return pred


def evaluate_case(pred: Volume, gt: Volume, *, pred_label: int | None = None, gt_label: int | None = None,
                  resample: bool = False, names: tuple[str, str] = ("prediction", "truth")) -> dict:
    """Metrics of one prediction against its truth (see :func:`evaluate_masks`).

    Args:
        pred, gt: label maps.
        pred_label, gt_label: the value that marks the artery (``None``: the only
            non-zero value; several values then raise a :class:`UsageError`).
        resample: put ``pred`` on the truth's grid (nearest neighbour) when the grids
            differ; otherwise differing grids raise :class:`GeometryError`.
        names: how to call the two images in error messages.

    Returns:
        The metrics plus ``pred_volume_ml``, ``gt_volume_ml`` and :data:`FOUND_NAMES`
        (:func:`centerline_recall_by_diameter`; NaN for a band the truth has no vessel in).
    """
    pred = _on_truth_grid(pred, gt, resample, names)
    pred_mask = _select(pred, pred_label, "prediction")
    gt_mask = _select(gt, gt_label, "truth")
    result = evaluate_masks(pred_mask, gt_mask, gt.geometry.spacing_xyz_mm)
    voxel_ml = gt.geometry.voxel_volume_mm3 / 1000.0
    result["pred_volume_ml"] = round(float(pred_mask.sum()) * voxel_ml, 4)
    result["gt_volume_ml"] = round(float(gt_mask.sum()) * voxel_ml, 4)
    result.update(found_by_diameter(pred_mask, gt_mask, gt.geometry.spacing_xyz_mm))
    return result


def _case_name(path: Path) -> str:
    from renalseg.study import safe_study_id

    if path.name.lower().startswith("labels.") and path.parent.name:
        return safe_study_id(path.parent)
    return safe_study_id(path)


def collect_label_files(paths: Sequence[Path | str]) -> dict[str, Path]:
    """Case name → label file, from files and folders.

    A folder holding ``labels.nii.gz`` (a ``renalseg segment`` output folder) is one
    case named after the folder; any other folder contributes its image files (named
    after the file) and its sub-folders that hold ``labels.nii.gz``. A file called
    ``labels.*`` is named after its folder.

    Raises:
        UsageError: a path that does not exist, a folder with no label files, or two
            cases with the same name.
    """
    from renalseg.io.image import image_format

    found: dict[str, Path] = {}

    def add(name: str, file: Path) -> None:
        if name in found and found[name] != file:
            raise UsageError(f"Two files give the case name {name!r}: {found[name]} and {file}. Rename one.")
        found[name] = file

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder. Check the path.")
        if path.is_file():
            add(_case_name(path), path)
            continue
        own = path / "labels.nii.gz"
        if own.is_file():
            add(_case_name(own), own)
            continue
        before = len(found)
        for child in sorted(path.iterdir()):
            if child.is_dir() and (child / "labels.nii.gz").is_file():
                add(_case_name(child / "labels.nii.gz"), child / "labels.nii.gz")
            elif child.is_file() and image_format(child) is not None and not child.name.startswith("."):
                add(_case_name(child), child)
        if len(found) == before:
            from renalseg.batch import no_labels_message

            raise UsageError(no_labels_message(path, f"{path}: no label files (NIfTI/NRRD/MHA) or segment output "
                                                     "folders in it."))
    return found


def match_pairs(preds: Sequence[Path | str], gts: Sequence[Path | str]) -> list[tuple[str, Path, Path]]:
    """Pair prediction and truth files by case name (one of each: paired as given).

    Returns:
        ``[(case, pred_path, gt_path)]`` sorted by case.

    Raises:
        UsageError: a prediction without a truth file of the same name. Where a
            prediction file lies beside a truth (``--gt a b`` gives ``b`` to the
            predictions: an option takes one value), the message says to repeat ``--gt``.
    """
    try:
        return _match_pairs(preds, gts)
    except UsageError as err:
        truth_folders = {Path(g) if Path(g).is_dir() else Path(g).parent for g in gts}
        beside = [str(p) for p in preds if len(preds) > 1 and Path(p).is_file() and Path(p).parent in truth_folders]
        if not beside:
            raise
        raise UsageError(f"{beside[0]} lies beside the truth but was read as a prediction: --gt takes one file "
                         "or folder, and a path after it is a prediction. Repeat --gt for each truth file (--gt A "
                         f"--gt B) or give the truth folder once (--gt FOLDER). ({err})") from None


def _match_pairs(preds: Sequence[Path | str], gts: Sequence[Path | str]) -> list[tuple[str, Path, Path]]:
    pred_files, gt_files = collect_label_files(preds), collect_label_files(gts)
    if len(pred_files) == 1 and len(gt_files) == 1:
        (name, pred), (_, gt) = next(iter(pred_files.items())), next(iter(gt_files.items()))
        return [(name, pred, gt)]
    missing = sorted(set(pred_files) - set(gt_files))
    if missing:
        hint = suggest(missing[0], gt_files)
        raise UsageError(
            f"No truth file for {len(missing)} prediction(s): {', '.join(missing[:5])}"
            f"{' …' if len(missing) > 5 else ''}. Truth cases: {', '.join(sorted(gt_files)[:5])}.{hint}"
        )
    unused = sorted(set(gt_files) - set(pred_files))
    if unused:
        logger.warning("%d truth file(s) have no prediction and are skipped: %s", len(unused), ", ".join(unused[:5]))
    return [(name, pred_files[name], gt_files[name]) for name in sorted(pred_files)]


def _values_beside(path: Path, structures: Sequence[str], *, hint: str = "") -> dict[str, int | None] | None:
    """Each structure's value from the ``labels.json`` beside a ``renalseg segment`` label map
    (None for one it does not name, or names twice); None when there is no such file."""
    import json

    from renalseg.labels import values_of_kind

    names = path.parent / "labels.json"
    if not path.name.startswith("labels.") or not names.is_file():
        return None
    try:
        table = json.loads(names.read_text(encoding="utf-8"))
        found = {key: values_of_kind(table, key) for key in structures}
    except (OSError, ValueError, AttributeError) as err:
        raise UsageError(f"{names}: cannot be read as a labels.json ({err}){hint}.") from err
    return {key: (values[0] if len(values) == 1 else None) for key, values in found.items()}


def _artery_value_beside(path: Path) -> int | None:
    """The artery's value from the ``labels.json`` beside a ``renalseg segment`` label map, if there is one."""
    values = _values_beside(path, ("artery",), hint="; pass --label N")
    return None if values is None else values["artery"]


def _structure_values_beside(path: Path, structures: Sequence[str]) -> dict[str, int | None]:
    """Each structure's value in a prediction: from the ``labels.json`` beside a ``renalseg
    segment`` label map (None for a structure it does not name), else the KiPA22 value."""
    from renalseg.labels import BY_KEY

    values = _values_beside(path, structures)
    return {key: BY_KEY[key].value for key in structures} if values is None else values


def evaluate_structures(pred: Volume, gt: Volume, values: Mapping[str, int | None], *, resample: bool = False,
                        names: tuple[str, str] = ("prediction", "truth")) -> list[dict]:
    """The metrics of each structure of a multi-structure prediction against KiPA22 truth.

    Args:
        pred, gt: label maps; the truth in KiPA22 values (1 renal vein, 2 kidney, 3 renal
            artery, 4 tumour: :mod:`renalseg.labels`).
        values: structure key → its value in ``pred`` (None: the prediction does not label
            it, scored as empty).
        resample, names: as :func:`evaluate_case`.

    Returns:
        One dict per structure: ``structure``, the metrics of :func:`evaluate_masks`,
        ``pred_volume_ml``, ``gt_volume_ml`` and, for the vessels, :data:`FOUND_NAMES`; the
        centerline figures (MCD, found by diameter) are the vessels' only.
        A structure the truth does not hold (a case without a tumour) gets NaN metrics;
        its ``pred_volume_ml`` is what was labelled there anyway.
    """
    from renalseg.labels import BY_KEY, SOLID_KEYS

    pred = _on_truth_grid(pred, gt, resample, names)
    spacing, voxel_ml = gt.geometry.spacing_xyz_mm, gt.geometry.voxel_volume_mm3 / 1000.0
    rows = []
    for key, value in values.items():
        pred_mask = pred.array == value if value is not None else np.zeros(pred.array.shape, bool)
        gt_mask = gt.array == BY_KEY[key].value
        vessel = key not in SOLID_KEYS  # the centerline figures are a vessel's
        if gt_mask.any():
            metrics = evaluate_masks(pred_mask, gt_mask, spacing, centerlines=vessel)
        else:
            metrics = dict.fromkeys(METRIC_NAMES, math.nan)
        row = {"structure": key, **metrics, "pred_volume_ml": round(float(pred_mask.sum()) * voxel_ml, 4),
               "gt_volume_ml": round(float(gt_mask.sum()) * voxel_ml, 4)}
        if vessel:
            row.update(found_by_diameter(pred_mask, gt_mask, spacing))
        rows.append(row)
    return rows


def evaluate_pairs(preds: Sequence[Path | str], gts: Sequence[Path | str], *, resample: bool = False,
                   pred_label: int | None = None, gt_label: int | None = None,
                   structures: Sequence[str] | None = None,
                   on_progress: Callable[[str], None] | None = None) -> list[dict]:
    """Evaluate every prediction against the truth file of the same case name.

    Args:
        preds, gts: files or folders (see :func:`collect_label_files`).
        resample: nearest-neighbour resampling of predictions onto the truth grid.
        pred_label, gt_label: see :func:`evaluate_case`; without ``pred_label`` a ``renalseg segment``
            folder's ``labels.json`` says which value is the artery.
        structures: score these structures (keys of :data:`renalseg.labels.STRUCTURE_KEYS`)
            instead, each against KiPA22 truth (:func:`evaluate_structures`); a ``renalseg
            segment`` folder's ``labels.json`` gives their values in the prediction, KiPA22
            otherwise.
        on_progress: called with each case name before it is evaluated.

    Returns:
        One dict per case (per case and structure with ``structures``): ``case``, ``pred``,
        ``gt`` (paths) and the metrics.
    """
    from renalseg.io.image import read_label_image

    rows = []
    for name, pred_path, gt_path in match_pairs(preds, gts):
        if on_progress is not None:
            on_progress(name)
        pred = Volume.from_sitk(read_label_image(pred_path))
        gt = Volume.from_sitk(read_label_image(gt_path))
        if structures:
            values = _structure_values_beside(Path(pred_path), structures)
            rows.extend({"case": name, "pred": str(pred_path), "gt": str(gt_path), **row}
                        for row in evaluate_structures(pred, gt, values, resample=resample,
                                                       names=(str(pred_path), str(gt_path))))
            continue
        label = pred_label if pred_label is not None else _artery_value_beside(Path(pred_path))
        metrics = evaluate_case(pred, gt, pred_label=label, gt_label=gt_label, resample=resample,
                                names=(str(pred_path), str(gt_path)))
        rows.append({"case": name, "pred": str(pred_path), "gt": str(gt_path), **metrics})
    return rows


def summarize(rows: Sequence[dict], keys: Sequence[str] = METRIC_NAMES) -> dict[str, dict[str, float | int]]:
    """Mean ± standard deviation (population, ddof 0) per metric over cases, NaN skipped.

    Example:
        >>> summarize([{"dice": 0.8}, {"dice": 1.0}, {"dice": float("nan")}], keys=("dice",))
        {'dice': {'mean': 0.9, 'std': 0.1, 'n': 2}}
    """
    out: dict[str, dict[str, float | int]] = {}
    for key in keys:
        values = np.array([float(row[key]) for row in rows if key in row], dtype=float)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            out[key] = {"mean": math.nan, "std": math.nan, "n": 0}
        else:
            out[key] = {"mean": round(float(values.mean()), 6), "std": round(float(values.std()), 6),
                        "n": int(len(values))}
    return out


#: vessel-diameter bands (mm) for :func:`centerline_recall_by_diameter`: roughly the
#: interlobar and arcuate arteries (< 2 mm), segmental and lobar (2–4 mm), and the main
#: renal artery and its divisions (>= 4 mm)
DIAMETER_BANDS_MM: tuple[tuple[float, float], ...] = ((0.0, 2.0), (2.0, 4.0), (4.0, math.inf))


def _band_name(low: float, high: float) -> str:
    return f"{low:g}-{high:g}mm" if math.isfinite(high) else f"{low:g}mm+"


#: per-case columns of :func:`evaluate_case`: the centerline share found per diameter band
FOUND_NAMES: tuple[str, ...] = tuple(f"found_{_band_name(lo, hi)}" for lo, hi in DIAMETER_BANDS_MM)
#: how reports name those bands, in the same order ("0–2 mm", ..., "4 mm and wider")
FOUND_LABELS: tuple[str, ...] = tuple(f"{lo:g}–{hi:g} mm" if math.isfinite(hi) else f"{lo:g} mm and wider"
                                      for lo, hi in DIAMETER_BANDS_MM)


def vessel_diameter_mm(mask: np.ndarray, spacing_xyz_mm: Sequence[float]) -> np.ndarray:
    """The vessel diameter (mm) each voxel of a mask reads, 2 d − s (0 outside the mask).

    d is the Euclidean distance transform (mm, from the voxel centre to the nearest voxel
    centre outside the mask, half a voxel beyond the wall; voxels beyond the array count
    as outside) and s the smallest voxel side: a one-voxel vessel reads one voxel across,
    a tube of radius r about 2 r on its centerline.

    Example:
        >>> m = np.zeros((7, 5, 5), bool); m[:, 1:4, 1:4] = True   # a 3 × 3-voxel rod
        >>> vessel_diameter_mm(m, (1.0, 1.0, 1.0))[3, 2].tolist()
        [0.0, 1.0, 3.0, 1.0, 0.0]
    """
    spacing_zyx = tuple(float(s) for s in spacing_xyz_mm)[::-1]
    depth = ndimage.distance_transform_edt(np.pad(np.asarray(mask, bool), 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    return np.where(depth > 0, 2.0 * depth - min(spacing_zyx), 0.0)


def centerline_recall_by_diameter(
    pred: np.ndarray, gt: np.ndarray, spacing_xyz_mm: Sequence[float], *,
    bands_mm: Sequence[tuple[float, float]] = DIAMETER_BANDS_MM, tolerance_mm: float | None = None,
) -> dict[str, dict[str, float | int]]:
    """Which share of the true tree's centerline the prediction finds, by vessel diameter.

    Dice is dominated by the boundary voxels of thin vessels; a surgeon asks instead
    whether each branch is there. The truth is thinned to its centerline
    (:func:`renalseg.tree.centerline`); each centerline voxel's vessel diameter is
    :func:`vessel_diameter_mm` there (2 d − s: a one-voxel vessel reads one voxel
    across, a tube of radius r about 2 r). It counts as found when a predicted voxel lies within
    ``tolerance_mm`` of it (default: the largest voxel side, one voxel of slack for
    a branch found slightly off-centre).

    Args:
        pred, gt: bool ``(Z, Y, X)`` masks on one grid.
        spacing_xyz_mm: voxel size (x, y, z) in mm.
        bands_mm: ``(low, high)`` diameter bands, low inclusive, high exclusive.
        tolerance_mm: how near a predicted voxel must be.

    Returns:
        ``{"<low>-<high>mm": {"recall": share found (NaN when the band is empty),
        "length_mm": centerline voxels in the band times the mean voxel side}}``.

    Example:
        >>> gt = np.zeros((30, 20, 20), bool); gt[2:28, 8:12, 8:12] = True   # a 4-voxel rod
        >>> pred = gt.copy(); pred[15:, :, :] = False                       # half of it found
        >>> r = centerline_recall_by_diameter(pred, gt, (1.0, 1.0, 1.0), bands_mm=((0, 10),))
        >>> round(r["0-10mm"]["recall"], 1)
        0.5
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise InputError(f"Prediction {pred.shape} and truth {gt.shape} have different shapes (z, y, x).")
    spacing_zyx = tuple(float(s) for s in spacing_xyz_mm)[::-1]
    tolerance = max(spacing_zyx) if tolerance_mm is None else float(tolerance_mm)
    names = [_band_name(lo, hi) for lo, hi in bands_mm]
    if not gt.any():
        return {name: {"recall": math.nan, "length_mm": 0.0} for name in names}
    box = ndimage.find_objects(gt.astype(np.uint8))[0]
    # the box around the truth, grown so that predicted voxels within the tolerance count
    grow = [int(math.ceil(tolerance / s)) + 1 for s in spacing_zyx]
    box = tuple(slice(max(0, b.start - g), min(n, b.stop + g)) for b, g, n in zip(box, grow, gt.shape))
    gt_box, pred_box = np.pad(gt[box], 1), np.pad(pred[box], 1)
    line = centerline(gt_box, tuple(spacing_xyz_mm))
    diameter = vessel_diameter_mm(gt_box, spacing_xyz_mm)[line]
    if pred_box.any():
        found = ndimage.distance_transform_edt(~pred_box, sampling=spacing_zyx)[line] <= tolerance + 1e-6
    else:
        found = np.zeros(diameter.shape, bool)
    step_mm = float(np.mean(spacing_zyx))
    result: dict[str, dict[str, float | int]] = {}
    for name, (lo, hi) in zip(names, bands_mm):
        band = (diameter >= lo) & (diameter < hi)
        result[name] = {"recall": float(found[band].mean()) if band.any() else math.nan,
                        "length_mm": round(float(band.sum()) * step_mm, 1)}
    return result


def found_by_diameter(pred: np.ndarray, gt: np.ndarray, spacing_xyz_mm: Sequence[float]) -> dict[str, float]:
    """:func:`centerline_recall_by_diameter` in the default bands as flat per-case
    columns, ``{name: share found}`` for each name in :data:`FOUND_NAMES`."""
    found = centerline_recall_by_diameter(pred, gt, spacing_xyz_mm)
    return {name: r["recall"] for name, r in zip(FOUND_NAMES, found.values())}


def structure_scores(written: np.ndarray, truth: np.ndarray, spacing_xyz_mm: Sequence[float], *,
                     structures: Sequence[str] = ("vein", "kidney", "artery", "tumour")) -> dict[str, float]:
    """Per-structure figures of a KiPA22 label map against the true one (1 vein, 2 kidney,
    3 artery, 4 tumour: :mod:`renalseg.labels`), on one grid.

    What a four-structure model is judged on, and what lets an artery-only model be
    compared with it on the same cases (``structures=("artery",)``: the others are not
    scored, but the vein the artery takes still is).

    Args:
        written: the label map as ``renalseg segment`` writes it (KiPA22 values).
        truth: the true label map (KiPA22 values).
        spacing_xyz_mm: voxel size (x, y, z) in mm.
        structures: the structure keys the model labels (``renalseg.labels.STRUCTURE_KEYS``).

    Returns:
        ``dice_<key>`` per structure in ``structures`` (``dice_tumour`` NaN on a case
        without a true tumour, where ``tumour_ml_where_none`` is the volume labelled
        tumour there, NaN otherwise); ``vein_as_artery``: the share of true renal-vein
        voxels labelled artery (NaN without a true vein); ``artery_as_vein`` (when the
        vein is labelled): the share of true artery voxels labelled vein;
        ``artery_hd95_mm`` and ``artery_mcd_mm`` (:func:`evaluate_masks`); and the
        artery's centerline found per diameter band, ``found_<band>``
        (:func:`found_by_diameter`; ``found_0-2mm`` is the thin-branch figure).

    Example:
        >>> truth = np.zeros((8, 8, 8), np.uint8); truth[1:3] = 1; truth[4:6] = 3
        >>> written = truth.copy(); written[1] = 3                # half of the vein taken for artery
        >>> s = structure_scores(written, truth, (1.0, 1.0, 1.0), structures=("vein", "artery"))
        >>> round(s["dice_vein"], 3), round(s["dice_artery"], 3), s["vein_as_artery"], s["artery_as_vein"]
        (0.667, 0.8, 0.5, 0.0)
    """
    from renalseg.labels import BY_KEY

    written, truth = np.asarray(written), np.asarray(truth)
    if written.shape != truth.shape:
        raise InputError(f"Label map {written.shape} and truth {truth.shape} have different shapes (z, y, x).")
    unknown = [key for key in structures if key not in BY_KEY]
    if unknown:
        raise UsageError(f"structures {unknown}: choose from {', '.join(BY_KEY)}." + suggest(unknown[0], BY_KEY))
    value = {key: BY_KEY[key].value for key in BY_KEY}
    out: dict[str, float] = {}
    for key in ("vein", "kidney", "artery", "tumour"):
        if key not in structures:
            continue
        true_mask = truth == value[key]
        if key == "tumour" and not true_mask.any():
            out["dice_tumour"] = math.nan
            voxel_ml = float(np.prod([float(s) for s in spacing_xyz_mm])) / 1000.0
            out["tumour_ml_where_none"] = round(float((written == value[key]).sum()) * voxel_ml, 4)
            continue
        out[f"dice_{key}"] = dice(written == value[key], true_mask)
        if key == "tumour":
            out["tumour_ml_where_none"] = math.nan
    true_vein, true_artery = truth == value["vein"], truth == value["artery"]
    artery = written == value["artery"]
    out["vein_as_artery"] = float(artery[true_vein].mean()) if true_vein.any() else math.nan
    if "vein" in structures:
        out["artery_as_vein"] = (float((written[true_artery] == value["vein"]).mean()) if true_artery.any()
                                 else math.nan)
    distances = evaluate_masks(artery, true_artery, spacing_xyz_mm)
    out["artery_hd95_mm"], out["artery_mcd_mm"] = distances["hd95_mm"], distances["mcd_mm"]
    out.update(found_by_diameter(artery, true_artery, spacing_xyz_mm))
    return out
