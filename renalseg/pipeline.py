"""``segment_study``: one CT study in, a label map on its own grid out.

The data flow: read → locate the kidney ROIs (or take the input as one
ROI) → resample each ROI onto the model grid (linear, air outside) → normalise →
sliding windows → probabilities resampled back (linear, on probabilities) onto the
study's own voxels inside the ROI box → labels → specks removed → pasted into a
full-size label map with exactly the input's size, spacing, origin and direction.
This module only orchestrates; each step lives in its own module.

Example (an analytic predictor that calls anything brighter than 300 HU artery):
    >>> import numpy as np, SimpleITK as sitk
    >>> from renalseg.segmenter import ModelSpec, Segmenter
    >>> hu = np.full((20, 24, 24), -100, np.int16); hu[:, 10:13, 10:13] = 500
    >>> image = sitk.GetImageFromArray(hu); image.SetSpacing((0.7, 0.7, 1.0))
    >>> spec = ModelSpec(window_zyx=(16, 16, 16))
    >>> bright = lambda b: np.concatenate([b < 0.65, b >= 0.65], axis=1).astype(np.float32)
    >>> result = segment_study(image, SegmentConfig(input_is_roi=True, min_component_mm3=0),
    ...                        segmenter=Segmenter.from_predictor(bright, spec))
    >>> labels = Volume.from_sitk(result.labels).array  # the artery is KiPA22's 3 (renalseg.labels)
    >>> bool(((labels == 3) == (hu > 300)).all()), result.label_names, result.report["status"]
    (True, {'0': 'background', '3': 'renal_artery'}, 'ok')
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from renalseg import __version__
from renalseg.components import SPECK_MM3, count_pieces
from renalseg.figures import structure_figures
from renalseg.errors import GeometryError, NoKidneyFoundError, UsageError, suggest
from renalseg.geometry import IDENTITY_DIRECTION, Geometry, resample_to_grid
from renalseg.io.plausibility import check_ct_values
from renalseg.labels import (BY_KEY, STRUCTURE_KEYS, label_names as names_of_values, output_values, parse_structures,
                             values_mask, values_of_kind)
from renalseg.postprocess import (
    DEFAULT_MAX_GAP_MM,
    DEFAULT_MIN_COMPONENT_MM3,
    FLUID_MAX_HU,
    HILUM_MIN_PROBABILITY,
    clean_labels_logged,
    artery_ceiling_hu,
    artery_level_hu,
    drop_bright_artery,
    drop_bright_parenchyma,
    drop_fluid_tumour,
    parenchyma_ceiling_hu,
    probabilities_to_labels,
    reassign_by_topology,
    take_thin_branches,
    thin_branch_region,
)
from renalseg.roi import KidneyROI
from renalseg.segmenter import Segmenter
from renalseg.study import Study
from renalseg.volume import Volume, crop, paste
from renalseg.windows import box_around

__all__ = [
    "SegmentConfig",
    "Result",
    "RoiView",
    "segment_study",
    "write_outputs",
    "Localisation",
    "locate_study",
    "write_locate_outputs",
    "roi_from_extent",
    "batch_thin_branch_segmenter",
    "serves_thin_branches",
    "thin_branch_phases",
    "thin_branch_segmenter",
    "THIN_BRANCH_WEIGHTS",
    "SYNTHETIC_NOTICE",
    "SIDES",
]

log = logging.getLogger(__name__)

#: ``--side`` choices
SIDES: tuple[str, ...] = ("both", "left", "right")

#: said once per run and stored in report.json when the card says so
SYNTHETIC_NOTICE = (
    "The weights were trained on synthetic phantoms only and have not been validated on "
    "patients: research use only, not for clinical decisions."
)

_AIR_HU = -1024.0

#: artery voxels brighter than contrast in the study's arteries are taken away
#: (:func:`renalseg.postprocess.drop_bright_artery`) with the artery joined to them through
#: voxels above the arterial level plus this share of the way to the ceiling: contrast
#: excreted into the collecting system under the ceiling in places, a stone's blurred edge
#: (``None``: the voxels above the ceiling alone; held-out crops with and without stones
#: and excreted contrast, docs/validation.md, "Stones and excreted contrast")
BRIGHT_GROW_SHARE: float | None = 0.5

#: the shipped model ``--thin-branches`` runs beside the default one
THIN_BRANCH_WEIGHTS = "dpa_densebiasnet_artery"
#: a kidney ROI's class probabilities are held in this type between the network passes
#: (the other ROI's, the thin-branch model's): 46 MB instead of 92 MB for five outputs
#: over a 200 × 152 × 152 ROI; a probability moves by at most 2.5e-4 (float16's half
#: step below 1), and the labels are the arg-max of what is held
PROBABILITY_HOLD_DTYPE = np.float16

#: ``on_progress(stage, done, total)``; stage e.g. ``"read"``, ``"segment left"``
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SegmentConfig:
    """Inference settings (the CLI's options); override with ``dataclasses.replace``.

    Attributes:
        weights: weights file or folder; ``None`` = the shipped weights.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        overlap: sliding-window overlap in [0, 1).
        tta: mirroring test-time augmentation; ``None`` = on for CUDA, off otherwise.
        side: ``both``, ``left`` or ``right`` (the patient's side).
        input_is_roi: the input is already one kidney ROI crop: skip localisation. Its
            side is ``side`` when that is left/right, else the side its renal vessels leave
            the kidney from (:func:`renalseg.mesh.side_from_vessels`), else the patient's
            side of its centre.
        save_probabilities: keep the artery probability map on the study grid.
        min_component_mm3: disconnected pieces smaller than this are removed.
        max_gap_mm: per ROI, pieces farther than this from the largest artery piece are
            removed (other abdominal arteries; ``inf`` keeps every piece).
        series_uid: which DICOM series to read when a folder holds several.
        seed: random seed for localisation.
        force: use a study whose values do not look like HU
            (:func:`renalseg.io.plausibility.check_ct_values`; NaN/Inf are always refused).
        structures: which structures to write (``renalseg.labels.STRUCTURE_KEYS``:
            artery, vein, kidney, tumour); ``None`` = every one the model labels.
        thin_branches: in an arterial-phase study, also run the artery-only weights
            (:data:`THIN_BRANCH_WEIGHTS`) and take the artery inside the kidney from
            whichever model is surer (:func:`renalseg.postprocess.take_thin_branches`):
            more of the interlobar branches, for a second pass over the kidney's box
            (:func:`renalseg.postprocess.thin_branch_region`). ``None`` (the default):
            whenever the study's contrast phase is called one the artery-only weights
            are validated on (arterial) and the model labels the artery and the kidney,
            in a whole study or a crop; otherwise skipped, and the report says why.
            ``True``: asked for; the model must label the artery and the kidney, and in
            a kidney crop (whose phase call is less certain) it runs whatever the
            call. ``False``: one network pass only.
        fluid_max_hu: tumour pieces whose interior has a median at or below this (HU)
            and no enhancing wall are taken for simple cysts and given to the most
            probable other class (:func:`renalseg.postprocess.drop_fluid_tumour`);
            ``None`` keeps them (``--keep-fluid-tumour``).
        keep_bright_artery: keep artery voxels brighter than contrast in the study's
            arteries can be (:func:`renalseg.postprocess.artery_ceiling_hu`: a stone,
            contrast excreted into the collecting system, calcification, bone; the
            default gives them to the most probable other class,
            :func:`renalseg.postprocess.drop_bright_artery`, and the report counts them).
    """

    weights: Path | None = None
    device: str = "auto"
    overlap: float = 0.5
    tta: bool | None = None
    side: str = "both"
    input_is_roi: bool = False
    save_probabilities: bool = False
    min_component_mm3: float = DEFAULT_MIN_COMPONENT_MM3
    max_gap_mm: float = DEFAULT_MAX_GAP_MM
    series_uid: str | None = None
    seed: int = 0
    force: bool = False
    structures: tuple[str, ...] | None = None
    thin_branches: bool | None = None
    fluid_max_hu: float | None = FLUID_MAX_HU
    keep_bright_artery: bool = False

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise UsageError(f"--side {self.side!r}: choose both, left or right." + suggest(self.side, SIDES))
        if not 0.0 <= self.overlap < 1.0:
            raise UsageError(f"--overlap {self.overlap}: must be in [0, 1); the default is 0.5.")
        if not self.min_component_mm3 >= 0:
            raise UsageError(f"--min-component-mm3 {self.min_component_mm3}: must be ≥ 0 (0 keeps all).")
        if not self.max_gap_mm >= 0:
            raise UsageError(f"--max-gap-mm {self.max_gap_mm}: must be ≥ 0 (inf keeps every piece).")


@dataclass(frozen=True, eq=False)
class RoiView:
    """One ROI as the network saw it, for the preview.

    Attributes:
        side: the patient's side.
        hu: float32 ``(Z, Y, X)`` CT on the model grid (z → superior, y → posterior, x → left).
        artery: bool ``(Z, Y, X)`` final artery mask on the same grid.
        spacing_xyz_mm: the model grid spacing.
        outlines: ``{"vein": mask, "kidney": mask, "tumour": mask}`` (bool, same grid)
            when the model labels them: the vein drawn filled, the others as outlines.
    """

    side: str
    hu: np.ndarray
    artery: np.ndarray
    spacing_xyz_mm: tuple[float, float, float]
    outlines: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Result:
    """What :func:`segment_study` returns.

    Attributes:
        labels: uint8 ``SimpleITK.Image`` on exactly the study's grid.
        report: the ``report.json`` content (JSON-ready dict).
        label_names: ``labels.json``: the KiPA22 values written, e.g.
            ``{"0": "background", "3": "renal_artery"}`` (:mod:`renalseg.labels`).
        probabilities: float32 artery probability on the study's grid, when asked for.
        rois: the kidney ROIs used.
        views: per-ROI arrays for :func:`renalseg.preview.render_preview`.
        source_files: the DICOM series' files in slice order (for ``labels.seg.dcm``);
            empty when the study was not DICOM.
        source_frames: each slice's frame in its file when the series is multi-frame
            (:attr:`renalseg.study.Study.dicom_frames`); empty otherwise.
    """

    labels: sitk.Image
    report: dict
    label_names: dict[str, str]
    probabilities: sitk.Image | None = None
    rois: tuple[KidneyROI, ...] = ()
    views: tuple[RoiView, ...] = field(default_factory=tuple)
    source_files: tuple[Path, ...] = ()
    source_frames: tuple[int, ...] = ()

    @property
    def study_id(self) -> str:
        return str(self.report.get("study_id", "study"))


# -- geometry helpers ----------------------------------------------------------------------


def roi_from_extent(geometry: Geometry, spacing_xyz_mm: tuple[float, float, float]) -> KidneyROI:
    """An ROI covering a whole image (``--input-is-roi``): LPS-aligned, model spacing.

    The grid covers the image's physical extent (voxel edges included, so an oblique
    image's bounding box); the study box is the whole image. The side is the
    patient's side of the image centre (LPS x > 0 is the patient's left).

    Example:
        >>> g = Geometry((10, 20, 30), (1.4, 1.4, 2.0), (5.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> roi = roi_from_extent(g, (0.7, 0.7, 1.0))
        >>> roi.grid.shape_zyx, roi.side, roi.start_zyx, roi.shape_zyx
        ((20, 40, 60), 'left', (0, 0, 0), (10, 20, 30))
    """
    size = np.asarray(geometry.shape_xyz, dtype=float)
    edges = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                      for k in (-0.5, size[2] - 0.5)])
    world = geometry.index_to_world(edges)
    lo, hi = world.min(axis=0), world.max(axis=0)
    spacing = np.asarray(spacing_xyz_mm, dtype=float)
    count = np.maximum(1, np.round((hi - lo) / spacing - 1e-6)).astype(int)
    centre = (lo + hi) / 2
    origin = centre - (count - 1) / 2 * spacing
    grid = Geometry((int(count[2]), int(count[1]), int(count[0])), tuple(spacing.tolist()),
                    tuple(origin.tolist()), IDENTITY_DIRECTION)
    side = "left" if centre[0] > 0 else "right"
    return KidneyROI(
        side=side, grid=grid, start_zyx=(0, 0, 0), shape_zyx=geometry.shape_zyx, kidney_volume_ml=0.0,
        notes=("input given as an ROI (--input-is-roi): side from the centre's LPS x, a guess (a crop's "
               "coordinates need not be the patient's: pass --side); kidney volume not estimated",),
    )


def _crop_side(roi: KidneyROI, values: np.ndarray, label_names: dict[str, str]) -> KidneyROI:
    """An ``--input-is-roi`` crop's side from its labels on the ROI grid
    (:func:`side_from_vessels`); the coordinates' guess where they cannot tell."""
    from renalseg.mesh import side_from_vessels

    kinds = {key: values_of_kind(label_names, key) for key in STRUCTURE_KEYS}
    side, offset = side_from_vessels(values, roi.grid, kinds)
    if side is None:
        return roi
    medial = "right" if side == "left" else "left"
    return dataclasses.replace(roi, side=side, notes=(
        f"input given as an ROI (--input-is-roi): side from its renal vessels, which leave the kidney towards the "
        f"patient's {medial} ({abs(offset):g} mm), as they run to the aorta and the IVC; kidney volume not "
        "estimated",))


def _clipped_box(roi: KidneyROI, shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    start = np.asarray(roi.start_zyx, dtype=int)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(roi.shape_zyx, dtype=int), np.asarray(shape_zyx))
    return lo, hi


#: said in report.json beside the figures (renalseg.components)
COMPONENT_DEFINITION = (
    f"components: 26-connected pieces of at least {SPECK_MM3:g} mm³ (faces, edges and corners touch); smaller "
    "pieces are counted as specks. export-mesh's tree.json and mesh bodies count the same way at its default "
    "--min-component-mm3. cleanup: what the segment clean-up removed per side (pieces farther than --max-gap-mm "
    "from the largest piece; pieces under --min-component-mm3; tumour pieces not touching the kidney, which "
    "replace the largest-piece rule for the tumour; kidney and tumour pieces brighter than renal parenchyma can be, "
    "bright_parenchyma_*: vessels or bone the network took for them)."
)


def _artery_figures(labels: Volume, artery_values: list[int], rois: Sequence[KidneyROI],
                    cleanups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per side: artery volume, components and specks (:func:`renalseg.components.count_pieces`)
    of the final label map, split into sides as ``export-mesh`` splits it, and the clean-up log."""
    from renalseg.mesh import split_sides
    from renalseg.tree import bounding_box

    geometry = labels.geometry
    artery = values_mask(labels.array, artery_values)
    sides: dict[str, dict[str, Any]] = {}
    if artery.any():
        box = bounding_box(artery)
        sub_geometry = geometry.crop(tuple(s.start for s in box), tuple(s.stop - s.start for s in box))
        parts = split_sides(artery[box], sub_geometry, [roi.to_dict() for roi in rois],
                            midline_x=float(geometry.corners_world()[:, 0].mean()))
    else:
        parts = {}
    for side in sorted({roi.side for roi in rois}, key=lambda s: (s != "right", s)):
        part = parts.get(side)
        voxels = int(part.sum()) if part is not None else 0
        pieces = count_pieces(part, geometry.spacing_xyz_mm) if part is not None else count_pieces(
            np.zeros((1, 1, 1), bool), geometry.spacing_xyz_mm)
        sides[side] = {"artery_volume_ml": round(voxels * geometry.voxel_volume_mm3 / 1000.0, 3), **pieces,
                       "voxels": voxels, "cleanup": cleanups.get(side, {})}
    return sides


def _outlines_on_grid(box_labels: np.ndarray, box: Geometry, grid: Geometry,
                      label_names: dict[str, str]) -> dict[str, np.ndarray]:
    """Vein, kidney and tumour masks (when the model labels them) on the ROI's model grid, for the preview."""
    outlines = {}
    for kind in ("vein", "kidney", "tumour"):
        values = values_of_kind(label_names, kind)
        mask = values_mask(box_labels, values)
        if values and mask.any():
            on_grid = resample_to_grid(Volume(mask.astype(np.uint8), box).to_sitk(), grid,
                                       interpolator=sitk.sitkNearestNeighbor, default_value=0,
                                       pixel_type=sitk.sitkUInt8)
            outlines[kind] = Volume.from_sitk(on_grid).array.astype(bool)
    return outlines


#: said in report.json when the model labels both vessels
TOPOLOGY_DEFINITION = (
    "topology: per ROI, artery pieces must belong to a tree reaching the aorta and vein pieces one reaching the "
    "IVC (gaps up to --max-gap-mm); a piece on the other vessel's tree is reassigned by the network's "
    "probabilities, a piece on neither is dropped, except a piece against the kidney the network is sure of "
    f"(mean probability >= {HILUM_MIN_PROBABILITY}: at the hilum artery and vein run side by side), which stays "
    "(counted per side under cleanup.topology). The aorta and IVC "
    "are found in the CT (renalseg.great_vessels); where not both are in view the check is off."
)


def _vessel_roots(roi_hu: np.ndarray, roi: KidneyROI, box: Geometry, *,
                  side_known: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The aorta and IVC (:func:`renalseg.great_vessels.find_great_vessels`) on the study's box grid
    (``{}`` unless both are found), and the aorta on the ROI's model grid (``None`` when not
    found; a known left ROI's arterial-phase aorta alone where the IVC is not enhanced:
    :data:`renalseg.great_vessels.AORTA_ALONE_MIN_HU`).

    ``side_known``: the ROI's side is the localisation's or the user's, so the great
    vessels are looked for in its medial half; an ``--input-is-roi`` crop's side from its
    LPS centre is a guess, and they are looked for anywhere.
    """
    from renalseg.great_vessels import AORTA_ALONE_MIN_HU, find_great_vessels

    alone = AORTA_ALONE_MIN_HU if side_known and roi.side == "left" else None
    found = find_great_vessels(roi_hu, roi.grid.spacing_xyz_mm, side=roi.side if side_known else None,
                               aorta_alone_min_hu=alone)
    if set(found) == {"aorta"}:
        return {}, found["aorta"]
    out = {}
    for name, mask in found.items():
        on_box = resample_to_grid(Volume(mask.astype(np.uint8), roi.grid).to_sitk(), box,
                                  interpolator=sitk.sitkNearestNeighbor, default_value=0, pixel_type=sitk.sitkUInt8)
        out[name] = Volume.from_sitk(on_box).array.astype(bool)
    if not out or not all(m.any() for m in out.values()):
        return {}, None
    return out, found["aorta"]


# -- the pipeline --------------------------------------------------------------------------


def segment_study(
    path_or_study: Study | sitk.Image | Path | str,
    config: SegmentConfig | None = None,
    *,
    segmenter: Segmenter | None = None,
    rois: list[KidneyROI] | None = None,
    on_progress: ProgressCallback | None = None,
    artery_segmenter: Segmenter | None = None,
) -> Result:
    """Segment the renal arteries of one study; the label map is on the study's grid.

    Args:
        path_or_study: a file, a DICOM series folder, a :class:`Study`, or a
            ``SimpleITK.Image`` in HU.
        config: inference settings (default :class:`SegmentConfig`).
        segmenter: a loaded model (:func:`renalseg.segmenter.load_model`), loaded
            once for a batch. **Hook:** ``Segmenter.from_predictor(fn, spec)`` runs any
            callable instead of the network (tests use one that thresholds intensity).
            ``None`` loads ``config.weights`` on ``config.device``.
        rois: kidney ROIs to use instead of localisation (e.g. from
            :func:`renalseg.roi.locate_kidneys` run earlier, or hand-made).
        on_progress: ``on_progress(stage, done, total)``, e.g. per window.
        artery_segmenter: for the thin-branch pass (``config.thin_branches``), the
            artery-only model (loaded once for a batch); ``None`` loads
            :data:`THIN_BRANCH_WEIGHTS` when the pass applies.

    Returns:
        A :class:`Result` (labels, report, optional probabilities, ROI views).

    Raises:
        InputError: unreadable study.
        NoKidneyFoundError: no kidney ROI (on the requested side) in the field of view.
        ModelError: weights/card problems.
    """
    config = config or SegmentConfig()
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(stage, done, total)

    # read
    progress("read", 0, 1)
    study = _as_study(path_or_study, config.series_uid)
    # a scan to localise in must show air; a crop or a scan with given ROIs need not
    check_ct_values(study.image, study.path, whole_scan=rois is None and not config.input_is_roi, force=config.force)
    image = study.image
    study_geometry = study.geometry
    timings["read"] = time.perf_counter() - clock
    progress("read", 1, 1)

    if segmenter is None:
        from renalseg.segmenter import load_model

        started = time.perf_counter()
        segmenter = load_model(config.weights, config.device)
        timings["load_model"] = time.perf_counter() - started
    spec = segmenter.spec
    tta = config.tta if config.tta is not None else segmenter.current_device.startswith("cuda")

    # locate
    started = time.perf_counter()
    wanted = ("left", "right") if config.side == "both" else (config.side,)
    refused: dict[str, str] = {}  # side -> why localisation gave no ROI for it
    if rois is None:
        if config.input_is_roi:
            roi = roi_from_extent(study_geometry, spec.spacing_xyz_mm)
            if config.side != "both":  # the user knows which kidney the crop holds
                roi = dataclasses.replace(roi, side=config.side, notes=(
                    "input given as an ROI (--input-is-roi): side from --side; kidney volume not estimated",))
            rois = [roi]
        else:
            progress("locate", 0, 1)
            from renalseg.roi import locate_kidneys

            rois = list(locate_kidneys(
                study, spacing_xyz_mm=spec.spacing_xyz_mm, seed=config.seed, sides=wanted, refused=refused,
                on_progress=lambda step, total, _description: progress("locate", step, total)))
            progress("locate", 1, 1)
    if not config.input_is_roi:
        rois = [roi for roi in rois if roi.side in wanted]
    if not rois:
        raise NoKidneyFoundError(
            f"{study.path}: no kidney ROI on the requested side ({config.side}) in the field of view. "
            "Check that the scan covers the kidneys, or pass --input-is-roi for a pre-cropped kidney."
        )
    timings["locate"] = time.perf_counter() - started

    # output channel -> KiPA22 value; the structures not asked for are written as background
    channel_values = output_values(spec.classes)
    kinds = {key for key in BY_KEY if BY_KEY[key].value in channel_values.values()}
    picked = parse_structures(",".join(config.structures) if config.structures is not None else None, kinds)
    written = {c: v for c, v in channel_values.items() if any(BY_KEY[k].value == v for k in picked)}
    label_names = names_of_values(written)
    artery_values = values_of_kind(label_names, "artery")
    artery_written = bool(artery_values)
    # the artery's own output channel (1 in the artery-only model, 3 in a KiPA22 five-class one)
    artery_channel = next((c for c, v in channel_values.items() if v == BY_KEY["artery"].value), None)
    channel_to_value = np.zeros(spec.num_classes, dtype=np.uint8)
    for channel, value in channel_values.items():
        channel_to_value[channel] = value
    keep_value = np.zeros(256, dtype=bool)
    keep_value[list(written.values())] = True
    # the topology clean-up needs both vessels' classes (reassign_by_topology)
    vessels = (BY_KEY["artery"].value, BY_KEY["vein"].value)
    topology = all(v in channel_values.values() for v in vessels)
    # the tumour's clean-up needs the kidney's class too (keep_tumours_on_kidney)
    tumour_by_contact = (BY_KEY["tumour"].value in written.values()
                         and BY_KEY["kidney"].value in channel_values.values())
    topology_roots: list[str] = []
    for key in ("resample", "inference", "resample_back", "postprocess"):
        timings[key] = 0.0

    # 1. each ROI onto the model grid; then only these small arrays are needed, so the
    #    study's pixels are released (when this function read them) before the network
    #    runs, and the full-size outputs are allocated only after it: lower peak memory
    study_id, study_path = study.study_id, study.path
    source_files, source_frames = study.dicom_files, study.dicom_frames
    input_description = {**study.describe(), "series_description": study.series_description,
                         "slice_count": study.slice_count}
    resampled_rois: list[tuple[KidneyROI, np.ndarray, np.ndarray, np.ndarray]] = []
    # the study's own HU inside each box, for the fluid test of tumour pieces and the kidney label's median
    fluid_test = config.fluid_max_hu is not None and BY_KEY["tumour"].value in written.values()
    # ... and for the artery's ceiling (drop_bright_artery)
    bright_test = not config.keep_bright_artery and BY_KEY["artery"].value in written.values()
    # ... and for kidney and tumour pieces brighter than parenchyma (drop_bright_parenchyma) and the
    # written kidney label's median (a model that writes the kidney has its class)
    parenchyma_values = [BY_KEY[key].value for key in ("kidney", "tumour") if BY_KEY[key].value in
                         channel_values.values()]
    keep_box_hu = fluid_test or bright_test or bool(parenchyma_values)
    box_hus: list[np.ndarray | None] = []
    for roi in rois:
        lo, hi = _clipped_box(roi, study_geometry.shape_zyx)
        if not (hi > lo).all():
            raise GeometryError(
                f"{study_path}: the {roi.side} ROI box {roi.start_zyx}+{roi.shape_zyx} lies outside the "
                f"image {study_geometry.shape_zyx} (z, y, x); the localisation is wrong."
            )
        started = time.perf_counter()
        roi_hu = Volume.from_sitk(resample_to_grid(image, roi.grid, interpolator=sitk.sitkLinear,
                                                   default_value=_AIR_HU, pixel_type=sitk.sitkFloat32)).array
        timings["resample"] += time.perf_counter() - started
        resampled_rois.append((roi, lo, hi, roi_hu))
        box_hus.append(np.array(sitk.GetArrayViewFromImage(image)[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))])
                       if keep_box_hu else None)
    from renalseg import quality

    started = time.perf_counter()
    limits = quality.limits_from_card(spec.limits)
    scan_quality = quality.assess_scan(image, rois, limits, input_is_roi=config.input_is_roi)
    timings["quality"] = time.perf_counter() - started
    del study, image, path_or_study
    thin: dict[str, Any] | None = None  # the report's thin_branches block
    if not artery_written:  # the pass adds to the artery, and none is written: asked for, say so
        thin = ({"applied": False, "automatic": False, "weights": None, "sha256": None, "region_ml": {},
                 "reason": "not applied: the artery is not among the structures written (--structures)"}
                if config.thin_branches else None)
    elif config.thin_branches is not False:
        artery_segmenter, thin = _thin_branch_model(segmenter, artery_segmenter, scan_quality.phase, config.device,
                                                    roi_only=config.input_is_roi, asked=bool(config.thin_branches))

    # 2. every ROI through the network
    tta_dice: dict[str, float | None] = {}
    predicted: list[tuple[KidneyROI, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for roi, lo, hi, roi_hu in resampled_rois:
        stage = f"segment {roi.side}"
        started = time.perf_counter()
        mirrored = quality.MirrorAgreement(segmenter.predictor, quality.mirror_sets((0, 1, 2))) if tta else None
        probabilities = (segmenter if mirrored is None else dataclasses.replace(segmenter, predictor=mirrored)).predict(
            roi_hu, overlap=config.overlap, tta=tta,
            on_progress=lambda done, total, stage=stage: progress(stage, done, total),
        )
        timings["inference"] += time.perf_counter() - started
        if config.input_is_roi and config.side == "both":  # the crop's side from its anatomy, not its coordinates
            roi = _crop_side(roi, channel_to_value[np.argmax(probabilities, axis=0)], label_names)
        # held in float16 (PROBABILITY_HOLD_DTYPE) while the other ROI and the thin-branch
        # model run: half the memory beside their forward passes
        predicted.append((roi, lo, hi, roi_hu, probabilities.astype(PROBABILITY_HOLD_DTYPE)))
        del probabilities
        tta_dice[roi.side] = mirrored.dice() if mirrored is not None else None
    rois = [roi for roi, *_ in predicted]  # an --input-is-roi crop's side may now be its anatomy's
    if thin is not None and thin["applied"]:
        # the second model after the first, each one's work buffers freed once it is done:
        # the two are never held at once (peak memory as one model's)
        _release_buffers(segmenter)
        started = time.perf_counter()
        second_artery = next(c for c, v in output_values(artery_segmenter.spec.classes).items()  # type: ignore[union-attr]
                             if v == BY_KEY["artery"].value)
        kidney_channels = [c for c, v in channel_values.items()
                           if v in (BY_KEY["kidney"].value, BY_KEY["tumour"].value)]
        for index, (roi, lo, hi, roi_hu, probabilities) in enumerate(predicted):
            stage = f"segment {roi.side} (thin branches)"
            region = thin_branch_region(probabilities, kidney_channels, spacing_xyz_mm=roi.grid.spacing_xyz_mm,
                                        max_gap_mm=config.max_gap_mm)
            thin["region_ml"][roi.side] = round(float(region.sum()) * float(np.prod(roi.grid.spacing_xyz_mm)) / 1000, 1)
            box = box_around(region, artery_segmenter.spec.window_zyx)  # type: ignore[union-attr]
            if box is None:
                continue
            # the artery-only model is read only inside the kidney: its windows cover the
            # kidney's box (with a window's context), not the whole ROI (3 windows of 8 on
            # the demo's ROIs)
            second = np.zeros(region.shape, dtype=np.float32)
            second[box] = artery_segmenter.predict(  # type: ignore[union-attr]
                roi_hu[box], overlap=config.overlap, tta=tta,
                on_progress=lambda done, total, stage=stage: progress(stage, done, total))[second_artery]
            widened = probabilities.astype(np.float32)
            take_thin_branches(widened, second, artery_channel=artery_channel, region=region)
            predicted[index] = (roi, lo, hi, roi_hu, widened.astype(PROBABILITY_HOLD_DTYPE))
            del second, region, widened
        _release_buffers(artery_segmenter)
        timings["inference_thin_branches"] = time.perf_counter() - started

    # 3. back onto the study's grid, label, clean, paste
    labels = Volume(np.zeros(study_geometry.shape_zyx, dtype=np.uint8), study_geometry)
    probability_array = (np.zeros(study_geometry.shape_zyx, dtype=np.float32)
                         if config.save_probabilities else None)
    cleanups: dict[str, dict[str, Any]] = {}
    views: list[RoiView] = []
    uncertainty: dict[str, dict[str, Any]] = {}
    kidney_facts: dict[str, dict[str, Any]] = {}  # the written kidney label of each ROI
    located = [roi.mask for roi in rois if roi.mask is not None]  # the kidneys localisation found
    parenchyma_ceiling = parenchyma_ceiling_hu(scan_quality.phase_hu.get("aorta"))
    for (roi, lo, hi, roi_hu, probabilities), box_hu in zip(predicted, box_hus):
        # probabilities back onto the study's own voxels inside the (clipped) box
        started = time.perf_counter()
        box = study_geometry.crop(tuple(lo.tolist()), tuple((hi - lo).tolist()))
        box_probabilities = np.empty((probabilities.shape[0], *box.shape_zyx), dtype=np.float32)
        channels = range(1, 2) if probabilities.shape[0] == 2 else range(probabilities.shape[0])
        for c in channels:
            resampled = resample_to_grid(Volume(probabilities[c].astype(np.float32), roi.grid).to_sitk(), box,
                                         interpolator=sitk.sitkLinear, default_value=1.0 if c == 0 else 0.0,
                                         pixel_type=sitk.sitkFloat32)
            box_probabilities[c] = Volume.from_sitk(resampled).array
        if probabilities.shape[0] == 2:
            np.subtract(1.0, box_probabilities[1], out=box_probabilities[0])
        timings["resample_back"] += time.perf_counter() - started

        started = time.perf_counter()
        box_labels = channel_to_value[probabilities_to_labels(box_probabilities)]
        # kidney and tumour on vessels or bone go first, before any step reads the kidney label
        parenchyma: dict = {}
        if parenchyma_values and box_hu is not None:
            box_labels, parenchyma = drop_bright_parenchyma(
                box_labels, values=parenchyma_values, hu=box_hu, spacing_xyz_mm=study_geometry.spacing_xyz_mm,
                ceiling_hu=parenchyma_ceiling)
        changes: dict[int, dict] = {}
        aorta_on_grid: np.ndarray | None = None  # the aorta on the ROI's grid where found, for a look behind it
        rooted: tuple[int, ...] = ()  # vessel values whose every piece reached its own root
        by_value = {0: box_probabilities[0], **{v: box_probabilities[c] for c, v in channel_values.items()}}
        bright: dict = {}
        ceiling: float | None = None
        if bright_test and box_hu is not None:
            artery_value = BY_KEY["artery"].value
            level = artery_level_hu(scan_quality.phase_hu.get("aorta"), box_hu[box_labels == artery_value])
            if level is not None:
                ceiling = artery_ceiling_hu(level)
                box_labels, bright = drop_bright_artery(
                    box_labels, artery_value=artery_value, hu=box_hu, ceiling_hu=ceiling,
                    spacing_xyz_mm=study_geometry.spacing_xyz_mm, probabilities=by_value,
                    grow_above_hu=None if BRIGHT_GROW_SHARE is None else level + BRIGHT_GROW_SHARE * (ceiling - level),
                    kidney=np.isin(box_labels, [BY_KEY["kidney"].value, BY_KEY["tumour"].value])
                    if BY_KEY["kidney"].value in channel_values.values() else None)
        if topology:
            roots, aorta_on_grid = _vessel_roots(roi_hu, roi, box,
                                                 side_known=not (config.input_is_roi and config.side == "both"))
            topology_roots.append(f"{roi.side}: {'aorta and IVC found' if roots else 'not both in view; off'}")
            if roots:
                box_labels, changes = reassign_by_topology(
                    box_labels, roots={vessels[0]: roots["aorta"], vessels[1]: roots["ivc"]},
                    probabilities=by_value, max_gap_mm=config.max_gap_mm,
                    spacing_xyz_mm=study_geometry.spacing_xyz_mm,
                    kidney=box_labels == BY_KEY["kidney"].value if BY_KEY["kidney"].value in channel_values.values()
                    else None)
                rooted = tuple(vessels)
        fluid: dict = {}
        if fluid_test and box_hu is not None:
            box_labels, fluid = drop_fluid_tumour(
                box_labels, tumour_value=BY_KEY["tumour"].value, hu=box_hu,
                spacing_xyz_mm=study_geometry.spacing_xyz_mm, max_hu=config.fluid_max_hu,  # type: ignore[arg-type]
                probabilities=by_value)
        # the tumour is judged by its contact with the kidney, labelled or not in the output
        kidney = box_labels == BY_KEY["kidney"].value if tumour_by_contact else None
        box_labels = np.where(keep_value[box_labels], box_labels, 0).astype(np.uint8)
        box_labels, removed = clean_labels_logged(
            box_labels, spacing_xyz_mm=study_geometry.spacing_xyz_mm, min_component_mm3=config.min_component_mm3,
            max_gap_mm=config.max_gap_mm, tumour_value=BY_KEY["tumour"].value if tumour_by_contact else None,
            kidney=kidney, rooted=rooted)
        removed.update(fluid)
        removed.update(bright)
        removed.update({k: v for k, v in parenchyma.items() if k != "bright_parenchyma_median_hu"})
        # merge with what another ROI already labelled in an overlapping box
        current = crop(labels, tuple(lo.tolist()), tuple((hi - lo).tolist()))
        merged = np.where(box_labels > 0, box_labels, current.array)
        labels = paste(labels, Volume(merged, box))
        if probability_array is not None:
            region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            foreground = 1.0 - box_probabilities[0]
            np.maximum(probability_array[region], foreground, out=probability_array[region])
        artery = values_mask(box_labels, artery_values)
        cleanup = cleanups.setdefault(roi.side, dict.fromkeys(removed, 0))
        for key, value in removed.items():
            cleanup[key] = round(cleanup[key] + value, 4)
        if ceiling is not None:
            cleanup["artery_ceiling_hu"] = round(ceiling, 1)
        for value, counts in changes.items():
            kind = "artery" if value == vessels[0] else "vein"
            moved = cleanup.setdefault("topology", {}).setdefault(kind, dict.fromkeys(counts, 0))
            for key, number in counts.items():
                moved[key] = round(moved[key] + number, 4)
        # the final mask back on the model grid, for the preview
        artery_on_grid = resample_to_grid(Volume(artery.astype(np.uint8), box).to_sitk(), roi.grid,
                                          interpolator=sitk.sitkNearestNeighbor, default_value=0,
                                          pixel_type=sitk.sitkUInt8)
        views.append(RoiView(roi.side, roi_hu, Volume.from_sitk(artery_on_grid).array.astype(bool),
                             tuple(roi.grid.spacing_xyz_mm),  # type: ignore[arg-type]
                             _outlines_on_grid(box_labels, box, roi.grid, label_names)))
        timings["postprocess"] += time.perf_counter() - started
        started = time.perf_counter()
        if artery_written:  # the artery's figures judge the artery written, not one left out
            uncertainty[roi.side] = quality.artery_uncertainty(
                probabilities[artery_channel].astype(np.float32), views[-1].artery, roi.grid.spacing_xyz_mm, hu=roi_hu,
                tta_dice=tta_dice.get(roi.side))
            if aorta_on_grid is not None:
                uncertainty[roi.side]["artery_behind_aorta_ml"] = quality.artery_behind_aorta_ml(
                    views[-1].artery, aorta_on_grid, roi.grid)
            if bright.get("bright_artery_ml"):
                uncertainty[roi.side].update({k: v for k, v in bright.items() if k.startswith("bright_artery")})
                uncertainty[roi.side]["artery_ceiling_hu"] = round(ceiling, 1)  # type: ignore[arg-type]
        kidney_written = box_labels == BY_KEY["kidney"].value
        if kidney_written.any():
            kidney_facts[roi.side] = quality.kidney_label_facts(kidney_written, box, box_hu, located=located)
            if not config.input_is_roi:  # a crop given as the ROI ends where the scan does
                kidney_facts[roi.side]["roi_edges"] = quality.roi_edges_reached(
                    kidney_written | (box_labels == BY_KEY["tumour"].value), box, roi.grid, study_geometry)
        if parenchyma.get("bright_parenchyma_ml"):  # what the network called kidney or tumour on vessels or bone
            kidney_facts.setdefault(roi.side, {}).update({
                "bright_removed_ml": parenchyma["bright_parenchyma_ml"],
                "bright_removed_median_hu": parenchyma["bright_parenchyma_median_hu"],
                "parenchyma_ceiling_hu": round(parenchyma_ceiling, 1)})
        timings["quality"] += time.perf_counter() - started

    sides = _artery_figures(labels, artery_values, rois, cleanups)
    side_order = list(sides)
    structures = structure_figures(labels.array, study_geometry, label_names, [roi.to_dict() for roi in rois],
                                   side_order)
    volumes_ml = {key: {side: float(figures["volume_ml"]) for side, figures in per_side.items()}
                  for key, per_side in structures.items()}
    missing = {side: why for side, why in refused.items() if side in wanted}  # kidneys asked for, not located
    label_image = labels.to_sitk()
    probability_image = (Volume(probability_array, study_geometry).to_sitk()
                         if probability_array is not None else None)
    timings["total"] = time.perf_counter() - clock
    report = {
        "status": "ok",
        "study_id": study_id,
        "renalseg_version": __version__,
        "input": input_description,
        "rois": [roi.to_dict() for roi in rois],
        "missing_sides": sorted(missing),  # as renalseg locate reports them
        "missing_reasons": missing,
        "model": {
            "name": spec.name,
            "weights": str(segmenter.weights_path) if segmenter.weights_path else None,
            "sha256": spec.sha256,
            "classes": {str(k): str(v) for k, v in spec.classes.items()},
            "spacing_xyz_mm": list(spec.spacing_xyz_mm),
            "window_zyx": list(spec.window_zyx),
            "synthetic_training_only": spec.synthetic_training_only,
        },
        "device": segmenter.current_device,
        "settings": {"overlap": config.overlap, "tta": tta, "side": config.side,
                     "input_is_roi": config.input_is_roi, "min_component_mm3": config.min_component_mm3,
                     "max_gap_mm": config.max_gap_mm if np.isfinite(config.max_gap_mm) else None,
                     "structures": list(picked),
                     "thin_branches": "auto" if config.thin_branches is None else config.thin_branches,
                     "keep_bright_artery": config.keep_bright_artery},
        "arteries": sides,
        "structures": structures,
        "component_definition": COMPONENT_DEFINITION,
        "quality": quality.judge(scan_quality, uncertainty, limits, kidneys=kidney_facts,
                                 artery_ml=volumes_ml.get("artery"), kidney_ml=volumes_ml.get("kidney"),
                                 located_confidence={roi.side: roi.confidence for roi in rois},
                                 not_located=missing, arteries=artery_written,
                                 tumours=structures.get("tumour")),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    if topology:
        report["topology"] = {"roots": topology_roots, "definition": TOPOLOGY_DEFINITION}
    if thin is not None:
        report["thin_branches"] = thin
    if spec.synthetic_training_only:
        report["notice"] = SYNTHETIC_NOTICE
    return Result(labels=label_image, report=report, label_names=label_names,
                  probabilities=probability_image, rois=tuple(rois), views=tuple(views),
                  source_files=source_files, source_frames=source_frames)


def _release_buffers(segmenter: Segmenter | None) -> None:
    """Free the work buffers a network's fast CPU path keeps between calls, if it has any."""
    release = getattr(getattr(segmenter, "network", None), "release_buffers", None)
    if callable(release):
        release()


def serves_thin_branches(classes: dict[str, str]) -> bool:
    """Whether ``--thin-branches`` can serve a model with these ``classes``: it takes the
    artery inside the kidney the model labels, so the model must label both.

    Example:
        >>> serves_thin_branches({"0": "background", "1": "renal_artery", "2": "kidney"})
        True
        >>> serves_thin_branches({"0": "background", "1": "renal_artery"})
        False
    """
    return {BY_KEY["artery"].value, BY_KEY["kidney"].value} <= set(output_values(classes).values())


def thin_branch_phases() -> tuple[str, ...]:
    """The contrast phases ``--thin-branches`` applies in: those the shipped artery-only
    weights' card validates (:data:`THIN_BRANCH_WEIGHTS`).

    Example:
        >>> thin_branch_phases()
        ('early_arterial', 'late_arterial')
    """
    from renalseg import quality
    from renalseg.weights import read_card, resolve_weights

    return tuple(quality.limits_from_card(read_card(resolve_weights(THIN_BRANCH_WEIGHTS)).limits).phases)


def thin_branch_segmenter(segmenter: Segmenter, artery_segmenter: Segmenter | None = None,
                          device: str = "auto") -> Segmenter:
    """The artery-only model ``--thin-branches`` runs beside ``segmenter`` (loaded from
    :data:`THIN_BRANCH_WEIGHTS` when not given), checked against it.

    Raises:
        UsageError: ``segmenter`` does not label both the artery and the kidney, or the
            second model does not label the artery on the same grid.
    """
    if not serves_thin_branches(segmenter.spec.classes):
        raise UsageError(f"--thin-branches takes the artery inside the kidney from a second model, so the main "
                         f"model must label the artery and the kidney; {segmenter.spec.name} labels "
                         f"{', '.join(sorted(segmenter.spec.classes.values()))}. Use the default weights.")
    if artery_segmenter is None:
        from renalseg.segmenter import load_model
        from renalseg.weights import resolve_weights

        artery_segmenter = load_model(resolve_weights(THIN_BRANCH_WEIGHTS), device)
    second = output_values(artery_segmenter.spec.classes)
    if (BY_KEY["artery"].value not in second.values()
            or tuple(artery_segmenter.spec.spacing_xyz_mm) != tuple(segmenter.spec.spacing_xyz_mm)):
        raise UsageError(f"--thin-branches: the second model ({artery_segmenter.spec.name}) must label the renal "
                         f"artery on the main model's grid {segmenter.spec.spacing_xyz_mm} mm; it labels "
                         f"{', '.join(sorted(artery_segmenter.spec.classes.values()))} at "
                         f"{artery_segmenter.spec.spacing_xyz_mm} mm.")
    return artery_segmenter


def batch_thin_branch_segmenter(segmenter: Segmenter, thin_branches: bool | None,
                                device: str = "auto") -> Segmenter | None:
    """The artery-only model a batch loads once for ``SegmentConfig.thin_branches``
    (``segment_study(..., artery_segmenter=)``), or ``None`` where the pass cannot run.

    ``True`` (asked for): a main model without the artery and the kidney, or a second
    model on another grid, is a usage error before the first study. ``None`` (the
    default): such a model goes without the pass, and each report says why.
    """
    if thin_branches is False or (thin_branches is None and not serves_thin_branches(segmenter.spec.classes)):
        return None
    try:
        return thin_branch_segmenter(segmenter, device=device)
    except UsageError:
        if thin_branches:
            raise
        return None


def _thin_branch_model(segmenter: Segmenter, artery_segmenter: Segmenter | None, phase: str,
                       device: str, *, roi_only: bool = False,
                       asked: bool = True) -> tuple[Segmenter | None, dict[str, Any] | None]:
    """The thin-branch pass: the artery-only model (:func:`thin_branch_segmenter`) and the
    report's ``thin_branches`` block (``applied``, ``automatic`` and why).

    Applied when the study's contrast phase is one the artery-only weights are validated
    on. When ``asked`` (``--thin-branches``), in a kidney crop (``roi_only``) it is also
    applied whatever the call (the aorta may be out of view or cut: of the 22 arterial
    held-out crops 20 are called arterial, none of the 22 portal-venous ones), and a
    main model without the kidney is a usage error. By default (not ``asked``) a model
    it cannot serve gets no block, and the artery-only model is loaded only when applied.
    """
    from renalseg import quality

    if not asked and not serves_thin_branches(segmenter.spec.classes):
        return artery_segmenter, None
    phases = (quality.limits_from_card(artery_segmenter.spec.limits).phases if artery_segmenter is not None
              else thin_branch_phases())
    applied = phase in phases or (roi_only and asked)
    words = quality.PHASE_WORDS.get(phase, phase)
    validated = ", ".join(quality.PHASE_WORDS[p] for p in phases)
    if phase in phases:
        reason = f"{words} phase: the artery-only weights add the artery they find inside the kidney"
    elif applied:
        reason = (f"applied as asked: the phase of a kidney crop is not certain (called {words}); the artery-only "
                  f"weights are validated on {validated} phase only")
    else:
        reason = f"not applied: {words} phase, and the artery-only weights are validated on {validated} phase only"
    if applied or asked:
        try:
            artery_segmenter = thin_branch_segmenter(segmenter, artery_segmenter, device)
        except UsageError as err:
            if asked:
                raise
            applied, reason, artery_segmenter = False, f"not applied: {err}", None  # a custom model on another grid
    block = {"applied": applied, "automatic": not asked, "reason": reason,
             "weights": (str(artery_segmenter.weights_path) if artery_segmenter and artery_segmenter.weights_path
                         else None),
             "sha256": artery_segmenter.spec.sha256 if artery_segmenter else None, "region_ml": {}}
    return artery_segmenter, block


def _as_study(path_or_study: Study | sitk.Image | Path | str, series_uid: str | None) -> Study:
    if isinstance(path_or_study, Study):
        return path_or_study
    if isinstance(path_or_study, sitk.Image):
        if path_or_study.GetDimension() != 3:
            raise UsageError(f"Expected a 3D image; got {path_or_study.GetDimension()}D.")
        return Study(image=path_or_study, path=Path("<image>"), format="memory", study_id="image")
    from renalseg.io.study import read_study

    return read_study(Path(path_or_study), series_uid=series_uid)


def write_outputs(result: Result, destination: Path | str, *, overwrite: bool = False,
                  preview: bool = True, dicom_seg: bool = True, dicom_sc: bool = True) -> Path:
    """Write a study's outputs into ``destination`` (whole, or not at all).

    Files: ``labels.nii.gz`` (uint8, the study's grid exactly), ``labels.json``,
    ``labels.seg.nrrd`` (the same voxels as a named 3D Slicer segmentation),
    ``report.json``, ``preview.png`` and, when the result has them,
    ``probabilities.nii.gz`` (float32) and, for a DICOM study with ``dicom_seg``,
    ``labels.seg.dcm`` (a DICOM SEG referencing the source series;
    :func:`renalseg.io.dicom_seg.write_dicom_seg`) with ``labels.sr.dcm`` (the volumes and
    the tumour's diameter as a DICOM SR on its segments) and, with ``dicom_sc``,
    ``preview.sc.dcm`` (the preview as a Secondary Capture in the study, for PACS viewers
    that show no SEG; :func:`renalseg.io.dicom_sc.write_secondary_capture`). Built in a
    staging folder and renamed into place (:class:`renalseg.io.output.StagedDir`).

    Raises:
        OutputExistsError: ``destination`` exists and ``overwrite`` is false.
    """
    from renalseg.io.image import write_image
    from renalseg.io.output import StagedDir, atomic_write_json

    destination = Path(destination)
    with StagedDir(destination, overwrite=overwrite) as staging:
        started = time.perf_counter()
        write_image(result.labels, staging / "labels.nii.gz")
        atomic_write_json(staging / "labels.json", result.label_names)
        interchange = _write_interchange(result, staging, dicom_seg=dicom_seg)
        if result.probabilities is not None:
            write_image(result.probabilities, staging / "probabilities.nii.gz")
        if preview and result.views:
            from renalseg.preview import render_preview

            from renalseg.preview import RESEARCH_NOTICE

            synthetic = bool(result.report.get("model", {}).get("synthetic_training_only"))
            notice = RESEARCH_NOTICE + (" Trained on synthetic phantoms." if synthetic else "")
            picture = render_preview(result.views, title=result.study_id, notice=notice)
            if "quality" in result.report:
                from renalseg.preview import add_banner
                from renalseg.quality import verdict_line

                picture = add_banner(picture, verdict_line(result.report["quality"]),
                                     result.report["quality"]["verdict"])
            picture.save(staging / "preview.png")
            if dicom_sc and result.source_files:
                interchange["dicom_sc"] = _write_preview_sc(result, picture, staging)
        report = json.loads(json.dumps(result.report, default=str))
        report.update(interchange)
        report.setdefault("timings_s", {})["write"] = round(time.perf_counter() - started, 3)
        report["outputs"] = sorted(p.name for p in staging.iterdir()) + ["report.json"]
        atomic_write_json(staging / "report.json", report)
    return destination


def _write_interchange(result: Result, staging: Path, *, dicom_seg: bool) -> dict:
    """``labels.seg.nrrd`` and, for DICOM input, ``labels.seg.dcm`` and ``labels.sr.dcm``; their report entries."""
    from renalseg.io.slicer import write_seg_nrrd

    labels = Volume.from_sitk(result.labels)
    write_seg_nrrd(labels.array, labels.geometry, result.label_names, staging / "labels.seg.nrrd")
    if not (dicom_seg and result.source_files):
        return {}
    if not labels.array.any():
        return {"dicom_seg": {"path": None, "reason": "nothing labelled: a DICOM SEG needs a segment"}}
    from renalseg.io.dicom_seg import write_dicom_seg

    model = result.report.get("model", {})
    written = write_dicom_seg(labels.array, labels.geometry, result.label_names, result.source_files,
                              staging / "labels.seg.dcm", model_name=str(model.get("name") or "renalseg"),
                              weights_sha256=model.get("sha256"),
                              synthetic_training_only=bool(model.get("synthetic_training_only")),
                              source_frames=result.source_frames)
    written["path"] = "labels.seg.dcm"
    return {"dicom_seg": written, "dicom_sr": _write_measurement_report(result, written, staging)}


def _write_measurement_report(result: Result, seg: dict, staging: Path) -> dict:
    """``labels.sr.dcm``: the structures' volumes and the tumour's diameter, per segment of
    the SEG, and the quality verdict, as a DICOM Structured Report in the study (:mod:`renalseg.io.dicom_sr`); its
    report entry. Like the Secondary Capture, a copy for PACS: when it cannot be made the
    study's results are still written, and the entry says why."""
    from renalseg.io.dicom_sr import write_measurement_report

    model = result.report.get("model", {})
    try:
        written = write_measurement_report(
            staging / "labels.seg.dcm", seg["segments"], result.label_names, result.report.get("structures", {}),
            staging / "labels.sr.dcm", model_name=str(model.get("name") or "renalseg"),
            weights_sha256=model.get("sha256"), synthetic_training_only=bool(model.get("synthetic_training_only")),
            verdict=result.report.get("quality", {}).get("verdict"))
    except Exception as err:  # noqa: BLE001 - any failure of the copy leaves the results whole
        log.warning("no labels.sr.dcm: %s", err)
        return {"path": None, "reason": f"{type(err).__name__}: {err}"}
    written["path"] = "labels.sr.dcm"
    return written


def _write_preview_sc(result: Result, picture: Any, staging: Path) -> dict:
    """``preview.sc.dcm``: the preview as a DICOM Secondary Capture in the source study;
    its report entry. The picture's title is the study's name (a file or folder name),
    so it is marked as text that may identify the patient. A copy of ``preview.png`` for
    PACS: when it cannot be made the study's results are still written, and the entry
    says why."""
    from renalseg.io.dicom_sc import PREVIEW_SC_SERIES_NUMBER, write_secondary_capture

    try:
        written = write_secondary_capture(
            picture, result.source_files, staging / "preview.sc.dcm", series_number=PREVIEW_SC_SERIES_NUMBER,
            synthetic_training_only=bool(result.report.get("model", {}).get("synthetic_training_only")),
            what="preview", identifying_text=True)
    except Exception as err:  # noqa: BLE001 - any failure of the copy leaves the results whole
        log.warning("no preview.sc.dcm: %s", err)
        return {"path": None, "reason": f"{type(err).__name__}: {err}"}
    written["path"] = "preview.sc.dcm"
    return written


# -- localisation only (``renalseg locate``) -------------------------------------------------


@dataclass(frozen=True, eq=False)
class Localisation:
    """What :func:`locate_study` returns.

    Attributes:
        study: the study as read.
        rois: the kidney ROIs found (right first), one per usable kidney.
        report: the ``report.json`` content (JSON-ready dict).
    """

    study: Study
    rois: tuple[KidneyROI, ...]
    report: dict


def locate_study(path_or_study: Study | sitk.Image | Path | str, *, atlases: Sequence[Path] = (), seed: int = 0,
                 series_uid: str | None = None, force: bool = False) -> Localisation:
    """Read one study and locate its kidneys: step 2 of :func:`segment_study` alone.

    Args:
        path_or_study: a file, a DICOM series folder, a :class:`Study`, or a
            ``SimpleITK.Image`` in HU.
        atlases: extra atlas folders, fused with the shipped atlas by majority vote.
        seed: seed of the registration's random sampling.
        series_uid: which DICOM series to read when a folder holds several.
        force: use a study whose values do not look like HU (NaN/Inf are always refused).

    Returns:
        A :class:`Localisation`; its report holds the input, each ROI (side, box in
        study voxels and LPS mm, model grid, kidney volume), the missing sides with
        the reason each was refused (``missing_reasons``) and the time of each step.

    Raises:
        InputError: unreadable study.
        NoKidneyFoundError: no kidney is usable (the message says which and why).
    """
    from renalseg.roi import locate_kidneys

    started = time.perf_counter()
    study = _as_study(path_or_study, series_uid)
    check_ct_values(study.image, study.path, whole_scan=True, force=force)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    refused: dict[str, str] = {}
    rois = tuple(locate_kidneys(study, atlases=list(atlases) or None, seed=seed, refused=refused))
    locate_s = time.perf_counter() - started
    report = {
        "status": "ok",
        "study_id": study.study_id,
        "input": study.describe(),
        "rois": [roi.to_dict() for roi in rois],
        "missing_sides": sorted({"left", "right"} - {roi.side for roi in rois}),
        "missing_reasons": refused,
        "atlases": ["shipped"] + [str(p) for p in atlases],
        "seed": seed,
        "seconds": {"read": round(read_s, 2), "locate": round(locate_s, 2)},
        "renalseg_version": __version__,
    }
    return Localisation(study=study, rois=rois, report=report)


def write_locate_outputs(localisation: Localisation, destination: Path | str, *, crop: bool = False,
                         overwrite: bool = False) -> Path:
    """Write a localisation's outputs into ``destination`` (whole, or not at all).

    Files: ``preview.png`` (:func:`renalseg.preview.render_locate_preview`),
    ``report.json`` and, with ``crop``, ``roi_<side>.nii.gz``: the study resampled
    onto each ROI's model grid (:func:`renalseg.roi.crop_to_roi`), and ``kidney_<side>.nii.gz``:
    the kidney's mask on the 3 mm localisation grid.

    Raises:
        OutputExistsError: ``destination`` exists and ``overwrite`` is false.
    """
    import io

    from renalseg.io.image import write_image
    from renalseg.io.output import StagedDir, atomic_write_bytes, atomic_write_json
    from renalseg.preview import render_locate_preview
    from renalseg.roi import crop_to_roi

    destination = Path(destination)
    with StagedDir(destination, overwrite=overwrite) as staging:
        buffer = io.BytesIO()
        render_locate_preview(localisation.study, localisation.rois).save(buffer, format="PNG")
        atomic_write_bytes(staging / "preview.png", buffer.getvalue())
        if crop:
            for roi in localisation.rois:
                write_image(crop_to_roi(localisation.study, roi), staging / f"roi_{roi.side}.nii.gz")
                if roi.mask is not None:
                    write_image(roi.mask.to_sitk(), staging / f"kidney_{roi.side}.nii.gz")
        atomic_write_json(staging / "report.json", localisation.report)
    return destination
