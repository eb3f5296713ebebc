"""Size, writing time and drawing time of ``report.html`` (issue 29: ≤ 20 MB, draws in ≤ 3 s).

For each study folder: the page's size, the wall time of :func:`write_report`, and,
loaded from disk in headless Chromium with the network off (``tests/headless_chromium.py``),
the time from navigation to the page's ``data-drawn-ms`` mark (plotly drew the figure,
two animation frames later) and to the screenshot, median of ``--repeat`` loads. A
plotly page holding one small sphere is measured the same way: the floor that plotly.js
and the browser set on the hardware it runs on.

``--four-structures DEMO_OUT`` also measures a page with all four KiPA22 structures: the
folder ``renalseg demo --out DEMO_OUT`` wrote, with the phantom's true labels (vein,
kidney, artery, tumour) in place of the artery-only prediction.

Run: ``.venv/bin/python benchmarks/bench_report.py results/phantom --four-structures /tmp/demo``
(prints JSON; needs ``chromium`` on PATH). Headless Chromium draws WebGL in software
(SwiftShader) on the CPU: a laptop's GPU draws faster, so these are upper bounds. On a
shared, loaded machine the wall times swing with the load: compare a page with the
sphere page measured in the same run.
``--screenshot FILE`` saves the last page's screenshot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from headless_chromium import find_chromium, load_page  # noqa: E402

from renalseg.report import write_report  # noqa: E402

KIPA_NAMES = {"0": "background", "1": "renal_vein", "2": "kidney", "3": "renal_artery", "4": "tumour"}


def _four_structure_study(demo_out: Path, into: Path) -> Path:
    """A study folder with the demo phantom's true KiPA22 labels and the demo's report and preview."""
    folder = into / "phantom_four_structures"
    folder.mkdir(parents=True)
    for name in ("report.json", "preview.png"):
        shutil.copy(demo_out / "phantom" / name, folder / name)
    shutil.copy(demo_out / "input" / "phantom_truth.nii.gz", folder / "labels.nii.gz")
    (folder / "labels.json").write_text(json.dumps(KIPA_NAMES))
    return folder


def _sphere_page(into: Path) -> Path:
    import plotly.graph_objects as go
    import trimesh

    from renalseg.report import _DRAWN_SCRIPT

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=20.0)
    v, f = sphere.vertices, sphere.faces
    fig = go.Figure(go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2]))
    page = into / "sphere.html"
    fig.write_html(page, include_plotlyjs=True, post_script=_DRAWN_SCRIPT)
    return page


def _load(page: Path, chromium: str, repeat: int, screenshot: Path | None) -> dict:
    loads = [load_page(page, chromium=chromium) for _ in range(repeat)]
    if screenshot is not None:
        screenshot.write_bytes(loads[-1].png)
    network = sorted({u for load in loads for u in load.requests if not u.startswith(("file:", "data:"))})
    return {
        "megabytes": round(page.stat().st_size / 1e6, 2),
        "drawn_ms_median": statistics.median(load.drawn_ms or float("nan") for load in loads),
        "screenshot_s_median": round(statistics.median(load.seconds for load in loads), 2),
        "network_requests": network,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dirs", nargs="*", type=Path)
    parser.add_argument("--four-structures", type=Path, metavar="DEMO_OUT")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("chromium is not on PATH (apt-get install chromium)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        studies = list(args.study_dirs)
        if args.four_structures is not None:
            studies.append(_four_structure_study(args.four_structures, tmp_dir))
        results["plotly_floor_sphere"] = _load(_sphere_page(tmp_dir), chromium, args.repeat, None)
        for study in studies:
            started = time.perf_counter()
            page = write_report(study, tmp_dir / f"{study.name}.html")
            write_s = round(time.perf_counter() - started, 2)
            results[study.name] = {"write_s": write_s,
                                   **_load(page, chromium, args.repeat, args.screenshot)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
