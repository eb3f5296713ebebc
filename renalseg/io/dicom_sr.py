"""``labels.sr.dcm``: the volumes and the tumour's diameter as a DICOM Structured Report.

``renalseg segment`` writes it beside ``labels.seg.dcm`` for a study read from DICOM: a
TID 1500 Measurement Report (Comprehensive 3D SR, built with highdicom) in the CT's study,
as a series of its own. PACS viewers and reporting systems that read TID 1500 (OHIF,
3D Slicer's Quantitative Reporting, dcmqi) list the figures a report quotes without
opening ``report.json``:

* one measurement group (TID 1411, volumetric ROI) per segment of the SEG, each naming
  its segment (Referenced Segment: the SEG's instance and segment number, the source CT
  series), the structure's SNOMED CT category and type (the SEG's own codes,
  :mod:`renalseg.io.terminology`), and the algorithm (model name, renalseg version,
  weights sha256);
* in each group, the structure's volume (ml) in all, and its volume on each kidney's side,
  as a measurement whose finding site carries the laterality; for the tumour also the
  largest diameter (mm, derivation ``Maximum``) on each side, except on a side whose
  longest tumour piece is too thin to be a tumour's outline
  (:func:`renalseg.quality.tumour_too_thin`, a ``check`` in the verdict): a PACS shows
  a measurement without the warning beside it, and that diameter misstates the
  tumour's size. The figures are ``report.json``'s ``structures`` block, the same
  numbers to the rounding there;
* for each structure ``labels.json`` names that has no segment (it was looked for and
  none was labelled: no tumour, say), a group (TID 1501) of its codes with the
  qualitative evaluation "Presence of property" = Absent, so that a reader sees "not
  found" rather than a structure left out;
* with ``verdict`` (``report.json``'s ``quality.verdict``), a group (TID 1501) holding it as
  a qualitative evaluation, so that a figure read in a PACS carries the same warning as
  the preview: ``ok``, ``check`` (check against the images before use) or ``unreliable``.
  DICOM has no code for an algorithm's verdict on its own output (its quality-control
  codes judge images), so the concept and its three values are renalseg's own codes, in a
  private coding scheme (``99RSEG``, declared in the object's Coding Scheme
  Identification); the reasons stay in ``report.json`` and on the preview.

A segment covers both sides (one per structure, as in the SEG), so the per-side figures are
measurements of a part of it, said by their finding site; the total is the segment's own.
The report is marked unverified and not final: an algorithm wrote it, no person has
checked it. Its series description says research use and, when the model card says so,
that the weights were trained on synthetic phantoms.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from renalseg import __version__
from renalseg.errors import InputError
from renalseg.io.dicom_seg import series_description
from renalseg.io.output import atomic_write_bytes
from renalseg.io.terminology import structure_for
from renalseg.quality import tumour_too_thin

__all__ = ["write_measurement_report", "SR_SERIES_NUMBER", "MILLILITRE", "CODING_SCHEME", "QUALITY_VERDICT",
           "VERDICT_CODES"]

#: the SeriesNumber of ``labels.sr.dcm`` (the SEG is 9001, the Secondary Captures 9002-9003)
SR_SERIES_NUMBER = 9004
#: UCUM's millilitre (pydicom's code dictionary has no keyword for it)
MILLILITRE = Code("ml", "UCUM", "milliliter")
_LATERALITY = {"right": codes.SCT.Right, "left": codes.SCT.Left}
#: renalseg's private coding scheme (DICOM leaves designators beginning "99" to private use)
CODING_SCHEME = "99RSEG"
#: the concept of the quality verdict's evaluation, and its value for each verdict
QUALITY_VERDICT = Code("verdict", CODING_SCHEME, "renalseg quality verdict")
VERDICT_CODES = {
    "ok": Code("ok", CODING_SCHEME, "No quality check failed"),
    "check": Code("check", CODING_SCHEME, "Check against the images before use"),
    "unreliable": Code("unreliable", CODING_SCHEME, "Unreliable: not to be used uncorrected"),
}


def _region_site(structure: Any) -> list | None:
    """A group's finding site: the structure's anatomic region, where it has one."""
    import highdicom as hd

    return None if structure.region_code is None else [hd.sr.FindingSite(anatomic_location=structure.region_code)]


def write_measurement_report(seg_path: Path | str, segments: Sequence[Mapping[str, Any]],
                             label_names: Mapping[str, str], structures: Mapping[str, Mapping[str, Mapping[str, Any]]],
                             path: Path | str, *, model_name: str, weights_sha256: str | None,
                             synthetic_training_only: bool, verdict: str | None = None) -> dict:
    """Write the structures' volumes (and the tumour's diameter) as a TID 1500 SR.

    Args:
        seg_path: the DICOM SEG written for the study (its study, instance and segments
            are what the report refers to).
        segments: :func:`renalseg.io.dicom_seg.write_dicom_seg`'s ``segments``
            (``number``, ``label_value`` per segment).
        label_names: ``labels.json`` (a label value's name gives its structure).
        structures: ``report.json``'s ``structures``: ``{kind: {side: {"volume_ml", ...,
            "largest_diameter_mm" (tumour)}}}`` (:func:`renalseg.figures.structure_figures`).
        path: where to write (``labels.sr.dcm``).
        model_name, weights_sha256: the algorithm identification.
        synthetic_training_only: say so in the series description.
        verdict: the quality verdict (``ok``, ``check``, ``unreliable``), reported as a
            group of its own; None leaves it out.

    Returns:
        ``{"path", "sop_instance_uid", "series_instance_uid", "groups"}``; ``groups``
        lists each group's segment number (None for a structure not found), structure and
        measurements in words.

    Raises:
        InputError: no segment with figures to report.
        ValueError: a verdict other than the three.
    """
    import highdicom as hd

    if verdict is not None and verdict not in VERDICT_CODES:
        raise ValueError(f"unknown quality verdict {verdict!r}; expected one of {', '.join(VERDICT_CODES)}")

    seg = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(
        name=(model_name or "renalseg")[:64], version=f"renalseg {__version__}"[:64],
        parameters=[f"weights_sha256={weights_sha256 or 'unknown'}"])
    groups, described = [], []
    for segment in segments:
        structure = structure_for(str(label_names.get(str(segment["label_value"]), "")))
        kind = structure.kind
        per_side = structures.get(kind)
        if not per_side:
            continue
        site = structure.region_code or structure.type_code
        measurements = [hd.sr.Measurement(name=codes.SCT.Volume, unit=MILLILITRE, value=round(
            sum(float(figures["volume_ml"]) for figures in per_side.values()), 3), algorithm_id=algorithm)]
        words = [f"volume {measurements[0].value} ml"]
        for side, figures in per_side.items():
            where = [hd.sr.FindingSite(anatomic_location=site, laterality=_LATERALITY[side])] \
                if side in _LATERALITY else None
            measurements.append(hd.sr.Measurement(name=codes.SCT.Volume, unit=MILLILITRE,
                                                  value=float(figures["volume_ml"]), finding_sites=where,
                                                  algorithm_id=algorithm))
            words.append(f"{side} volume {figures['volume_ml']} ml")
            if figures.get("largest_diameter_mm") is not None and tumour_too_thin(figures):
                words.append(f"{side} largest diameter not stated: the label's longest piece is too thin to be "
                             "a tumour's outline")
            elif figures.get("largest_diameter_mm") is not None:
                measurements.append(hd.sr.Measurement(
                    name=codes.SCT.Diameter, unit=codes.UCUM.Millimeter, value=float(figures["largest_diameter_mm"]),
                    derivation=codes.SCT.Maximum, finding_sites=where, algorithm_id=algorithm))
                words.append(f"{side} largest diameter {figures['largest_diameter_mm']} mm")
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=structure.display_name[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=int(segment["number"]),
                source_series=hd.sr.SourceSeriesForSegmentation(source_series)),
            finding_type=structure.type_code, finding_category=structure.category_code,
            finding_sites=_region_site(structure),
            algorithm_id=algorithm, measurements=measurements))
        described.append({"segment_number": int(segment["number"]), "structure": kind, "measurements": words})
    if not groups:
        raise InputError(f"No segment of {Path(seg_path).name} has figures in report.json's structures: "
                         "nothing to report.")
    segmented = {str(segment["label_value"]) for segment in segments} | {"0"}  # 0: background
    reported = {d["structure"] for d in described}
    for value, name in label_names.items():
        structure = structure_for(str(name))
        if str(value) in segmented or structure.kind in reported:
            continue
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=structure.display_name[:64]),
            finding_type=structure.type_code, finding_category=structure.category_code,
            finding_sites=_region_site(structure), algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.PresenceOfProperty,
                                                                 value=codes.SCT.Absent)]))
        described.append({"segment_number": None, "structure": structure.kind, "measurements": ["not found"]})
    if verdict is not None:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Quality verdict"),
            algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=QUALITY_VERDICT, value=VERDICT_CODES[verdict])]))
        described.append({"segment_number": None, "structure": "quality", "measurements": [f"verdict {verdict}"]})
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["renalseg", __version__, model_name or "renalseg"]),
            name="renalseg", manufacturer_name="renalseg", model_name=(model_name or "renalseg")[:64]))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    description = series_description(synthetic_training_only).replace("renalseg:", "renalseg volumes:", 1)
    with warnings.catch_warnings():  # a scanner's one-part patient name is copied as it is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg], content=content[0], series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="renalseg", is_complete=True,
            is_final=False, is_verified=False, series_description=description[:64])
    if verdict is not None:
        scheme = pydicom.Dataset()
        scheme.CodingSchemeDesignator = CODING_SCHEME
        scheme.CodingSchemeName = "renalseg codes"
        scheme.CodingSchemeResponsibleOrganization = "renalseg"
        sr.CodingSchemeIdentificationSequence = [*sr.get("CodingSchemeIdentificationSequence", []), scheme]
    sr.ManufacturerModelName = (model_name or "renalseg")[:64]
    sr.SoftwareVersions = __version__
    buffer = io.BytesIO()
    sr.save_as(buffer)
    atomic_write_bytes(path, buffer.getvalue())  # whole, or not at all
    return {"path": str(path), "sop_instance_uid": str(sr.SOPInstanceUID),
            "series_instance_uid": str(sr.SeriesInstanceUID), "groups": described}
