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
``frames[k]``, and the SEG's frames follow the source's. A series spread over several
multi-frame objects cannot be one SEG's source (highdicom takes one multi-frame source
image); :func:`unreferencable` says so and no SEG is written.

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

__all__ = ["write_dicom_seg", "SEG_SERIES_NUMBER", "series_description", "unreferencable"]

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


def unreferencable(source_files: Sequence[Path], source_frames: Sequence[int] = ()) -> str | None:
    """Why a DICOM SEG cannot reference these source slices, or ``None`` when it can.

    Example:
        >>> unreferencable([Path("a.dcm"), Path("a.dcm"), Path("b.dcm")], [1, 2, 1])
        'the series is stored as 2 multi-frame objects; a DICOM SEG references at most one (labels.seg.nrrd holds the same voxels)'
    """
    files = set(source_files)
    if source_frames and len(files) > 1:
        return (f"the series is stored as {len(files)} multi-frame objects; a DICOM SEG references at most one "
                "(labels.seg.nrrd holds the same voxels)")
    return None


def _check_geometry(datasets: Sequence[pydicom.Dataset], geometry: Geometry,
                    source_frames: Sequence[int] = ()) -> None:
    """The label map must be on the source slices' grid, slice k on file k (on frame
    ``source_frames[k]`` of a multi-frame source)."""
    if source_frames:  # each frame's position as the study was read (the functional groups)
        facts = _frame_facts(datasets[0], Path(str(datasets[0].filename)))
        count = len(source_frames)
        first, last = (np.asarray(facts[k - 1].position, float) for k in (source_frames[0], source_frames[-1]))
    else:
        count = len(datasets)
        first = np.asarray([float(v) for v in datasets[0].ImagePositionPatient])
        last = np.asarray([float(v) for v in datasets[-1].ImagePositionPatient])
    if count != geometry.shape_zyx[0] or any(
            (int(ds.Rows), int(ds.Columns)) != geometry.shape_zyx[1:] for ds in datasets[:1]):
        raise GeometryError(
            f"The label map {geometry.shape_zyx} (z, y, x) is not on the DICOM series' grid "
            f"({count} slices of {datasets[0].Rows} × {datasets[0].Columns}); a DICOM SEG needs the "
            "label map of this series. Pass --no-dicom-seg or segment the series itself."
        )
    expected_first = geometry.index_to_world([[0, 0, 0]])[0]
    expected_last = geometry.index_to_world([[0, 0, geometry.shape_zyx[0] - 1]])[0]
    if not (np.allclose(first, expected_first, atol=1e-2) and np.allclose(last, expected_last, atol=1e-2)):
        raise GeometryError(
            f"The label map's first and last slices lie at {expected_first.round(3).tolist()} and "
            f"{expected_last.round(3).tolist()} mm (LPS) but the DICOM files at {first.tolist()} and "
            f"{last.tolist()}: the files are not in the label map's slice order."
        )


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
        source_files: the series' files in slice order.
        source_frames: slice k's frame number (1-based) in ``source_files[k]`` when the
            series is a multi-frame object (:attr:`renalseg.study.Study.dicom_frames`).
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
        InputError: no source files, a series of several multi-frame objects
            (:func:`unreferencable`), or a label map with no structure at all.
        GeometryError: the label map is not on the files' grid.
    """
    import highdicom as hd
    from highdicom.color import CIELabColor

    if not source_files:
        raise InputError("A DICOM SEG needs the source DICOM files; the study was not read from DICOM.")
    reason = unreferencable(source_files, source_frames)
    if reason:
        raise InputError(f"No DICOM SEG: {reason}.")
    files = list(dict.fromkeys(source_files)) if source_frames else list(source_files)
    datasets = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in files]
    _check_geometry(datasets, geometry, source_frames)
    generated = _fill_uids(datasets)
    if not source_frames and any(not str(ds.get("SliceThickness", "") or "").strip() for ds in datasets):
        # Type 2 in CT, required by the SEG's pixel measures: the slice spacing stands in
        for ds in datasets:
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
    if source_frames:  # the SEG's frames in the source object's frame order
        in_source_order = np.zeros((int(datasets[0].NumberOfFrames), *segment_map.shape[1:]), segment_map.dtype)
        in_source_order[np.asarray(source_frames) - 1] = segment_map
        segment_map = in_source_order
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="renalseg",
        manufacturer_model_name=(model_name or "renalseg")[:64], software_versions=__version__,
        device_serial_number="none", content_label="RENALSEG",
        content_description=(description or series_description(synthetic_training_only))[:64],
        series_description=(description or series_description(synthetic_training_only))[:64],
    )
    seg.save_as(str(path))
    return {"path": str(path), "segments": segments, "filled_in": generated,
            "sop_instance_uid": str(seg.SOPInstanceUID), "series_instance_uid": str(seg.SeriesInstanceUID)}

