"""The phantom's tissue classes, their arterial-phase HU ranges, and the KiPA22 labels.

Ranges are for the arterial / corticomedullary phase of a CTA. Where a published range exists
it is used as is; the rest, and the defaults, were checked against the real
arterial-phase CTA ``tests/data/ts_cta_kidney_upper_pole_only.nii.gz`` of the repository
(1.5 mm voxels, measured on eroded threshold regions, median (p5–p95)):

* aorta lumen 492 HU (416–577), so arteries 250–500 is the right band;
* fat −101 HU (−144 to −55);
* muscle ~50 HU (47 HU in a second measurement);
* noise: residual σ 22–26 HU in fat at 1.5 mm voxels, which at the model's
  0.7 × 0.7 × 1 mm voxels of a modern low-dose CTA corresponds to the 8–25 HU
  (after the scanner's smoothing kernel) of the phantom's noise model;
* trabecular bone ~136 HU and cortical bone ~677 HU: the often quoted
  "bone 300–1200" holds for cortical bone; trabecular bone gets 120–300.
"""

from __future__ import annotations

__all__ = [
    "TISSUES",
    "TISSUE_IDS",
    "DEFAULT_INTENSITY_RANGES_HU",
    "TUMOUR_HYPO_HU",
    "TUMOUR_HYPER_HU",
    "TUMOUR_NECROSIS_HU",
    "CALCULUS_HU",
    "EXCRETED_CONTRAST_HU",
    "TISSUE_RANGES_HU",
    "DOMAIN_LIMITS_HU",
    "KIPA_LABELS",
    "TISSUE_TO_KIPA",
    "TEXTURE_HU",
    "IODINE_TISSUES",
    "iodine_gain_ranges",
]

#: tissue id -> name (one id per structure; id 0 is air outside the body)
TISSUES: dict[int, str] = {
    0: "air",
    1: "fat",
    2: "muscle",
    3: "bone_cortical",
    4: "bone_trabecular",
    5: "kidney_cortex",
    6: "kidney_medulla",
    7: "collecting_system",
    8: "sinus_fat",
    9: "renal_artery",
    10: "renal_vein",
    11: "tumour",
    12: "bowel",
    13: "bowel_contrast",
    14: "calcification",
    15: "liver",
    16: "spleen",
    17: "aorta",
    18: "ivc",
    19: "bowel_gas",
    20: "disc",
    21: "csf",
    22: "ureter",
    23: "other_artery",
    24: "other_vein",
    25: "pancreas",
    26: "adrenal",
    27: "cyst",
    28: "tumour_necrosis",
    29: "calculus",
}

#: name -> id
TISSUE_IDS: dict[str, int] = {name: tid for tid, name in TISSUES.items()}

#: tumour enhancement sub-ranges (the ``tumour`` range below spans both)
TUMOUR_HYPO_HU: tuple[float, float] = (20.0, 80.0)
TUMOUR_HYPER_HU: tuple[float, float] = (150.0, 300.0)
#: necrotic or cystic change inside a hypervascular tumour: it does not enhance, in any
#: phase (drawn apart from the case's intensities, see
#: :func:`renalseg.phantom.abdomen.necrotic_cores`)
TUMOUR_NECROSIS_HU: tuple[float, float] = (10.0, 40.0)
#: a stone in the collecting system: uric acid stones about 300-500 HU, calcium oxalate and
#: phosphate 600-1500 HU and more on CT (drawn apart from the case's intensities, see
#: :func:`renalseg.phantom.abdomen.urinary_tract`)
CALCULUS_HU: tuple[float, float] = (300.0, 1500.0)
#: iodinated contrast excreted into the collecting system and ureter (excretory phase, or a
#: split- or triple-bolus scan that shows it beside enhancing arteries): a case's level
EXCRETED_CONTRAST_HU: tuple[float, float] = (300.0, 1500.0)

#: per tissue name, the arterial-phase mean HU range each case samples from
DEFAULT_INTENSITY_RANGES_HU: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -980.0),
    "fat": (-120.0, -60.0),
    "muscle": (40.0, 60.0),
    "bone_cortical": (400.0, 1200.0),
    "bone_trabecular": (120.0, 300.0),
    "kidney_cortex": (150.0, 250.0),
    "kidney_medulla": (40.0, 100.0),
    "collecting_system": (0.0, 20.0),
    "sinus_fat": (-120.0, -60.0),
    "renal_artery": (250.0, 500.0),
    "renal_vein": (120.0, 220.0),
    "tumour": (20.0, 300.0),
    "bowel": (20.0, 60.0),
    "bowel_contrast": (200.0, 600.0),
    "calcification": (500.0, 1200.0),
    "liver": (60.0, 100.0),
    "spleen": (100.0, 180.0),
    "aorta": (250.0, 500.0),
    "ivc": (60.0, 160.0),
    "bowel_gas": (-1000.0, -900.0),
    "disc": (60.0, 110.0),
    "csf": (0.0, 20.0),
    "ureter": (0.0, 20.0),
    "other_artery": (250.0, 500.0),
    "other_vein": (80.0, 160.0),
    "pancreas": (90.0, 140.0),
    "adrenal": (30.0, 70.0),
    "cyst": (0.0, 20.0),
}

#: every tissue's HU range, for rendering a tissue map with random intensities (domain
#: randomisation): the arterial-phase ranges, the tumour's necrosis and stones
TISSUE_RANGES_HU: dict[str, tuple[float, float]] = {**DEFAULT_INTENSITY_RANGES_HU,
                                                    "tumour_necrosis": TUMOUR_NECROSIS_HU,
                                                    "calculus": CALCULUS_HU}

#: the HU a tissue's randomised mean must stay within, where widening its range (domain
#: randomisation draws from each range widened by half its width on each side) would
#: make it another tissue: the tumour's 20-300 HU would reach -120 HU (fat) and 440 HU
#: (contrast) and pass through the 0-20 HU of cysts and urine, while a renal cell
#: carcinoma on contrast-enhanced CT is a solid, enhancing mass (unenhanced 20-45 HU,
#: +20 HU or more with contrast). A tumour drawn as fat or fluid is the same picture as
#: the fat and cysts labelled background in other cases, so the class could not be learnt
#: from its intensity at all
DOMAIN_LIMITS_HU: dict[str, tuple[float, float]] = {"tumour": (30.0, 300.0)}

#: tissues whose HU on a contrast-enhanced CT is blood or parenchyma plus iodine (oral
#: contrast in the bowel too): their HU above :data:`UNENHANCED_HU` is the iodine's
IODINE_TISSUES: tuple[str, ...] = ("renal_artery", "aorta", "other_artery", "kidney_cortex", "kidney_medulla",
                                   "renal_vein", "ivc", "other_vein", "spleen", "liver", "pancreas", "tumour",
                                   "bowel_contrast")
#: blood and renal parenchyma without contrast (HU)
UNENHANCED_HU = 40.0
#: calcium's attenuation gains this share of iodine's as the tube voltage falls (bone: about
#: ×1.35 from 120 to 80 kVp, where iodine gains about ×1.6)
_CALCIUM_SHARE = 0.6


def iodine_gain_ranges(gain: float, ranges: dict[str, tuple[float, float]] | None = None
                       ) -> dict[str, tuple[float, float]]:
    """The tissue HU ranges of a scan on which iodine attenuates ``gain`` times as much as
    on the default phantoms (a 100-120 kVp CTA): about 1.3 at 100 kVp against 120, 1.6 at
    80 kVp, 1.9 at 70 kVp, and likewise on low-keV dual-energy images. Each iodine tissue's
    HU above :data:`UNENHANCED_HU` is multiplied by ``gain``, bone's and calcification's HU
    by ``1 + 0.6 (gain - 1)``; fat, muscle, fluid and air are left as they are. ``ranges``:
    some tissues' ranges in place of :data:`DEFAULT_INTENSITY_RANGES_HU`'s (e.g. a fainter
    artery's band), gained likewise.

    Example:
        >>> iodine_gain_ranges(2.0)["aorta"]
        (460.0, 960.0)
    """
    source = {**DEFAULT_INTENSITY_RANGES_HU, **(ranges or {})}
    out: dict[str, tuple[float, float]] = {}
    for tissue in IODINE_TISSUES:
        out[tissue] = tuple(UNENHANCED_HU + gain * (v - UNENHANCED_HU) if v > UNENHANCED_HU else v
                            for v in source[tissue])  # type: ignore[assignment]
    calcium = 1.0 + _CALCIUM_SHARE * (gain - 1.0)
    for tissue in ("bone_cortical", "bone_trabecular", "calcification"):
        out[tissue] = tuple(v * calcium for v in source[tissue])  # type: ignore[assignment]
    return out


#: standard deviation (HU) of each tissue's smooth internal texture (mottled bowel
#: content, trabecular pattern, splenic heterogeneity); 2 HU where not listed
TEXTURE_HU: dict[str, float] = {
    "bowel": 15.0,
    "bowel_contrast": 60.0,
    "bone_trabecular": 35.0,
    "spleen": 12.0,
    "liver": 5.0,
    "kidney_cortex": 8.0,
    "tumour": 12.0,
    "fat": 4.0,
    "sinus_fat": 6.0,
    "muscle": 4.0,
    "pancreas": 10.0,
}

#: KiPA22 label values
KIPA_LABELS: dict[int, str] = {0: "background", 1: "vein", 2: "kidney", 3: "artery", 4: "tumour"}

#: tissue name -> KiPA22 label (unlisted tissues are background: the ureter below the
#: kidney, simple cysts (as KiTS labels them apart from the kidney), other vessels)
TISSUE_TO_KIPA: dict[str, int] = {
    "renal_vein": 1,
    "kidney_cortex": 2,
    "kidney_medulla": 2,
    "collecting_system": 2,
    "calculus": 2,
    "renal_artery": 3,
    "tumour": 4,
    "tumour_necrosis": 4,
}
