"""Phantoms rendered in each contrast phase, for ``bench_quality.py`` and the tests' slow checks.

One anatomy (a tissue map from :func:`renalseg.phantom.synthesize_abdomen`) is
rendered in any phase by giving each tissue a mean HU drawn from that phase's range,
then the phantom's own texture, blur and noise (:func:`renalseg.phantom.render.finish_image`).
The ranges follow the published enhancement curves of the aorta, the veins and the
renal cortex and medulla (arterial: cortex ≫ medulla; portal-venous ~70 s: arteries ≈
veins ≈ kidney, medulla catching up; nephrographic ~100 s: homogeneous kidney;
delayed 5–10 min: contrast in the collecting system).
"""

from __future__ import annotations

import numpy as np

from renalseg.phantom.render import finish_image
from renalseg.phantom.tissues import CALCULUS_HU, DEFAULT_INTENSITY_RANGES_HU, TISSUES
from renalseg.volume import Volume

__all__ = ["PHASE_RANGES_HU", "phase_intensities", "render_phase"]

_VESSELS = ("renal_artery", "renal_vein", "ivc", "other_vein")
#: per phase: tissue -> (lo, hi) mean HU; the medulla as a difference to the cortex where given
PHASE_RANGES_HU: dict[str, dict[str, tuple[float, float]]] = {
    "non_contrast": {"renal_artery": (35, 50), "renal_vein": (35, 50), "ivc": (35, 50), "other_vein": (35, 50),
                     "kidney_cortex": (25, 40), "medulla_minus_cortex": (-8, 8), "liver": (45, 65),
                     "spleen": (40, 55), "pancreas": (35, 50), "adrenal": (25, 40), "collecting_system": (0, 15)},
    "early_arterial": {"renal_artery": (300, 500), "renal_vein": (70, 130), "ivc": (50, 90),
                       "other_vein": (60, 95), "kidney_cortex": (130, 210), "kidney_medulla": (35, 70),
                       "liver": (55, 75), "spleen": (90, 150), "pancreas": (90, 140), "collecting_system": (0, 15)},
    "late_arterial": {"renal_artery": (250, 420), "renal_vein": (150, 240), "ivc": (110, 160),
                      "other_vein": (120, 190), "kidney_cortex": (170, 250), "kidney_medulla": (60, 110),
                      "liver": (70, 95), "spleen": (110, 160), "pancreas": (100, 150), "collecting_system": (0, 15)},
    "portal_venous": {"renal_artery": (150, 210), "renal_vein": (150, 210), "ivc": (140, 200),
                      "other_vein": (170, 230), "kidney_cortex": (160, 220), "medulla_minus_cortex": (-60, -25),
                      "liver": (100, 130), "spleen": (110, 140), "pancreas": (90, 120), "collecting_system": (0, 15)},
    "nephrographic": {"renal_artery": (130, 175), "renal_vein": (130, 175), "ivc": (130, 170),
                      "other_vein": (135, 180), "kidney_cortex": (140, 190), "medulla_minus_cortex": (-12, 8),
                      "liver": (95, 120), "spleen": (100, 125), "pancreas": (80, 110), "collecting_system": (0, 30)},
    "delayed": {"renal_artery": (90, 130), "renal_vein": (90, 130), "ivc": (90, 130), "other_vein": (90, 130),
                "kidney_cortex": (95, 140), "medulla_minus_cortex": (-10, 15), "liver": (70, 100),
                "spleen": (70, 95), "pancreas": (60, 90), "collecting_system": (400, 1200)},
}


def phase_intensities(phase: str, rng: np.random.Generator) -> dict[str, float]:
    """One case's mean HU per tissue in ``phase`` (the arterial defaults where the phase says nothing)."""
    ranges = PHASE_RANGES_HU[phase]
    out = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in DEFAULT_INTENSITY_RANGES_HU.items()}
    for name, (lo, hi) in ranges.items():
        if name != "medulla_minus_cortex":
            out[name] = float(rng.uniform(lo, hi))
    if "medulla_minus_cortex" in ranges:
        out["kidney_medulla"] = out["kidney_cortex"] + float(rng.uniform(*ranges["medulla_minus_cortex"]))
    out["aorta"] = out["renal_artery"] * float(rng.uniform(0.98, 1.05))
    out["other_artery"] = out["aorta"] * float(rng.uniform(0.95, 1.0))
    out["sinus_fat"] = out["fat"] + float(rng.uniform(0, 20))
    out["ureter"] = out["collecting_system"]
    out["tumour"] = float(rng.uniform(20, 80))
    out["tumour_necrosis"] = float(rng.uniform(10, 35))  # a necrotic core enhances in no phase
    out["calculus"] = float(rng.uniform(*CALCULUS_HU))  # nor does a stone (drawn last: the draws above unchanged)
    return out


def render_phase(tissues: Volume, phase: str, seed: int, *, noise_sigma_hu: float | None = None,
                 psf_fwhm_mm: float | None = None) -> tuple[Volume, dict]:
    """``tissues`` rendered in ``phase``: (int16 HU volume, the intensities and imaging used)."""
    rng = np.random.default_rng(seed)
    intensities = phase_intensities(phase, rng)
    psf = float(psf_fwhm_mm if psf_fwhm_mm is not None else rng.uniform(0.6, 1.0))
    noise = float(noise_sigma_hu if noise_sigma_hu is not None else rng.uniform(8.0, 25.0))
    lut = np.zeros(256, np.float32)
    for tid, name in TISSUES.items():
        lut[tid] = intensities[name]
    hu = lut[tissues.array]
    image = finish_image(hu, tissues.array, tissues.geometry, psf_fwhm_mm=psf, noise_sigma_hu=noise, rng=rng)
    return tissues.with_array(image), {"phase": phase, "intensities_hu": intensities, "psf_fwhm_mm": psf,
                                       "noise_sigma_hu": noise}
