"""Contrast phases for training phantoms: where brightness cannot tell the artery from the vein.

A phantom's default intensities (:func:`renalseg.phantom.abdomen.sample_intensities`)
are an arterial-phase CTA: arteries 250-500 HU, far above the veins. Real studies are
timed differently (late arterial, portal-venous, nephrographic; see the HU measured on
real scans in the training notes), and a network that learnt "the brightest tube
near the kidney is the artery" fails on them. :func:`apply_phase` redraws the vessel,
kidney and organ means of one case for a phase, from a generator of its own (the
case's anatomy, noise and every other draw stay those of its seed):

=============  ===============  ==============================  ===========================
phase          renal artery     renal vein, IVC                 kidney
=============  ===============  ==============================  ===========================
non-contrast   30-50            30-50                           cortex 25-40, medulla ≤ cortex
arterial       250-500 (as is)  120-220, IVC 60-160 (as is)     cortex ≥ 80 below artery
late-arterial  220-380          150-250, IVC 100-200            cortex 160-260, medulla 80-140
portal-venous  130-250          artery … artery + 50 (≥ artery)  cortex, medulla ≥ artery (≤ 280)
nephrographic  120-200          artery … artery + 30 (≥ artery)  homogeneous, ≥ artery, 150-250
=============  ===============  ==============================  ===========================

A tumour keeps its arterial kind (:data:`~renalseg.phantom.tissues.TUMOUR_HYPER_HU`:
hypervascular, clear-cell-like; else hypovascular, papillary-like) and, in the late
arterial phase (still corticomedullary), its arterial value. In the portal-venous and
nephrographic phases a hypervascular one washes out to 30-130 HU below the cortex and a
hypovascular one lies at 41-95 HU (portal-venous) or 18-91 HU (nephrographic), the
ranges measured on homogeneous papillary carcinomas (see :func:`_tumour_hu`).

The aorta follows the renal artery (× 0.98-1.05) and the other arteries the aorta, as in
the arterial phase. In portal-venous and nephrographic cases the veins are as bright as
or brighter than the arteries and the arteries no brighter than the kidney: only the
anatomy tells them apart (the artery arises from the aorta and runs behind the vein).

Example:
    >>> base = {"renal_artery": 400.0, "aorta": 410.0, "other_artery": 400.0, "renal_vein": 180.0, "ivc": 120.0,
    ...         "other_vein": 120.0, "kidney_cortex": 220.0, "kidney_medulla": 70.0, "liver": 80.0,
    ...         "spleen": 140.0, "pancreas": 110.0}
    >>> pv = apply_phase(base, "portal-venous", seed=5)
    >>> 130 <= pv["renal_artery"] <= 250, pv["renal_vein"] >= pv["renal_artery"] <= pv["kidney_cortex"]
    (True, True)
    >>> apply_phase(base, "arterial", seed=5) == base
    True
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from renalseg.errors import UsageError, suggest
from renalseg.phantom.tissues import TUMOUR_HYPER_HU

__all__ = ["PHASES", "apply_phase", "parse_phase_mix", "draw_phase", "DEFAULT_PHASE_MIX"]

#: the contrast phases a phantom can be drawn in
PHASES: tuple[str, ...] = ("non-contrast", "arterial", "late-arterial", "portal-venous", "nephrographic")
#: the mix the four-structure training uses: 40% of cases with veins as bright as arteries
DEFAULT_PHASE_MIX = "arterial:0.4,late-arterial:0.2,portal-venous:0.3,nephrographic:0.1"

# the phase generator's stream, apart from the case's own (seed) stream
_PHASE_STREAM = 24


def _rng(seed: int, what: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _PHASE_STREAM, what])


def apply_phase(intensities: Mapping[str, float], phase: str, *, seed: int) -> dict[str, float]:
    """One case's tissue means (HU) redrawn for ``phase``; ``arterial`` returns them unchanged.

    Raises:
        UsageError: an unknown phase (the choices listed).
    """
    if phase not in PHASES:
        raise UsageError(f"phase {phase!r}: choose from {', '.join(PHASES)}." + suggest(phase, PHASES))
    out = dict(intensities)
    if phase == "arterial":
        return out
    rng = _rng(seed, 0)
    u = rng.uniform
    if phase == "non-contrast":  # un-enhanced blood and kidney (real scans: 30-50 HU)
        artery = u(30.0, 50.0)
        cortex = u(25.0, 40.0)
        out.update(renal_vein=u(30.0, 50.0), ivc=u(30.0, 50.0), other_vein=u(30.0, 50.0), kidney_cortex=cortex,
                   kidney_medulla=cortex - u(0.0, 10.0), liver=u(50.0, 65.0), spleen=u(40.0, 55.0),
                   pancreas=u(35.0, 50.0))
        for name, (lo, hi) in (("tumour", (20.0, 45.0)), ("adrenal", (10.0, 40.0))):
            if name in out:
                out[name] = u(lo, hi)
    elif phase == "late-arterial":
        artery = u(220.0, 380.0)
        out.update(renal_vein=u(150.0, 250.0), ivc=u(100.0, 200.0), other_vein=u(100.0, 180.0),
                   kidney_cortex=u(160.0, max(161.0, min(artery - 40.0, 260.0))), kidney_medulla=u(80.0, 140.0),
                   liver=u(80.0, 110.0), spleen=u(120.0, 180.0))
    elif phase == "portal-venous":
        artery = u(130.0, 250.0)
        cortex = u(artery, max(artery + 1.0, min(artery + 60.0, 280.0)))
        out.update(renal_vein=u(artery, artery + 50.0), ivc=u(artery, artery + 50.0),
                   other_vein=u(artery - 20.0, artery + 30.0), kidney_cortex=cortex,
                   kidney_medulla=u(artery, cortex), liver=u(100.0, 140.0), spleen=u(110.0, 150.0),
                   pancreas=u(90.0, 130.0))
    else:  # nephrographic
        artery = u(120.0, 200.0)
        kidney = u(max(artery, 150.0), 250.0)
        out.update(renal_vein=u(artery, artery + 30.0), ivc=u(artery, artery + 30.0),
                   other_vein=u(artery - 10.0, artery + 30.0), kidney_cortex=kidney,
                   kidney_medulla=kidney - u(0.0, 10.0) if kidney - 10.0 >= artery else kidney,
                   liver=u(100.0, 130.0), spleen=u(100.0, 130.0))
    if "tumour" in out and phase in ("portal-venous", "nephrographic"):
        out["tumour"] = _tumour_hu(float(out["tumour"]), phase, float(out["kidney_cortex"]), seed)
    out["renal_artery"] = artery
    out["aorta"] = artery * u(0.98, 1.05)
    out["other_artery"] = out["aorta"] * u(0.95, 1.0)
    return {k: round(float(v), 1) for k, v in out.items()}


def _tumour_hu(arterial_hu: float, phase: str, cortex_hu: float, seed: int) -> float:
    """The tumour's mean HU in a portal-venous or nephrographic ``phase`` (its own generator).

    The arterial (corticomedullary) value tells the kind: from :data:`TUMOUR_HYPER_HU` a
    hypervascular, clear-cell-like tumour, which washes out below the enhancing
    parenchyma (30-130 HU below the cortex, at least 70 HU); otherwise a hypovascular,
    papillary-like one at the attenuations measured on 42 homogeneous papillary renal cell
    carcinomas (portal-venous 41-95 HU, nephrographic 18-91 HU).
    """
    u = _rng(seed, 1).uniform
    if arterial_hu >= TUMOUR_HYPER_HU[0]:
        return u(max(70.0, cortex_hu - 130.0), max(71.0, cortex_hu - 30.0))
    low, high = (41.0, 95.0) if phase == "portal-venous" else (18.0, 91.0)
    return u(low, high)


def parse_phase_mix(text: str) -> dict[str, float]:
    """``--phase-mix`` text (``arterial:0.4,portal-venous:0.6``) → phase → share (summing to 1).

    Raises:
        UsageError: an unknown phase, a share that is not a number ≥ 0, or all zero.

    Example:
        >>> parse_phase_mix("arterial:1, portal-venous:3")
        {'arterial': 0.25, 'portal-venous': 0.75}
    """
    mix: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, share = item.partition(":")
        name = name.strip().lower()
        if name not in PHASES:
            raise UsageError(f"--phase-mix: unknown phase {name!r}; choose from {', '.join(PHASES)}."
                             + suggest(name, PHASES))
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not value >= 0 or name in mix:
            raise UsageError(f"--phase-mix item {item!r}: give each phase once as PHASE:SHARE with SHARE ≥ 0, "
                             f"e.g. {DEFAULT_PHASE_MIX}.")
        mix[name] = value
    total = sum(mix.values())
    if not total > 0:
        raise UsageError(f"--phase-mix {text!r}: no phase has a share above 0; e.g. {DEFAULT_PHASE_MIX}.")
    return {name: value / total for name, value in mix.items()}


def draw_phase(seed: int, mix: Mapping[str, float]) -> str:
    """The phase of the case with this seed (its own generator: the case's draws are unchanged).

    Example:
        >>> draw_phase(7, {"portal-venous": 1.0})
        'portal-venous'
    """
    names = list(mix)
    return str(names[int(_rng(seed, 1).choice(len(names), p=np.asarray([mix[n] for n in names])))])
