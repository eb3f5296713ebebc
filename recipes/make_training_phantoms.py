"""Write ROI phantoms in the KiPA22 training layout (the shipped weights' data).

The cases of ``recipes/shipped_weights.sh``: ``synthesize_roi`` kidney ROIs at the
model spacing (0.7 × 0.7 × 1.0 mm), so training needs no resampling, written as
``OUT/{image,label,tissue}/roi_SEED.nii.gz`` plus ``OUT/cases.json``. A case already
in OUT is not made again, so a folder can grow by seed ranges.

    python recipes/make_training_phantoms.py OUT --seeds 1000-1039
    python recipes/make_training_phantoms.py OUT --seeds 9100-9103 --unseen-intensities
    python recipes/make_training_phantoms.py OUT --seeds 1500-1649 --artery-hu 250-340
    python recipes/make_training_phantoms.py OUT --seeds 2000-2399 --phase-mix arterial:0.4,portal-venous:0.6 \
        --great-vessels --tumour-share 0.5

``--unseen-intensities`` renders the cases with intensities, noise and blur outside
the training ranges (``UNSEEN``). ``--artery-hu LO-HI`` draws the renal artery's mean HU
from that band instead of 250–500 (the aorta, other arteries and cortex follow it as
always): weakly enhanced arteries, where the network loses the most Dice.
``--phase-mix PHASE:SHARE,...`` draws each case's contrast phase
(:mod:`renalseg.phantom.phases`); ``--phase PHASE`` gives every case one phase (held-out sets).
``--great-vessels`` crops the box ``renalseg segment`` places (the kidney plus the renal
vessels' reach to the aorta and the IVC) instead of 152 × 152 around the kidney.
``--tumour-share S`` gives a share S of the cases a tumour (drawn per seed; default: the
generator's own 30 %). ``--noise-hu LO-HI`` draws each case's noise (HU standard deviation)
from that band instead of 8–25 HU; the case is otherwise the same, noise pattern included
(``--noise-hu 40-40`` makes a held-out set again at 40 HU; docs/validation.md, "Noise"). ``--spacing-mm X,Y,Z`` renders the cases on a scanner's own
grid instead of the model's (the noise drawn there, as a scanner's is; the box about as wide
in mm): ``renalseg segment`` resamples them as it does a patient's scan.
``--stone-share S`` and ``--excretion-share S`` give a share S of the cases stones in the
collecting system or contrast excreted into it (drawn per seed, each from its own generator;
the case is otherwise the same: :func:`renalseg.phantom.abdomen.urinary_tract`).
``--vein-behind-aorta-share S`` gives a share S of the cases a left renal vein behind the
aorta, half retroaortic and half circumaortic (``synthesize_roi(left_renal_vein=...)``; the
shipped weights were trained without it: docs/validation.md, "A left renal vein behind the
aorta").
``--hilar-share S`` grows a share S of the tumours in the renal hilum, against the main
renal artery and vein (``synthesize_roi(tumour_site="hilar")``; the shipped weights were
trained without them, as the default phantoms keep tumours out of the hilum).
``--iodine-gain G`` draws the cases as a scan on which iodine attenuates G times as much
(:func:`renalseg.phantom.tissues.iodine_gain_ranges`: 1.6 about an 80 kVp CTA, 2 about
70 kVp or a low-keV dual-energy image, against the default's 100-120 kVp; arterial-phase
cases, as the other phases redraw their own HU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from renalseg.io.image import write_image
from renalseg.phantom.abdomen import NOISE_RANGE_HU, synthesize_roi
from renalseg.phantom.phases import draw_phase, parse_phase_mix
from renalseg.phantom.tissues import DEFAULT_INTENSITY_RANGES_HU, iodine_gain_ranges

SPACING_XYZ_MM = (0.7, 0.7, 1.0)

#: intensity settings the training phantoms never use (outside DEFAULT_INTENSITY_RANGES_HU):
#: weaker arterial enhancement, brighter cortex and fat, more noise, blurrier PSF
UNSEEN = {
    "intensities_hu": {"renal_artery": 200.0, "aorta": 210.0, "kidney_cortex": 270.0, "kidney_medulla": 130.0,
                       "fat": -40.0, "sinus_fat": -30.0, "renal_vein": 230.0},
    "noise_sigma_hu": 32.0,
    "psf_fwhm_mm": 1.3,
}


def artery_options(band: str | None) -> dict:
    """``synthesize_roi`` options for ``--artery-hu LO-HI`` (none without a band)."""
    return {"intensity_ranges_hu": {"renal_artery": [float(v) for v in band.split("-")]}} if band else {}


#: each per-case draw's own generator stream (beside the case's seed)
_DRAW_STREAMS = {"tumour": 4242, "stones": 4243, "excreted_contrast": 4244, "left_renal_vein": 4245,
                 "retroaortic": 4246, "tumour_site": 4247}


def draws(seed: int, share: float, what: str = "tumour") -> bool:
    """Whether case ``seed`` gets ``what`` (``"tumour"``, ``"stones"``,
    ``"excreted_contrast"``, ``"left_renal_vein"`` behind the aorta, ``"retroaortic"``
    rather than circumaortic, ``"tumour_site"`` hilar) at that share: drawn from a generator of its own, so the
    case's other draws are the same either way."""
    return bool(np.random.default_rng([seed, _DRAW_STREAMS[what]]).random() < share)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", required=True, help="FIRST-LAST (inclusive)")
    parser.add_argument("--unseen-intensities", action="store_true")
    lo, hi = DEFAULT_INTENSITY_RANGES_HU["renal_artery"]
    parser.add_argument("--artery-hu", help=f"LO-HI: the renal artery's mean HU band (default {lo:g}-{hi:g})")
    parser.add_argument("--phase-mix", help="PHASE:SHARE,...: each case's contrast phase drawn with these shares")
    parser.add_argument("--phase", help="every case in this contrast phase")
    parser.add_argument("--great-vessels", action="store_true", help="the segment ROI: aorta and IVC in view")
    parser.add_argument("--tumour-share", type=float, help="share of cases with a tumour (default: 30%% at random)")
    lo, hi = NOISE_RANGE_HU
    parser.add_argument("--noise-hu", help=f"LO-HI: the band each case's noise SD is drawn from (default {lo:g}-{hi:g})")
    parser.add_argument("--stone-share", type=float, help="share of cases with stones in the collecting system")
    parser.add_argument("--excretion-share", type=float,
                        help="share of cases with contrast excreted into the collecting system and ureter")
    parser.add_argument("--iodine-gain", type=float,
                        help="iodine attenuates G times as much (1.6: an 80 kVp CTA, 2: 70 kVp or low-keV images)")
    parser.add_argument("--vein-behind-aorta-share", type=float,
                        help="share of cases whose left renal vein runs behind the aorta (half retroaortic, half "
                        "circumaortic)")
    parser.add_argument("--hilar-share", type=float, help="share of the tumours grown in the renal hilum")
    parser.add_argument("--spacing-mm", help="X,Y,Z: the grid the cases are rendered on (default: the model's "
                        + ",".join(f"{v:g}" for v in SPACING_XYZ_MM) + ")")
    args = parser.parse_args()
    spacing = tuple(float(v) for v in args.spacing_mm.split(",")) if args.spacing_mm else SPACING_XYZ_MM
    # at least the model grid's 152 voxels' width in mm, as a located box would be
    inplane = int(np.ceil(152 * SPACING_XYZ_MM[0] / spacing[0] - 1e-6))
    mix = parse_phase_mix(args.phase_mix) if args.phase_mix else {args.phase: 1.0} if args.phase else None
    first, last = (int(v) for v in args.seeds.split("-"))
    records = []
    for seed in range(first, last + 1):
        case_id = f"roi_{seed:05d}"
        if (args.out / "label" / f"{case_id}.nii.gz").exists():
            continue
        t0 = time.perf_counter()
        options = {**(UNSEEN if args.unseen_intensities else {}), **artery_options(args.artery_hu)}
        if args.iodine_gain is not None:
            given = options.get("intensity_ranges_hu", {})
            options["intensity_ranges_hu"] = {**given, **iodine_gain_ranges(args.iodine_gain, given)}
        if mix is not None:
            options["phase"] = draw_phase(seed, mix)
        if args.great_vessels:
            options["great_vessels"] = True
        if args.noise_hu:
            options["noise_range_hu"] = [float(v) for v in args.noise_hu.split("-")]
        if args.tumour_share is not None:
            options["tumour"] = draws(seed, args.tumour_share)
        for what, share in (("stones", args.stone_share), ("excreted_contrast", args.excretion_share)):
            if share is not None and draws(seed, share, what):
                options[what] = True
        if args.hilar_share is not None and draws(seed, args.hilar_share, "tumour_site"):
            options["tumour_site"] = "hilar"
        if args.vein_behind_aorta_share is not None and draws(seed, args.vein_behind_aorta_share, "left_renal_vein"):
            options["left_renal_vein"] = "retroaortic" if draws(seed, 0.5, "retroaortic") else "circumaortic"
        case = synthesize_roi(seed, spacing_xyz_mm=spacing, inplane_voxels=inplane, **options)
        write_image(case.image, args.out / "image" / f"{case_id}.nii.gz")
        write_image(case.tissues, args.out / "tissue" / f"{case_id}.nii.gz")
        write_image(case.label, args.out / "label" / f"{case_id}.nii.gz")
        records.append({"case": case_id, "seed": seed, "shape_zyx": list(case.image.array.shape),
                        "artery_voxels": int((case.label.array == 3).sum()),
                        "options": {k: v for k, v in options.items()}, "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(records[-1]), flush=True)
    index = args.out / "cases.json"
    old = json.loads(index.read_text()) if index.exists() else {"kind": "roi", "generator": "synthesize_roi", "cases": []}
    old["cases"] = sorted(old["cases"] + records, key=lambda r: r["seed"])
    old["spacing_xyz_mm"] = list(spacing)
    index.write_text(json.dumps(old, indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
