"""``labels.seg.dcm``: the label map as a DICOM Segmentation (SEG) of the source CT series.

Built with highdicom. One SEG instance references the source series (its study,
frame of reference and every source image, frame by frame); one segment per
structure in ``labels.json`` that the label map holds (artery; vein, kidney and
tumour when the model labels them), each with its name, colour and SNOMED CT codes
(:mod:`renalseg.io.terminology`) and the algorithm that made it (model name,
renalseg version, weights sha256). The series description says it is for research
use and, when the model card says so, that the model was trained on synthetic
phantoms. Segmentation type BINARY (what PACS viewers read today); frames without
any segment are left out.

Source headers are read again here (``stop_before_pixels``, well under a second for
400 slices), from the files :func:`renalseg.io.dicom.read_dicom_study` sorted along
the slice normal: slice ``k`` of the label map is file ``k``. A series stored as one
multi-frame object (Enhanced CT) is referenced frame by frame: slice ``k`` is its frame
``frames[k]``, and the SEG's frames follow the source's (highdicom makes that
correspondence itself).

A series spread over several multi-frame objects (a scanner splitting one long series
into two or three Enhanced CT instances; single-frame files among them too) is one SEG
as well. highdicom 0.28 takes one multi-frame object as ``source_images``, and its
``further_source_images`` only lists the others: it links a SEG frame to a source frame
only when one object holds every plane, which no part of a split series does. So the
SEG is built from the first object with the others as ``further_source_images``
(highdicom then lists every object in the Source Image and Referenced Series
Sequences), with explicit plane positions, those of the label map's slices; each SEG
frame then gets the Derivation Image Sequence highdicom writes for one multi-frame
source (derivation "Segmentation", purpose "Source image for image processing
operation", spatial locations preserved) naming the object and frame that hold its
slice. The shared functional groups (orientation, pixel measures) and the dimension
organisation (segment, image position) stay highdicom's: every object of a series has
the same orientation, pixel spacing and size (:func:`renalseg.io.dicom.read_dicom_study`
checks them, :func:`_check_geometry` the size). Because these references are made
here, not matched by highdicom, every source frame's position is checked against the
label map's grid first, not just the first and last slice's.

Anonymised exports may have EMPTY UIDs (the real test fixture has no SOP Instance,
SOP Class, Study or Series Instance UID). A SEG must reference UIDs, so what is
missing is filled in: SOP Class and Instance UIDs from the file meta header when it
has them, otherwise, and for Study, Series and Frame of Reference UIDs, a UID
derived from the source (``pydicom.uid.generate_uid`` with the folder's header
values as entropy, so the same series always gets the same UIDs). Such a SEG still
overlays the images it was made from but cannot be matched to the study in a PACS;
:func:`write_dicom_seg` returns the list of what it filled in (a missing
SliceThickness becomes the slice spacing) and the pipeline puts it in ``report.json``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, generate_uid

from renalseg import __version__
from renalseg.errors import GeometryError, InputError
from renalseg.geometry import Geometry
from renalseg.io.dicom import _frame_facts
from renalseg.io.terminology import Structure, structure_for

__all__ = ["write_dicom_seg", "SEG_SERIES_NUMBER", "series_description", "empty_type2"]

logger = logging.getLogger(__name__)

#: the SEG's SeriesNumber (kept clear of the scanner's usual 1-20)
SEG_SERIES_NUMBER = 9001


def series_description(synthetic_training_only: bool) -> str:
    """The SEG's SeriesDescription (LO, at most 64 characters).

    Example:
        >>> series_description(True)
        'renalseg: research use; trained on synthetic phantoms'
    """
    text = "renalseg: research use" + ("; trained on synthetic phantoms" if synthetic_training_only else "")
    return text[:64]


def _fill_uids(datasets: list[pydicom.Dataset]) -> list[str]:
    """Give every source dataset the UIDs a SEG must reference; return what was made up."""
    generated: list[str] = []
    seed = [str(datasets[0].get("FrameOfReferenceUID", "")), str(datasets[0].get("StudyDate", "")),
            str(datasets[0].get("SeriesTime", "")), str(datasets[0].get("SeriesDescription", "")),
            str(len(datasets)), str(datasets[0].get("ImagePositionPatient", ""))]
    shared: dict[str, str] = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword, "") or "").strip() for ds in datasets}
        if values == {""} or "" in values:
            shared[keyword] = generate_uid(entropy_srcs=[keyword, *seed])
            generated.append(keyword)
    meta_class = meta_instance = 0
    made_instance = 0
    for index, ds in enumerate(datasets):
        for keyword, value in shared.items():
            if not str(ds.get(keyword, "") or "").strip():
                setattr(ds, keyword, value)
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPClassUID", "") or "").strip():
            from_meta = str(getattr(meta, "MediaStorageSOPClassUID", "") or "").strip()
            ds.SOPClassUID = from_meta or CTImageStorage
            meta_class += 1
        if not str(ds.get("SOPInstanceUID", "") or "").strip():
            from_meta = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "").strip()
            if from_meta:
                ds.SOPInstanceUID = from_meta
                meta_instance += 1
            else:
                ds.SOPInstanceUID = generate_uid(entropy_srcs=["SOPInstanceUID", *seed, str(index)])
                made_instance += 1
    if meta_class:
        generated.append(f"SOPClassUID (from the file meta header, {meta_class} files)")
    if meta_instance:
        generated.append(f"SOPInstanceUID (from the file meta header, {meta_instance} files)")
    if made_instance:
        generated.append(f"SOPInstanceUID ({made_instance} files)")
    return generated


#: Type 2 attributes of the patient and the study that a derived object copies from its source:
#: present in every CT image, but anonymisers and simple writers leave some out
_PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")


def empty_type2(datasets: Sequence[pydicom.Dataset]) -> None:
    """Give the in-memory source headers the patient and study attributes they lack, empty
    (a Type 2 attribute's "unknown"), which highdicom reads without a default: a series
    without a PatientBirthDate, say, otherwise fails the derived object."""
    for ds in datasets:
        for keyword in _PATIENT_STUDY_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")


#: how far (mm) a source slice may lie from the label map's slice it holds: DS rounding in
#: the headers, far below any slice spacing, so a slice on another frame never passes
_POSITION_TOL_MM = 1e-2


def _slice_positions(datasets: Mapping[Path, pydicom.Dataset], source_files: Sequence[Path],
                     source_frames: Sequence[int]) -> np.ndarray:
    """Slice k's ImagePositionPatient (LPS mm, ``(Z, 3)``): its file's, or for a frame of a
    multi-frame object that frame's, from the functional groups as the study was read."""
    facts: dict[Path, tuple] = {}
    positions = []
    for k, path in enumerate(source_files):
        frame = int(source_frames[k]) if source_frames else 0
        ds = datasets[path]
        if not frame:
            positions.append([float(v) for v in ds.ImagePositionPatient])
            continue
        if path not in facts:
            facts[path] = _frame_facts(ds, path)
        if not 1 <= frame <= len(facts[path]):
            raise GeometryError(
                f"{path} has no position for its frame {frame} ({len(facts[path])} frames placed by its "
                f"per-frame functional groups), which holds slice {k} of the label map; a DICOM SEG "
                "needs the series the label map was made from. Pass --no-dicom-seg or segment the series again."
            )
        positions.append(list(facts[path][frame - 1].position))
    return np.asarray(positions, dtype=float)


def _label_slice_positions(geometry: Geometry) -> np.ndarray:
    """Where each slice of the label map starts (its voxel (0, 0, k), LPS mm, ``(Z, 3)``)."""
    count = geometry.shape_zyx[0]
    return geometry.index_to_world(np.column_stack([np.zeros(count), np.zeros(count), np.arange(count)]))


def _several_objects(source_files: Sequence[Path], source_frames: Sequence[int]) -> bool:
    """A series of more than one file holding a multi-frame object: referenced frame by frame here."""
    return bool(source_frames) and len(set(source_files)) > 1


def _check_geometry(datasets: Mapping[Path, pydicom.Dataset], geometry: Geometry,
                    source_files: Sequence[Path], source_frames: Sequence[int] = ()) -> None:
    """The label map must be on the source slices' grid, slice k on file k (on frame
    ``source_frames[k]`` of a multi-frame file). The first and last slices are checked
    where highdicom references the source itself (one multi-frame object, or single-frame
    files); every slice where the references are made here (several objects)."""
    count = len(source_files)
    sizes = {path: (int(ds.Rows), int(ds.Columns)) for path, ds in datasets.items()}
    off_size = [path for path, size in sizes.items() if size != tuple(geometry.shape_zyx[1:])]
    if count != geometry.shape_zyx[0] or off_size:
        rows, columns = sizes[off_size[0] if off_size else source_files[0]]
        raise GeometryError(
            f"The label map {geometry.shape_zyx} (z, y, x) is not on the DICOM series' grid "
            f"({count} slices of {rows} × {columns}"
            + (f" in {off_size[0]}" if off_size else "") + "); a DICOM SEG needs the "
            "label map of this series. Pass --no-dicom-seg or segment the series itself."
        )
    positions = _slice_positions(datasets, source_files, source_frames)
    expected = _label_slice_positions(geometry)
    if _several_objects(source_files, source_frames):
        distance = np.linalg.norm(positions - expected, axis=1)
        bad = np.flatnonzero(distance > _POSITION_TOL_MM)
        if bad.size:
            k = int(bad[0])
            raise GeometryError(
                f"Slice {k} of the label map lies at {expected[k].round(3).tolist()} mm (LPS) but the source "
                f"frame holding it, {source_files[k]} frame {source_frames[k]}, at {positions[k].round(3).tolist()} "
                f"({distance[k]:.3f} mm apart, tolerance {_POSITION_TOL_MM} mm; {bad.size} slice(s) in all): the "
                "files do not hold the label map's slices where it has them. Pass --no-dicom-seg or segment "
                "the series again."
            )
        return
    first, last = positions[0], positions[-1]
    if not (np.allclose(first, expected[0], atol=_POSITION_TOL_MM)
            and np.allclose(last, expected[-1], atol=_POSITION_TOL_MM)):
        raise GeometryError(
            f"The label map's first and last slices lie at {expected[0].round(3).tolist()} and "
            f"{expected[-1].round(3).tolist()} mm (LPS) but the DICOM files at {first.tolist()} and "
            f"{last.tolist()}: the files are not in the label map's slice order."
        )


def _reference_source_frames(seg: pydicom.Dataset, datasets: Mapping[Path, pydicom.Dataset],
                             source_files: Sequence[Path], source_frames: Sequence[int],
                             slice_of_position: Mapping[tuple[float, ...], int]) -> None:
    """Give each SEG frame the Derivation Image Sequence highdicom writes for one multi-frame
    source, naming the object (and frame) that holds its slice in the source series."""
    import highdicom as hd

    derivation_code = hd.sr.CodedConcept.from_code(codes.cid7203.SegmentationImageDerivation)
    purpose = hd.sr.CodedConcept.from_code(codes.cid7202.SourceImageForImageProcessingOperation)
    for item in seg.PerFrameFunctionalGroupsSequence:
        position = tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        k = slice_of_position[position]  # the positions highdicom was given, each a label map slice
        ds = datasets[source_files[k]]
        source = pydicom.Dataset()
        source.ReferencedSOPClassUID = ds.SOPClassUID
        source.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        if source_frames[k]:  # a frame of a multi-frame object; a single-frame file is referenced whole
            source.ReferencedFrameNumber = int(source_frames[k])
        source.PurposeOfReferenceCodeSequence = [purpose]
        # the same rows, columns, orientation and pixel spacing, and within _POSITION_TOL_MM
        source.SpatialLocationsPreserved = "YES"
        derivation = pydicom.Dataset()
        derivation.DerivationCodeSequence = [derivation_code]
        derivation.SourceImageSequence = [source]
        item.DerivationImageSequence = [derivation]


def write_dicom_seg(labels: np.ndarray, geometry: Geometry, label_names: dict[str, str],
                    source_files: Sequence[Path], path: Path | str, *, model_name: str,
                    weights_sha256: str | None, synthetic_training_only: bool,
                    structures: Mapping[int, Structure] | None = None, description: str | None = None,
                    source_frames: Sequence[int] = ()) -> dict:
    """Write the label map as one DICOM SEG instance referencing its source series.

    Args:
        labels: uint8 or uint16 ``(Z, Y, X)`` label map on the series' grid (slice k = file k).
        geometry: the label map's grid (checked against the files' positions).
        label_names: ``labels.json`` (``{"0": "background", "1": "renal_artery", ...}``).
        source_files: the series' files in slice order (a multi-frame object once per frame).
        source_frames: slice k's frame number (1-based) in ``source_files[k]`` when the
            series holds multi-frame objects, one or several; 0 for a single-frame file
            among them (:attr:`renalseg.study.Study.dicom_frames`).
        path: where to write (``labels.seg.dcm``).
        model_name, weights_sha256: the algorithm identification.
        synthetic_training_only: say so in the series description.
        structures: a label value's own name, colour and codes (e.g. a perfusion
            territory, coded as kidney), instead of those its name in ``label_names``
            gives (:func:`renalseg.io.terminology.structure_for`).
        description: the series description (default: :func:`series_description`).

    Returns:
        ``{"path", "segments": [{"number", "label_value", "name", "snomed"}],
        "filled_in": [...], "sop_instance_uid", "series_instance_uid"}``; ``filled_in``
        names what the source lacked and the SEG made up (UIDs, slice thickness).

    Raises:
        InputError: no source files, frame numbers not one per source slice, or a label
            map with no structure at all.
        GeometryError: the label map is not on the files' grid (for a series of several
            multi-frame objects: a frame not where the label map's slice is, naming it).
    """
    import highdicom as hd
    from highdicom.color import CIELabColor

    if not source_files:
        raise InputError("A DICOM SEG needs the source DICOM files; the study was not read from DICOM.")
    if source_frames and len(source_frames) != len(source_files):
        raise InputError(f"{len(source_frames)} frame numbers for {len(source_files)} source slices; "
                         "pass the study's dicom_files and dicom_frames together.")
    datasets = {p: pydicom.dcmread(str(p), stop_before_pixels=True) for p in dict.fromkeys(source_files)}
    _check_geometry(datasets, geometry, source_files, source_frames)
    generated = _fill_uids(list(datasets.values()))
    empty_type2(list(datasets.values()))
    single_frame = [ds for ds in datasets.values() if "PerFrameFunctionalGroupsSequence" not in ds]
    if any(not str(ds.get("SliceThickness", "") or "").strip() for ds in single_frame):
        # Type 2 in CT, required by the SEG's pixel measures: the slice spacing stands in
        for ds in single_frame:
            if not str(ds.get("SliceThickness", "") or "").strip():
                ds.SliceThickness = f"{geometry.spacing_xyz_mm[2]:.6g}"
        generated.append("SliceThickness (the slice spacing)")
    if generated:
        logger.warning("The source series lacks attributes a DICOM SEG references; filled in: %s",
                       ", ".join(generated))

    present = [int(v) for v in np.unique(labels) if v != 0]
    named = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
    values = [v for v in sorted(named) if v in present] + [v for v in present if v not in named]
    if not values:
        raise InputError("The label map is empty: a DICOM SEG needs at least one segment.")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name or "renalseg", family=codes.cid7162.ArtificialIntelligence,
        version=f"renalseg {__version__}"[:64], source="renalseg",
        parameters={"weights_sha256": weights_sha256 or "unknown"},
    )
    descriptions, segments = [], []
    lookup = np.zeros(max(values) + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    for number, value in enumerate(values, start=1):
        name = named.get(value, f"label_{value}")
        structure = (structures or {}).get(value) or structure_for(name)
        lookup[value] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=structure.display_name[:64],
            segmented_property_category=structure.category_code, segmented_property_type=structure.type_code,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=f"{name} (label {value})"[:64],
            anatomic_regions=[structure.region_code] if structure.region_code is not None else None,
            display_color=CIELabColor.from_rgb(*structure.rgb),
        ))
        segments.append({"number": number, "label_value": value, "name": structure.display_name,
                         "snomed": structure.type_code.value})
    segment_map = lookup[np.asarray(labels)]  # every value present is a segment
    several = _several_objects(source_files, source_frames)
    first, *others = datasets.values()
    slice_of_position: dict[tuple[float, ...], int] = {}
    if several:  # the label map's slices where they lie; the frame references are added below
        planes = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, position.tolist())
                  for position in _label_slice_positions(geometry)]
        slice_of_position = {tuple(float(v) for v in plane[0].ImagePositionPatient): k
                             for k, plane in enumerate(planes)}
        placement: dict = {"source_images": [first], "further_source_images": others, "plane_positions": planes}
    elif source_frames:  # one multi-frame object: the SEG's frames in its frame order
        in_source_order = np.zeros((int(first.NumberOfFrames), *segment_map.shape[1:]), segment_map.dtype)
        in_source_order[np.asarray(source_frames) - 1] = segment_map
        segment_map = in_source_order
        placement = {"source_images": [first]}
    else:
        placement = {"source_images": list(datasets.values())}
    with warnings.catch_warnings():  # a scanner's one-part patient name is copied as it is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = hd.seg.Segmentation(
            **placement, pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="renalseg",
            manufacturer_model_name=(model_name or "renalseg")[:64], software_versions=__version__,
            device_serial_number="none", content_label="RENALSEG",
            content_description=(description or series_description(synthetic_training_only))[:64],
            series_description=(description or series_description(synthetic_training_only))[:64],
        )
    if several:
        _reference_source_frames(seg, datasets, source_files, source_frames, slice_of_position)
    seg.save_as(str(path))
    return {"path": str(path), "segments": segments, "filled_in": generated,
            "sop_instance_uid": str(seg.SOPInstanceUID), "series_instance_uid": str(seg.SeriesInstanceUID)}
