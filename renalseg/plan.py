"""The surgical plan: which artery branches feed the tumour, and what clamping them costs.

For each kidney, from a label map with artery, kidney and (optionally) tumour labels:

1. **Branch graph.** The artery mask is thinned and pruned exactly as for
   ``tree.json`` (:func:`renalseg.tree.pruned_centerline`). Each connected piece of
   the tree is rooted at its most medial end outside the kidney (towards the aorta).
   The largest rooted piece is the main renal artery; another piece that reaches
   ``accessory_min_mm`` or more out of the kidney, and into it, is an accessory artery
   (its own root); other pieces (gaps in a segmentation, a vessel's stub where the
   label is cut) hang from the nearest branch. Within
   one piece, another end as far out whose trunk runs that far before it branches, and
   whose path to the root runs that far inside the kidney, is an accessory artery too:
   its branches touch the main artery's only in the label (:func:`_root_trunks`); the
   widest trunk is the main renal artery.
   Branches run between branch points; a branch point closer than one vessel
   diameter to the previous one is merged with it (a trifurcation drawn as two
   close bifurcations), and a branch whose only substantial child (territory of
   ``minor_share`` or more of the kidney) continues it is one branch with side
   branches.
2. **Levels.** The root is the ``main`` renal artery; its children are
   ``division`` s, whose children are ``segmental`` arteries; deeper branches are
   ``further``. A root or a child of the main artery whose territory holds at most
   ``segmental_max_share`` of the kidney supplies one segment and is ``segmental``
   itself (a posterior segmental artery straight from the main artery; a polar
   accessory artery). Names: "main renal artery", "anterior/posterior division",
   "segmental 1…n" (superior to inferior, by territory centroid), "accessory renal
   artery", and "segmental 2.1", "segmental 2.1.3" ... for deeper branches.
3. **Perfusion territories.** Every voxel of the kidney (and of the tumour touching
   it) is given to the terminal branch nearest along the parenchyma: a multi-source
   Dijkstra on the 26-neighbour voxel graph of kidney ∪ tumour ∪ the arteries
   inside them, edges weighted by their length in mm, sources the centerline voxels
   of every terminal branch inside that domain (the geodesic Voronoi partition used
   for vascular territories in liver and kidney surgery planning). A branch's
   territory is the union of its terminal branches'; ``territories.nii.gz`` holds,
   per voxel, the id of the segmental-level branch that supplies it.
4. **Tumour relation.** Tumour + margin is the tumour and the kidney within
   ``margin_mm`` of it. Per branch: its share of tumour + margin and its shortest
   distance to the tumour. *Feeding* branches: segmental-level territories holding
   at least ``feeding_min_share`` of tumour + margin. *Clamping candidates*: the
   smallest set of segmental-level branches whose territories hold at least
   ``coverage`` of tumour + margin (territories are disjoint, so the largest shares
   first is the smallest set), each with the healthy parenchyma it leaves without
   blood; clamping the main artery (and any accessory artery feeding the tumour) is
   the fallback. *Fewest clamps*: the fewest branches (at most four, any level from
   the units up to the divisions) whose trees hold as much, leaving the least kidney
   without blood (a dynamic programme over the tree), named when they are fewer than
   the candidates. The strategy is the candidates (``selective``); the fewest clamps
   (``fewest``) where they leave at most ``fewest_tolerance`` (5%) of the kidney more
   without blood, or where the candidates would leave nearly as much as the main artery
   (90%) and they leave less; else the main artery (``main``).

``plan.json`` (schema ``renalseg.plan/1``)::

    {"schema": "renalseg.plan/1", "study": {"id", "labels", "report", "label_map",
                                            "tumour",            # only with --tumour or --tumour-at: what was planned
                                            "tumour_at": {"centre_mm", "diameter_mm"},  # only with --tumour-at
                                            "segment_verdict",   # report.json's quality.verdict or null
                                            "not_located",       # {side: why}: kidneys segment located none of
                                            "dicom_seg": {"path", "reason"},    # with dicom_seg: territories.seg.dcm
                                            "dicom_sc": {"path", "reason"}},    # read from DICOM: plan.sc.dcm
     "settings": {"margin_mm", "coverage", "feeding_min_share", "segmental_max_share",
                  "minor_share", "accessory_min_mm", "min_component_mm3", "min_tumour_piece_ml", "prune_factor",
                  "fewest_tolerance"},
     "kidneys": [{                                   # one per side found
        "side": "left" | "right",
        "status": "planned" | "no_tumour" | "tumour_outside_kidney" | "no_kidney" | "no_artery",
        "notes": [str, ...],                         # what was missing or unusual, in words
        "kidney_volume_ml": float | null,
        "roots": [branch id, ...],                   # main renal artery first, then accessory arteries
        "branches": [{"id", "name", "level": "main" | "division" | "segmental" | "further",
                      "parent": id | null, "children": [id, ...], "root": id,
                      "length_mm", "diameter_mean_mm", "diameter_min_mm",
                      "start_mm": [x, y, z], "end_mm": [x, y, z],   # LPS mm, start towards the root
                      "territory_ml", "territory_percent",           # of the kidney's volume
                      "tumour_percent": float | null,                # share of tumour + margin
                      "tumour_distance_mm": float | null,            # branch centerline to tumour surface
                      "region": "upper pole, anterior" | ...}],
        "territories": [{"value", "branch", "name", "volume_ml", "percent",   # values in territories.nii.gz
                         "tumour_percent"}],         # share of tumour + margin in it (with a tumour)
        "tumour": null | {"volume_ml", "margin_mm", "with_margin_ml", "outside_kidney_ml",
                          "feeding": [branch id, ...], "nearest_branches": [{"branch", "name", "distance_mm"}],
                          "pieces": [{"volume_ml", "centre_mm": [x, y, z], "region",   # the pieces planned
                                      "feeding": [branch id, ...]}],   # (≥ min_tumour_piece_ml, largest first, ≤ 10)
                          "small_pieces": int, "small_pieces_ml",    # those left out of feeding and clamping
                          "nephrometry": null | {"score", "suffix": "a" | "p" | "x", "complexity",  # largest piece
                                                 "R": {"points", "diameter_mm"}, "E": {"points", "exophytic_percent"},
                                                 "N": {"points", "distance_mm"}, "A",
                                                 "L": {"points", "between_polar_lines_percent", "crosses_midline"},
                                                 "hilar": {"h": true | false | null,  # abuts the main
                                                           "main_artery_mm", "main_vein_mm"}}},  # vessels (mm gaps)
        "clamping": null | {"strategy": "selective" | "fewest" | "main", "coverage_percent",
                            "candidates": [{"branch", "name", "tumour_percent", "ischaemic_ml", "ischaemic_percent"}],
                            "ischaemic_ml", "ischaemic_percent",
                            "fewest": null | {"branches": [id, ...], "names": [...], "tumour_percent",
                                              "ischaemic_ml", "ischaemic_percent"},
                            "fallback": {"branches": [id, ...], "names": [...], "tumour_percent",
                                         "ischaemic_ml", "ischaemic_percent"}}}],
     "seconds": float}

Ischaemic volumes count the kidney-labelled voxels (healthy parenchyma; tumour
excluded) of the clamped territories; percentages are of the kidney's volume. All
positions are LPS mm through :meth:`Geometry.index_to_world`; distances do not
depend on the direction matrix.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from renalseg.errors import GeometryError, InputError, OutputExistsError, UsageError, suggest
from renalseg.figures import TUMOUR_MEASURED_MIN_ML
from renalseg.geometry import Geometry, assert_same_grid
from renalseg.labels import values_mask
from renalseg.nephrometry import kidney_frame, renal_score
from renalseg.tree import STRUCTURE_26, bounding_box, drop_small_components, pruned_centerline, voxel_graph
from renalseg.volume import Volume, crop, paste

__all__ = ["PlanConfig", "PlanResult", "STRUCTURES", "LEVELS", "parse_label_map", "label_map_from_names",
           "read_plan_input", "read_tumour_mask", "parse_point", "check_tumour_options", "tumour_sphere",
           "tumour_pieces_at", "with_tumour", "plan_labels", "plan_study", "write_plan",
           "write_territory_meshes", "write_territory_seg_nrrd", "tumour_region", "region_shares",
           "proposed_clamping"]

logger = logging.getLogger(__name__)

#: the structures a plan reads from a label map
STRUCTURES = ("artery", "kidney", "tumour", "vein")
#: branch levels, root to leaves
LEVELS = ("main", "division", "segmental", "further")
#: names in a ``labels.json`` that mean each structure
_NAME_TO_STRUCTURE = {"artery": "artery", "renal_artery": "artery", "kidney": "kidney", "tumour": "tumour",
                      "tumor": "tumour", "renal_tumour": "tumour", "renal_tumor": "tumour", "kidney_tumour": "tumour",
                      "vein": "vein", "renal_vein": "vein"}
#: at a junction of the main renal vein a branch under this share of the widest branch's
#: calibre is a tributary (gonadal, adrenal, lumbar veins) and does not end it; wider, the
#: vein divides there
_VEIN_TRIBUTARY_SHARE = 0.5
_KIDNEY_MIN_ML = 5.0  # smaller kidney-label pieces are specks, not a kidney
#: two kidney pieces whose centres are closer than this across the body (LPS x) are not a
#: left and a right kidney (their centres lie 100 mm or more apart): the smaller is dropped
_KIDNEY_SEPARATION_MM = 50.0
#: a fused (horseshoe) kidney: one kidney piece whose narrowest sagittal section, between
#: the 25th and 75th percentiles of its extent across the body, holds at most this share
#: of the smaller half's largest section (a single kidney's sections vary far less), and
#: whose halves lie at least _KIDNEY_SEPARATION_MM apart, is planned as two kidneys
_FUSED_NECK_SHARE = 0.4


def split_fused_kidney(kidney: np.ndarray, geometry: Geometry, *, bin_mm: float = 2.0
                       ) -> tuple[np.ndarray, np.ndarray, float] | None:
    """A horseshoe kidney's halves: ``(right, left, x_mm)``, split at its narrowest
    sagittal section (LPS ``x = x_mm``), or ``None`` when ``kidney`` is not fused.

    The isthmus that joins a horseshoe kidney's lower poles is its thinnest part across
    the body; each half goes with the side it lies on, the isthmus split where it is
    thinnest (:data:`_FUSED_NECK_SHARE`).

    Example:
        >>> g = Geometry((10, 10, 80), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> k = np.zeros(g.shape_zyx, bool); k[:, :, 5:30] = k[:, :, 50:75] = True; k[:2, :2, 30:50] = True
        >>> right, left, x = split_fused_kidney(k, g)
        >>> int((right & left).sum()), int((right | left).sum()) == int(k.sum()), 60 <= x <= 100, bool(left[0, 0, 74])
        (0, True, True, True)
        >>> k[:2, :2, 30:50] = False; split_fused_kidney(k, g) is None    # two kidneys apart: not fused
        True
    """
    points = np.argwhere(kidney)
    if len(points) == 0:
        return None
    x = geometry.index_to_world(points[:, ::-1].astype(float))[:, 0]
    q25, q75 = np.percentile(x, [25, 75])
    if q75 - q25 < _KIDNEY_SEPARATION_MM:
        return None
    edges = np.arange(x.min(), x.max() + bin_mm, bin_mm)
    counts = np.histogram(x, edges)[0].astype(float)
    centres = (edges[:-1] + edges[1:]) / 2
    between = (centres >= q25) & (centres <= q75)
    if not between.any():
        return None
    neck = int(np.flatnonzero(between)[np.argmin(counts[between])])
    halves = counts[:neck].max(initial=0.0), counts[neck + 1:].max(initial=0.0)
    if counts[neck] == 0 or counts[neck] > _FUSED_NECK_SHARE * min(halves):  # apart, or one kidney
        return None
    x_mm = float(centres[neck])
    left = np.zeros(kidney.shape, bool)
    left[tuple((points[x > x_mm]).T)] = True  # patient left is +x in LPS
    return kidney & ~left, left, x_mm


@dataclass(frozen=True)
class PlanConfig:
    """Settings of a plan (all recorded in ``plan.json``).

    Args:
        margin_mm: resection margin around the tumour, mm.
        coverage: share of tumour + margin the clamping candidates must hold.
        feeding_min_share: a segmental territory holding at least this share of tumour +
            margin feeds the tumour.
        segmental_max_share: a root or a child of the main artery whose territory is at
            most this share of the kidney supplies one segment (is ``segmental``).
        minor_share: a child branch supplying less than this share of the kidney is a
            side branch; it does not end its parent.
        accessory_min_mm: a separate artery piece whose far end lies at least this far
            outside the kidney, and that reaches the kidney, is an accessory artery (else
            a gap in the segmentation).
        min_component_mm3: artery pieces smaller than this are dropped first.
        min_tumour_piece_ml: tumour pieces smaller than this (ml) are left out of the
            tumour + margin that the feeding branches and the clamping are worked out
            from, and counted in ``tumour.small_pieces``: with a 5 mm margin a 0.02 ml
            speck weighs as much as a 1 ml region. A kidney with specks only is planned
            as one without a tumour (status ``no_tumour``, with a note). ``0`` uses every
            piece.
        prune_factor: thinning spurs, as in :func:`renalseg.tree.analyze_tree`.
        fewest_tolerance: the fewest clamps are proposed over the deepest candidates when
            they take fewer branches and leave at most this share of the kidney more without
            blood (each clamped branch is one more vessel to dissect free at the hilum);
            ``0`` proposes them only when they cost no more kidney.
    """

    margin_mm: float = 5.0
    coverage: float = 0.95
    feeding_min_share: float = 0.05
    segmental_max_share: float = 0.2
    minor_share: float = 0.05
    accessory_min_mm: float = 10.0
    min_component_mm3: float = 5.0
    min_tumour_piece_ml: float = TUMOUR_MEASURED_MIN_ML
    prune_factor: float = 1.5
    fewest_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.fewest_tolerance <= 1:
            raise UsageError(f"fewest_tolerance must be in [0, 1]; got {self.fewest_tolerance}.")
        for name in ("margin_mm", "min_tumour_piece_ml"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be ≥ 0; got {getattr(self, name)}.")
        for name in ("coverage", "feeding_min_share", "segmental_max_share", "minor_share"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise UsageError(f"{name} must be in (0, 1]; got {value}.")


@dataclass(frozen=True, eq=False)
class PlanResult:
    """A plan: ``plan`` (the ``plan.json`` dict), ``territories`` (uint16 branch ids on
    the study grid), ``territory_names`` (the ``territories.json`` dict) and the masks
    the picture is drawn from (``labels``: 0 background, 1 kidney, 2 artery, 3 tumour)."""

    plan: dict
    territories: Volume
    territory_names: dict
    labels: Volume
    candidates: tuple[int, ...] = ()


# -- label maps --------------------------------------------------------------------------------

def parse_label_map(text: str) -> dict[int, str]:
    """Parse ``"3:artery,2:kidney,4:tumour"`` into ``{3: "artery", 2: "kidney", 4: "tumour"}``.

    Raises:
        UsageError: a malformed pair, a value outside 1–255 or an unknown structure.

    Example:
        >>> parse_label_map("3:artery, 2:kidney,4:tumor")
        {3: 'artery', 2: 'kidney', 4: 'tumour'}
    """
    out: dict[int, str] = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        value, _, name = pair.partition(":")
        try:
            number = int(value)
        except ValueError:
            number = -1
        if not 1 <= number <= 255 or not name.strip():
            raise UsageError(f"--label-map {text!r}: {pair!r} is not VALUE:NAME with VALUE in 1–255, "
                             "e.g. \"3:artery,2:kidney,4:tumour\".")
        key = name.strip().lower()
        if key not in _NAME_TO_STRUCTURE:
            raise UsageError(f"--label-map {text!r}: unknown structure {name.strip()!r}."
                             f"{suggest(key, STRUCTURES)} Valid: {', '.join(STRUCTURES)}.")
        out[number] = _NAME_TO_STRUCTURE[key]
    if "artery" not in out.values():
        raise UsageError(f"--label-map {text!r} names no artery label; e.g. \"3:artery,2:kidney,4:tumour\".")
    return out


def label_map_from_names(names: Mapping[str, str]) -> dict[int, str]:
    """The structures in a ``labels.json`` dict (value → name); other names are ignored.

    Example:
        >>> label_map_from_names({"0": "background", "1": "renal_vein", "2": "kidney", "3": "renal_artery"})
        {1: 'vein', 2: 'kidney', 3: 'artery'}
    """
    return {int(k): _NAME_TO_STRUCTURE[v.lower()] for k, v in names.items()
            if str(v).lower() in _NAME_TO_STRUCTURE and int(k) > 0}


def read_plan_input(study_dir: Path | str | None = None, *, labels: Path | str | None = None,
                    label_map: Mapping[int, str] | None = None) -> tuple[Volume, dict[int, str], list[dict], dict]:
    """Read a plan's label map, its structures and the ROIs of ``report.json``.

    Args:
        study_dir: a ``renalseg segment`` output folder (``labels.nii.gz``,
            ``labels.json``, ``report.json``).
        labels: a label map from any tool; with ``study_dir`` it must lie on the grid
            of the study's ``labels.nii.gz``.
        label_map: value → structure (:func:`parse_label_map`); default from
            ``labels.json`` beside the label map.

    Returns:
        ``(labels, label_map, rois, sources)``; ``rois`` from ``report.json`` (may be
        empty), ``sources`` the paths read.

    Raises:
        UsageError: nothing to read, or no way to tell which label is which.
        InputError: a missing or unreadable file.
        GeometryError: ``labels`` on another grid than the study (names both files).
    """
    from renalseg.io.image import read_image, read_label_image

    if study_dir is None and labels is None:
        raise UsageError("Give a study folder (renalseg segment output) or --labels FILE.")
    folder = Path(study_dir) if study_dir is not None else None
    if folder is not None and not folder.is_dir():
        raise UsageError(f"{folder}: not a folder; give a `renalseg segment` output folder.")
    study_labels = folder / "labels.nii.gz" if folder is not None else None
    path = Path(labels) if labels is not None else study_labels
    if not path.is_file():
        from renalseg.batch import no_labels_message

        default = f"{path}: no such label map; run `renalseg segment` first or pass --labels FILE."
        raise InputError(no_labels_message(folder, default) if labels is None else default)  # else: a study folder
    volume = Volume.from_sitk(read_label_image(path))
    sources: dict = {"labels": str(path), "report": None}
    if labels is not None and study_labels is not None and study_labels.is_file():
        study_geometry = Geometry.from_sitk(read_image(study_labels))
        assert_same_grid(volume.geometry, study_geometry, names=(str(path), str(study_labels)))
    rois: list[dict] = []
    report = folder / "report.json" if folder is not None else None
    if report is not None and report.is_file():
        data = json.loads(report.read_text())
        rois = list(data.get("rois") or [])
        sources["report"] = str(report)
        size = (data.get("input") or {}).get("size_xyz")
        if labels is not None and size is not None and tuple(size) != volume.geometry.shape_xyz:
            raise GeometryError(f"{path} ({volume.geometry.describe()}) is not on the grid of the study in "
                                f"{report} (size {tuple(size)}); give the label map of this study.")
    if label_map is None:
        names_path = path.parent / "labels.json"
        if not names_path.is_file():
            raise UsageError(f"{path}: no labels.json beside it to tell artery, kidney and tumour apart; "
                             "pass --label-map \"3:artery,2:kidney,4:tumour\".")
        label_map = label_map_from_names(json.loads(names_path.read_text()))
        if "artery" not in label_map.values():
            raise UsageError(f"{names_path} names no artery label, and the plan is made from the artery tree: "
                             "segment the study with the artery, kidney and tumour (renalseg segment without "
                             "--structures, or --structures artery,kidney,tumour), or, where the file does hold "
                             "them under other names, pass --label-map \"3:artery,2:kidney,4:tumour\".")
    sources["label_map"] = {str(k): v for k, v in sorted(label_map.items())}
    return volume, dict(label_map), rois, sources


def read_tumour_mask(path: Path | str, geometry: Geometry, *, value: int | None = None,
                     labels_name: str = "the label map") -> np.ndarray:
    """The tumour mask in ``path`` (a hand-drawn or corrected tumour, another tool's), on
    ``geometry``, the grid of the label map it goes with.

    The file may hold a part of that grid (same spacing and direction, its first voxel on
    one of the grid's: 3D Slicer can save a segmentation cropped to what it holds); it is
    placed there exactly.

    Args:
        path: a label image SimpleITK reads (NIfTI, NRRD, ...).
        geometry: the label map's grid; the file must lie on it or on a part of it.
        value: the tumour's value in the file; ``None``: any non-zero voxel, when the
            file holds one non-zero value.
        labels_name: the label map's file, for messages.

    Raises:
        InputError: a missing or unreadable file, or no tumour voxel in it.
        GeometryError: the file lies on another grid (names both files).
        UsageError: several non-zero values and no ``value`` to pick one.
    """
    from renalseg.io.image import read_label_image

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such tumour file; give a label image on the study's grid.")
    volume = Volume.from_sitk(read_label_image(path))
    if not volume.geometry.is_same_grid(geometry):
        try:
            placed = paste(Volume(np.zeros(geometry.shape_zyx, volume.array.dtype), geometry), volume)
        except GeometryError:
            placed = None
        if placed is None or np.count_nonzero(placed.array) != np.count_nonzero(volume.array):
            assert_same_grid(volume.geometry, geometry, names=(str(path), labels_name))  # raises, naming both
        volume = placed  # type: ignore[assignment]
    if value is None:
        present = np.unique(volume.array)
        present = present[present != 0]
        if len(present) > 1:
            listed = ", ".join(str(int(v)) for v in present[:8])
            raise UsageError(f"{path} holds the values {listed}{', ...' if len(present) > 8 else ''}; say which "
                             "is the tumour with --tumour-value (renalseg's own label maps: 4).")
        mask = volume.array != 0
    else:
        mask = volume.array == value
    if not mask.any():
        which = f"value {value}" if value is not None else "non-zero value"
        raise InputError(f"{path}: no voxel with a {which}; give the tumour's mask (or its --tumour-value).")
    return mask


#: how far (mm) a segmented tumour piece may lie from a point given for it
TUMOUR_AT_WITHIN_MM = 10.0


def parse_point(text: str) -> tuple[float, float, float]:
    """A point given on the command line, as patient LPS millimetres.

    ``"x,y,z"`` is LPS (as ``plan.json``, the meshes and DICOM); ``"ras:x,y,z"`` is RAS, as
    3D Slicer shows a point (its first two coordinates are negated); ``"lps:x,y,z"`` says
    LPS outright.

    Raises:
        UsageError: not three numbers, or an unknown prefix.

    Example:
        >>> parse_point("12.5,-40,110"), parse_point("ras: 12.5, -40, 110"), parse_point("ras:0,0,5")
        ((12.5, -40.0, 110.0), (-12.5, 40.0, 110.0), (0.0, 0.0, 5.0))
    """
    space, _, numbers = text.strip().rpartition(":")
    space = space.strip().lower() or "lps"
    try:
        point = tuple(float(v) for v in numbers.split(","))
    except ValueError:
        point = ()
    if space not in ("lps", "ras") or len(point) != 3 or not all(np.isfinite(point)):
        raise UsageError(f"'{text}' is not a point: give three numbers in mm, x,y,z in patient LPS (as plan.json "
                         "and the meshes), or ras:x,y,z as 3D Slicer shows a point.")
    if space == "ras":
        point = (-point[0], -point[1], point[2])
    return tuple(v + 0.0 for v in point)  # type: ignore[return-value]  # + 0.0: no "-0.0" in what is said back


def _box_around(geometry: Geometry, point_mm: np.ndarray, radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The voxel-index box (x, y, z; first and one past the last, clipped to the grid)
    holding every voxel centre within ``radius_mm`` of ``point_mm``: a ball stays within
    radius / spacing voxels of its centre along each index axis whatever the direction
    matrix. Empty (some ``high <= low``) when the ball misses the grid."""
    index = geometry.world_to_index(point_mm[None])[0]
    reach = radius_mm / np.asarray(geometry.spacing_xyz_mm) + 1.0
    shape_xyz = np.asarray(geometry.shape_xyz)
    low = np.clip(np.floor(index - reach), 0, shape_xyz).astype(int)
    high = np.clip(np.ceil(index + reach) + 1, 0, shape_xyz).astype(int)
    return low, high


def _lps_text(point_mm: np.ndarray) -> str:
    return f"LPS ({', '.join(f'{v:.1f}' for v in point_mm)}) mm"


def tumour_sphere(geometry: Geometry, centre_mm: Sequence[float], diameter_mm: float, *,
                  labels_name: str = "the label map") -> np.ndarray:
    """A tumour given by its centre and longest diameter, as a radiology report gives it.

    The voxels of ``geometry`` whose centres lie within ``diameter_mm / 2`` of
    ``centre_mm`` (LPS), in world coordinates, so oblique and anisotropic grids place it
    right. On 30 held-out phantoms a sphere of the true tumour's longest diameter at its
    centre planned with feeding-branch precision / recall 0.758 / 0.873 against the true
    tumour's 0.800 / 0.861 (``benchmarks/bench_plan.py --tumour-given sphere``): it over-covers,
    which errs towards clamping more.

    Raises:
        InputError: the sphere has no voxel on the grid (the point lies outside the study).

    Example:
        >>> g = Geometry((10, 10, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> mask = tumour_sphere(g, (4.0, 4.0, 8.0), 5.0)
        >>> int(mask.sum()), bool(mask[4, 4, 4])  # (z, y, x): voxel (4, 4, 4) is at (4, 4, 8) mm
        (39, True)
    """
    radius = float(diameter_mm) / 2.0
    centre = np.asarray(centre_mm, float)
    low, high = _box_around(geometry, centre, radius)
    mask = np.zeros(geometry.shape_zyx, bool)
    if np.any(high <= low):
        raise InputError(f"{labels_name}: the tumour at {_lps_text(centre)} lies outside the study "
                         f"({geometry.describe()}); give the point in patient LPS mm (ras:x,y,z for RAS, as 3D "
                         "Slicer shows it).")
    grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high)), indexing="ij"), -1)  # x, y, z
    world = geometry.index_to_world(grid.reshape(-1, 3)).reshape(grid.shape)
    inside = ((world - centre) ** 2).sum(-1) <= radius ** 2  # (x, y, z)
    mask[low[2]:high[2], low[1]:high[1], low[0]:high[0]] = inside.transpose(2, 1, 0)
    if not mask.any():
        raise InputError(f"{labels_name}: the tumour at {_lps_text(centre)}, "
                         f"{diameter_mm:g} mm across, holds no voxel of the study ({geometry.describe()}); give the "
                         "point in patient LPS mm (ras:x,y,z for RAS, as 3D Slicer shows it).")
    return mask


def check_tumour_options(tumour: object, tumour_at: object, tumour_diameter_mm: float | None) -> None:
    """The ways of giving the tumour that go together: a file or a point, not both; a
    diameter (> 0 mm) only with a point.

    Raises:
        UsageError: saying which option to drop or add.
    """
    if tumour is not None and tumour_at is not None:
        raise UsageError("Give the tumour as a file (--tumour) or as a point (--tumour-at), not both.")
    if tumour_diameter_mm is not None and (tumour_at is None or not tumour_diameter_mm > 0):
        raise UsageError("--tumour-diameter-mm is the longest diameter (> 0 mm) of the tumour at --tumour-at; "
                         "give both.")


def tumour_pieces_at(tumour: np.ndarray, geometry: Geometry, point_mm: Sequence[float], *,
                     within_mm: float = TUMOUR_AT_WITHIN_MM, labels_name: str = "the label map") -> np.ndarray:
    """The segmented tumour pieces (26-connected) that come within ``within_mm`` of a
    point: the tumour a clinician points at, with every other piece (false tumour in a
    cyst, the spleen, the bowel) left out.

    Raises:
        InputError: no tumour piece that near (names the label map and the point).

    Example:
        >>> g = Geometry((1, 1, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> t = np.zeros((1, 1, 20), bool); t[0, 0, 2:4] = t[0, 0, 15:18] = True
        >>> np.flatnonzero(tumour_pieces_at(t, g, (12.0, 0.0, 0.0), within_mm=5)).tolist()
        [15, 16, 17]
    """
    point = np.asarray(point_mm, float)
    pieces, count = ndimage.label(tumour, structure=STRUCTURE_26)
    low, high = _box_around(geometry, point, within_mm)
    box = tuple(slice(low[a], high[a]) for a in (2, 1, 0))
    near: list[int] = []
    if count and np.all(high > low):
        sub = pieces[box]
        found = np.argwhere(sub > 0)  # (z, y, x) in the box
        if len(found):
            world = geometry.index_to_world((found[:, ::-1] + low).astype(float))
            close = ((world - point) ** 2).sum(-1) <= within_mm ** 2
            near = sorted({int(v) for v in sub[tuple(found[close].T)]})
    if not near:
        raise InputError(f"{labels_name}: no segmented tumour within {within_mm:g} mm of {_lps_text(point)}. "
                         "Give the tumour's longest diameter (--tumour-diameter-mm) to plan a sphere there, or "
                         "draw it (--tumour FILE); the point is in patient LPS mm (ras:x,y,z for RAS, as 3D "
                         "Slicer shows it).")
    return np.isin(pieces, near)


def with_tumour(labels: Volume, tumour: np.ndarray, label_map: Mapping[int, str]) -> tuple[Volume, dict[int, str]]:
    """``labels`` with its tumour replaced by ``tumour`` (a mask on the same grid).

    The map's own tumour becomes background; the mask is then written over every other
    label but the artery, so a branch that runs into or along the tumour stays in the tree.
    A map without a tumour label gets one (value 4 where free).

    Example:
        >>> from renalseg.geometry import Geometry
        >>> g = Geometry((1, 1, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> out, names = with_tumour(Volume(np.array([[[4, 2, 3, 2]]], np.uint8), g),
        ...                          np.array([[[False, True, True, False]]]), {2: "kidney", 3: "artery", 4: "tumour"})
        >>> out.array.tolist(), names[4]
        ([[[0, 4, 3, 2]]], 'tumour')
    """
    mapping = dict(label_map)
    array = np.array(labels.array, copy=True)
    values = [v for v, name in mapping.items() if name == "tumour"]
    if values:
        array[values_mask(array, values)] = 0
        value = values[0]
    else:
        used = set(mapping) | {int(v) for v in np.unique(array)}
        value = next(v for v in (4, *range(5, 256)) if v not in used)
        mapping[value] = "tumour"
    arteries = [v for v, name in mapping.items() if name == "artery"]
    array[tumour & ~values_mask(array, arteries)] = value
    return Volume(array, labels.geometry), mapping


# -- tumour + margin ---------------------------------------------------------------------------

def tumour_region(tumour: np.ndarray, kidney: np.ndarray, spacing_xyz_mm: tuple[float, float, float],
                  margin_mm: float) -> np.ndarray:
    """Tumour + margin: the tumour and the kidney within ``margin_mm`` of it.

    Example:
        >>> k = np.ones((1, 1, 9), bool); t = np.zeros_like(k); t[0, 0, 4] = True; k[t] = False
        >>> tumour_region(t, k, (1.0, 1.0, 1.0), 2.0).astype(int).tolist()
        [[[0, 0, 1, 1, 1, 1, 1, 0, 0]]]
    """
    tumour = np.asarray(tumour, bool)
    out = tumour.copy()
    if not tumour.any() or margin_mm <= 0:
        return out
    spacing_zyx = np.asarray(spacing_xyz_mm, float)[::-1]
    reach = np.ceil(margin_mm / spacing_zyx).astype(int) + 1
    box = bounding_box(tumour)
    grown = tuple(slice(max(b.start - r, 0), min(b.stop + r, n)) for b, r, n in zip(box, reach, tumour.shape))
    distance = ndimage.distance_transform_edt(~tumour[grown], sampling=spacing_zyx)
    out[grown] |= (distance <= margin_mm) & np.asarray(kidney, bool)[grown]
    return out


def region_shares(territories: np.ndarray, region: np.ndarray) -> dict[int, float]:
    """Share of ``region``'s voxels in each territory value (0 excluded), largest first.

    Example:
        >>> region_shares(np.array([1, 1, 2, 2, 0]), np.array([True, True, True, False, False]))
        {1: 0.6667, 2: 0.3333}
    """
    values = np.asarray(territories)[np.asarray(region, bool)]
    values = values[values > 0]
    if values.size == 0:
        return {}
    ids, counts = np.unique(values, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {int(ids[i]): round(float(counts[i]) / values.size, 4) for i in order}


# -- sides --------------------------------------------------------------------------------------

@dataclass
class _Side:
    side: str
    kidney: np.ndarray  # bool, whole grid
    artery: np.ndarray
    tumour: np.ndarray  # tumour touching this kidney
    tumour_outside: np.ndarray  # tumour pieces not touching it
    notes: list[str] = field(default_factory=list)
    vein: np.ndarray | None = None  # None: the label map has no vein


def _world(geometry: Geometry, index_zyx: np.ndarray) -> np.ndarray:
    return geometry.index_to_world(np.asarray(index_zyx, float)[:, ::-1])


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labelled, count = ndimage.label(mask, structure=STRUCTURE_26)
    return labelled, count


def _nearest_owner(pieces: np.ndarray, count: int, owners: list[np.ndarray], spacing_zyx: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For each labelled piece, the nearest owner mask (index) and its distance in mm."""
    owner_of = np.full(count + 1, -1)
    distance = np.full(count + 1, np.inf)
    if not owners:
        return owner_of, distance
    trees = []
    for owner in owners:
        shell = owner & ~ndimage.binary_erosion(owner)
        trees.append(cKDTree(np.argwhere(shell) * spacing_zyx))
    for number, box in enumerate(ndimage.find_objects(pieces), start=1):
        if box is None:
            continue
        points = (np.argwhere(pieces[box] == number) + [b.start for b in box]) * spacing_zyx
        points = points[:: max(1, len(points) // 2000)]
        near = [float(t.query(points)[0].min()) for t in trees]
        owner_of[number] = int(np.argmin(near))
        distance[number] = min(near)
    return owner_of, distance


def _split_sides(volume: Volume, label_map: Mapping[int, str], rois: list[dict], name: str) -> list[_Side]:
    """Kidneys, each with its arteries and tumours; sides from ROIs or anatomy."""
    g = volume.geometry
    spacing_zyx = np.asarray(g.spacing_xyz_mm, float)[::-1]
    masks = {s: np.isin(volume.array, [k for k, v in label_map.items() if v == s]) for s in STRUCTURES}
    if not masks["artery"].any() and not masks["kidney"].any():
        raise InputError(f"{name}: no artery and no kidney label (values "
                         f"{', '.join(f'{k}={v}' for k, v in sorted(label_map.items()))}); check --label-map.")
    masks["artery"] = drop_small_components(masks["artery"], g.spacing_xyz_mm, 0.0)
    # kidneys: pieces of kidney ∪ tumour holding enough kidney
    organ, count = _components(masks["kidney"] | masks["tumour"])
    kidney_ml = np.bincount(organ[masks["kidney"]], minlength=count + 1) * g.voxel_volume_mm3 / 1000
    keep = [i for i in np.argsort(-kidney_ml) if i > 0 and kidney_ml[i] >= _KIDNEY_MIN_ML][:2]
    kidneys = [(organ == i) & masks["kidney"] for i in keep]
    notes: list[str] = []
    fused = split_fused_kidney(kidneys[0], g) if kidneys else None
    if fused is not None:  # a horseshoe kidney: its halves are planned as the two kidneys
        kidneys = [fused[0], fused[1]]
        notes.append(f"one kidney-labelled piece in {name} spans both sides, joined where it is thinnest: a "
                     f"horseshoe (fused) kidney; its halves are planned apart, split at LPS x = {fused[2]:.0f} mm "
                     "(the isthmus's parenchyma on each side goes with that side's half).")
    centres = [_world(g, np.argwhere(k).mean(axis=0, keepdims=True))[0] for k in kidneys]
    across_mm = abs(centres[0][0] - centres[1][0]) if len(kidneys) == 2 else np.inf
    if fused is None and across_mm < _KIDNEY_SEPARATION_MM:
        # e.g. the spleen labelled kidney above a left kidney: it would take the other side's name
        notes.append(f"a second kidney-labelled piece of {kidney_ml[keep[1]]:.1f} ml in {name} lies "
                     f"{across_mm:.0f} mm across the body from this kidney "
                     f"({kidney_ml[keep[0]]:.1f} ml), too close to be the other kidney: it is not planned; "
                     "check the label map there.")
        kidneys, centres = kidneys[:1], centres[:1]
    roi_sides = [str(r.get("side")) for r in rois if r.get("side") in ("left", "right")]

    def roi_side(point_zyx: np.ndarray) -> str | None:
        for roi in rois:
            box = roi.get("box_voxels_zyx") or {}
            start, shape = np.asarray(box.get("start", [0] * 3)), np.asarray(box.get("shape", [0] * 3))
            if np.all(point_zyx >= start) and np.all(point_zyx < start + shape):
                return str(roi.get("side"))
        return None

    artery_pieces, artery_count = _components(masks["artery"])
    owner, _ = _nearest_owner(artery_pieces, artery_count, kidneys, spacing_zyx)
    tumour_pieces, tumour_count = _components(masks["tumour"])
    tumour_owner, tumour_distance = _nearest_owner(tumour_pieces, tumour_count, kidneys, spacing_zyx)
    has_vein = "vein" in label_map.values()
    vein_pieces, vein_count = _components(masks["vein"])
    vein_owner, _ = _nearest_owner(vein_pieces, vein_count, kidneys, spacing_zyx)
    sides: list[_Side] = []
    for index, kidney in enumerate(kidneys):
        artery = np.isin(artery_pieces, np.nonzero(owner == index)[0]) & masks["artery"]
        touching = np.nonzero((tumour_owner == index) & (tumour_distance <= 1.01 * float(np.linalg.norm(spacing_zyx))))[0]
        outside = np.nonzero((tumour_owner == index) & ~np.isin(np.arange(tumour_count + 1), touching))[0]
        outside = outside[outside > 0]
        vein = np.isin(vein_pieces, np.nonzero(vein_owner == index)[0]) & masks["vein"] if has_vein else None
        sides.append(_Side("", kidney, artery, np.isin(tumour_pieces, touching) & masks["tumour"],
                           np.isin(tumour_pieces, outside) & masks["tumour"], list(notes), vein))
    if len(kidneys) == 2:
        left = int(np.argmax([c[0] for c in centres]))  # patient left is +x in LPS
        sides[left].side, sides[1 - left].side = "left", "right"
    elif len(kidneys) == 1:
        from_roi = roi_side(np.argwhere(kidneys[0]).mean(axis=0))
        sides[0].side = from_roi or _side_from_artery(g, kidneys[0], sides[0].artery, centres[0])
    elif masks["artery"].any():
        # no kidney label: arteries by ROI, else one tree
        by_side: dict[str, np.ndarray] = {}
        for number, box in enumerate(ndimage.find_objects(artery_pieces), start=1):
            if box is None:
                continue
            centre = np.argwhere(artery_pieces[box] == number).mean(axis=0) + [b.start for b in box]
            side = roi_side(centre) or "unknown"
            by_side.setdefault(side, np.zeros(g.shape_zyx, bool))[artery_pieces == number] = True
        for side, artery in by_side.items():
            empty = np.zeros(g.shape_zyx, bool)
            sides.append(_Side(side, empty, artery, empty, empty))
    for expected in roi_sides:
        if expected not in {s.side for s in sides}:
            empty = np.zeros(g.shape_zyx, bool)
            sides.append(_Side(expected, empty, empty, empty, empty))
    if len({s.side for s in sides}) < len(sides):  # two kidneys in one ROI: keep them apart
        for number, s in enumerate(sides, start=1):
            s.side = f"{s.side}_{number}"
    return sides


def _medial_end(ends: np.ndarray, reach: np.ndarray, points_mm: np.ndarray, kidney_centre: np.ndarray,
                medial: np.ndarray) -> int:
    """A vessel's root: of its centerline's ends (``reach``: their depth outside the
    kidney, mm), the most medial one outside the kidney (any end where none is)."""
    outside = ends[reach > 0]
    candidates = outside if len(outside) else ends
    return int(candidates[np.argmax((points_mm[candidates] - kidney_centre) @ medial)])


def _main_vein(vein: np.ndarray, outside_depth: np.ndarray, g: Geometry, offset: np.ndarray,
               kidney_centre: np.ndarray, medial: np.ndarray, prune_factor: float
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """The main renal vein's centerline (LPS mm) and inscribed radii (mm), ``None`` where
    the side has no vein: on the vein label's largest piece, from its most medial end
    outside the kidney (at the IVC) along the widest branch, past tributaries
    (:data:`_VEIN_TRIBUTARY_SHARE`), to where it divides."""
    if not vein.any():
        return None
    coords, tree, radius, _, _ = pruned_centerline(np.pad(vein, 1), tuple(float(s) for s in g.spacing_xyz_mm),
                                                   prune_factor=prune_factor)
    if len(coords) == 0:
        return None
    coords = coords - 1
    points_mm = _world(g, coords + offset)
    _, piece = csgraph.connected_components(tree, directed=False)
    nodes = np.nonzero(piece == np.argmax(np.bincount(piece)))[0]
    ends = nodes[np.diff(tree.indptr)[nodes] <= 1]
    root = _medial_end(ends, outside_depth[tuple(coords[ends].T)], points_mm, kidney_centre, medial)
    order, previous = csgraph.breadth_first_order(tree, root, directed=False, return_predecessors=True)
    children: dict[int, list[int]] = {}
    for node in order[1:]:
        children.setdefault(int(previous[node]), []).append(int(node))

    def calibre(node: int) -> float:  # a branch's median radius over its first 6 nodes
        radii = [float(radius[node])]
        while len(radii) < 6 and len(children.get(node, [])) == 1:
            node = children[node][0]
            radii.append(float(radius[node]))
        return float(np.median(radii))

    path = [root]
    while children.get(path[-1]):
        ahead = sorted(children[path[-1]], key=calibre, reverse=True)
        if len(ahead) > 1 and calibre(ahead[1]) >= _VEIN_TRIBUTARY_SHARE * calibre(ahead[0]):
            break  # it divides
        path.append(ahead[0])
    return points_mm[path], radius[path]


def _side_from_artery(g: Geometry, kidney: np.ndarray, artery: np.ndarray, centre: np.ndarray) -> str:
    """A lone kidney's side: its artery comes from the aorta, medially."""
    if artery.any():
        points = _world(g, np.argwhere(artery)[:: max(1, int(artery.sum()) // 5000)])
        far = points[np.argmax(np.linalg.norm(points - centre, axis=1))]
        return "left" if far[0] < centre[0] else "right"
    return "left" if centre[0] > 0 else "right"


# -- the branch graph ---------------------------------------------------------------------------

def _free_path(tree: sparse.csr_matrix, end: int) -> list[int]:
    """The centerline nodes from ``end`` to the first branch point."""
    path, previous = [end], -1
    while True:
        ahead = [int(n) for n in tree.indices[tree.indptr[path[-1]]:tree.indptr[path[-1] + 1]] if n != previous]
        if len(ahead) != 1:
            return path
        previous = path[-1]
        path.append(ahead[0])


def _root_trunks(rooted: list[dict], tree: sparse.csr_matrix, flow_graph: sparse.csr_matrix,
                 graph: sparse.csr_matrix, radius: np.ndarray, in_organ: np.ndarray, min_mm: float) -> None:
    """Which ends of each rooted piece are arteries of their own, main one first (sets
    each piece's ``trunks`` and ``root``).

    An end far outside the kidney is a candidate (``trunks`` on entry, the piece's most
    medial end first). Blood reaches the candidate from the medial end along the
    thickest path (``flow_graph``); where that path runs ``min_mm`` or more within the
    kidney (``in_organ`` nodes; lengths from ``graph``), the two are arteries that touch
    only inside it (an accessory artery whose branches meet the main artery's in the
    label), where a side branch leaving the kidney (adrenal, ureteric, capsular) meets
    its artery outside. The arteries then share the piece, each node going to the one
    it is reached from along the thickest path; one whose share runs less than
    ``min_mm`` within the kidney is not an artery of its own. The widest (median radius
    up to its first branch point) is the main renal artery.
    """
    for q in rooted:
        if len(q["trunks"]) < 2:
            continue
        _, previous = csgraph.dijkstra(flow_graph, directed=False, indices=q["root"], return_predecessors=True)
        separate = []
        for end in q["trunks"][1:]:
            within, node = 0.0, end
            while node != q["root"] and previous[node] >= 0:
                within += float(graph[node, previous[node]]) if in_organ[node] else 0.0
                node = previous[node]
            if within >= min_mm:
                separate.append(end)
        if not separate:
            q["trunks"] = [q["root"]]
            continue
        trunks = [q["root"], *separate]
        _, previous, source = csgraph.dijkstra(flow_graph, directed=False, indices=trunks,
                                               return_predecessors=True, min_only=True)
        nodes = q["nodes"][(previous[q["nodes"]] >= 0) & in_organ[q["nodes"]]]
        steps = np.asarray(graph[nodes, previous[nodes]]).ravel() if len(nodes) else np.zeros(0)
        share = {t: float(steps[source[nodes] == t].sum()) for t in trunks}
        kept = sorted((t for t in trunks if share[t] >= min_mm),
                      key=lambda t: -float(np.median(radius[_free_path(tree, t)])))
        q["trunks"] = kept or [q["root"]]
        q["root"] = q["trunks"][0]


@dataclass
class _Branch:
    nodes: list[int]  # centerline nodes from the parent's branch point to the end
    parent: int | None
    children: list[int] = field(default_factory=list)
    root: int = 0
    level: str = "further"
    name: str = ""
    kidney_voxels: int = 0
    region_voxels: int = 0
    centroid_sum: np.ndarray = field(default_factory=lambda: np.zeros(3))


def _rooted_branches(tree: sparse.csr_matrix, root: int, branches: list[_Branch]) -> None:
    """Split one rooted tree component into branches between branch points."""
    order, previous = csgraph.breadth_first_order(tree, root, directed=False, return_predecessors=True)
    children = np.zeros(tree.shape[0], int)
    np.add.at(children, previous[order[1:]], 1)
    start = len(branches)
    branches.append(_Branch([int(root)], None, root=start))
    owner = {int(root): start}
    for node in order[1:]:
        node, parent = int(node), int(previous[node])
        if children[parent] >= 2:
            branches.append(_Branch([parent, node], owner[parent], root=start))
            branches[owner[parent]].children.append(len(branches) - 1)
            owner[node] = len(branches) - 1
        else:
            owner[node] = owner[parent]
            branches[owner[parent]].nodes.append(node)


def _length_mm(points_mm: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points_mm, axis=0), axis=1).sum()) if len(points_mm) > 1 else 0.0


def _merge_into_parent(branches: list[_Branch], index: int) -> None:
    """Remove a short branch between two branch points: its children go to its parent."""
    branch = branches[index]
    parent = branches[branch.parent]
    parent.children = [c for c in parent.children if c != index] + branch.children
    for child in branch.children:
        branches[child].parent = branch.parent
    branch.children, branch.nodes = [], []
    branch.parent = -1  # removed


def _continue_with(branches: list[_Branch], index: int, child: int, alias: dict[int, int]) -> None:
    """Make ``child`` the continuation of ``index`` (one branch with side branches)."""
    branch, successor = branches[index], branches[child]
    alias[child] = index
    branch.nodes = branch.nodes + successor.nodes[1:]
    branch.children = [c for c in branch.children if c != child] + successor.children
    for grandchild in successor.children:
        branches[grandchild].parent = index
    successor.children, successor.nodes, successor.parent = [], [], -1


def _alive(branches: list[_Branch]) -> list[int]:
    return [i for i, b in enumerate(branches) if b.parent != -1]


def _has_ancestor_in(branches: list[_Branch], i: int, chosen: set[int]) -> bool:
    """Whether a branch above ``i`` in its tree is among ``chosen``."""
    parent = branches[i].parent
    while parent is not None and parent != -1:
        if parent in chosen:
            return True
        parent = branches[parent].parent
    return False


#: the most branches the fewest-clamps option may name (surgeons clamp one to three)
_MAX_CLAMPS = 4


def _pareto(entries: list[tuple[int, int, tuple[int, ...]]]) -> list[tuple[int, int, tuple[int, ...]]]:
    """The ``(covered, ischaemic, branches)`` entries no other beats on both counts
    (more tumour + margin covered, less healthy kidney without blood)."""
    kept, least = [], None
    for entry in sorted(entries, key=lambda e: (-e[0], e[1])):
        if least is None or entry[1] < least:
            kept.append(entry)
            least = entry[1]
    return kept


def _fewest_clamps(branches: list[_Branch], roots: list[int], units: list[int],
                   need_voxels: float) -> tuple[int, int, tuple[int, ...]] | None:
    """The fewest branches (at most :data:`_MAX_CLAMPS`) whose trees hold ``need_voxels``
    of tumour + margin, and of those the set leaving the least healthy kidney without
    blood: ``(covered, ischaemic, branches)``, or None.

    A clamp stops the blood to a branch's whole tree, so the sets are cuts of the tree:
    the branches searched are the segmental-level units and the branches above them
    (not the branches inside a unit, which lie in the parenchyma, nor the main renal
    artery, the fallback), and a set never holds a branch under another. A dynamic
    programme over the tree keeps, per branch and number of clamps, the sets no other
    beats on both counts.
    """
    clampable: set[int] = set()
    for u in units:
        i: int | None = u
        while i is not None and i != -1 and i not in clampable:
            clampable.add(i)
            i = branches[i].parent
    nothing = [[(0, 0, ())]] + [[] for _ in range(_MAX_CLAMPS)]

    def merge(a: list, b: list) -> list:
        out: list[list] = [[] for _ in range(_MAX_CLAMPS + 1)]
        for ka, front_a in enumerate(a):
            for kb, front_b in enumerate(b[:_MAX_CLAMPS + 1 - ka]):
                out[ka + kb].extend((ca + cb, ia + ib, sa + sb) for ca, ia, sa in front_a for cb, ib, sb in front_b)
        return [_pareto(front) for front in out]

    fronts: dict[int, list] = {}
    for i in _descendants_first(branches, roots):
        if i not in clampable:
            continue
        b = branches[i]
        front = nothing
        for child in b.children:
            if child in clampable:
                front = merge(front, fronts[child])
        if i != roots[0]:  # the main renal artery is the fallback, not a selective clamp
            front = list(front)
            front[1] = _pareto(front[1] + [(b.region_voxels, b.kidney_voxels, (i,))])
        fronts[i] = front
    forest = nothing
    for r in roots:
        if r in fronts:
            forest = merge(forest, fronts[r])
    for k in range(1, _MAX_CLAMPS + 1):
        enough = [entry for entry in forest[k] if entry[0] >= need_voxels - 1e-9]
        if enough:
            return min(enough, key=lambda e: e[1])
    return None


def _descendants_first(branches: list[_Branch], roots: list[int]) -> list[int]:
    order, stack = [], list(roots)
    while stack:
        i = stack.pop()
        order.append(i)
        stack.extend(branches[i].children)
    return order[::-1]


#: the parenchyma graph is built on a grid of about this spacing (territories are
#: smooth at this scale; a 0.6 mm grid would cost 4-8 times more)
_GEODESIC_SPACING_MM = 1.25


def _geodesic_voronoi(domain: np.ndarray, seeds_zyx: np.ndarray, seed_labels: np.ndarray,
                      spacing_zyx: np.ndarray) -> tuple[np.ndarray, float]:
    """Each domain voxel's label: that of the seed nearest along the domain.

    A multi-source Dijkstra on the 26-neighbour graph of the domain (edge = length in
    mm), on a grid coarsened by whole factors to about :data:`_GEODESIC_SPACING_MM`;
    every fine voxel takes its coarse cell's label. Cells no seed reaches take the
    nearest seed's label in a straight line.

    Returns:
        ``(labels, unreached_ml)``: int64 ``(Z, Y, X)`` (-1 outside the domain) and
        the volume given by the straight-line rule.

    Example:
        >>> d = np.ones((1, 1, 9), bool); d[0, 0, 4] = False  # a wall in the middle
        >>> labels, _ = _geodesic_voronoi(d, np.array([[0, 0, 0], [0, 0, 8]]), np.array([1, 2]),
        ...                               np.array([1.0, 1.0, 1.0]))
        >>> labels.tolist()
        [[[1, 1, 1, 1, -1, 2, 2, 2, 2]]]
    """
    factor = np.maximum(np.floor(_GEODESIC_SPACING_MM / spacing_zyx + 1e-6), 1).astype(int)
    padded_shape = -(-np.asarray(domain.shape) // factor) * factor
    fine = np.zeros(padded_shape, bool)
    fine[tuple(slice(0, n) for n in domain.shape)] = domain
    shape = padded_shape // factor
    coarse = fine.reshape(shape[0], factor[0], shape[1], factor[1], shape[2], factor[2]).any(axis=(1, 3, 5))
    coarse_spacing = spacing_zyx * factor
    cells, graph = voxel_graph(coarse, coarse_spacing)
    graph = (graph + graph.T).tocsr()
    index = np.full(coarse.shape, -1, dtype=np.int64)
    index[tuple(cells.T)] = np.arange(len(cells))
    at = index[tuple((np.asarray(seeds_zyx) // factor).T)]
    keep = at >= 0
    nodes, first = np.unique(at[keep], return_index=True)
    labels_of_nodes = np.asarray(seed_labels)[keep][first]
    _, _, source = csgraph.dijkstra(graph, directed=True, indices=nodes, min_only=True, return_predecessors=True)
    lookup = np.full(len(cells), -1, dtype=np.int64)
    lookup[nodes] = labels_of_nodes
    cell_label = np.where(source >= 0, lookup[np.maximum(source, 0)], -1)
    unreached = cell_label < 0
    if unreached.any():
        _, nearest = cKDTree(cells[nodes] * coarse_spacing).query(cells[unreached] * coarse_spacing)
        cell_label[unreached] = labels_of_nodes[nearest]
    grid = np.full(coarse.shape, -1, dtype=np.int64)
    grid[tuple(cells.T)] = cell_label
    fine_labels = grid.repeat(factor[0], 0).repeat(factor[1], 1).repeat(factor[2], 2)
    fine_labels = fine_labels[tuple(slice(0, n) for n in domain.shape)]
    fine_labels[~domain] = -1
    unreached_fine = np.zeros(coarse.shape, bool)
    unreached_fine[tuple(cells[unreached].T)] = True
    moved = unreached_fine.repeat(factor[0], 0).repeat(factor[1], 1).repeat(factor[2], 2)[
        tuple(slice(0, n) for n in domain.shape)] & domain
    return fine_labels, float(moved.sum() * np.prod(spacing_zyx) / 1000.0)


_PIECES_LISTED = 10  # tumour pieces listed one by one in plan.json, largest first


def _planned_tumour(tumour: np.ndarray, voxel_ml: float, min_ml: float) -> tuple[np.ndarray, int]:
    """The tumour pieces (26-connected) of at least ``min_ml``, and how many pieces are smaller."""
    pieces, count = _components(tumour)
    large = np.bincount(pieces.ravel(), minlength=count + 1) * voxel_ml >= min_ml
    large[0] = False
    return large[pieces], count - int(large.sum())


def _tumour_pieces(pieces: np.ndarray, count: int, kidney: np.ndarray, units: np.ndarray, g: Geometry,
                   offset: np.ndarray, frame: tuple | None, config: PlanConfig) -> list[dict]:
    """Each planned tumour piece (``pieces``, ``count``: its 26-connected pieces, largest
    first) with where it lies and the territories that feed it (its own tumour + margin
    share, the plan's rule): a second, false piece can then be told from the tumour the
    surgeon came for and its branches set aside."""
    voxel_ml = g.voxel_volume_mm3 / 1000.0
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    listed = []
    for number in [int(i) + 1 for i in np.argsort(-sizes, kind="stable")][:_PIECES_LISTED]:
        piece = pieces == number
        shares = region_shares(units, tumour_region(piece, kidney, g.spacing_xyz_mm, config.margin_mm))
        centre = _world(g, np.argwhere(piece).mean(axis=0, keepdims=True) + offset)[0]
        listed.append({"volume_ml": round(float(sizes[number - 1]) * voxel_ml, 2),
                       "centre_mm": [round(float(v), 1) for v in centre],
                       "region": _region_name(frame, centre) if frame is not None else None,
                       "feeding": [v for v, share in shares.items() if share >= config.feeding_min_share]})
    return listed


# -- the plan of one kidney ---------------------------------------------------------------------

def _plan_side(part: _Side, g: Geometry, config: PlanConfig, next_id: int, territories: np.ndarray,
               name: str) -> tuple[dict, int, list[int]]:
    """Plan one kidney; writes its territory ids into ``territories`` (whole grid)."""
    spacing_xyz = tuple(float(s) for s in g.spacing_xyz_mm)
    spacing_zyx = np.asarray(spacing_xyz)[::-1].copy()
    voxel_ml = g.voxel_volume_mm3 / 1000.0
    entry: dict = {"side": part.side, "status": "planned", "notes": list(part.notes), "kidney_volume_ml": None,
                   "roots": [], "branches": [], "territories": [], "tumour": None, "clamping": None}
    has_kidney, has_artery = bool(part.kidney.any()), bool(part.artery.any())
    if has_kidney:
        entry["kidney_volume_ml"] = round(float(part.kidney.sum()) * voxel_ml, 2)
    if not has_artery:
        entry["status"] = "no_artery"
        entry["notes"].append(f"no artery label on the {part.side} side in {name}: no tree and no territories "
                              "for this kidney.")
        return entry, next_id, []
    if not has_kidney:
        entry["status"] = "no_kidney"
        entry["notes"].append(f"no kidney label on the {part.side} side in {name}: the tree only, without "
                              "territories (a label map with kidney labels gives them).")

    everything = part.kidney | part.artery | part.tumour | part.tumour_outside
    box = bounding_box(everything)
    box = tuple(slice(max(b.start - 2, 0), min(b.stop + 2, n)) for b, n in zip(box, g.shape_zyx))
    offset = np.array([b.start for b in box])
    kidney, tumour = part.kidney[box], part.tumour[box]
    artery = drop_small_components(part.artery[box], spacing_xyz, config.min_component_mm3)
    if not artery.any():
        artery = part.artery[box]

    coords, tree, radius, _, graph = pruned_centerline(np.pad(artery, 1), spacing_xyz,
                                                       prune_factor=config.prune_factor)
    coords = coords - 1
    if len(coords) == 0:
        entry["status"] = "no_artery"
        entry["notes"].append(f"the {part.side} artery label in {name} is too small for a centerline.")
        return entry, next_id, []
    points_mm = _world(g, coords + offset)
    physical = coords * spacing_zyx

    # -- roots: each tree piece from its most medial end outside the kidney
    organ = kidney | tumour
    near_organ = ndimage.binary_dilation(organ, structure=STRUCTURE_26, iterations=2) if has_kidney else organ
    outside_depth = (ndimage.distance_transform_edt(~organ, sampling=spacing_zyx) if has_kidney
                     else np.full(kidney.shape, np.inf))
    kidney_centre = (_world(g, np.argwhere(kidney).mean(axis=0, keepdims=True) + offset)[0] if has_kidney
                     else points_mm.mean(axis=0))
    medial = np.array([-1.0, 0.0, 0.0]) if part.side.startswith("left") else np.array([1.0, 0.0, 0.0])
    count, piece = csgraph.connected_components(tree, directed=False)
    degree = np.diff(tree.indptr)
    in_organ = near_organ[tuple(coords.T)]
    pieces = []
    for p in range(count):
        nodes = np.nonzero(piece == p)[0]
        ends = nodes[degree[nodes] <= 1]
        reach = outside_depth[tuple(coords[ends].T)]
        root = _medial_end(ends, reach, points_mm, kidney_centre, medial)
        # every end far outside the kidney may be an artery of its own (an accessory
        # artery whose branches touch the main artery's in the label)
        trunks = [root] + [int(e) for e, r in zip(ends, reach) if r >= config.accessory_min_mm and e != root
                           and _length_mm(physical[_free_path(tree, int(e))]) >= config.accessory_min_mm]
        pieces.append({"nodes": nodes, "root": root, "trunks": trunks, "size": len(nodes),
                       "reach_mm": float(reach.max()) if len(reach) else 0.0,
                       "touches": bool(in_organ[nodes].any()) or not has_kidney})
    pieces.sort(key=lambda q: -q["size"])
    # an accessory artery reaches far out of the kidney and into it; a piece that does
    # not reach the kidney (a stub where the label is cut, a trunk broken on its way) is a
    # gap in the label
    accessory = [q["reach_mm"] >= config.accessory_min_mm and q["touches"] for q in pieces[1:]]
    rooted = [pieces[0]] + [q for q, a in zip(pieces[1:], accessory) if a]
    loose = [q for q, a in zip(pieces[1:], accessory) if not a]

    # blood reaches each centerline voxel from the root along the thickest path: where
    # vessels touch (a loop in the centerline), the spanning tree may cut the wrong side
    cost = graph.tocoo()
    mean_radius = (radius[cost.row] + radius[cost.col]) / 2
    flow_graph = sparse.csr_matrix((cost.data / np.maximum(mean_radius, 1e-3) ** 2, (cost.row, cost.col)),
                                   shape=graph.shape)
    _root_trunks(rooted, tree, flow_graph, graph, radius, in_organ, config.accessory_min_mm)
    starts = [t for q in rooted for t in q["trunks"]] + [int(q["nodes"][0]) for q in loose]
    _, previous = csgraph.dijkstra(flow_graph, directed=False, indices=starts, return_predecessors=True,
                                   min_only=True)[:2]
    reached = previous >= 0
    child_nodes = np.nonzero(reached)[0]
    # (no node reached from a start: each piece a single centerline voxel)
    lengths = (np.asarray(graph[child_nodes, previous[child_nodes]], dtype=float).ravel() if len(child_nodes)
               else np.zeros(0))
    tree = sparse.coo_matrix((lengths, (child_nodes, previous[child_nodes])), shape=graph.shape)
    tree = (tree + tree.T).tocsr()

    branches: list[_Branch] = []
    roots: list[int] = []
    for q in rooted:
        for trunk in q["trunks"]:
            roots.append(len(branches))
            _rooted_branches(tree, trunk, branches)
    # a loose piece (a gap in the segmentation) hangs from the branch nearest to it
    rooted_nodes = np.concatenate([q["nodes"] for q in rooted])
    node_tree = cKDTree(physical[rooted_nodes])
    for q in loose:
        distance, nearest = node_tree.query(physical[q["nodes"]])
        anchor = int(rooted_nodes[nearest[np.argmin(distance)]])
        start = len(branches)
        _rooted_branches(tree, int(q["nodes"][np.argmin(distance)]), branches)
        host = next(i for i, b in enumerate(branches[:start]) if anchor in b.nodes)
        branches[start].parent = host
        branches[start].nodes = [anchor] + branches[start].nodes
        branches[host].children.append(start)
        for i in range(start, len(branches)):
            branches[i].root = branches[host].root

    # merge branch points closer than a vessel diameter (one split drawn as several)
    changed = True
    while changed:
        changed = False
        for i in _alive(branches):
            b = branches[i]
            if b.parent is None or not b.children:
                continue
            if _length_mm(physical[b.nodes]) < max(2.0 * float(radius[b.nodes[0]]), 2.0 * float(spacing_zyx.max())):
                _merge_into_parent(branches, i)
                changed = True

    # -- territories: geodesic Voronoi of the terminal branches inside the parenchyma
    alive = _alive(branches)
    leaves = [i for i in alive if not branches[i].children]
    leaf_of_voxel = None
    region = np.zeros(kidney.shape, bool)
    planned, small_pieces = tumour, 0
    if has_kidney:
        domain = organ | (artery & near_organ)
        seeds, seed_leaf = [], []
        for leaf in leaves:
            nodes = branches[leaf].nodes[1:] if branches[leaf].parent is not None else branches[leaf].nodes
            inside_nodes = [n for n in nodes if domain[tuple(coords[n])]]
            seeds.extend(inside_nodes)
            seed_leaf.extend([leaf] * len(inside_nodes))
        if seeds:
            voxel_leaf, unreached_ml = _geodesic_voronoi(domain, coords[seeds], np.asarray(seed_leaf), spacing_zyx)
            if unreached_ml >= 0.1:
                entry["notes"].append(f"{unreached_ml:.1f} ml of parenchyma is cut off from every artery branch; "
                                      "given to the nearest branch in a straight line.")
            leaf_of_voxel = np.where(domain, voxel_leaf, -1)
        else:  # the tree is listed, but nothing it supplies can be planned
            if entry["status"] == "planned":
                entry["status"] = "no_artery"
            entry["notes"].append(f"no artery branch reaches the {part.side} kidney in {name}: no territories.")
        if tumour.any():
            planned, small_pieces = _planned_tumour(tumour, voxel_ml, config.min_tumour_piece_ml)
            region = tumour_region(planned, kidney, spacing_xyz, config.margin_mm)

    # per-leaf volumes, then per branch (sums over its terminal branches)
    kidney_total = max(int(kidney.sum()), 1)
    region_total = max(int(region.sum()), 1)
    if leaf_of_voxel is not None:
        inside = leaf_of_voxel >= 0
        k_counts = np.bincount(leaf_of_voxel[inside & kidney], minlength=len(branches))
        r_counts = np.bincount(leaf_of_voxel[inside & region], minlength=len(branches))
        where = np.argwhere(inside & kidney)
        world_k = _world(g, where + offset)
        c_sums = np.zeros((len(branches), 3))
        np.add.at(c_sums, leaf_of_voxel[tuple(where.T)], world_k)
        for leaf in leaves:
            branches[leaf].kidney_voxels = int(k_counts[leaf])
            branches[leaf].region_voxels = int(r_counts[leaf])
            branches[leaf].centroid_sum = c_sums[leaf]

    def accumulate() -> None:
        for i in _descendants_first(branches, roots):
            b = branches[i]
            if b.children:
                b.kidney_voxels = sum(branches[c].kidney_voxels for c in b.children)
                b.region_voxels = sum(branches[c].region_voxels for c in b.children)
                b.centroid_sum = sum((branches[c].centroid_sum for c in b.children), np.zeros(3))

    accumulate()
    # side branches do not end their parent: a sole substantial child continues it
    alias: dict[int, int] = {}  # merged branch -> the branch it continues

    def resolve(i: int) -> int:
        while i in alias:
            i = alias[i]
        return i

    if leaf_of_voxel is not None:
        for i in roots + [i for i in _alive(branches) if i not in roots]:
            while branches[i].parent != -1 and branches[i].children:
                major = [c for c in branches[i].children
                         if branches[c].kidney_voxels >= config.minor_share * kidney_total]
                if len(major) != 1 or len(branches[i].children) == 1:
                    break
                _continue_with(branches, i, major[0], alias)

    # -- levels and names
    share = {i: branches[i].kidney_voxels / kidney_total for i in _alive(branches)}
    territory_known = leaf_of_voxel is not None

    def set_levels(i: int, level: str) -> None:
        b = branches[i]
        b.level = level
        for c in b.children:
            minor = territory_known and share[c] < config.minor_share
            if level in ("main", "division"):
                # without territories the anatomy's usual pattern: main, divisions, segmentals
                large = share[c] > config.segmental_max_share if territory_known else level == "main"
                child = "further" if minor else "division" if large and branches[c].children else "segmental"
            else:
                child = "further"
            set_levels(c, child)

    for k, r in enumerate(roots):
        # an accessory artery supplying one segment is a segmental artery; a larger one
        # (a duplicated renal artery) is a main artery of its own
        large = not territory_known or share[r] > config.segmental_max_share
        set_levels(r, "main" if k == 0 or (large and branches[r].children) else "segmental")

    def unit_of(leaf: int) -> int:
        path, i = [], leaf
        while i is not None:
            path.append(i)
            i = branches[i].parent
        for i in path:
            if branches[i].level == "segmental":
                return i
        side_branch = [i for i in path if branches[i].level == "further"]
        return side_branch[-1] if side_branch else path[-1]

    # global ids, names
    alive = _alive(branches)
    ids: dict[int, int] = {}
    for i in _descendants_first(branches, roots)[::-1]:
        ids[i] = next_id
        next_id += 1
    kidney_points = _world(g, np.argwhere(kidney)[:: max(1, kidney_total // 20000)] + offset) if has_kidney else None
    frame = kidney_frame(kidney_points) if kidney_points is not None else None

    def centroid(i: int) -> np.ndarray | None:
        b = branches[i]
        if b.kidney_voxels > 0:
            return b.centroid_sum / b.kidney_voxels
        return points_mm[b.nodes[-1]] if b.nodes else None

    segmentals = [i for i in alive if branches[i].level == "segmental" and branches[i].parent is not None]
    segmentals.sort(key=lambda i: -float(centroid(i)[2]))  # superior (+z) first
    for n, i in enumerate(segmentals, start=1):
        branches[i].name = f"segmental {n}"
    divisions = [i for i in alive if branches[i].level == "division"]
    if len(divisions) == 2:
        posterior = int(np.argmax([centroid(i)[1] for i in divisions]))  # posterior is +y in LPS
        branches[divisions[posterior]].name = "posterior division"
        branches[divisions[1 - posterior]].name = "anterior division"
    else:
        divisions.sort(key=lambda i: -float(centroid(i)[2]))
        for n, i in enumerate(divisions, start=1):
            branches[i].name = "division" if len(divisions) == 1 else f"division {n}"
    for k, r in enumerate(roots):
        if k == 0:
            branches[r].name = "main renal artery"
        else:
            branches[r].name = "accessory renal artery" + (f" {k}" if len(roots) > 2 else "")
    for i in _descendants_first(branches, roots)[::-1]:
        b = branches[i]
        if not b.name:
            parent = branches[b.parent]
            b.name = f"{parent.name}.{parent.children.index(i) + 1}" if parent.level in ("segmental", "further") \
                else f"{parent.name} side branch {parent.children.index(i) + 1}"

    # -- per branch facts
    region_points = np.argwhere(tumour)
    tumour_tree = cKDTree(region_points * spacing_zyx) if len(region_points) else None
    outside_points = np.argwhere(part.tumour_outside[box])
    outside_tree = cKDTree(outside_points * spacing_zyx) if len(outside_points) else None
    vessel_owner = cKDTree(physical).query(np.argwhere(artery) * spacing_zyx)[1]
    vessel_volume = np.bincount(vessel_owner, minlength=len(coords)) * float(np.prod(spacing_zyx))
    edge_length = np.asarray(tree.sum(axis=1)).ravel() / 2
    for i in _descendants_first(branches, roots)[::-1]:
        b = branches[i]
        nodes = b.nodes
        own = nodes[1:] if b.parent is not None and len(nodes) > 1 else nodes
        length = _length_mm(physical[nodes])
        # the label around each node over its length; a branch shorter than twice its
        # inscribed diameter (a stub where the label is cut, a speck's centerline) has too
        # little length to spread its label over: its inscribed radius
        inscribed = float(np.median(radius[own]))
        if edge_length[own].sum() < 4 * inscribed:
            local, mean_d = radius[own], 2 * inscribed
        else:
            local = np.sqrt(vessel_volume[own] / (np.pi * np.maximum(edge_length[own], 1e-6)))
            mean_d = 2 * np.sqrt(vessel_volume[own].sum() / (np.pi * edge_length[own].sum()))
        distance = None
        if tumour_tree is not None or outside_tree is not None:
            d = [t.query(physical[nodes])[0].min() for t in (tumour_tree, outside_tree) if t is not None]
            distance = round(max(float(min(d)) - 0.5 * float(spacing_zyx.min()), 0.0), 2)
        c = centroid(i)
        entry["branches"].append({
            "id": ids[i], "name": b.name, "level": b.level,
            "parent": ids[b.parent] if b.parent is not None else None,
            "children": [ids[c_] for c_ in b.children], "root": ids[b.root],
            "length_mm": round(length, 2),
            "diameter_mean_mm": round(float(mean_d), 2),
            "diameter_min_mm": round(float(2 * np.min(local)) if len(local) else 0.0, 2),
            "start_mm": [round(float(v), 2) for v in points_mm[nodes[0]]],
            "end_mm": [round(float(v), 2) for v in points_mm[nodes[-1]]],
            "territory_ml": round(b.kidney_voxels * voxel_ml, 2) if territory_known else None,
            "territory_percent": round(100 * b.kidney_voxels / kidney_total, 2) if territory_known else None,
            "tumour_percent": round(100 * b.region_voxels / region_total, 2) if region.any() else None,
            "tumour_distance_mm": distance,
            "region": _region_name(frame, c) if frame is not None and c is not None else None,
        })
    entry["roots"] = [ids[r] for r in roots]

    # -- territory map (segmental-level units)
    units: list[int] = []
    if leaf_of_voxel is not None:
        lut = np.zeros(len(branches) + 1, dtype=np.uint16)
        for leaf in leaves:
            unit = unit_of(resolve(leaf))
            lut[leaf + 1] = ids[unit]
            if unit not in units:
                units.append(unit)
        labelled = lut[leaf_of_voxel + 1]
        labelled[~(kidney | tumour)] = 0
        view = territories[box]
        view[labelled > 0] = labelled[labelled > 0]
        for unit in sorted(units, key=lambda u: ids[u]):
            volume = int((labelled[kidney] == ids[unit]).sum())
            if volume == 0:
                continue  # a side branch whose terminals lie outside the parenchyma
            entry["territories"].append({"value": ids[unit], "branch": ids[unit], "name": branches[unit].name,
                                         "volume_ml": round(volume * voxel_ml, 2),
                                         "percent": round(100 * volume / kidney_total, 2)})

    # -- tumour relation and clamping
    tumour_ml = float(tumour.sum() + outside_points.shape[0]) * voxel_ml
    if tumour_ml == 0:
        if entry["status"] == "planned":
            entry["status"] = "no_tumour"
        entry["notes"].append(f"no tumour label on the {part.side} side: the tree and territories only.")
        return entry, next_id, []
    nearest = sorted((e for e in entry["branches"] if e["tumour_distance_mm"] is not None),
                     key=lambda e: e["tumour_distance_mm"])[:3]
    facts = {"volume_ml": round(tumour_ml, 2), "margin_mm": config.margin_mm,
             "with_margin_ml": round(float(region.sum()) * voxel_ml, 2),
             "outside_kidney_ml": round(float(len(outside_points)) * voxel_ml, 2), "feeding": [],
             "nearest_branches": [{"branch": e["id"], "name": e["name"], "distance_mm": e["tumour_distance_mm"]}
                                  for e in nearest],
             "pieces": [], "small_pieces": 0, "small_pieces_ml": 0.0, "nephrometry": None}
    entry["tumour"] = facts
    if len(outside_points):
        amount = f"{facts['outside_kidney_ml']:g} ml" if facts["outside_kidney_ml"] >= 0.01 else "under 0.01 ml"
        entry["notes"].append(f"{amount} of tumour label on the {part.side} side does not "
                              "touch the kidney; its nearest branches are listed.")
    if small_pieces:
        facts["small_pieces"] = small_pieces
        facts["small_pieces_ml"] = round(float((tumour & ~planned).sum()) * voxel_ml, 3)
        entry["notes"].append(
            f"{facts['small_pieces']} tumour piece(s) under {config.min_tumour_piece_ml:g} ml "
            f"({facts['small_pieces_ml']:g} ml in all) are left out of the feeding branches and the clamping: "
            "pieces under about 6 mm across are too small to characterise on CT and are mostly a network's specks; "
            "they stay in the label map (min_tumour_piece_ml).")
        if not planned.any() and not len(outside_points):
            if entry["status"] == "planned":
                entry["status"] = "no_tumour"
            entry["notes"].append(f"no tumour piece of {config.min_tumour_piece_ml:g} ml or more on the {part.side} "
                                  "side: the tree and territories only.")
            return entry, next_id, []
    if not region.any() or leaf_of_voxel is None:
        if not region.any() and entry["status"] == "planned":
            entry["status"] = "tumour_outside_kidney"
        return entry, next_id, []
    # each unit's share of tumour + margin in its own territory (a main artery whose own
    # terminal branches form a unit must not count its side branches' territories as well)
    own = region_shares(labelled, region)
    for territory in entry["territories"]:  # its own voxels' share, not its branch's tree's
        territory["tumour_percent"] = round(100 * own.get(territory["value"], 0.0), 2)
    unit_share = sorted(((own.get(ids[u], 0.0), u) for u in units), key=lambda t: -t[0])
    facts["feeding"] = [ids[u] for s, u in unit_share if s >= config.feeding_min_share]
    pieces, count = _components(planned)
    facts["pieces"] = _tumour_pieces(pieces, count, kidney, labelled, g, offset, frame, config)
    largest = pieces == 1 + int(np.argmax(np.bincount(pieces.ravel(), minlength=count + 1)[1:]))
    # R.E.N.A.L.'s h is the main renal artery's: not an accessory artery's, however much
    # it supplies (a polar one passes the pole's tumour outside the hilum)
    main_artery = [n for i in _alive(branches) if branches[i].level == "main" and branches[i].root == roots[0]
                   for n in branches[i].nodes]
    main_vessels = {"artery": (points_mm[main_artery], radius[main_artery]) if main_artery else None,
                    "vein": None if part.vein is None else _main_vein(part.vein[box], outside_depth, g, offset,
                                                                      kidney_centre, medial, config.prune_factor)}
    facts["nephrometry"] = renal_score(kidney, largest, g.crop(tuple(int(v) for v in offset), kidney.shape),
                                       main_vessels=main_vessels)
    if facts["nephrometry"] is None:
        entry["notes"].append(f"R.E.N.A.L. not scored on the {part.side} side: the kidney label shows no renal "
                              "sinus (no hilum in it, or cut short above or below it) to measure from.")
    chosen, covered = [], 0.0
    for s, u in unit_share:
        if covered >= config.coverage or s <= 0:
            break
        chosen.append(u)
        covered += s
    healthy = lambda u: branches[u].kidney_voxels  # noqa: E731 - kidney-labelled voxels (tumour excluded)
    candidates = [{"branch": ids[u], "name": branches[u].name, "tumour_percent": round(100 * own.get(ids[u], 0.0), 2),
                   "ischaemic_ml": round(healthy(u) * voxel_ml, 2),
                   "ischaemic_percent": round(100 * healthy(u) / kidney_total, 2)} for u in chosen]
    feeding_roots = [r for r in roots if branches[r].region_voxels > 0]
    fallback_voxels = sum(branches[r].kidney_voxels for r in feeding_roots)
    # clamping a branch stops the blood to all of its tree: a candidate under another
    # (a main artery or division whose own terminal branches are a unit) adds nothing
    chosen_voxels = sum(healthy(u) for u in chosen if not _has_ancestor_in(branches, u, set(chosen)))
    selective = covered >= config.coverage - 1e-9 and chosen_voxels < 0.9 * fallback_voxels
    # the fewest clamps that hold as much, at any level above the units (a division
    # alone, say): worth naming when it takes fewer branches than the deepest set and
    # leaves less kidney without blood than the main artery would
    fewest = _fewest_clamps(branches, roots, units, config.coverage * region_total - 1e-6)
    if fewest is not None and not (len(fewest[2]) < len(chosen) and fewest[1] < 0.9 * fallback_voxels):
        fewest = None
    # fewer vessels to dissect for (almost) the same kidney without blood: the fewest clamps
    fewer = selective and fewest is not None and \
        fewest[1] <= chosen_voxels + config.fewest_tolerance * kidney_total + 1e-9
    strategy = "selective" if selective and not fewer else "fewest" if fewest is not None else "main"
    entry["clamping"] = {
        "strategy": strategy,
        "coverage_percent": round(100 * covered, 2),
        "candidates": candidates,
        "ischaemic_ml": round(chosen_voxels * voxel_ml, 2),
        "ischaemic_percent": round(100 * chosen_voxels / kidney_total, 2),
        "fewest": None if fewest is None else {
            "branches": [ids[i] for i in fewest[2]], "names": [branches[i].name for i in fewest[2]],
            "tumour_percent": round(100 * fewest[0] / region_total, 2),
            "ischaemic_ml": round(fewest[1] * voxel_ml, 2),
            "ischaemic_percent": round(100 * fewest[1] / kidney_total, 2)},
        "fallback": {"branches": [ids[r] for r in feeding_roots], "names": [branches[r].name for r in feeding_roots],
                     "tumour_percent": round(100 * sum(branches[r].region_voxels for r in feeding_roots) / region_total, 2),
                     "ischaemic_ml": round(fallback_voxels * voxel_ml, 2),
                     "ischaemic_percent": round(100 * fallback_voxels / kidney_total, 2)},
    }
    if strategy == "fewest":
        named = entry["clamping"]["fewest"]
        if fewer:
            entry["notes"].append(
                f"clamping {', '.join(named['names'])} ({len(named['names'])} branch(es)) holds "
                f"{named['tumour_percent']:g}% of tumour + margin and leaves {named['ischaemic_percent']:g}% of the "
                f"kidney without blood, against {len(chosen)} branches and {entry['clamping']['ischaemic_percent']:g}% "
                f"for the deepest candidates: {len(chosen) - len(named['names'])} vessel(s) fewer to dissect for "
                f"{max(named['ischaemic_percent'] - entry['clamping']['ischaemic_percent'], 0.0):.2f} points more "
                f"(at most {100 * config.fewest_tolerance:g} allowed), so it is proposed; the candidates stay listed.")
        else:
            entry["notes"].append(
                "the deepest branches holding the tumour would leave nearly as much kidney without blood as clamping "
                f"the main artery; clamping {', '.join(named['names'])} holds "
                f"{named['tumour_percent']:g}% of tumour + margin and is proposed.")
        clamped = set(fewest[2])
        return entry, next_id, [ids[u] for u in units if u in clamped or _has_ancestor_in(branches, u, clamped)]
    if not selective:
        entry["notes"].append("selective clamping would leave nearly as much kidney without blood as clamping "
                              "the main artery: main-artery clamping is proposed.")
    return entry, next_id, [ids[u] for u in chosen]


def proposed_clamping(clamping: Mapping) -> tuple[list[str], Mapping]:
    """The branches a plan's ``clamping`` proposes and the entry with their cost
    (``ischaemic_ml``, ``ischaemic_percent``, ``tumour_percent`` or ``coverage_percent``),
    by its ``strategy``: the deepest candidates, the fewest clamps, or the main artery.

    Example:
        >>> proposed_clamping({"strategy": "fewest", "candidates": [{"name": "segmental 1"}],
        ...                    "fewest": {"names": ["division 1"], "ischaemic_percent": 30.0},
        ...                    "fallback": {"names": ["main renal artery"], "ischaemic_percent": 100.0}})
        (['division 1'], {'names': ['division 1'], 'ischaemic_percent': 30.0})
    """
    if clamping["strategy"] == "main":
        return list(clamping["fallback"]["names"]), clamping["fallback"]
    if clamping["strategy"] == "fewest":
        return list(clamping["fewest"]["names"]), clamping["fewest"]
    return [c["name"] for c in clamping["candidates"]], clamping


def _region_name(frame: tuple[np.ndarray, np.ndarray, float], point: np.ndarray) -> str:
    centre, axis, half = frame
    t = float((point - centre) @ axis) / half
    height = ("upper pole" if t > 0.5 else "upper" if t > 0.15 else "middle" if t > -0.15 else "lower"
              if t > -0.5 else "lower pole")
    return f"{height}, {'anterior' if point[1] < centre[1] else 'posterior'}"  # anterior is -y in LPS


# -- the study ----------------------------------------------------------------------------------

def plan_labels(labels: Volume, label_map: Mapping[int, str], *, rois: list[dict] | None = None,
                config: PlanConfig | None = None, name: str = "the label map",
                on_progress: Callable[[str], None] | None = None) -> PlanResult:
    """The plan of a label map (the library core of :func:`plan_study`).

    Args:
        labels: integer label map (any grid).
        label_map: label value → structure (``artery``, ``kidney``, ``tumour``).
        rois: ROIs of a ``report.json`` (sides of artery-only label maps).
        config: plan settings.
        name: the label map's file name, for messages.
        on_progress: called with a short description as each kidney is planned.

    Returns:
        A :class:`PlanResult`; ``plan["kidneys"]`` has one entry per side found.

    Raises:
        InputError: no artery and no kidney label at all.
    """
    config = config or PlanConfig()
    started = time.perf_counter()
    unknown = sorted(set(label_map.values()) - set(STRUCTURES))
    if unknown:
        raise UsageError(f"Unknown structure(s) {', '.join(unknown)} in the label map; valid: {', '.join(STRUCTURES)}.")
    full = labels
    labels, offset = _around_structures(full, label_map, config.margin_mm)
    rois = [_shifted_roi(roi, offset) for roi in rois or []]
    g = labels.geometry
    sides = _split_sides(labels, label_map, rois, name)
    territories = np.zeros(g.shape_zyx, dtype=np.uint16)
    kidneys, next_id, candidates = [], 1, []
    for part in sorted(sides, key=lambda s: s.side):
        if on_progress is not None:
            on_progress(f"{part.side} kidney")
        entry, next_id, chosen = _plan_side(part, g, config, next_id, territories, name)
        kidneys.append(entry)
        candidates.extend(chosen)
    picture = np.zeros(g.shape_zyx, dtype=np.uint8)
    masks = {s: np.isin(labels.array, [k for k, v in label_map.items() if v == s]) for s in STRUCTURES}
    picture[masks["kidney"]] = 1
    picture[masks["artery"]] = 2
    picture[masks["tumour"]] = 3
    names = {"0": {"name": "outside the kidneys"}}
    for entry in kidneys:
        for t in entry["territories"]:
            names[str(t["value"])] = {"name": t["name"], "side": entry["side"], "branch": t["branch"],
                                      "volume_ml": t["volume_ml"], "percent": t["percent"]}
    plan = {"schema": "renalseg.plan/1", "settings": asdict(config), "kidneys": kidneys,
            "seconds": round(time.perf_counter() - started, 2)}
    return PlanResult(plan, _on_full_grid(territories, g, full), names, _on_full_grid(picture, g, full),
                      tuple(candidates))


#: voxels kept around the labelled structures when a plan crops to them, past the margin
_CROP_PAD_VOXELS = 4


def _around_structures(labels: Volume, label_map: Mapping[int, str],
                       margin_mm: float) -> tuple[Volume, tuple[int, int, int]]:
    """The label map cropped to its structures' box, grown by the margin and
    :data:`_CROP_PAD_VOXELS`, with the crop's first voxel: a whole study is planned in
    its kidneys' few percent of the voxels, with the same results (every step is
    translation-invariant, each kidney's own box lies inside, and positions come
    from the crop's geometry, the same LPS mm)."""
    mapped = values_mask(labels.array, label_map)
    if not mapped.any():
        return labels, (0, 0, 0)
    spacing_zyx = np.asarray(labels.geometry.spacing_xyz_mm, float)[::-1]
    pad = np.ceil(margin_mm / spacing_zyx).astype(int) + _CROP_PAD_VOXELS
    box = bounding_box(mapped)
    start = [max(b.start - int(p), 0) for b, p in zip(box, pad)]
    stop = [min(b.stop + int(p), n) for b, p, n in zip(box, pad, labels.array.shape)]
    if start == [0, 0, 0] and stop == list(labels.array.shape):
        return labels, (0, 0, 0)
    shape = tuple(b - a for a, b in zip(start, stop))
    return crop(labels, tuple(start), shape), tuple(start)  # type: ignore[return-value,arg-type]


def _shifted_roi(roi: dict, offset: tuple[int, int, int]) -> dict:
    """A ``report.json`` ROI with its study-voxel box moved into a crop starting at ``offset``."""
    box = roi.get("box_voxels_zyx")
    if not box or not any(offset):
        return roi
    start = [int(a) - int(o) for a, o in zip(box.get("start", [0, 0, 0]), offset)]
    return {**roi, "box_voxels_zyx": {**box, "start": start}}


def _on_full_grid(array: np.ndarray, grid: Geometry, full: Volume) -> Volume:
    """``array`` on ``grid`` (a crop of ``full``'s grid) pasted into zeros on ``full``'s grid."""
    if grid.is_same_grid(full.geometry):
        return full.with_array(array)
    return paste(Volume(np.zeros(full.array.shape, dtype=array.dtype), full.geometry), Volume(array, grid))


#: fluid-attenuation pieces ``renalseg segment`` took for cysts, from this volume (ml) on,
#: are named in the plan (a hypodense tumour may be among them)
_FLUID_NOTE_ML = 1.0


def _note_fluid_tumour(kidneys: list[dict], report: dict, path: str) -> None:
    """A note on each kidney beside which ``renalseg segment`` took a tumour piece of fluid
    attenuation for a cyst (``cleanup.fluid_tumour_ml`` per side in ``report.json``)."""
    by_side = {side: (entry.get("cleanup") or {}).get("fluid_tumour_ml", 0.0)
               for side, entry in (report.get("arteries") or {}).items() if isinstance(entry, dict)}
    for kidney in kidneys:
        # an --input-is-roi crop of one kidney has one ROI, whatever the plan names its side
        ml = by_side.get(kidney["side"], next(iter(by_side.values())) if len(by_side) == 1 == len(kidneys) else 0.0)
        if ml and ml >= _FLUID_NOTE_ML:
            kidney["notes"].append(
                f"renalseg segment took {ml:.1f} ml of fluid attenuation (median at most 20 HU, no enhancing wall) "
                f"by this kidney for a simple cyst, not tumour ({path}, cleanup.fluid_tumour_ml); if the tumour is "
                "a hypodense or cystic mass, segment again with --keep-fluid-tumour.")


def _note_segment_verdict(kidneys: list[dict], report: dict, path: str) -> str | None:
    """A note on each kidney when ``renalseg segment`` judged the study ``check`` or
    ``unreliable`` (``quality`` in ``report.json``), with the warning about that kidney
    where there is one; returns the verdict."""
    found = report.get("quality") or {}
    verdict, warnings = found.get("verdict"), [str(w) for w in found.get("warnings") or []]
    if verdict in ("check", "unreliable") and warnings:
        for kidney in kidneys:
            own = [w for w in warnings if w.startswith(f"{kidney['side']} kidney")]
            kidney["notes"].append(
                f"renalseg segment judged this study {verdict}: {(own or warnings)[0]} ({path}, quality.warnings); "
                "check the labels against the images before using this plan.")
    return verdict


def plan_study(study_dir: Path | str | None = None, *, labels: Path | str | None = None,
               label_map: Mapping[int, str] | None = None, config: PlanConfig | None = None,
               out_dir: Path | str | None = None, overwrite: bool = False, meshes: bool = False,
               tumour: Path | str | None = None, tumour_value: int | None = None,
               tumour_at: Sequence[float] | None = None, tumour_diameter_mm: float | None = None,
               dicom_seg: bool = False, dicom_sc: bool = True,
               on_progress: Callable[[str], None] | None = None) -> PlanResult:
    """Plan one study: read its labels, plan each kidney, and write the outputs.

    Args:
        study_dir: a ``renalseg segment`` output folder.
        labels: a label map from another tool (``label_map`` says which value is which).
        label_map: value → structure; default from ``labels.json``.
        config: plan settings.
        out_dir: where ``plan.json``, ``territories.nii.gz``, ``territories.json`` and
            ``plan.png`` go (default ``study_dir``; nothing is written when both are None).
        overwrite: replace an existing ``plan.json`` there.
        meshes: also write one surface per territory (:func:`write_territory_meshes`).
        tumour: a tumour mask on the label map's grid (drawn or corrected by hand, or
            another tool's) planned in place of the label map's own tumour
            (:func:`read_tumour_mask`, :func:`with_tumour`); ``plan.json`` names it.
        tumour_value: the tumour's value in that file (default: its one non-zero value).
        tumour_at: the tumour's centre, LPS mm (e.g. from a radiology report or a click in a
            viewer), planned in place of the label map's tumour: with
            ``tumour_diameter_mm``, a sphere of that diameter there (:func:`tumour_sphere`);
            without, the segmented tumour pieces within :data:`TUMOUR_AT_WITHIN_MM` of it,
            every other piece left out (:func:`tumour_pieces_at`).
        tumour_diameter_mm: the tumour's longest diameter (mm), with ``tumour_at``.
        dicom_seg: for a study ``renalseg segment`` read from DICOM, also write the
            territories as a DICOM SEG (:func:`_write_territory_dicom_seg`; on a 512 × 512 ×
            401 study 5.6 s and 43 MB, so only when asked).
        dicom_sc: for a study ``renalseg segment`` read from DICOM, also write ``plan.png``
            as a DICOM Secondary Capture in that study (:func:`_write_plan_sc`;
            ``plan.sc.dcm``, about 0.15 MB), which every PACS viewer shows.
        on_progress: progress callback (see :func:`plan_labels`).

    Returns:
        The :class:`PlanResult`.

    Raises:
        UsageError, InputError, GeometryError: see :func:`read_plan_input`,
            :func:`read_tumour_mask`, :func:`tumour_sphere` and :func:`tumour_pieces_at`;
            ``tumour`` with ``tumour_at``, or ``tumour_diameter_mm`` without it, is a
            :class:`UsageError`.
        OutputExistsError: a plan is already there and ``overwrite`` is false.

    Example:
        >>> from renalseg.geometry import Geometry
        >>> g = Geometry((30, 30, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> a = np.zeros(g.shape_zyx, np.uint8); a[5:25, 5:25, 20:35] = 2; a[14:16, 14:16, 2:30] = 3
        >>> result = plan_labels(Volume(a, g), {3: "artery", 2: "kidney"})
        >>> [k["status"] for k in result.plan["kidneys"]]
        ['no_tumour']
    """
    check_tumour_options(tumour, tumour_at, tumour_diameter_mm)
    volume, mapping, rois, sources = read_plan_input(study_dir, labels=labels, label_map=label_map)
    if tumour_at is not None:
        centre = tuple(round(float(v), 2) for v in tumour_at)
        if tumour_diameter_mm is not None:
            mask = tumour_sphere(volume.geometry, centre, tumour_diameter_mm, labels_name=sources["labels"])
            given = f"a sphere {tumour_diameter_mm:g} mm across at LPS {centre} mm"
        else:
            tumour_values = [v for v, name in mapping.items() if name == "tumour"]
            mask = tumour_pieces_at(values_mask(volume.array, tumour_values), volume.geometry, centre,
                                    labels_name=sources["labels"])
            given = f"the segmented tumour within {TUMOUR_AT_WITHIN_MM:g} mm of LPS {centre} mm"
        volume, mapping = with_tumour(volume, mask, mapping)
        sources["tumour"] = given
        sources["tumour_at"] = {"centre_mm": list(centre), "diameter_mm": tumour_diameter_mm}
        sources["label_map"] = {str(k): v for k, v in sorted(mapping.items())}
    if tumour is not None:
        mask = read_tumour_mask(tumour, volume.geometry, value=tumour_value, labels_name=sources["labels"])
        volume, mapping = with_tumour(volume, mask, mapping)
        sources["tumour"] = str(tumour)
        sources["label_map"] = {str(k): v for k, v in sorted(mapping.items())}
    target = Path(out_dir) if out_dir is not None else (Path(study_dir) if study_dir is not None else None)
    if target is not None and (target / "plan.json").exists() and not overwrite:
        raise OutputExistsError(f"{target / 'plan.json'} exists; pass --overwrite to replace it.")
    result = plan_labels(volume, mapping, rois=rois, config=config, name=sources["labels"], on_progress=on_progress)
    verdict, report, not_located = None, None, {}
    if sources["report"] is not None:
        report = json.loads(Path(sources["report"]).read_text())
        if tumour is None and tumour_at is None:  # the note is about segment's tumour
            _note_fluid_tumour(result.plan["kidneys"], report, sources["report"])
        verdict = _note_segment_verdict(result.plan["kidneys"], report, sources["report"])
        # a kidney segment located none of is in no label map, so in no plan: say so (it may be the one
        # whose large tumour the plan is for)
        not_located = {str(side): str(why) for side, why in (report.get("missing_reasons") or {}).items()}
    study_id = Path(study_dir).name if study_dir is not None else Path(sources["labels"]).name.split(".")[0]
    rest = dict(result.plan)
    result.plan.clear()
    result.plan.update({"schema": rest.pop("schema"),
                        "study": {"id": study_id, **sources, "segment_verdict": verdict,
                                  "not_located": not_located}, **rest})
    if target is not None:
        from renalseg.plan_picture import render_plan

        segmented = report if labels is None else None  # the DICOM outputs reference segment's own study
        if dicom_seg and segmented is not None:
            result.plan["study"]["dicom_seg"] = _write_territory_dicom_seg(result, segmented, target)
        picture = render_plan(result)
        if dicom_sc and segmented is not None and (segmented.get("input") or {}).get("format") == "dicom":
            result.plan["study"]["dicom_sc"] = _write_plan_sc(result, picture, segmented, target)
        write_plan(result, target, overwrite=overwrite, meshes=meshes, picture=picture)
    return result


def _names_a_file(plan: Mapping) -> bool:
    """Whether ``plan.png``'s text names a file (the ``--tumour`` file, in its banner),
    whose path may identify the patient; the rest of its text is the plan's own."""
    study = plan.get("study") or {}
    return bool(study.get("tumour")) and not study.get("tumour_at")


def _source_series(report: Mapping) -> tuple[tuple[Path, ...], tuple[int, ...]]:
    """The DICOM series ``renalseg segment`` read, found again from ``report.json``'s input:
    its files and frames in slice order (:func:`renalseg.io.dicom.dicom_series_slices`)."""
    from renalseg.io.dicom import dicom_series_slices

    source = report.get("input") or {}
    # report.json gives the series' key where its UID does not select it (an empty UID,
    # one volume of several in a series), and no UID (None) for a series whose UID is empty
    return dicom_series_slices(source["path"],
                               series_uid=source.get("series_key") or source.get("series_uid") or "(empty)")


def _write_plan_sc(result: PlanResult, picture: Any, report: Mapping, out_dir: Path) -> dict:
    """``plan.sc.dcm``: ``plan.png`` as a DICOM Secondary Capture in the study ``renalseg
    segment`` read from DICOM (:func:`renalseg.io.dicom_sc.write_secondary_capture`), for
    any PACS viewer. When the series is gone or changed none is written (an earlier
    plan's is removed) and the returned reason says why.

    Returns:
        ``{"path": str | None, "reason": str | None}`` (plan.json's ``study.dicom_sc``).
    """
    from renalseg.io.dicom_sc import PLAN_SC_SERIES_NUMBER, write_secondary_capture

    final = out_dir / "plan.sc.dcm"
    final.unlink(missing_ok=True)  # an earlier plan's: it is replaced, or goes with it
    try:
        files, _ = _source_series(report)
        write_secondary_capture(  # written whole or not at all
            picture, files, final, series_number=PLAN_SC_SERIES_NUMBER,
            synthetic_training_only=bool((report.get("model") or {}).get("synthetic_training_only", True)),
            what="plan", identifying_text=_names_a_file(result.plan))
    except Exception as err:  # noqa: BLE001 - a copy of plan.png: the plan is written whatever befalls it
        logger.warning("no plan.sc.dcm: %s", err)
        return {"path": None, "reason": str(err)}
    return {"path": str(final), "reason": None}


def _write_territory_dicom_seg(result: PlanResult, report: Mapping, out_dir: Path) -> dict:
    """``territories.seg.dcm`` for a study ``renalseg segment`` read from DICOM: the
    territories as one DICOM SEG referencing the series (named and coloured as in
    ``territories.seg.nrrd``), for PACS viewers. The series is found again from
    ``report.json``'s input; when it is gone or changed, no SEG is written (an earlier
    plan's is removed) and the returned reason says why (the plan itself does not
    depend on it).

    Returns:
        ``{"path": str | None, "reason": str | None}`` (plan.json's ``study.dicom_seg``).
    """
    from renalseg.errors import RenalsegError
    from renalseg.io.dicom_seg import write_dicom_seg

    final = out_dir / "territories.seg.dcm"
    final.unlink(missing_ok=True)  # an earlier plan's: it is replaced, or goes with it
    source = report.get("input") or {}
    if source.get("format") != "dicom":
        return {"path": None, "reason": "the study was not read from DICOM"}
    if not any(int(v) > 0 for v in result.territory_names):
        return {"path": None, "reason": "no territories"}
    try:
        files, frames = _source_series(report)
        model = report.get("model") or {}
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
            written = write_dicom_seg(
                result.territories.array, result.territories.geometry,
                {v: t["name"] for v, t in result.territory_names.items()}, files, Path(scratch) / "territories.seg.dcm",
                model_name="renalseg plan", weights_sha256=model.get("sha256"),
                synthetic_training_only=bool(model.get("synthetic_training_only", True)),
                structures=_territory_structures(result),
                description="renalseg plan: perfusion territories (research use)", source_frames=frames)
            Path(written["path"]).replace(final)
    except (RenalsegError, OSError, KeyError) as err:
        logger.warning("no territories.seg.dcm: %s", err)
        return {"path": None, "reason": str(err)}
    return {"path": str(final), "reason": None}


def write_territory_meshes(result: PlanResult, out_dir: Path | str) -> list[Path]:
    """One surface per perfusion territory: ``territories/territory_<value>.stl`` (LPS mm).

    Each file is binary STL in LPS mm (see :func:`renalseg.mesh.mesh_to_bytes`), named
    by its value in ``territories.nii.gz``; ``territories.json`` gives the branch name.
    A territory too small to mesh is skipped.
    """
    from renalseg.errors import InputError as _InputError
    from renalseg.io.output import atomic_write_bytes
    from renalseg.mesh import label_to_mesh, mesh_to_bytes

    folder = Path(out_dir) / "territories"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for value in sorted(int(v) for v in result.territory_names if int(v) > 0):
        try:
            mesh = label_to_mesh(result.territories, label=value)
        except _InputError:
            logger.warning("territory %d is too small for a surface; no mesh written", value)
            continue
        paths.append(atomic_write_bytes(folder / f"territory_{value:03d}.stl", mesh_to_bytes(mesh)))
    return paths


def write_territory_seg_nrrd(result: PlanResult, path: Path | str) -> Path:
    """The territories as a 3D Slicer segmentation: one segment per territory, named
    ``<side> kidney: <branch>`` and coloured as in ``plan.png``, coded as kidney (SNOMED
    CT), its voxels those of ``territories.nii.gz`` in their box on the study's grid (as
    Slicer crops a segmentation: same spacing and direction, the origin on the box's first
    voxel, which ``Segmentation_ReferenceImageExtentOffset`` gives; a whole study's grid
    took 2 s to compress, mostly zeros). Written through a temporary name.
    """
    from renalseg.io.slicer import write_seg_nrrd

    structures = _territory_structures(result)
    names = {v: t["name"] for v, t in result.territory_names.items()}
    territories, start = result.territories, (0, 0, 0)
    if territories.array.any():
        box = bounding_box(territories.array > 0)
        start = tuple(b.start for b in box)
        territories = crop(territories, start, tuple(b.stop - b.start for b in box))
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        written = write_seg_nrrd(territories.array, territories.geometry, names, Path(scratch) / path.name,
                                 structures=structures, extent_offset_xyz=start[::-1])
        written.replace(path)  # renamed into place, not read back and written again
    return path


def _territory_structures(result: PlanResult) -> dict:
    """Each territory as a segment of the kidney (SNOMED CT) named ``<side> kidney:
    <branch>`` and coloured as ``plan.png`` draws it: for the Slicer and DICOM SEG files."""
    from dataclasses import replace

    from renalseg.io.terminology import structure_for
    from renalseg.plan_picture import territory_colours

    kidney = structure_for("kidney")
    colours = territory_colours(result.plan, set(result.candidates))
    return {int(v): replace(kidney, display_name=f"{t['side']} kidney: {t['name']}",
                            rgb=colours.get(int(v), kidney.rgb))
            for v, t in result.territory_names.items() if int(v) > 0}


def write_plan(result: PlanResult, out_dir: Path | str, *, overwrite: bool = False,
               meshes: bool = False, picture: Any = None) -> list[Path]:
    """Write ``territories.nii.gz``, ``territories.json``, ``territories.seg.nrrd`` (3D Slicer),
    ``plan.png`` and ``plan.json``
    (and, with ``meshes``, one surface per territory: :func:`write_territory_meshes`).

    Each file goes to a temporary name and is renamed into place, ``plan.json``
    last, so a folder with a ``plan.json`` holds a whole plan. ``picture``: ``plan.png``
    already drawn (:func:`renalseg.plan_picture.render_plan`), else it is drawn here.
    """
    from renalseg.io.image import write_image
    from renalseg.io.output import atomic_write_bytes, atomic_write_json
    from renalseg.plan_picture import render_plan

    out = Path(out_dir)
    taken = [name for name in ("territories.nii.gz", "territories.json", "territories.seg.nrrd", "plan.png",
                               "plan.json")
             if (out / name).exists()]
    if taken and not overwrite:
        raise OutputExistsError(f"{out}: {', '.join(taken)} exist(s); pass --overwrite to replace them.")
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_image(result.territories, out / "territories.nii.gz", overwrite=True),
             atomic_write_json(out / "territories.json", result.territory_names),
             write_territory_seg_nrrd(result, out / "territories.seg.nrrd")]
    import io
    buffer = io.BytesIO()
    (picture if picture is not None else render_plan(result)).save(buffer, format="PNG")
    paths.append(atomic_write_bytes(out / "plan.png", buffer.getvalue()))
    if meshes:
        paths.extend(write_territory_meshes(result, out))
    paths.append(atomic_write_json(out / "plan.json", result.plan))
    return paths
