"""benchmarks/contrast_study.py: per-case Dice joined to each phantom's imaging settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
contrast_study = pytest.importorskip("contrast_study")


def test_dice_is_joined_to_the_right_phantom(tmp_path, monkeypatch, capsys):
    """A made-up Dice equal to each case's artery HU / 1000 must correlate +1 with the
    artery HU: any mix-up of cases (order, seed, options) breaks it."""
    seeds = {"roi_00005": (5, {}), "roi_00002": (2, {"intensity_ranges_hu": {"renal_artery": [250, 260]}}),
             "roi_00009": (9, {}), "roi_00003": (3, {})}
    folder = tmp_path / "val"
    folder.mkdir()
    (folder / "cases.json").write_text(json.dumps(
        {"cases": [{"case": c, "seed": s, "options": o} for c, (s, o) in sorted(seeds.items())]}))
    rows = []
    for case, (seed, options) in reversed(list(seeds.items())):  # another order than cases.json's
        hu = contrast_study.settings(seed, options)["artery_hu"]
        rows.append({"case": case, "dice_segment": hu / 1000})
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"val": {"folder": str(folder), "cases": rows}}))
    assert 250 <= contrast_study.settings(2, seeds["roi_00002"][1])["artery_hu"] <= 260
    monkeypatch.setattr(sys, "argv", ["contrast_study.py", str(results), str(folder)])
    contrast_study.main()
    out = capsys.readouterr().out
    assert "correlation with artery_hu                   +1.000" in out
    assert "4 cases" in out
