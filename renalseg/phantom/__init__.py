"""Synthetic CTA phantoms with known ground truth (``renalseg synth``).

No labelled renal-artery CTA may ship with the project, so the shipped weights, the
demo, the tests and the benchmarks stand on these phantoms. Two kinds:

* :func:`synthesize_roi`: a kidney ROI like the paper's 152 × 152 × Z crops;
* :func:`synthesize_abdomen`: a whole abdomen, 512 × 512 × (250–500) voxels.

Each returns a :class:`PhantomCase`: the int16 HU image, KiPA22 labels (1 vein,
2 kidney, 3 artery, 4 tumour), the tissue-class map (:data:`TISSUES`) and a JSON-ready
``params`` dict. :func:`render_tissues` renders new images from a tissue map (domain
randomisation) and :func:`write_cases` writes the training layout.

Example:
    >>> from renalseg.phantom import synthesize_roi, TISSUES
    >>> case = synthesize_roi(0, inplane_voxels=40, spacing_xyz_mm=(2.8, 2.8, 3.5))
    >>> case.image.geometry.is_same_grid(case.label.geometry), TISSUES[9]
    (True, 'renal_artery')
"""

from __future__ import annotations

from renalseg.phantom.abdomen import DIRECTIONS, PhantomCase, synthesize_abdomen, synthesize_roi
from renalseg.phantom.render import render_tissues
from renalseg.phantom.tissues import DEFAULT_INTENSITY_RANGES_HU, KIPA_LABELS, TISSUE_IDS, TISSUES
from renalseg.phantom.writer import write_cases

__all__ = [
    "PhantomCase",
    "TISSUES",
    "TISSUE_IDS",
    "KIPA_LABELS",
    "DEFAULT_INTENSITY_RANGES_HU",
    "DIRECTIONS",
    "synthesize_roi",
    "synthesize_abdomen",
    "render_tissues",
    "write_cases",
]
