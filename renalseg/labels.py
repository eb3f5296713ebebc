"""The labelled structures: one registry, pure data (name, KiPA22 value, colour).

Every output label map uses the KiPA22 values (Kidney PArsing challenge 2022, the
paper's data set): 1 renal vein, 2 kidney, 3 renal artery, 4 tumour. A model card's
``classes`` (output channel → class name) say which structures a network labels;
:func:`output_values` turns its channels into these values, so the artery is 3 in
``labels.nii.gz`` whether the model labels the artery alone or all four structures,
and ``labels.json`` names the values written. The report page, the 3D Slicer and
DICOM SEG writers and the preview take their colours from here.

Example:
    >>> [(s.key, s.value, s.name) for s in STRUCTURES]
    [('vein', 1, 'renal_vein'), ('kidney', 2, 'kidney'), ('artery', 3, 'renal_artery'), ('tumour', 4, 'tumour')]
    >>> output_values({"0": "background", "1": "renal_artery"})
    {1: 3}
    >>> label_names({1: 3})
    {'0': 'background', '3': 'renal_artery'}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from renalseg.errors import ModelError, UsageError, suggest

__all__ = [
    "values_mask",
    "Structure",
    "STRUCTURES",
    "STRUCTURE_KEYS",
    "SOLID_KEYS",
    "BY_KEY",
    "structure_kind",
    "output_values",
    "label_names",
    "parse_structures",
    "values_of_kind",
]


@dataclass(frozen=True)
class Structure:
    """One labelled structure.

    Attributes:
        key: the short name ``--structures`` takes (``artery``).
        value: its KiPA22 label value in ``labels.nii.gz``.
        name: its name in ``labels.json`` and model cards (``renal_artery``).
        display_name: what viewers show.
        color: CSS hex colour (report page, Slicer, DICOM SEG).
        rgb: the same colour, 0-255 per channel.
    """

    key: str
    value: int
    name: str
    display_name: str
    color: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


#: KiPA22 order (value 1 … 4)
STRUCTURES: tuple[Structure, ...] = (
    Structure("vein", 1, "renal_vein", "Renal vein", "#1f5fbf"),
    Structure("kidney", 2, "kidney", "Kidney", "#c8875a"),
    Structure("artery", 3, "renal_artery", "Renal artery", "#d62728"),
    Structure("tumour", 4, "tumour", "Kidney tumour", "#8e44ad"),
)
#: ``--structures`` choices, in the order the CLI lists them
STRUCTURE_KEYS: tuple[str, ...] = ("artery", "vein", "kidney", "tumour")
BY_KEY: dict[str, Structure] = {s.key: s for s in STRUCTURES}
#: the solid structures: no centerline, no tree (``tree.json`` gives pieces and volume; no MCD)
SOLID_KEYS: tuple[str, ...] = ("kidney", "tumour")

# a class name means a structure when it holds one of these (``renal_artery``, ``tumor``)
_NAME_PARTS = (("arter", "artery"), ("vein", "vein"), ("tumo", "tumour"), ("kidney", "kidney"))


def structure_kind(name: str) -> str:
    """The kind of structure a label name means: artery, vein, kidney, tumour or other.

    Example:
        >>> [structure_kind(n) for n in ("renal_artery", "renal_vein", "kidney", "tumor", "cyst")]
        ['artery', 'vein', 'kidney', 'tumour', 'other']
    """
    lowered = name.lower()
    for part, kind in _NAME_PARTS:
        if part in lowered:
            return kind
    return "other"


def output_values(classes: Mapping[str, str]) -> dict[int, int]:
    """Output channel → KiPA22 label value, for a model card's ``classes``.

    Raises:
        ModelError: a class no structure here means, or two classes of one structure.

    Example:
        >>> output_values({"0": "background", "1": "renal_vein", "2": "kidney", "3": "renal_artery",
        ...                "4": "tumor"})
        {1: 1, 2: 2, 3: 3, 4: 4}
    """
    out: dict[int, int] = {}
    seen: dict[str, str] = {}
    for channel, name in sorted(((int(k), str(v)) for k, v in classes.items()), key=lambda kv: kv[0]):
        if channel == 0:
            continue
        kind = structure_kind(name)
        if kind not in BY_KEY:
            raise ModelError(f"model class {channel} {name!r} is none of the structures renalseg writes "
                             f"({', '.join(s.name for s in STRUCTURES)}); rename it in the model card.")
        if kind in seen:
            raise ModelError(f"model classes {seen[kind]!r} and {name!r} are both the {kind}; give each "
                             "structure one class in the model card.")
        seen[kind] = name
        out[channel] = BY_KEY[kind].value
    return out


def label_names(channel_values: Mapping[int, int]) -> dict[str, str]:
    """``labels.json``: value (as text) → structure name, background first, values ascending."""
    names = {"0": "background"}
    by_value = {s.value: s.name for s in STRUCTURES}
    for value in sorted(channel_values.values()):
        names[str(value)] = by_value[value]
    return names


def values_of_kind(names: Mapping[str, str] | Mapping[int, str], kind: str) -> list[int]:
    """The label values a ``labels.json`` gives to one kind of structure.

    Example:
        >>> values_of_kind({"0": "background", "3": "renal_artery"}, "artery")
        [3]
    """
    return [int(k) for k, v in names.items() if int(k) != 0 and structure_kind(str(v)) == kind]


def parse_structures(text: str | None, available: Iterable[str]) -> tuple[str, ...]:
    """``--structures`` text (``artery,vein``) → structure keys; ``None``: every one available.

    Args:
        text: comma-separated keys, or ``None``.
        available: the keys the model labels.

    Raises:
        UsageError: an unknown key (the choices listed, the closest suggested), one the
            model does not label, or none at all.

    Example:
        >>> parse_structures("vein, artery", ["artery", "vein", "kidney"])
        ('artery', 'vein')
        >>> parse_structures(None, ["artery"])
        ('artery',)
    """
    available = [k for k in STRUCTURE_KEYS if k in set(available)]
    if text is None:
        return tuple(available)
    asked = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not asked:
        raise UsageError(f"--structures {text!r}: name at least one of {', '.join(STRUCTURE_KEYS)}.")
    for key in asked:
        if key not in BY_KEY:
            raise UsageError(f"--structures: unknown structure {key!r}; choose from {', '.join(STRUCTURE_KEYS)}."
                             + suggest(key, STRUCTURE_KEYS))
        if key not in available:
            raise UsageError(f"--structures {key}: the model labels only {', '.join(available)}; pick among "
                             "them or pass --weights with a model that labels it.")
    return tuple(k for k in STRUCTURE_KEYS if k in asked)


def values_mask(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """Where ``labels`` holds one of ``values``: ``np.isin`` for a uint8 or uint16 label map
    (labels, territories), by a comparison (one value) or a look-up table, 4-30 times as
    fast on a study's grid.

    Example:
        >>> values_mask(np.array([0, 2, 3, 4], np.uint8), [2, 4]).tolist()
        [False, True, False, True]
    """
    values = [int(v) for v in values]
    labels = np.asarray(labels)
    if labels.dtype not in (np.uint8, np.uint16):
        return np.isin(labels, values)
    if len(values) == 1:
        return labels == values[0]
    size = int(np.iinfo(labels.dtype).max) + 1
    table = np.zeros(size, dtype=bool)
    table[[v for v in values if 0 <= v < size]] = True
    return table[labels]
