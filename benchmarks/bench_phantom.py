"""Phantom generation speed: one ``roi`` case (bar ≤ 5 s) and one ``abdomen`` case (≤ 30 s).

Reports wall time and process CPU time per case (the generator is single-threaded
numpy/scipy, so on a shared, loaded machine CPU time is the better estimate of the
unloaded wall time), the stage split (scene build, painting, texture/PSF/noise), the
grid and the artery fraction.

With ``--figure docs/phantom.png`` it also draws the README's picture of the
phantoms (Pillow only): per roi case an axial slice through the hilum, a coronal
slice, the image's coronal maximum intensity projection (MIP, what a reader sees)
and the ground-truth artery MIP; then one abdomen case (axial, coronal, MIP).

Usage::

    .venv/bin/python benchmarks/bench_phantom.py [--roi 3] [--abdomen 1] [--seed 0] [--json out.json]
    .venv/bin/python benchmarks/bench_phantom.py --roi 0 --abdomen 0 --figure docs/phantom.png
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from renalseg.phantom import synthesize_abdomen, synthesize_roi


def _run(kind: str, seed: int) -> dict:
    make = synthesize_roi if kind == "roi" else synthesize_abdomen
    wall0, cpu0 = time.perf_counter(), time.process_time()
    case = make(seed)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    g = case.image.geometry
    return {
        "kind": kind,
        "seed": seed,
        "shape_zyx": list(g.shape_zyx),
        "spacing_xyz_mm": [round(s, 3) for s in g.spacing_xyz_mm],
        "megavoxels": round(float(np.prod(g.shape_zyx)) / 1e6, 2),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "stages_s": case.params["seconds"],
        "artery_fraction_percent": round(100.0 * float((case.label.array == 3).mean()), 3),
    }


def _window(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((array.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _panel(gray: np.ndarray, spacing_yx: tuple[float, float], height_px: int, overlay: np.ndarray | None = None):
    """A display panel: rows are patient superior/anterior at the top, square pixels."""
    from PIL import Image

    rgb = np.repeat(gray[..., None], 3, axis=2)
    if overlay is not None:
        rgb[overlay] = (0.35 * rgb[overlay] + 0.65 * np.array([230, 40, 40])).astype(np.uint8)
    image = Image.fromarray(rgb)
    h_mm, w_mm = gray.shape[0] * spacing_yx[0], gray.shape[1] * spacing_yx[1]
    return image.resize((max(1, round(height_px * w_mm / h_mm)), height_px), Image.BILINEAR)


def make_figure(path: str, roi_seeds: list[int], abdomen_seed: int | None) -> None:
    """Compose docs/phantom.png with Pillow (no matplotlib)."""
    from PIL import Image, ImageDraw

    rows = []
    for seed in roi_seeds:
        case = synthesize_roi(seed)
        img, lab = case.image.array, case.label.array
        sx, sy, sz = case.image.geometry.spacing_xyz_mm
        hilum = np.asarray(case.params["kidneys"][case.params["side"]]["hilum_artery_mm"])
        x, y, z = np.clip(np.round(case.image.geometry.world_to_index([hilum])[0]).astype(int), 0,
                          np.asarray(case.image.geometry.shape_xyz) - 1)
        artery = lab == 3
        kid = case.params["kidneys"][case.params["side"]]
        tags = [case.params["side"], f"{kid['pyramids']} pyramids"]
        if kid["tumour"]["present"]:
            tags.append(f"{kid['tumour']['enhancement']} tumour {kid['tumour']['diameter_mm']:.0f} mm")
        if kid["variants"]["accessory_artery"]:
            tags.append("accessory artery")
        if kid["variants"]["early_branching"]:
            tags.append("early branching")
        panels = [
            _panel(_window(img[z], -160, 340), (sy, sx), 230),
            _panel(_window(img[::-1, y], -160, 340), (sz, sx), 230),
            _panel(_window(img.max(axis=1)[::-1], 0, 600), (sz, sx), 230),
            _panel(_window(np.where(artery, 400, -1000).max(axis=1)[::-1], 0, 400), (sz, sx), 230,
                   overlay=artery.any(axis=1)[::-1]),
        ]
        rows.append((f"roi seed {seed}: {', '.join(tags)}; {sx:.2f} x {sy:.2f} x {sz:.2f} mm, "
                     f"noise {case.params['imaging']['noise_sigma_hu']:.0f} HU, artery "
                     f"{100 * artery.mean():.2f}% of ROI", panels))
    if abdomen_seed is not None:
        case = synthesize_abdomen(abdomen_seed)
        img = case.image.array
        sx, sy, sz = case.image.geometry.spacing_xyz_mm
        centre = np.asarray(case.params["kidneys"]["left"]["centre_mm"])
        x, y, z = np.clip(np.round(case.image.geometry.world_to_index([centre])[0]).astype(int), 0,
                          np.asarray(case.image.geometry.shape_xyz) - 1)
        artery = case.label.array == 3
        panels = [
            _panel(_window(img[z], -160, 340), (sy, sx), 230),
            _panel(_window(img[::-1, y], -160, 340), (sz, sx), 230),
            _panel(_window(img.max(axis=1)[::-1], 0, 600), (sz, sx), 230, overlay=artery.any(axis=1)[::-1]),
        ]
        rows.append((f"abdomen seed {abdomen_seed}: {img.shape[2]} x {img.shape[1]} x {img.shape[0]} voxels, "
                     f"{sx:.2f} x {sy:.2f} x {sz:.2f} mm; right kidney lower; MIP with renal arteries in red",
                     panels))
    pad, caption = 8, 18
    width = max(sum(p.width for p in panels) + pad * (len(panels) + 1) for _, panels in rows)
    height = sum(max(p.height for p in panels) + caption + pad for _, panels in rows) + pad + caption
    sheet = Image.new("RGB", (width, height), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), "renalseg synthetic CTA phantoms: axial (hilum) | coronal | coronal MIP | "
              "ground-truth artery MIP (patient's left on the image's right)", fill=(235, 235, 235))
    top = caption + pad
    for text, panels in rows:
        draw.text((pad, top), text, fill=(235, 235, 235))
        left = pad
        for p in panels:
            sheet.paste(p, (left, top + caption))
            left += p.width + pad
        top += caption + max(p.height for p in panels) + pad
    # an adaptive 256-colour palette keeps the committed picture small
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roi", type=int, default=3, help="number of roi cases")
    parser.add_argument("--abdomen", type=int, default=1, help="number of abdomen cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--figure", default=None, help="write the phantom picture (e.g. docs/phantom.png)")
    parser.add_argument("--figure-seeds", default="0,1,2,3", help="roi seeds shown in the figure")
    args = parser.parse_args()
    if args.figure:
        make_figure(args.figure, [int(s) for s in args.figure_seeds.split(",")], args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = []
    for kind, count, bar in (("roi", args.roi, 5.0), ("abdomen", args.abdomen, 30.0)):
        for i in range(count):
            r = _run(kind, args.seed + i)
            r["bar_s"] = bar
            results.append(r)
            print(f"{kind:8s} seed {r['seed']:3d}  {r['shape_zyx']} @ {r['spacing_xyz_mm']} mm "
                  f"({r['megavoxels']} Mvox)  wall {r['wall_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  "
                  f"(bar {bar:.0f} s)  stages {r['stages_s']}  artery {r['artery_fraction_percent']}%",
                  flush=True)
    print(f"load average at start: {load:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"load_average": load, "cpus": os.cpu_count(), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
