"""Training data: the KiPA22 folder layout, label maps, and cases on the model grid.

A training folder holds ``image/<case>.<ext>`` and, for the segmentation stage,
``label/<case>.<ext>`` with the same names (KiPA22: label values 1 renal vein,
2 kidney, 3 renal artery, 4 tumour). Folders written by ``renalseg synth`` also hold
``tissue/<case>.<ext>`` tissue-class maps, used for domain randomisation. An image may
be a DICOM series folder, ``image/<case>/`` (``renalseg synth --format dicom`` writes
them), with its label a file on the series' grid. An nnU-Net
raw dataset folder (``imagesTr/<case>_0000.<ext>``, ``labelsTr/<case>.<ext>``) is read
as well, one CT channel; its ``dataset.json`` is not read, so ``--label-map`` names the
values.

Every case is brought onto the model grid before training: patient-oriented
(LPS-aligned identity direction, so array axes are z → superior, y → posterior,
x → left) at the model spacing. Images stay in Hounsfield units here; normalisation
happens per patch after intensity augmentation (:mod:`renalseg.training.augment`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.errors import DataLayoutError, GeometryError, RenalsegError, UsageError
from renalseg.geometry import Geometry, assert_same_grid, resample_to_grid
from renalseg.io.image import IMAGE_SUFFIXES, read_image, read_label_image
from renalseg.labels import STRUCTURES
from renalseg.phantom.tissues import TISSUE_IDS
from renalseg.volume import Volume

__all__ = [
    "KIPA22_LABELS",
    "IGNORE_INDEX",
    "LabelMap",
    "parse_label_map",
    "CaseFiles",
    "find_cases",
    "TrainingCase",
    "load_case",
    "load_cases",
    "make_case",
    "split_cases",
    "to_model_grid",
    "load_whole_study",
]

logger = logging.getLogger(__name__)

#: KiPA22 label values (Kidney PArsing challenge 2022), from the registry (renalseg.labels)
KIPA22_LABELS: dict[int, str] = {s.value: s.name for s in STRUCTURES}

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_AIR_HU = -1024.0


#: a class index no loss counts: a patch's voxel left out of training (neither its class
#: nor background), e.g. a thin branch a coarse scan cannot show
IGNORE_INDEX = 255


@dataclass(frozen=True)
class LabelMap:
    """Which source label values become which training classes.

    Attributes:
        class_names: class names by class index; index 0 is always ``"background"``.
        source_values: per class index ≥ 1, the source label values mapped to it.

    Example:
        >>> m = parse_label_map("3:renal_artery")
        >>> m.class_names, m.apply(np.array([0, 1, 2, 3, 4])).tolist()
        (('background', 'renal_artery'), [0, 0, 0, 1, 0])
    """

    class_names: tuple[str, ...]
    source_values: tuple[tuple[int, ...], ...]

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    def apply(self, label: np.ndarray) -> np.ndarray:
        """Map source label values to class indices (unmapped values → 0).

        Args:
            label: integer array of any shape, source label values.

        Returns:
            uint8 array of the same shape, class indices.
        """
        label = np.asarray(label)
        out = np.zeros(label.shape, dtype=np.uint8)
        for class_index, values in enumerate(self.source_values, start=1):
            out[np.isin(label, values)] = class_index
        return out

    def to_text(self) -> str:
        """The ``--label-map`` text that parses back to this map.

        Example:
            >>> parse_label_map("3:renal_artery,1:renal_vein").to_text()
            '3:renal_artery,1:renal_vein'
        """
        return ",".join(
            f"{value}:{name}" for name, values in zip(self.class_names[1:], self.source_values) for value in values
        )


def parse_label_map(text: str) -> LabelMap:
    """Parse ``--label-map`` text: comma-separated ``VALUE:NAME`` pairs.

    Classes are numbered 1, 2, ... in order of first appearance of each name; several
    source values may share a name (they merge into one class). KiPA22: ``"3:renal_artery"``
    (the default model), or ``"3:renal_artery,1:renal_vein,4:tumour"``.

    Raises:
        UsageError: malformed text, a negative or duplicated value, or value 0.

    Example:
        >>> m = parse_label_map("3:renal_artery, 5:renal_artery, 1:renal_vein")
        >>> m.class_names, m.source_values
        (('background', 'renal_artery', 'renal_vein'), ((3, 5), (1,)))
    """
    names: list[str] = []
    values: dict[str, list[int]] = {}
    seen: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        value_text, sep, name = (s.strip() for s in item.partition(":"))
        if not sep or not name or not value_text.lstrip("-").isdigit():
            raise UsageError(
                f"--label-map item {item!r} is not VALUE:NAME; write e.g. '3:renal_artery' "
                f"(KiPA22: {', '.join(f'{k}:{v}' for k, v in KIPA22_LABELS.items())})."
            )
        value = int(value_text)
        if value <= 0:
            raise UsageError(f"--label-map value {value} must be ≥ 1 (0 is always background).")
        if value in seen:
            raise UsageError(f"--label-map maps source value {value} twice; give each value once.")
        if name == "background":
            raise UsageError("--label-map cannot name a class 'background' (class 0 is background).")
        seen.add(value)
        if name not in values:
            names.append(name)
            values[name] = []
        values[name].append(value)
    if not names:
        raise UsageError("--label-map is empty; give at least one VALUE:NAME, e.g. '3:renal_artery'.")
    return LabelMap(("background", *names), tuple(tuple(values[n]) for n in names))


@dataclass(frozen=True)
class CaseFiles:
    """The files of one training case (paths; nothing read yet)."""

    case_id: str
    image: Path
    label: Path | None = None
    tissue: Path | None = None


def _case_id(path: Path) -> str | None:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _list_folder(folder: Path, *, series_folders: bool = False) -> dict[str, Path]:
    """Case id → file; with ``series_folders`` a sub-folder is a case too (a DICOM series,
    as ``renalseg synth --format dicom`` writes one), named by the folder."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() == ".raw":
            continue
        case_id = path.name if series_folders and path.is_dir() else _case_id(path)
        if case_id is None:
            continue
        if case_id in found:
            raise DataLayoutError(
                f"{folder}: case '{case_id}' has two files ({found[case_id].name}, {path.name}); keep one."
            )
        found[case_id] = path
    return found


def find_cases(data_dir: Path | str, *, labelled: bool = True) -> list[CaseFiles]:
    """The cases of a KiPA22-layout folder, sorted by case id.

    Args:
        data_dir: folder with ``image/`` and (when ``labelled``) ``label/``; an
            optional ``tissue/`` (phantom tissue maps) is picked up when present.
        labelled: require a label per image (segmentation stage). Unlabelled
            (DAE stage) ignores ``label/``.

    Raises:
        UsageError: ``data_dir`` does not exist.
        DataLayoutError: a missing sub-folder, no images, or names that do not match
            between ``image/`` and ``label/`` (the unmatched cases are named).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"{data_dir}: no such folder. Pass --data DIR holding image/ and label/.")
    nnunet = not (data_dir / "image").is_dir() and (data_dir / "imagesTr").is_dir()
    image_name, label_name = ("imagesTr", "labelsTr") if nnunet else ("image", "label")
    pairing = ("imagesTr/<case>_0000 and labelsTr/<case>" if nnunet
               else "image/<case> and label/<case> with the same name")
    image_dir = data_dir / image_name
    if not image_dir.is_dir():
        raise DataLayoutError(
            f"{data_dir}: no image/ folder. Expected the KiPA22 layout: {data_dir}/image/<case>.nii.gz"
            + (f" and {data_dir}/label/<case>.nii.gz." if labelled else ".")
        )
    images = (_channel_zero(_list_folder(image_dir)) if nnunet
              else _list_folder(image_dir, series_folders=True))
    if not images:
        raise DataLayoutError(
            f"{image_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}"
            f"{'' if nnunet else ' and DICOM series folders'})."
        )
    labels: dict[str, Path] = {}
    if labelled:
        label_dir = data_dir / label_name
        if not label_dir.is_dir():
            raise DataLayoutError(
                f"{data_dir}: no {label_name}/ folder; the seg stage needs {data_dir}/{label_name}/<case>.nii.gz "
                f"beside {image_name}/ (the dae stage needs images only)."
            )
        labels = _list_folder(label_dir)
        no_label = sorted(set(images) - set(labels))
        no_image = sorted(set(labels) - set(images))
        if no_label or no_image:
            parts = []
            if no_label:
                parts.append(f"images without a label: {', '.join(no_label[:10])}")
            if no_image:
                parts.append(f"labels without an image: {', '.join(no_image[:10])}")
            raise DataLayoutError(
                f"{data_dir}: {image_name}/ and {label_name}/ names do not match ({'; '.join(parts)}). "
                f"Each case needs {pairing}."
            )
    tissues = _list_folder(data_dir / "tissue") if (data_dir / "tissue").is_dir() else {}
    return [
        CaseFiles(case_id, path, labels.get(case_id), tissues.get(case_id))
        for case_id, path in images.items()
    ]


def _channel_zero(found: dict[str, Path]) -> dict[str, Path]:
    """An nnU-Net ``imagesTr/`` listing (``<case>_0000``: the channel suffix) by case id.
    One CT channel: a second channel (``_0001``) is refused, naming the case."""
    images: dict[str, Path] = {}
    for name, path in found.items():
        case_id, _, channel = name.rpartition("_")
        if not (case_id and len(channel) == 4 and channel.isdigit()):
            raise DataLayoutError(f"{path}: an nnU-Net image's name ends in its channel (<case>_0000); "
                                  "name it so, or use the KiPA22 layout (image/<case>, label/<case>).")
        if channel != "0000":
            raise DataLayoutError(f"{path}: channel {channel} of case '{case_id}'; renalseg trains on one "
                                  "CT channel (_0000). Move the other channels out of imagesTr.")
        images[case_id] = path
    return images


@dataclass(frozen=True, eq=False)
class TrainingCase:
    """One case on the model grid, in memory.

    Attributes:
        case_id: the file name without its suffix.
        image_hu: float32 ``(Z, Y, X)`` Hounsfield units, patient-oriented, model spacing.
        geometry: the model grid of ``image_hu`` (identity direction, model spacing).
        label: uint8 ``(Z, Y, X)`` class indices (after the label map), or ``None``.
        tissue: uint8 ``(Z, Y, X)`` phantom tissue classes, or ``None``.
        foreground: int32 ``(N, 3)`` z, y, x indices of the voxels crops may be
            centred on (the first foreground class, e.g. renal artery), or empty.
        hard_negatives: int32 ``(M, 3)`` indices of unlabelled voxels at least
            :data:`HARD_NEGATIVE_HU` bright — bone, contrast-filled bowel, the other
            arteries: what a network mistakes for renal artery; ``--hard-negative-share``
            centres patches on them.
        mimics: int32 ``(K, 3)`` indices of unlabelled voxels of the phantom tissues
            that look like a renal tumour (:data:`MIMIC_TISSUES`: spleen, liver, bowel,
            pancreas, adrenal, renal cyst), at most :data:`MAX_MIMICS` of them, or
            ``None`` without a tissue map; ``--mimic-share`` centres patches on them.
    """

    case_id: str
    image_hu: np.ndarray
    geometry: Geometry
    label: np.ndarray | None = None
    tissue: np.ndarray | None = None
    foreground: np.ndarray | None = None
    hard_negatives: np.ndarray | None = None
    mimics: np.ndarray | None = None


#: unlabelled voxels at least this bright are hard negatives: arterial-phase renal
#: arteries are ≥ 250 HU, so this catches everything that looks like them (and the
#: brightest cortex) while leaving soft tissue and fat out
HARD_NEGATIVE_HU: float = 200.0

#: phantom tissues a network mistakes for a renal tumour: on the held-out crops the
#: false tumour of the four-structure weights lay in the spleen and the bowel against
#: the kidney, in renal cysts and the pancreas (docs/validation.md)
MIMIC_TISSUES: tuple[str, ...] = ("spleen", "liver", "bowel", "pancreas", "adrenal", "cyst")

#: at most this many mimic voxels are kept per case (evenly strided): centres, not a
#: census, and a spleen holds 200 000 voxels at the model spacing
MAX_MIMICS: int = 20_000


def _mimic_voxels(label: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """``(K, 3)`` indices of unlabelled :data:`MIMIC_TISSUES` voxels, at most :data:`MAX_MIMICS`."""
    ids = [TISSUE_IDS[name] for name in MIMIC_TISSUES]
    flat = np.flatnonzero(np.isin(tissue, ids) & (label == 0))
    flat = flat[:: max(1, -(-len(flat) // MAX_MIMICS))]
    return np.stack(np.unravel_index(flat, label.shape), axis=1).astype(np.int32)


def _target_grid(geometry: Geometry, spacing_xyz_mm: Sequence[float]) -> Geometry:
    """The identity-direction grid at ``spacing_xyz_mm`` covering ``geometry``'s extent."""
    corners = geometry.corners_world()
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    spacing = np.asarray(spacing_xyz_mm, dtype=float)
    # 1e-3 voxel of slack: NIfTI stores spacing as float32 (0.7 -> 0.69999999), and a
    # 152-voxel extent must not lose its last voxel (and force a resampling) to that
    size_xyz = np.maximum(np.floor((hi - lo) / spacing + 1e-3).astype(int) + 1, 1)
    return Geometry(
        (int(size_xyz[2]), int(size_xyz[1]), int(size_xyz[0])),
        tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        tuple(float(v) for v in lo),  # type: ignore[arg-type]
        _IDENTITY,
    )


def to_model_grid(image: sitk.Image, spacing_xyz_mm: Sequence[float], *, kind: str,
                  target: Geometry | None = None) -> Volume:
    """Resample an image onto the patient-oriented grid at ``spacing_xyz_mm``.

    Nothing is interpolated when the image already is on such a grid (identity
    direction, same spacing): the array is returned exactly.

    Args:
        image: a 3D scalar image (any direction and spacing).
        spacing_xyz_mm: target spacing (x, y, z) in mm.
        kind: ``"image"`` (linear, outside = -1024 HU), ``"label"`` (per-class
            linear then arg-max, which keeps thin vessels better than nearest
            neighbour) or ``"tissue"`` (nearest neighbour).
        target: the grid to resample onto (e.g. a kidney ROI's model grid); default:
            the identity-direction grid at ``spacing_xyz_mm`` covering the image.

    Returns:
        The resampled volume (float32 for images, uint8 otherwise).
    """
    source = Geometry.from_sitk(image)
    target = target or _target_grid(source, spacing_xyz_mm)
    if source.is_same_grid(target, atol=1e-4):
        array = sitk.GetArrayFromImage(image)
        dtype = np.float32 if kind == "image" else np.uint8
        return Volume(array.astype(dtype, copy=False), target)
    if kind == "image":
        out = resample_to_grid(sitk.Cast(image, sitk.sitkFloat32), target, interpolator=sitk.sitkLinear,
                               default_value=_AIR_HU, pixel_type=sitk.sitkFloat32)
        return Volume(sitk.GetArrayFromImage(out).astype(np.float32, copy=False), target)
    if kind == "tissue":
        out = resample_to_grid(sitk.Cast(image, sitk.sitkUInt8), target, interpolator=sitk.sitkNearestNeighbor,
                               default_value=0, pixel_type=sitk.sitkUInt8)
        return Volume(sitk.GetArrayFromImage(out), target)
    if kind != "label":
        raise ValueError(f"kind must be 'image', 'label' or 'tissue'; got {kind!r}")
    values = np.unique(sitk.GetArrayViewFromImage(image))
    values = values[values != 0]
    best = np.full(target.shape_zyx, 0.5, dtype=np.float32)  # background wins below 0.5
    out_array = np.zeros(target.shape_zyx, dtype=np.uint8)
    for value in values:
        mask = sitk.Cast(image == int(value), sitk.sitkFloat32)
        fraction = sitk.GetArrayFromImage(
            resample_to_grid(mask, target, interpolator=sitk.sitkLinear, default_value=0.0, pixel_type=sitk.sitkFloat32)
        )
        wins = fraction > best
        out_array[wins] = int(value)
        best = np.maximum(best, fraction)
    return Volume(out_array, target)


def _cache_key(files: CaseFiles, spacing_xyz_mm: Sequence[float], label_map: LabelMap | None) -> str:
    parts: list[object] = [list(spacing_xyz_mm), label_map.to_text() if label_map else None]
    for path in (files.image, files.label, files.tissue):
        if path is not None:
            for member in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
                stat = member.stat()  # a DICOM series folder: each of its files
                parts.append([str(member.resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _read_companions(files: CaseFiles, reference: Geometry, *, use_label: bool) -> dict[str, sitk.Image]:
    """The case's label (when used) and tissue map, each checked to be on the image's grid.

    Raises:
        DataLayoutError: a companion file is on another grid (names the case).
    """
    extra: dict[str, sitk.Image] = {}
    if use_label:
        extra["label"] = read_label_image(files.label)  # type: ignore[arg-type]
    if files.tissue is not None:
        extra["tissue"] = read_label_image(files.tissue)
    for name, other in extra.items():
        try:
            assert_same_grid(reference, Geometry.from_sitk(other), names=("image", name))
        except GeometryError as err:
            raise DataLayoutError(
                f"case '{files.case_id}': the {name} is not on the image's grid; "
                f"{name} and image must have the same size, spacing, origin and direction.\n{err}"
            ) from err
    return extra


def load_case(
    files: CaseFiles,
    *,
    spacing_xyz_mm: Sequence[float],
    label_map: LabelMap | None = None,
    cache_dir: Path | None = None,
) -> TrainingCase:
    """Read one case and bring it onto the model grid.

    Args:
        files: the case's files.
        spacing_xyz_mm: model spacing (x, y, z) in mm.
        label_map: map source labels to classes; ``None`` ignores the label.
        cache_dir: when given, the resampled arrays are kept there (``.npz``) and
            reused while the source files are unchanged.

    Raises:
        DataLayoutError: the label (or tissue map) is not on the image's grid, or
            the label has no voxel of any mapped class (the case is named).
        InputError: a file that cannot be read.
    """
    use_label = label_map is not None and files.label is not None
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{files.case_id}-{_cache_key(files, spacing_xyz_mm, label_map)}.npz"
        if cache_path.exists():
            with np.load(cache_path) as stored:
                geometry = Geometry(**json.loads(str(stored["geometry"])))
                return make_case(files.case_id, stored["image"], geometry,
                                 stored["label"] if "label" in stored else None,
                                 stored["tissue"] if "tissue" in stored else None, label_map)
    if files.image.is_dir():  # a DICOM series
        from renalseg.io.study import read_study

        image = read_study(files.image).image
    else:
        image = read_image(files.image)
    extra = _read_companions(files, Geometry.from_sitk(image), use_label=use_label)
    volume = to_model_grid(image, spacing_xyz_mm, kind="image")
    label = None
    if use_label:
        source = to_model_grid(extra["label"], spacing_xyz_mm, kind="label").array
        label = label_map.apply(source)  # type: ignore[union-attr]
    tissue = to_model_grid(extra["tissue"], spacing_xyz_mm, kind="tissue").array if "tissue" in extra else None
    case = make_case(files.case_id, volume.array, volume.geometry, label, tissue, label_map)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"image": case.image_hu}
        if label is not None:
            arrays["label"] = label
        if tissue is not None:
            arrays["tissue"] = tissue
        g = case.geometry
        meta = json.dumps({"shape_zyx": list(g.shape_zyx), "spacing_xyz_mm": list(g.spacing_xyz_mm),
                           "origin_xyz_mm": list(g.origin_xyz_mm), "direction": list(g.direction)})
        temp = cache_path.with_name(f"{cache_path.stem}.{os.getpid()}.tmp.npz")  # processes may race
        np.savez(temp, geometry=np.array(meta), **arrays)
        temp.replace(cache_path)
    return case


def make_case(case_id: str, image: np.ndarray, geometry: Geometry, label: np.ndarray | None,
              tissue: np.ndarray | None, label_map: LabelMap | None) -> TrainingCase:
    """A :class:`TrainingCase` from arrays already on the model grid (``label`` already mapped).

    What :func:`load_case` builds from files; also for cases made in memory (e.g.
    phantoms). Finds the crop centres (first class, hard negatives, tumour mimics).

    Raises:
        DataLayoutError: a label with no voxel of any mapped class.
    """
    if isinstance(geometry.shape_zyx, list):
        geometry = Geometry(tuple(geometry.shape_zyx), tuple(geometry.spacing_xyz_mm),  # type: ignore[arg-type]
                            tuple(geometry.origin_xyz_mm), tuple(geometry.direction))  # type: ignore[arg-type]
    foreground = hard_negatives = mimics = None
    if label is not None:
        if not (label > 0).any():
            mapped = label_map.to_text() if label_map else "?"
            raise DataLayoutError(
                f"case '{case_id}': the label has no voxel of any mapped class ({mapped}). "
                "Check --label-map against the label values, or remove the case."
            )
        foreground = np.argwhere(label == 1).astype(np.int32)
        if len(foreground) == 0:
            foreground = np.argwhere(label > 0).astype(np.int32)
        hard_negatives = np.argwhere((label == 0) & (np.asarray(image) >= HARD_NEGATIVE_HU)).astype(np.int32)
        if tissue is not None:
            mimics = _mimic_voxels(label, np.asarray(tissue))
    return TrainingCase(case_id, np.asarray(image, dtype=np.float32), geometry, label,
                        None if tissue is None else np.asarray(tissue, dtype=np.uint8), foreground, hard_negatives,
                        mimics)


def load_cases(
    files: Sequence[CaseFiles],
    *,
    spacing_xyz_mm: Sequence[float],
    label_map: LabelMap | None = None,
    cache_dir: Path | None = None,
    whole_studies: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> list[TrainingCase]:
    """:func:`load_case` for each case (or :func:`load_whole_study` with ``whole_studies``:
    one case per located kidney); ``on_progress(done, total, case_id)`` after each file."""
    cases: list[TrainingCase] = []
    for done, item in enumerate(files, start=1):
        try:
            if whole_studies:
                cases.extend(load_whole_study(item, spacing_xyz_mm=spacing_xyz_mm, label_map=label_map,
                                              cache_dir=cache_dir))
            else:
                cases.append(load_case(item, spacing_xyz_mm=spacing_xyz_mm, label_map=label_map,
                                       cache_dir=cache_dir))
        except DataLayoutError:
            raise
        except RenalsegError as err:
            raise DataLayoutError(f"case '{item.case_id}': {err}") from err
        if on_progress is not None:
            on_progress(done, len(files), item.case_id)
    return cases


def split_cases(case_ids: Sequence[str], *, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A reproducible (train, validation) split of case ids.

    At least one case stays in training; with ``val_fraction > 0`` and two or more
    cases, at least one goes to validation.

    Example:
        >>> train, val = split_cases(["a", "b", "c", "d", "e"], val_fraction=0.2, seed=0)
        >>> len(train), len(val), sorted(train + val) == ["a", "b", "c", "d", "e"]
        (4, 1, True)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1); got {val_fraction}.")
    ids = sorted(case_ids)
    n_val = 0 if val_fraction == 0 or len(ids) < 2 else max(1, round(len(ids) * val_fraction))
    n_val = min(n_val, len(ids) - 1)
    order = np.random.default_rng([seed, 7]).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return [i for i in ids if i not in val], val


def load_whole_study(
    files: CaseFiles,
    *,
    spacing_xyz_mm: Sequence[float],
    label_map: LabelMap | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
) -> list[TrainingCase]:
    """A whole CT study as one training case per kidney: located, then cropped.

    :func:`renalseg.roi.locate_kidneys` finds each kidney's ROI (152 × 152 × Z on the
    model grid); image, label and tissue map are resampled onto it (case id
    ``<case>_left`` / ``<case>_right``). Registration is slow, so with ``cache_dir``
    the cropped ROIs are kept and reused while the files are unchanged. A side whose
    ROI holds no labelled voxel (e.g. only the tumour kidney was labelled) is left out
    with a warning.

    Raises:
        DataLayoutError: label/tissue not on the image's grid, no kidney found, or no
            ROI with a labelled voxel (the case is named).
    """
    from renalseg.errors import NoKidneyFoundError, RegistrationError
    from renalseg.io.study import read_study
    from renalseg.roi import crop_to_roi, locate_kidneys

    use_label = label_map is not None and files.label is not None
    cache_path = None
    if cache_dir is not None:
        key = _cache_key(files, spacing_xyz_mm, label_map)
        cache_path = Path(cache_dir) / f"{files.case_id}-study-{seed}-{key}.npz"
        if cache_path.exists():
            with np.load(cache_path) as stored:
                sides = json.loads(str(stored["sides"]))
                return [make_case(f"{files.case_id}_{side}", stored[f"image_{side}"],
                                  Geometry(**{k: tuple(v) for k, v in meta.items()}),
                                  stored[f"label_{side}"] if f"label_{side}" in stored else None,
                                  stored[f"tissue_{side}"] if f"tissue_{side}" in stored else None, label_map)
                        for side, meta in sides.items()]
    study = read_study(files.image)
    extra = _read_companions(files, study.geometry, use_label=use_label)
    try:
        rois = locate_kidneys(study, spacing_xyz_mm=tuple(spacing_xyz_mm), seed=seed)  # type: ignore[arg-type]
    except (NoKidneyFoundError, RegistrationError) as err:
        raise DataLayoutError(f"case '{files.case_id}': kidneys could not be located ({err}).") from err
    cases: list[TrainingCase] = []
    arrays: dict[str, np.ndarray] = {}
    sides: dict[str, dict] = {}
    for roi in rois:
        image = crop_to_roi(study, roi).array.astype(np.float32)
        label = tissue = None
        if use_label:
            source = to_model_grid(extra["label"], spacing_xyz_mm, kind="label", target=roi.grid).array
            label = label_map.apply(source)  # type: ignore[union-attr]
            if not label.any():
                logger.warning("case '%s': no labelled voxel in the %s kidney's ROI; left out.",
                               files.case_id, roi.side)
                continue
        if "tissue" in extra:
            tissue = to_model_grid(extra["tissue"], spacing_xyz_mm, kind="tissue", target=roi.grid).array
        cases.append(make_case(f"{files.case_id}_{roi.side}", image, roi.grid, label, tissue, label_map))
        arrays[f"image_{roi.side}"] = image
        if label is not None:
            arrays[f"label_{roi.side}"] = label
        if tissue is not None:
            arrays[f"tissue_{roi.side}"] = tissue
        g = roi.grid
        sides[roi.side] = {"shape_zyx": list(g.shape_zyx), "spacing_xyz_mm": list(g.spacing_xyz_mm),
                           "origin_xyz_mm": list(g.origin_xyz_mm), "direction": list(g.direction)}
    if not cases:
        raise DataLayoutError(
            f"case '{files.case_id}': neither kidney's ROI holds a voxel of the mapped classes "
            f"({label_map.to_text() if label_map else '?'}); check the label or remove the case."
        )
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        temp = cache_path.with_name(f"{cache_path.stem}.{os.getpid()}.tmp.npz")
        np.savez(temp, sides=np.array(json.dumps(sides)), **arrays)
        temp.replace(cache_path)
    return cases
