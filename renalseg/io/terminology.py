"""What each labelled structure is called in DICOM and in 3D Slicer: one registry, pure data.

A label name from ``labels.json`` (``renal_artery``, ``renal_vein``, ``kidney``,
``tumour``, ...) maps to a kind (:func:`renalseg.labels.structure_kind`) and the kind
to a :class:`Structure`: a display name, a colour (the report page's colours) and
SNOMED CT codes from DICOM's segmentation context groups: the category from CID 7150
(Segmentation Property Categories), the type from CID 7151 (Segmentation Property
Types), and for the tumour the anatomic region kidney. The codes come from pydicom's
code dictionary (``pydicom.sr.codedict.codes``), not typed in here, so a misspelt
code fails at import.

Example:
    >>> s = structure_for("renal_artery")
    >>> s.display_name, s.type_code.value, s.type_code.scheme_designator, s.rgb
    ('Renal artery', '2841007', 'SCT', (214, 39, 40))
    >>> structure_for("tumor").category_code.meaning, structure_for("tumor").region_code.meaning
    ('Morphologically Abnormal Structure', 'Kidney')
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from renalseg.labels import structure_kind
from renalseg.report import STRUCTURE_STYLES

__all__ = ["Structure", "structure_for", "slicer_terminology_entry"]


@dataclass(frozen=True)
class Structure:
    """How one kind of structure is named, coloured and coded.

    Attributes:
        kind: ``artery``, ``vein``, ``kidney``, ``tumour`` or ``other``.
        display_name: the segment label shown by viewers.
        rgb: colour, 0-255 per channel.
        category_code: CID 7150 code (Segmented Property Category).
        type_code: CID 7151 code (Segmented Property Type).
        region_code: anatomic region (tumour: the kidney), or ``None``.
    """

    kind: str
    display_name: str
    rgb: tuple[int, int, int]
    category_code: Code
    type_code: Code
    region_code: Code | None = None


def _rgb(kind: str) -> tuple[int, int, int]:
    colour = STRUCTURE_STYLES[kind]["color"].lstrip("#")
    return tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


_STRUCTURES: dict[str, Structure] = {
    "artery": Structure("artery", "Renal artery", _rgb("artery"), codes.cid7150.AnatomicalStructure,
                        codes.cid7151.RenalArtery),
    "vein": Structure("vein", "Renal vein", _rgb("vein"), codes.cid7150.AnatomicalStructure,
                      codes.cid7151.RenalVein),
    "kidney": Structure("kidney", "Kidney", _rgb("kidney"), codes.cid7150.AnatomicalStructure,
                        codes.cid7151.Kidney),
    "tumour": Structure("tumour", "Kidney tumour", _rgb("tumour"), codes.cid7150.MorphologicallyAbnormalStructure,
                        codes.cid7151.Neoplasm, codes.cid7151.Kidney),
    "other": Structure("other", "Other", _rgb("other"), codes.cid7150.Tissue, codes.cid7151.Tissue),
}


def structure_for(label_name: str) -> Structure:
    """The :class:`Structure` of a ``labels.json`` name (unknown names: ``other``,
    displayed under their own name)."""
    kind = structure_kind(label_name)
    structure = _STRUCTURES[kind]
    if kind == "other":
        return Structure(kind, label_name.replace("_", " "), structure.rgb, structure.category_code,
                         structure.type_code)
    return structure


def _code_triplet(code: Code) -> str:
    return f"{code.scheme_designator}^{code.value}^{code.meaning}"


def slicer_terminology_entry(structure: Structure) -> str:
    """3D Slicer's ``TerminologyEntry`` tag: context, category, type, modifier, region.

    Example:
        >>> slicer_terminology_entry(structure_for("renal_artery"))  # doctest: +NORMALIZE_WHITESPACE
        'Segmentation category and type - DICOM master list~SCT^91723000^Anatomical Structure~SCT^2841007^Renal
        artery~^^~Anatomic codes - DICOM master list~^^~^^'
    """
    region = _code_triplet(structure.region_code) if structure.region_code is not None else "^^"
    return ("Segmentation category and type - DICOM master list"
            f"~{_code_triplet(structure.category_code)}~{_code_triplet(structure.type_code)}~^^"
            f"~Anatomic codes - DICOM master list~{region}~^^")
