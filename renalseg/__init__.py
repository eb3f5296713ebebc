"""renalseg: the renal artery tree from abdominal CT angiography (DPA-DenseBiasNet).

The public API is imported lazily so that ``import renalseg`` and
``renalseg --help`` stay fast (torch loads only when a model is needed)::

    import renalseg
    study = renalseg.read_study("patient/")           # DICOM folder or NIfTI/NRRD/MHA
    rois = renalseg.locate_kidneys(study)
    result = renalseg.segment_study(study)            # label map on the study's grid
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "read_study": "renalseg.io.study",
    "Study": "renalseg.study",
    "Geometry": "renalseg.geometry",
    "Volume": "renalseg.volume",
    "RenalsegError": "renalseg.errors",
    "locate_kidneys": "renalseg.roi",
    "KidneyROI": "renalseg.roi",
    "load_model": "renalseg.segmenter",
    "Segmenter": "renalseg.segmenter",
    "segment_study": "renalseg.pipeline",
    "Result": "renalseg.pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'renalseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
