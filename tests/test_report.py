"""``renalseg report``: the page's content, its errors, and the page drawn in headless Chromium offline."""

from __future__ import annotations

import io
import json
import os
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from typer.testing import CliRunner

from headless_chromium import find_chromium, load_page
from renalseg.cli.app import app
from renalseg.errors import GeometryError, InputError, UsageError
from renalseg.geometry import Geometry
from renalseg.report import MAX_PAGE_BYTES, STRUCTURE_STYLES, write_report
from renalseg.volume import Volume

KIPA_NAMES = {"0": "background", "1": "renal_vein", "2": "kidney", "3": "renal_artery", "4": "tumour"}
NOTICE = "trained on synthetic phantoms only, not validated on patients"
PLAN = {"kidneys": [{"side": "right",
                     "feeding_branches": [{"id": 5, "name": "segmental 2", "tumour_share_pct": 88.0},
                                          {"id": 6, "name": "segmental 3", "tumour_share_pct": 12.0}],
                     "clamping_candidates": [{"branches": ["segmental 2", "segmental 3"], "ischaemic_pct": 23.5}]}]}


def _write_labels(folder: Path, volume: Volume, names: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(folder / "labels.nii.gz"))
    (folder / "labels.json").write_text(json.dumps(names))


def _report_json(side: str | None, geometry: Geometry) -> dict:
    corners = geometry.corners_world()
    rois = [] if side is None else [{"side": side, "box_mm_lps": {"min": corners.min(axis=0).tolist(),
                                                                  "max": corners.max(axis=0).tolist()}}]
    return {"status": "ok", "study_id": "case", "renalseg_version": "test",
            "input": {"path": "/data/case.nii.gz", "format": "nifti", "size_xyz": list(geometry.shape_xyz),
                      "spacing_xyz_mm": list(geometry.spacing_xyz_mm), "orientation": geometry.orientation},
            "model": {"name": "dpa_densebiasnet", "sha256": "ab" * 32, "synthetic_training_only": True},
            "rois": rois, "notice": f"The weights were {NOTICE}: research use only."}


def _preview_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def artery_study(tmp_path_factory) -> Path:
    """Artery only (label 1): two branching tubes either side of the midline, oblique anisotropic grid."""
    folder = tmp_path_factory.mktemp("artery") / "case"
    shape = (30, 40, 60)
    zz, yy, xx = np.indices(shape)
    array = np.zeros(shape, np.uint8)
    for cx in (14, 46):
        array[(np.hypot(yy - 20, xx - cx) <= 2.5) & (zz >= 4) & (zz < 16)] = 1       # trunk
        for dx in (-6, 6):                                                            # two branches
            t = (zz - 15) / 10.0
            array[(np.hypot(yy - 20, xx - (cx + dx * t)) <= 1.8) & (zz >= 15) & (zz < 26)] = 1
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    geometry = Geometry(shape, (0.8, 0.7, 1.5), (-30.0, 10.0, 200.0), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    _write_labels(folder, Volume(array, geometry), {"0": "background", "1": "renal_artery"})
    (folder / "report.json").write_text(json.dumps(_report_json(None, geometry)))
    (folder / "preview.png").write_bytes(_preview_png())
    return folder


@pytest.fixture(scope="module")
def kipa_study(tmp_path_factory) -> Path:
    """Four structures (KiPA22 values) of a small right-kidney phantom with a tumour, and a plan."""
    from renalseg.phantom import synthesize_roi

    case = synthesize_roi(4, side="right", tumour=True, inplane_voxels=56, spacing_xyz_mm=(1.8, 1.8, 2.2))
    present = set(np.unique(case.label.array).tolist())
    assert present == {0, 1, 2, 3, 4}, f"phantom lacks a structure: {present}"
    folder = tmp_path_factory.mktemp("kipa") / "case"
    _write_labels(folder, case.label, KIPA_NAMES)
    (folder / "report.json").write_text(json.dumps(_report_json("right", case.label.geometry)))
    (folder / "preview.png").write_bytes(_preview_png())
    (folder / "plan.json").write_text(json.dumps(PLAN))
    write_report(folder)
    return folder


class _Loads(HTMLParser):
    """Every src/href/srcset/poster/data attribute value (what a page would load)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "srcset", "poster", "data", "action") and v]


def _external_urls(page: str) -> list[str]:
    parser = _Loads()
    parser.feed(page)
    return [u for u in parser.urls if not u.startswith(("data:", "#"))]


def test_artery_only_page(artery_study):
    page_path = write_report(artery_study, artery_study / "out" / "page.html")
    page = page_path.read_text(encoding="utf-8")
    assert page_path.stat().st_size < MAX_PAGE_BYTES
    assert _external_urls(page) == []
    assert page.count('"flatshading":false') == 2
    for text in ("renal artery (right)", "renal artery (left)", NOTICE, "ab" * 32, "/data/case.nii.gz",
                 "data:image/png;base64,", "R → L", "I → S", "A → P", "\"name\":\"scale "):
        assert text in page or json.dumps(text)[1:-1] in page, text  # figure text is JSON-escaped
    assert "Plan" not in page.split("<aside>")[1]  # no plan.json, no plan section


def test_kipa_page_has_every_structure_and_the_plan(kipa_study):
    page = (kipa_study / "report.html").read_text(encoding="utf-8")
    assert page.count('"flatshading":false') == 4
    for text in ("renal artery (right)", "renal vein (right)", "kidney (right)", "tumour (right)",
                 "Feeding branches", "segmental 2", "88", "Clamping candidates", "23.5"):
        assert text in page, text
    assert f'"opacity":{STRUCTURE_STYLES["kidney"]["opacity"]}' in page
    assert _external_urls(page) == []


def test_unreadable_plan_is_said_on_the_page(artery_study, tmp_path):
    (artery_study / "plan.json").write_text("{not json")
    try:
        page = write_report(artery_study, tmp_path / "r.html").read_text(encoding="utf-8")
    finally:
        (artery_study / "plan.json").unlink()
    assert "plan.json: cannot be read as JSON" in page


def test_label_values_without_labels_json_are_an_error(kipa_study, tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "labels.nii.gz").write_bytes((kipa_study / "labels.nii.gz").read_bytes())
    with pytest.raises(InputError, match="no labels.json"):
        write_report(folder)


def test_folder_without_labels_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no labels.nii.gz"):
        write_report(tmp_path)


def test_territories_are_drawn_with_their_names(artery_study, tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    for name in ("labels.nii.gz", "labels.json"):
        (folder / name).write_bytes((artery_study / name).read_bytes())
    labels = Volume.from_sitk(sitk.ReadImage(str(folder / "labels.nii.gz")))
    territories = np.zeros(labels.array.shape, np.uint8)
    territories[:, :, :30], territories[:, :, 30:] = 5, 6
    sitk.WriteImage(labels.with_array(territories).to_sitk(), str(folder / "territories.nii.gz"))
    (folder / "territories.json").write_text(json.dumps({"5": {"name": "segmental 1"}, "6": "segmental 2"}))
    page = write_report(folder).read_text(encoding="utf-8")
    assert "territory segmental 1" in page and "territory segmental 2" in page
    assert page.count('"flatshading":false') == 4


def test_territories_on_another_grid_are_an_error(artery_study, tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    for name in ("labels.nii.gz", "labels.json"):
        (folder / name).write_bytes((artery_study / name).read_bytes())
    other = Volume(np.ones((4, 5, 6), np.uint8), Geometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                                                            (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    sitk.WriteImage(other.to_sitk(), str(folder / "territories.nii.gz"))
    with pytest.raises(GeometryError, match="territories.nii.gz"):
        write_report(folder)


def test_missing_plotly_says_how_to_install(artery_study, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(UsageError, match=r"pip install 'renalseg\[report\]'"):
        write_report(artery_study)
    result = CliRunner().invoke(app, ["report", str(artery_study)])
    assert result.exit_code == 2 and "renalseg[report]" in result.output


def test_cli_exit_codes(artery_study, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["report", str(artery_study), "--out", str(tmp_path / "a.html"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["studies"][0]["status"] == "ok" and (tmp_path / "a.html").is_file()
    two = runner.invoke(app, ["report", str(artery_study), str(artery_study), "--out", str(tmp_path / "b.html")])
    assert two.exit_code == 2
    (tmp_path / "empty").mkdir()
    failed = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert failed.exit_code == 2  # no labels.nii.gz: a usage error, before any page
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "labels.nii.gz").write_bytes((artery_study / "labels.nii.gz").read_bytes())
    (broken / "report.json").write_text("[1, 2]")
    mixed = runner.invoke(app, ["report", str(broken), str(artery_study)])
    assert mixed.exit_code == 1 and (artery_study / "report.html").is_file()


# -- in a real browser ------------------------------------------------------------------

def _chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI=true but chromium is not installed; .ci/run installs it (apt-get install chromium).")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test.")
    return path


def _hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], float)


def _near(pixels: np.ndarray, color: str, tolerance: float = 0.22) -> int:
    """Pixels whose colour is a shade (lit or shadowed) of ``color``: same chromaticity, not grey."""
    target = _hex_rgb(color)
    total = pixels.sum(axis=-1, keepdims=True)
    chroma = pixels / np.maximum(total, 1)
    close = np.abs(chroma - target / target.sum()).max(axis=-1) < tolerance / 3
    coloured = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 40
    return int((close & coloured).sum())


def test_page_draws_offline_in_chromium(kipa_study, tmp_path):
    chromium = _chromium()
    load = load_page(kipa_study / "report.html", chromium=chromium, selectors=("#view", "#view .legend"))
    (tmp_path / "screenshot.png").write_bytes(load.png)
    network = [u for u in load.requests if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert network == [], f"the page asked the network for {network}"
    assert load.drawn_ms is not None, "plotly never reported the figure drawn"
    image = np.asarray(Image.open(io.BytesIO(load.png)).convert("RGB")).astype(float)
    view, legend = load.rects["#view"], load.rects["#view .legend"]
    assert view and view["width"] > 300 and view["height"] > 300
    if legend:  # the legend's swatches have the same colours: leave them out
        image[int(legend["y"]):int(legend["y"] + legend["height"]) + 1,
              int(legend["x"]):int(legend["x"] + legend["width"]) + 1] = 255.0
    canvas = image[int(view["y"]):int(view["y"] + view["height"]), int(view["x"]):int(view["x"] + view["width"])]
    drawn = (np.abs(canvas - 255.0).max(axis=-1) > 30).mean()
    assert drawn > 0.02, f"only {drawn:.1%} of the 3D view differs from the white background"
    counts = {kind: _near(canvas, STRUCTURE_STYLES[kind]["color"])
              for kind in ("artery_right", "vein", "tumour")}
    assert all(n >= 150 for n in counts.values()), counts


def test_network_check_can_fail(tmp_path):
    """The same loader sees a page that asks the network (and the request goes nowhere)."""
    chromium = _chromium()
    page = tmp_path / "bad.html"
    page.write_text("<html><body><img src='http://example.invalid/x.png'>"
                    "<script src='https://cdn.example.invalid/a.js'></script></body></html>")
    load = load_page(page, chromium=chromium, timeout_s=1.0)
    assert "http://example.invalid/x.png" in load.requests
    assert "https://cdn.example.invalid/a.js" in load.requests
    assert _external_urls(page.read_text()) == ["http://example.invalid/x.png", "https://cdn.example.invalid/a.js"]
