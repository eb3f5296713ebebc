"""Contrast phases of training phantoms (renalseg.phantom.phases) and ``renalseg synth --phase-mix``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from renalseg.cli.app import app
from renalseg.errors import UsageError
from renalseg.phantom import synthesize_roi
from renalseg.phantom.abdomen import sample_intensities
from renalseg.phantom.phases import DEFAULT_PHASE_MIX, apply_phase, draw_phase, parse_phase_mix

SMALL = {"inplane_voxels": 48, "spacing_xyz_mm": (2.4, 2.4, 3.0)}


def test_arterial_phase_is_the_default_phantom_bit_for_bit():
    default, arterial = synthesize_roi(3, **SMALL), synthesize_roi(3, **SMALL, phase="arterial")
    assert np.array_equal(default.image.array, arterial.image.array)
    assert np.array_equal(default.label.array, arterial.label.array)


def test_portal_venous_keeps_the_anatomy_and_makes_veins_as_bright_as_arteries():
    default, venous = synthesize_roi(3, **SMALL), synthesize_roi(3, **SMALL, phase="portal-venous")
    assert np.array_equal(default.label.array, venous.label.array)  # the same case, other contrast
    hu = venous.params["intensities_hu"]
    assert 130 <= hu["renal_artery"] <= 250 and hu["renal_vein"] >= hu["renal_artery"]
    assert venous.params["options"]["phase"] == "portal-venous"


@pytest.mark.parametrize("phase", ["portal-venous", "nephrographic"])
def test_brightness_cannot_tell_artery_from_vein(phase):
    for seed in range(40):
        base = sample_intensities(np.random.default_rng(seed))
        hu = apply_phase(base, phase, seed=seed)
        artery = hu["renal_artery"]
        assert 120 <= artery <= 250
        assert hu["renal_vein"] >= artery and hu["ivc"] >= artery  # veins as bright or brighter
        assert hu["kidney_cortex"] >= artery and hu["kidney_medulla"] >= artery  # no brighter than the kidney
        assert abs(hu["aorta"] / artery - 1.015) <= 0.035


@pytest.mark.parametrize("phase", ["portal-venous", "nephrographic"])
def test_tumours_keep_their_kind_and_a_hypervascular_one_washes_out_below_the_parenchyma(phase):
    """A clear-cell-like tumour as bright as the cortex in every phase was invisible in
    portal-venous and nephrographic cases; papillary-like ones lie at published HU; the
    late arterial phase, still corticomedullary, keeps the arterial value."""
    for seed in range(40):
        for kind in ("hyper", "hypo"):
            base = sample_intensities(np.random.default_rng(seed), tumour_enhancement=kind)
            hu = apply_phase(base, phase, seed=seed)
            without = apply_phase({k: v for k, v in base.items() if k != "tumour"}, phase, seed=seed)
            assert {k: v for k, v in hu.items() if k != "tumour"} == without  # nothing else moves
            assert apply_phase(base, "late-arterial", seed=seed)["tumour"] == base["tumour"]
            if kind == "hypo":
                assert 18 <= hu["tumour"] <= 95
            else:
                assert 70 <= hu["tumour"] <= hu["kidney_cortex"] - 30 + 1e-6, (seed, hu)


def test_late_arterial_sits_between():
    for seed in range(20):
        hu = apply_phase(sample_intensities(np.random.default_rng(seed)), "late-arterial", seed=seed)
        assert 220 <= hu["renal_artery"] <= 380 and hu["kidney_cortex"] <= max(hu["renal_artery"] - 40, 161)


def test_phase_mix_parsing_and_drawing():
    mix = parse_phase_mix(DEFAULT_PHASE_MIX)
    assert mix == pytest.approx({"arterial": 0.4, "late-arterial": 0.2, "portal-venous": 0.3, "nephrographic": 0.1})
    drawn = [draw_phase(seed, mix) for seed in range(2000)]
    venous_like = sum(p in ("portal-venous", "nephrographic") for p in drawn) / len(drawn)
    assert 0.36 <= venous_like <= 0.44  # at least a third of the cases: veins as bright as arteries
    assert drawn == [draw_phase(seed, mix) for seed in range(2000)]
    with pytest.raises(UsageError, match="Did you mean 'portal-venous'"):
        parse_phase_mix("portal-venus:1")
    with pytest.raises(UsageError, match="SHARE ≥ 0"):
        parse_phase_mix("arterial:x")
    with pytest.raises(UsageError, match="no phase has a share"):
        parse_phase_mix("arterial:0")


def test_synth_records_each_cases_phase(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "p"), "--cases", "2", "--seed", "5",
                                      "--spacing", "2.4,2.4,3.0", "--phase-mix", "portal-venous:1", "--quiet"])
    assert result.exit_code == 0, result.output
    cases = json.loads((tmp_path / "p" / "cases.json").read_text())
    rows = cases["cases"] if isinstance(cases, dict) and "cases" in cases else cases
    text = json.dumps(rows)
    assert text.count('"phase": "portal-venous"') >= 2
    bad = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "q"), "--phase-mix", "venous:1"])
    assert bad.exit_code == 2 and "portal-venous" in bad.output + bad.stderr
