"""``report.html``: one self-contained page per study, with an interactive 3D view.

A surgeon opens the page in any current browser, offline: the 3D view is a plotly
figure (``Mesh3d`` traces) whose viewer, plotly.js, comes from the ``plotly`` wheel and
is inlined into the page; images are inlined as base64 PNG and the styles use the
system fonts. Nothing on the page loads from the network.

What the page holds, read from a ``renalseg segment`` output folder:

* the 3D view: one surface per structure and side, from ``labels.nii.gz`` named by
  ``labels.json`` (the artery-only model's ``1 renal_artery`` or the KiPA22 values 1
  vein, 2 kidney, 3 artery, 4 tumour); arteries red (patient's right) and orange
  (left), vein blue, kidney translucent, tumour solid purple, and, when
  ``territories.nii.gz`` is there, each perfusion territory translucent in its own
  colour. Coordinates are patient LPS millimetres; the axes say which way is left,
  posterior and superior, R/L, A/P, S/I letters sit beside the structures, a bar shows
  a round number of millimetres, and the view opens from the front (patient's right
  on the viewer's left, superior up), as the coronal preview does. Rotate, zoom,
  reset (the house icon) and one legend entry per surface to hide or show it; hovering
  names the surface;
* beside it: the research-use notice, the study (input, size, spacing) and the model
  (name, weights sha256), the volume of each structure per side, the plan
  (``plan.json``: feeding branches and clamping candidates, read defensively) and the
  preview images.

Meshes are made as ``export-mesh`` makes them (:func:`renalseg.mesh.mask_to_mesh`,
Taubin-smoothed, pieces under 5 mm³ dropped) and then decimated by quadric edge
collapse: kidney, tumour and territory surfaces to at most 20 000 triangles each, then
all surfaces by one fraction so that together they have at most ``max_faces``
triangles (default 200 000, about 5 MB of page on top of plotly.js's 4.8 MB); a page
over 20 MB is made again with half the triangles.

``plotly`` is an optional dependency: ``pip install 'renalseg[report]'``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from renalseg import __version__
from renalseg.errors import GeometryError, InputError, OutputExistsError, UsageError
from renalseg.labels import BY_KEY, structure_kind

__all__ = [
    "INSTALL_HINT",
    "MAX_PAGE_BYTES",
    "DEFAULT_MAX_FACES",
    "STRUCTURE_STYLES",
    "PageMesh",
    "read_label_names",
    "build_meshes",
    "build_figure",
    "render_page",
    "write_report",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'renalseg[report]'"
#: the page budget per study (issue 29): plotly.js is about 4.8 MB of it
MAX_PAGE_BYTES = 20 * 1024 * 1024
#: triangles of all surfaces together, before the page-size check
DEFAULT_MAX_FACES = 200_000
#: the smallest surface kept after decimation (a thin vessel piece stays a tube)
_MIN_FACES_PER_MESH = 400
#: kidney, tumour and territory surfaces are smooth blobs: this many triangles show them well
_BLOB_MAX_FACES = 20_000
_BLOB_KINDS = ("kidney", "tumour", "territory")
#: pieces smaller than this are not drawn (as ``export-mesh``'s default)
_MIN_COMPONENT_MM3 = 5.0
_SMOOTHING_ITERATIONS = 10

#: colour (CSS hex) and opacity per kind of structure; arteries by the patient's side
STRUCTURE_STYLES: dict[str, dict[str, Any]] = {
    "artery_right": {"color": BY_KEY["artery"].color, "opacity": 1.0},
    "artery_left": {"color": "#ff7f0e", "opacity": 1.0},
    "artery": {"color": BY_KEY["artery"].color, "opacity": 1.0},
    "vein": {"color": BY_KEY["vein"].color, "opacity": 1.0},
    "kidney": {"color": BY_KEY["kidney"].color, "opacity": 0.22},
    "tumour": {"color": BY_KEY["tumour"].color, "opacity": 1.0},
    "territory": {"color": "#888888", "opacity": 0.30},
    "other": {"color": "#7f7f7f", "opacity": 0.5},
}
#: drawing order: translucent surfaces last so the solid ones show through them
_KIND_ORDER = ("artery", "vein", "tumour", "other", "kidney", "territory")
_TERRITORY_PALETTE = ("#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#17becf", "#bcbd22")
_SIDE_ORDER = {"right": 0, "left": 1, "all": 2}


@dataclass(frozen=True)
class PageMesh:
    """One surface of the 3D view.

    Attributes:
        name: the legend and hover name, e.g. ``"renal artery (right)"``.
        kind: ``artery``, ``vein``, ``kidney``, ``tumour``, ``territory`` or ``other``.
        side: ``right``, ``left`` or ``all``.
        vertices_mm: float (V, 3), patient LPS millimetres.
        faces: int (F, 3) vertex indices.
        volume_ml: the structure's voxel volume on this side.
        color, opacity: how it is drawn.
    """

    name: str
    kind: str
    side: str
    vertices_mm: np.ndarray
    faces: np.ndarray
    volume_ml: float
    color: str
    opacity: float


def _import_plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError as err:
        raise UsageError(f"renalseg report needs the optional package plotly: {INSTALL_HINT}") from err
    return go


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot be read as JSON ({err}); rerun the command that wrote it.") from err


def read_label_names(study_dir: Path, values: list[int]) -> dict[int, str]:
    """``{value: name}`` from the folder's ``labels.json``.

    Without ``labels.json`` a label map holding only the value 1 is the artery-only
    model's (``1 renal_artery``, SPEC.md); any other value cannot be named.

    Raises:
        InputError: ``labels.json`` is unreadable, or missing while other values are present.
    """
    path = study_dir / "labels.json"
    if path.is_file():
        doc = _read_json(path)
        if not isinstance(doc, dict):
            raise InputError(f"{path}: expected an object of value → name, e.g. {{\"1\": \"renal_artery\"}}.")
        return {int(k): str(v) for k, v in doc.items() if str(k).lstrip("-").isdigit()}
    if set(values) <= {1}:
        return {1: "renal_artery"}
    raise InputError(f"{study_dir}: no labels.json to name the label values {values}; "
                     "write it as renalseg segment does ({\"1\": \"vein\", \"2\": \"kidney\", ...}).")


def _decimated(mesh: Any, face_count: int) -> Any:
    """Quadric decimation to about ``face_count`` triangles (the page does not need watertight)."""
    if len(mesh.faces) <= face_count:
        return mesh
    simplified = mesh.simplify_quadric_decimation(face_count=int(face_count))
    return simplified if len(simplified.faces) > 0 else mesh


def _style(kind: str, side: str) -> dict[str, Any]:
    return STRUCTURE_STYLES.get(f"{kind}_{side}", STRUCTURE_STYLES[kind])


def build_meshes(labels: Any, label_names: dict[int, str], *, rois: list[dict] | None = None,
                 territories: Any | None = None, territory_names: dict[int, str] | None = None,
                 on_progress: Callable[[str], None] | None = None) -> list[PageMesh]:
    """Full-resolution surfaces of every labelled structure per side (and of each territory).

    Args:
        labels: :class:`renalseg.volume.Volume`, the label map (0 background).
        label_names: ``{value: name}``; unnamed values are called ``label_<value>``.
        rois: ``report.json``'s ``"rois"`` to split sides by kidney ROI (else the midline,
            see :func:`renalseg.mesh.split_sides`).
        territories: optional :class:`Volume` on the same grid (value = branch id).
        territory_names: ``{branch id: name}`` for the territories.
        on_progress: called with a short text before each surface.

    Returns:
        One :class:`PageMesh` per structure and side with something left to draw, in
        drawing order (solid before translucent).

    Raises:
        GeometryError: ``territories`` is on another grid than ``labels``.
    """
    from renalseg.mesh import _midline_x, mask_to_mesh, split_sides
    from renalseg.tree import bounding_box, drop_small_components
    from renalseg.volume import crop

    full_geometry = labels.geometry
    if territories is not None and not territories.geometry.is_same_grid(full_geometry):
        raise GeometryError(f"territories.nii.gz is on another grid than labels.nii.gz: "
                            f"{territories.geometry.describe()} vs {full_geometry.describe()}.")
    occupied = labels.array != 0
    if territories is not None:
        occupied = occupied | (territories.array != 0)
    if not occupied.any():
        return []
    box = bounding_box(occupied)
    start, shape = tuple(s.start for s in box), tuple(s.stop - s.start for s in box)
    labels = crop(labels, start, shape)  # world coordinates are unchanged by the crop
    midline_x = _midline_x(full_geometry)
    voxel_ml = labels.geometry.voxel_volume_mm3 / 1000.0
    sources: list[tuple[str, str, np.ndarray]] = []
    counts = np.bincount(labels.array.ravel().astype(np.int64))
    for value in (int(v) for v in np.flatnonzero(counts) if v != 0):
        name = label_names.get(value, f"label_{value}")
        sources.append((name, structure_kind(name), labels.array == value))
    if territories is not None:
        cropped = crop(territories, start, shape).array
        names = territory_names or {}
        t_counts = np.bincount(cropped.ravel().astype(np.int64))
        for value in (int(v) for v in np.flatnonzero(t_counts) if v != 0):
            sources.append((f"territory {names.get(value, value)}", "territory", cropped == value))
    meshes: list[PageMesh] = []
    territory_index = 0
    for name, kind, mask in sources:
        parts = split_sides(mask, labels.geometry, rois, midline_x=midline_x) if kind != "territory" \
            else {"all": mask}
        for side, part in sorted(parts.items(), key=lambda item: _SIDE_ORDER.get(item[0], 3)):
            kept = drop_small_components(part, labels.geometry.spacing_xyz_mm, _MIN_COMPONENT_MM3)
            if not kept.any():
                continue
            if on_progress is not None:
                on_progress(f"{name} {side}")
            mesh = mask_to_mesh(labels.with_array(kept), smoothing_iterations=_SMOOTHING_ITERATIONS,
                                min_component_mm3=0.0)
            style = dict(_style(kind, side))
            if kind == "territory":
                style["color"] = _TERRITORY_PALETTE[territory_index % len(_TERRITORY_PALETTE)]
                territory_index += 1
            label = name.replace("_", " ") + ("" if side == "all" else f" ({side})")
            meshes.append(PageMesh(name=label, kind=kind, side=side, vertices_mm=np.asarray(mesh.vertices),
                                   faces=np.asarray(mesh.faces), volume_ml=float(part.sum()) * voxel_ml,
                                   color=style["color"], opacity=float(style["opacity"])))
    meshes.sort(key=lambda m: _KIND_ORDER.index(m.kind))
    return meshes


def _fit_face_budget(meshes: list[PageMesh], max_faces: int) -> list[PageMesh]:
    """Surfaces decimated so that all together have about ``max_faces`` triangles.

    Smooth blobs (kidney, tumour, territories) are first capped at ``_BLOB_MAX_FACES``
    each, so the vessels keep most of the budget; then every surface is decimated by the
    same fraction.
    """
    import trimesh

    wanted = [min(len(m.faces), _BLOB_MAX_FACES) if m.kind in _BLOB_KINDS else len(m.faces) for m in meshes]
    total = sum(wanted)
    fraction = min(1.0, max_faces / total) if total else 1.0
    fitted = []
    for m, count in zip(meshes, wanted):
        target = max(_MIN_FACES_PER_MESH, int(count * fraction))
        if target >= len(m.faces):
            fitted.append(m)
            continue
        small = _decimated(trimesh.Trimesh(m.vertices_mm, m.faces, process=False), target)
        fitted.append(PageMesh(m.name, m.kind, m.side, np.asarray(small.vertices), np.asarray(small.faces),
                               m.volume_ml, m.color, m.opacity))
    return fitted


def _nice_length_mm(extent_mm: float) -> float:
    """A round scale-bar length (1, 2 or 5 × 10ⁿ mm), the first of at least 15 % of the extent.

    Example:
        >>> _nice_length_mm(180.0), _nice_length_mm(40.0), _nice_length_mm(3.0)
        (50.0, 10.0, 1.0)
    """
    target = max(extent_mm / 5.0, 1.0)
    exponent = 10.0 ** math.floor(math.log10(target))
    for step in (1.0, 2.0, 5.0, 10.0):
        if step * exponent >= target * 0.75:
            return step * exponent
    return 10.0 * exponent


def build_figure(meshes: list[PageMesh]) -> Any:
    """A plotly figure of the surfaces in LPS mm, viewed from the front.

    Axis titles say the LPS directions in words; R/L, A/P and S/I letters sit beyond
    the structures on each axis; a line along the patient's left-right axis shows a
    round number of millimetres (``aspectmode="data"``: one mm is one mm on every axis).
    """
    go = _import_plotly()
    fig = go.Figure()
    has_territories = any(m.kind == "territory" for m in meshes)
    for m in meshes:
        v = np.round(m.vertices_mm, 2).astype(np.float32)
        f = m.faces.astype(np.int32)
        fig.add_trace(go.Mesh3d(
            x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2],
            name=m.name, color=m.color, opacity=m.opacity, showlegend=True, flatshading=False,
            # the territories tile the kidney: its surface starts hidden (one click shows it)
            visible="legendonly" if has_territories and m.kind == "kidney" else True,
            hovertemplate=(f"<b>{html.escape(m.name)}</b><br>{m.volume_ml:.2f} ml<br>"
                           "LPS %{x:.0f}, %{y:.0f}, %{z:.0f} mm<extra></extra>"),
            lighting={"ambient": 0.55, "diffuse": 0.7, "specular": 0.15, "roughness": 0.6},
        ))
    if meshes:
        points = np.concatenate([m.vertices_mm for m in meshes])
        lo, hi = points.min(axis=0), points.max(axis=0)
    else:
        lo, hi = np.zeros(3), np.full(3, 10.0)
    mid, pad = (lo + hi) / 2, 0.08 * float((hi - lo).max()) + 2.0
    bar = _nice_length_mm(float((hi - lo)[0]) or float((hi - lo).max()))
    bar_start = np.array([lo[0], lo[1] - pad, lo[2] - pad])
    fig.add_trace(go.Scatter3d(
        x=[bar_start[0], bar_start[0] + bar], y=[bar_start[1]] * 2, z=[bar_start[2]] * 2,
        mode="lines+text", text=["", f"{bar:g} mm"], textposition="top center",
        line={"color": "black", "width": 6}, name=f"scale {bar:g} mm", hoverinfo="skip", showlegend=False,
    ))
    letters = [("R", (lo[0] - pad, mid[1], mid[2])), ("L", (hi[0] + pad, mid[1], mid[2])),
               ("A", (mid[0], lo[1] - pad, mid[2])), ("P", (mid[0], hi[1] + pad, mid[2])),
               ("I", (mid[0], mid[1], lo[2] - pad)), ("S", (mid[0], mid[1], hi[2] + pad))]
    annotations = [{"x": float(x), "y": float(y), "z": float(z), "text": f"<b>{t}</b>", "showarrow": False,
                    "font": {"size": 18, "color": "#222"}} for t, (x, y, z) in letters]
    axis = {"showbackground": False, "gridcolor": "#dddddd", "zeroline": False, "ticksuffix": "", "color": "#444"}
    fig.update_layout(
        scene={
            "xaxis": {**axis, "title": {"text": "x mm (R → L)"}},
            "yaxis": {**axis, "title": {"text": "y mm (A → P)"}},
            "zaxis": {**axis, "title": {"text": "z mm (I → S)"}},
            "aspectmode": "data",
            "annotations": annotations,
            # from the front, superior up: the patient's right on the viewer's left
            "camera": {"eye": {"x": 0.0, "y": -2.3, "z": 0.2}, "up": {"x": 0, "y": 0, "z": 1},
                       "center": {"x": 0, "y": 0, "z": 0}},
        },
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        legend={"x": 0.01, "y": 0.99, "bgcolor": "rgba(255,255,255,0.7)", "itemclick": "toggle"},
        paper_bgcolor="white",
        font={"family": "system-ui, -apple-system, 'Segoe UI', Arial, sans-serif"},
        uirevision="keep",
    )
    return fig


# -- the page around the figure ---------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Arial, sans-serif; margin: 0; color: #222; }
header { padding: 10px 16px; border-bottom: 1px solid #ddd; }
header h1 { font-size: 20px; margin: 0 0 4px 0; }
.notice { background: #fff4d6; border: 1px solid #e0b54a; padding: 6px 10px; margin-top: 6px; font-size: 14px; }
main { display: grid; grid-template-columns: minmax(0, 3fr) minmax(320px, 2fr); }
@media (max-width: 900px) { main { grid-template-columns: minmax(0, 1fr); } }
.view-box { position: relative; width: 100%; height: 80vh; min-height: 420px; }
.help { font-size: 12px; color: #555; padding: 0 12px 8px 12px; }
aside { padding: 8px 16px; font-size: 14px; overflow-wrap: anywhere; }
h2 { font-size: 16px; margin: 14px 0 6px 0; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin-bottom: 6px; }
td, th { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 11px; height: 11px; margin-right: 5px; border: 1px solid #999; }
img.preview { max-width: 100%; border: 1px solid #ccc; margin: 4px 0; }
pre { font-size: 11px; background: #f8f8f8; padding: 6px; max-height: 320px; overflow: auto; }
.muted { color: #777; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in value):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _rows(pairs: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in pairs if v not in (None, ""))
    return f"<table>{body}</table>"


def _facts_section(report: dict, study_dir: Path, labels: Any) -> str:
    source = report.get("input") if isinstance(report.get("input"), dict) else {}
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    geometry = labels.geometry
    study = _rows([
        ("study", report.get("study_id") or study_dir.name),
        ("input", source.get("path")),
        ("format", source.get("format")),
        ("series UID", source.get("series_uid")),
        ("size (x, y, z voxels)", source.get("size_xyz") or list(geometry.shape_xyz)),
        ("spacing (x, y, z mm)", source.get("spacing_xyz_mm") or [round(s, 4) for s in geometry.spacing_xyz_mm]),
        ("orientation", source.get("orientation") or geometry.orientation),
        ("status", report.get("status")),
    ])
    weights = model.get("sha256")
    model_rows = _rows([
        ("model", model.get("name")),
        ("weights sha256", weights),
        ("classes", ", ".join(f"{k} {v}" for k, v in (model.get("classes") or {}).items()) or None),
        ("device", report.get("device")),
        ("renalseg", report.get("renalseg_version")),
    ])
    return f"<h2>Study</h2>{study}<h2>Model</h2>{model_rows}"


def _volumes_section(meshes: list[PageMesh], labels: Any, label_names: dict[int, str]) -> str:
    drawn = [m for m in meshes if m.kind != "territory"]
    rows = "".join(
        f"<tr><td><span class='swatch' style='background:{m.color}'></span>{_e(m.name)}</td>"
        f"<td class='num'>{m.volume_ml:.2f}</td></tr>" for m in drawn
    )
    if not rows:
        present = ", ".join(label_names.get(int(v), f"label_{v}") for v in np.unique(labels.array) if v) or "none"
        rows = f"<tr><td colspan='2' class='muted'>nothing to draw (labels present: {_e(present)})</td></tr>"
    return ("<h2>Volumes</h2><table><tr><th>structure</th><th>ml</th></tr>" + rows + "</table>"
            f"<div class='muted'>From the label map's voxels; pieces under {_MIN_COMPONENT_MM3:g} mm³ are "
            "counted but not drawn.</div>")


def _value_html(value: Any) -> str:
    """A plan value of unknown shape as HTML: tables for records, text for the rest."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns: list[str] = []
        for record in value:
            for key, item in record.items():
                if key not in columns and not isinstance(item, dict):
                    columns.append(key)
        head = "".join(f"<th>{_e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                       for r in value)
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(value, dict):
        return _rows([(str(k), v if not isinstance(v, (dict, list)) else json.dumps(v)) for k, v in value.items()])
    if isinstance(value, list) and not value:
        return "<div class='muted'>none</div>"
    return f"<div>{_e(_fmt(value))}</div>"


def _find_keys(doc: Any, words: tuple[str, ...], path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """``(where, value)`` for every key (at any depth) that contains one of ``words``."""
    found: list[tuple[str, Any]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            here = (*path, str(key))
            if any(w in str(key).lower() for w in words):
                found.append((" · ".join(here), value))
            else:
                found.extend(_find_keys(value, words, here))
    elif isinstance(doc, list):
        for index, item in enumerate(doc):
            label = item.get("side") or item.get("name") if isinstance(item, dict) else None
            found.extend(_find_keys(item, words, (*path, str(label or index))))
    return found


def _plan_section(study_dir: Path) -> str:
    path = study_dir / "plan.json"
    if not path.is_file():
        return ""
    try:
        plan = _read_json(path)
    except InputError as err:
        logger.warning("%s", err)
        return f"<h2>Plan</h2><div class='muted'>{_e(err)}</div>"
    parts = ["<h2>Plan</h2>"]
    study = plan.get("study") if isinstance(plan, dict) else None
    if isinstance(study, dict):  # renalseg plan's own: say which tumour it was planned on
        given = study.get("tumour")
        parts.append(f"<div>Tumour planned: {_e(given)} <span class='muted'>(the 3D view shows the segmented "
                     "tumour)</span></div>" if given else "<div>Tumour planned: the segmented tumour.</div>")
    parts += _proposals_html(plan)
    for title, words in (("Feeding branches", ("feed",)), ("Clamping candidates", ("candidat",)),
                         ("Fewest clamps", ("fewest",))):
        found = _find_keys(plan, words)
        for where, value in found:
            parts.append(f"<h3 style='font-size:14px;margin:8px 0 4px 0'>{_e(title)} "
                         f"<span class='muted'>({_e(where)})</span></h3>{_value_html(value)}")
        if not found:
            parts.append(f"<div class='muted'>{_e(title)}: not in plan.json.</div>")
    text = json.dumps(plan, indent=1)
    if len(text) > 200_000:
        text = text[:200_000] + "\n…"
    parts.append(f"<details><summary>plan.json</summary><pre>{_e(text)}</pre></details>")
    return "".join(parts)


_STRATEGY_WORDS = {"selective": "the deepest branches holding the tumour", "fewest": "the fewest clamps",
                   "main": "the main artery"}


_NO_PROPOSAL_WORDS = {"no_tumour": "no tumour, nothing to clamp",
                      "tumour_outside_kidney": "the tumour lies outside the kidney, no clamping proposed",
                      "no_kidney": "no kidney label, not planned",
                      "no_artery": "no artery branch reaches it, not planned"}


def _proposals_html(plan: object) -> list[str]:
    """What ``renalseg plan`` proposes to clamp on each kidney, first, where the plan says it
    (``clamping.strategy``); for a kidney with no proposal, why not (its status), and a kidney
    ``renalseg segment`` located none of (``study.not_located``), so that a reader does not
    take the page for a plan of both kidneys; then each tumour's R.E.N.A.L. score, saying when
    it was read from segment's own tumour label; nothing for a plan.json of another shape."""
    from renalseg.nephrometry import describe
    from renalseg.plan import proposed_clamping

    lines = []
    for kidney in plan.get("kidneys", []) if isinstance(plan, dict) else []:
        clamping = kidney.get("clamping") if isinstance(kidney, dict) else None
        if not isinstance(clamping, dict) or clamping.get("strategy") not in _STRATEGY_WORDS:
            if isinstance(kidney, dict) and kidney.get("status") in _NO_PROPOSAL_WORDS:
                lines.append(f"<div><b>{_e(kidney.get('side'))} kidney</b>: "
                             f"{_e(_NO_PROPOSAL_WORDS[kidney['status']])}</div>")
            continue
        try:
            names, cost = proposed_clamping(clamping)
            lines.append(f"<div><b>{_e(kidney['side'])} kidney</b>: clamp {_e(', '.join(names))}, leaving "
                         f"{float(cost['ischaemic_percent']):g}% of the kidney without blood "
                         f"<span class='muted'>({_e(_STRATEGY_WORDS[clamping['strategy']])})</span></div>")
        except (KeyError, TypeError, ValueError):
            continue
    study = plan.get("study") if isinstance(plan, dict) else None
    scores = []  # each kidney's R.E.N.A.L. score, under a heading of its own
    segmented = (isinstance(study, dict) and not study.get("tumour")
                 and Path(str(study.get("labels"))).name == "labels.nii.gz")  # segment's own tumour label
    for kidney in plan.get("kidneys", []) if isinstance(plan, dict) else []:
        score = (kidney.get("tumour") or {}).get("nephrometry") if isinstance(kidney, dict) else None
        if isinstance(score, dict):
            try:
                scores.append(f"<div><b>{_e(kidney['side'])} kidney</b>: {_e(describe(score, segmented=segmented))}"
                              "</div>")
            except (KeyError, TypeError, ValueError):
                continue
    missing = study.get("not_located") if isinstance(study, dict) else None
    for side, why in sorted(missing.items()) if isinstance(missing, dict) else []:
        lines.append(f"<div><b>{_e(side)} kidney</b>: not located by renalseg segment, not planned "
                     f"<span class='muted'>({_e(why)})</span></div>")
    heading = "<h3 style='font-size:14px;margin:8px 0 4px 0'>{}</h3>"
    return (([heading.format("Proposed clamping"), *lines] if lines else [])
            + ([heading.format("Tumour complexity (R.E.N.A.L. nephrometry)"), *scores] if scores else []))


def _images_section(study_dir: Path) -> str:
    names = [n for n in ("preview.png", "plan.png") if (study_dir / n).is_file()]
    names += sorted(p.name for p in study_dir.glob("*.png") if p.name not in names)
    blocks = []
    for name in names:
        data = base64.b64encode((study_dir / name).read_bytes()).decode("ascii")
        blocks.append(f"<div class='muted'>{_e(name)}</div>"
                      f"<img class='preview' alt='{_e(name)}' src='data:image/png;base64,{data}'>")
    return "<h2>Images</h2>" + "".join(blocks) if blocks else ""


def _notice(report: dict) -> str:
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    text = report.get("notice")
    if not text and model.get("synthetic_training_only"):
        from renalseg.pipeline import SYNTHETIC_NOTICE

        text = SYNTHETIC_NOTICE
    return text or "Research software: not validated for clinical decisions."


#: after plotly has drawn, the page records when (ms since navigation) for tests and benchmarks
_DRAWN_SCRIPT = ("requestAnimationFrame(function () { requestAnimationFrame(function () { "
                 "document.documentElement.setAttribute('data-drawn-ms', String(Math.round(performance.now()))); "
                 "}); });")


def render_page(fig: Any, *, title: str, notice: str, side_html: str) -> str:
    """The whole page: ``fig`` with plotly.js inlined, and ``side_html`` beside it."""
    view = fig.to_html(
        full_html=False, include_plotlyjs=True, div_id="view", default_width="100%", default_height="100%",
        config={"displaylogo": False, "responsive": True, "scrollZoom": True,
                "modeBarButtonsToRemove": ["sendDataToCloud"],
                "toImageButtonOptions": {"format": "png", "filename": "renalseg-3d"}},
        post_script=_DRAWN_SCRIPT,
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><div class='notice'><b>Research use only.</b> {_e(notice)}</div></header>"
        "<main><div><div class='view-box'>" + view + "</div>"
        "<div class='help'>Drag to rotate, scroll to zoom, the house icon resets the view (from the front: the "
        "patient's right on the left). Click a legend entry to hide or show it. Coordinates: patient LPS mm.</div>"
        f"</div><aside>{side_html}</aside></main></body></html>\n"
    )


def write_report(study_dir: Path | str, out_file: Path | str | None = None, *,
                 max_faces: int = DEFAULT_MAX_FACES, overwrite: bool = False,
                 on_progress: Callable[[str], None] | None = None) -> Path:
    """Write one self-contained ``report.html`` for a ``renalseg segment`` output folder.

    Args:
        study_dir: the folder holding ``labels.nii.gz`` (and ``labels.json``,
            ``report.json``, ``preview.png``, optionally ``plan.json``,
            ``territories.nii.gz`` with ``territories.json``).
        out_file: where to write (default ``study_dir/report.html``); written atomically.
        max_faces: triangles of all surfaces together (halved while the page is over
            :data:`MAX_PAGE_BYTES`).
        overwrite: replace an existing page (without it an existing one is an error).
        on_progress: called with a short text before each step.

    Returns:
        The path of the page.

    Raises:
        UsageError: ``study_dir`` is not a segment output folder, or plotly is missing.
        OutputExistsError: the page exists and ``overwrite`` is false.
        InputError: a file in it cannot be read.
        GeometryError: ``territories.nii.gz`` is on another grid than ``labels.nii.gz``.
    """
    from renalseg.io.image import read_label_image
    from renalseg.io.output import atomic_write_text
    from renalseg.volume import Volume

    _import_plotly()
    study_dir = Path(study_dir)
    labels_path = study_dir / "labels.nii.gz"
    if not labels_path.is_file():
        from renalseg.batch import no_labels_message

        raise UsageError(no_labels_message(study_dir, f"{study_dir}: no labels.nii.gz; pass a renalseg segment "
                                                      "output folder."))
    out_path = Path(out_file) if out_file is not None else study_dir / "report.html"
    if out_path.exists() and not overwrite:
        raise OutputExistsError(f"{out_path} exists; pass --overwrite to replace it.")
    say = on_progress or (lambda text: None)
    say("read")
    labels = Volume.from_sitk(read_label_image(labels_path))
    values = [int(v) for v in np.flatnonzero(np.bincount(labels.array.ravel().astype(np.int64))) if v != 0]
    label_names = read_label_names(study_dir, values)
    report = _read_json(study_dir / "report.json") if (study_dir / "report.json").is_file() else {}
    if not isinstance(report, dict):
        raise InputError(f"{study_dir / 'report.json'}: expected a JSON object.")
    rois = report.get("rois") if isinstance(report.get("rois"), list) and report.get("rois") else None
    territories, territory_names = None, None
    if (study_dir / "territories.nii.gz").is_file():
        territories = Volume.from_sitk(read_label_image(study_dir / "territories.nii.gz"))
        names_path = study_dir / "territories.json"
        doc = _read_json(names_path) if names_path.is_file() else {}
        territory_names = {int(k): str(v.get("name", k) if isinstance(v, dict) else v)
                           for k, v in (doc.items() if isinstance(doc, dict) else []) if str(k).isdigit()}
    full = build_meshes(labels, label_names, rois=rois, territories=territories,
                        territory_names=territory_names, on_progress=lambda text: say(f"mesh {text}"))
    title = f"renalseg report: {report.get('study_id') or study_dir.name}"
    notice = _notice(report)
    if isinstance(report.get("quality"), dict):  # the quality verdict first, where a reader looks
        from renalseg.quality import verdict_line

        notice = f"{verdict_line(report['quality'])}. {notice}"
    say("page")
    side_html = (_facts_section(report, study_dir, labels) + _volumes_section(full, labels, label_names)
                 + _plan_section(study_dir) + _images_section(study_dir)
                 + f"<div class='muted' style='margin-top:12px'>Written by renalseg {_e(__version__)}.</div>")
    budget = int(max_faces)
    while True:
        meshes = _fit_face_budget(full, budget)
        page = render_page(build_figure(meshes), title=title, notice=notice, side_html=side_html)
        size = len(page.encode("utf-8"))
        if size <= MAX_PAGE_BYTES or budget <= 10_000:
            break
        logger.info("page %.1f MB with %d triangles; halving them", size / 1e6, budget)
        budget //= 2
    if size > MAX_PAGE_BYTES:
        logger.warning("%s is %.1f MB, over the %d MB budget (large images in %s?).", out_path, size / 1e6,
                       MAX_PAGE_BYTES // (1024 * 1024), study_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out_path, page)
