"""Surface meshes of label maps in patient millimetres (STL/PLY/OBJ), and ``tree.json``.

Coordinates: meshes are in **patient LPS millimetres** (x → patient left, y →
posterior, z → superior), the space of DICOM and ITK, so they overlay the CT in any
viewer that honours the image geometry. Binary STL files carry ``SPACE=LPS`` at the
start of their 80-byte header, as 3D Slicer writes and reads it (PLY: a
``comment SPACE=LPS`` header line; OBJ: a ``# SPACE=LPS`` first line).
``space="ras"`` negates x and y and writes ``SPACE=RAS`` (for tools that assume RAS,
such as older Slicer models or nibabel-based pipelines).

How a mesh is made (:func:`mask_to_mesh`):

1. components smaller than ``min_component_mm3`` are dropped (26-connectivity, as
   :mod:`renalseg.components` defines them; voxels touching at an edge or a corner
   are joined first so each component is one body);
2. the mask's bounding box is padded by one voxel so marching cubes (scikit-image,
   level 0.5) closes every surface, also where the vessel leaves the image;
3. vertices are mapped from voxel indices through :meth:`Geometry.index_to_world`
   (origin, spacing **and** direction), so LAS, RAS and oblique grids overlay;
4. the triangle winding is set so that the signed volume is positive: normals point
   outward even when the grid is mirrored (a direction matrix with determinant −1,
   or the z, y, x → x, y, z axis swap, reverses winding);
5. Taubin λ|μ smoothing (``trimesh.smoothing.filter_taubin``, λ = 0.5, μ = −0.53)
   removes the voxel staircase with little shrinkage;
6. marching cubes on a binary mask cuts the voxel corners (a vessel two voxels wide
   loses ~8 % of its volume) and Taubin shrinks slightly, so when smoothing is on a
   uniform offset along the vertex normals, δ = (V_voxels − V_mesh) / area (twice,
   |δ| ≤ half the smallest spacing), restores the voxel volume;
7. optional decimation (``decimate`` = fraction of faces kept) by quadric edge
   collapse, ``trimesh``'s ``simplify_quadric_decimation``, which needs the optional
   package ``fast-simplification`` (not a renalseg dependency; without it
   ``decimate`` raises a :class:`UsageError` saying how to install it). It runs in
   steps of 20 % and stops, with a warning, before a step would leave the surface
   open (one big collapse pinches thin vessels into non-manifold edges).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import trimesh

from renalseg.components import SPECK_MM3, STRUCTURE_26
from renalseg.errors import InputError, UsageError, check_choice
from renalseg.geometry import Geometry
from renalseg.io.output import atomic_write_bytes, atomic_write_json
from renalseg.labels import BY_KEY, SOLID_KEYS, STRUCTURE_KEYS, structure_kind, values_mask, values_of_kind
from renalseg.tree import analyze_tree, bounding_box, drop_small_components, solid_stats
from renalseg.volume import Volume, crop

__all__ = [
    "DEFAULT_SMOOTHING_ITERATIONS",
    "DEFAULT_MIN_COMPONENT_MM3",
    "MESH_FORMATS",
    "SPACES",
    "mask_to_mesh",
    "label_to_mesh",
    "mesh_to_bytes",
    "split_sides",
    "export_meshes",
]

logger = logging.getLogger(__name__)

#: Taubin iterations when the caller does not say (``--smooth``)
DEFAULT_SMOOTHING_ITERATIONS = 10
#: specks smaller than this are dropped (:data:`renalseg.components.SPECK_MM3`)
DEFAULT_MIN_COMPONENT_MM3 = SPECK_MM3
MESH_FORMATS = ("stl", "ply", "obj")
SPACES = ("lps", "ras")
_TAUBIN_LAMBDA, _TAUBIN_NU = 0.5, 0.53


def _restore_volume(mesh: trimesh.Trimesh, target_mm3: float, max_offset_mm: float) -> None:
    """Move vertices along their normals so the enclosed volume matches ``target_mm3``."""
    for _ in range(2):
        area = float(mesh.area)
        if area <= 0:
            return
        offset = float(np.clip((target_mm3 - float(mesh.volume)) / area, -max_offset_mm, max_offset_mm))
        mesh.vertices = mesh.vertices + offset * mesh.vertex_normals


def _decimate_watertight(mesh: trimesh.Trimesh, keep_fraction: float) -> trimesh.Trimesh:
    """Quadric decimation in steps of 20 %, stopping before the surface stops being closed.

    One big collapse pinches thin vessels into non-manifold edges (seen below ~60 %
    of the faces on artery trees); smaller steps, each checked, get further, and the
    mesh stays watertight. Where the target cannot be reached a warning says how far
    it got.
    """
    start_faces = len(mesh.faces)
    target = max(4, int(round(start_faces * keep_fraction)))
    while len(mesh.faces) > target:
        step = max(target, int(len(mesh.faces) * 0.8))
        candidate = mesh.simplify_quadric_decimation(face_count=step)
        if not candidate.is_watertight or len(candidate.faces) >= len(mesh.faces):
            break
        if candidate.volume < 0:
            candidate.invert()
        mesh = candidate
    if len(mesh.faces) > 1.05 * target:
        logger.warning("Decimation stopped at %.0f %% of the faces (asked %.0f %%) to keep the mesh watertight.",
                       100 * len(mesh.faces) / start_faces, 100 * keep_fraction)
    return mesh


def _fill_edge_contacts(mask: np.ndarray, *, max_passes: int = 10) -> np.ndarray:
    """Fill the voxels that make two voxels touch only along an edge or at a corner.

    Marching cubes joins two voxels that share only an edge (a 2 × 2 block holding
    one diagonal) through that edge, which four faces then share: a non-manifold,
    not watertight surface. Thin, noisy vessel masks have such contacts often (24
    edges on a typical network output). Adding one voxel per contact makes the mask
    face-connected there; the volume changes by a few voxels. Two voxels touching only
    at a corner would give two separate surfaces of one 26-connected component (see
    :mod:`renalseg.components`); two voxels join them.

    Example:
        >>> m = np.zeros((1, 2, 2), bool); m[0, 0, 0] = m[0, 1, 1] = True
        >>> int(_fill_edge_contacts(m).sum())
        3
        >>> m = np.zeros((2, 2, 2), bool); m[0, 0, 0] = m[1, 1, 1] = True
        >>> int(_fill_edge_contacts(m).sum())
        4
    """
    mask = np.array(mask, dtype=bool, copy=True)
    for _ in range(max_passes):
        changed = False
        for axes in ((1, 2), (0, 2), (0, 1)):
            moved = np.moveaxis(mask, axes, (-2, -1))  # a view: writes reach ``mask``
            a, b = moved[..., :-1, :-1], moved[..., 1:, 1:]
            c, d = moved[..., :-1, 1:], moved[..., 1:, :-1]
            main = a & b & ~c & ~d
            anti = c & d & ~a & ~b
            if main.any() or anti.any():
                c |= main
                a |= anti
                changed = True
        # two voxels touching only at a corner: marching cubes makes two bodies of what
        # is one 26-connected component; a voxel beside one of them makes the contact an
        # edge, which the next pass fills
        nz, ny, nx = mask.shape
        corner = {(dz, dy, dx): mask[dz:nz - 1 + dz, dy:ny - 1 + dy, dx:nx - 1 + dx]
                  for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)}
        if min(mask.shape) > 1:
            occupied = sum(c.astype(np.uint8) for c in corner.values())
            for p in ((0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)):
                q = (1 - p[0], 1 - p[1], 1 - p[2])
                lone = corner[p] & corner[q] & (occupied == 2)
                if lone.any():
                    corner[(p[0], p[1], 1 - p[2])] |= lone
                    changed = True
        if not changed:
            break
    return mask


def mask_to_mesh(mask: Volume, *, smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
                 decimate: float | None = None,
                 min_component_mm3: float = DEFAULT_MIN_COMPONENT_MM3) -> trimesh.Trimesh:
    """A watertight, outward-oriented surface of a binary mask, in LPS mm.

    Args:
        mask: a :class:`Volume` whose non-zero voxels are inside.
        smoothing_iterations: Taubin iterations (0: the raw marching-cubes surface).
        decimate: keep this fraction of faces (0 < F ≤ 1); ``None`` keeps all.
        min_component_mm3: drop connected components smaller than this (mm³).

    Returns:
        A ``trimesh.Trimesh`` with vertices in LPS mm and positive volume.

    Raises:
        InputError: nothing left to mesh.
        UsageError: a bad ``decimate`` or ``smoothing_iterations``, or decimation
            without the ``fast-simplification`` package.

    Example:
        >>> from renalseg.geometry import Geometry
        >>> g = Geometry((12, 12, 12), (1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> zz, yy, xx = np.indices(g.shape_zyx)
        >>> ball = Volume(((zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 6) ** 2 <= 16), g)
        >>> mesh = mask_to_mesh(ball)
        >>> mesh.is_watertight, bool(abs(mesh.volume / ball.array.sum() - 1) < 0.05)
        (True, True)
    """
    if smoothing_iterations < 0:
        raise UsageError(f"Smoothing iterations must be ≥ 0; got {smoothing_iterations}.")
    if decimate is not None and not 0 < decimate <= 1:
        raise UsageError(f"--decimate is the fraction of faces kept, 0 < F ≤ 1; got {decimate}.")
    from skimage.measure import marching_cubes

    geometry = mask.geometry
    array = drop_small_components(np.asarray(mask.array) != 0, geometry.spacing_xyz_mm, min_component_mm3)
    if not array.any():
        raise InputError(
            f"Nothing to mesh: the mask is empty after dropping components below {min_component_mm3} mm³."
        )
    box = bounding_box(array)
    start_zyx = np.array([s.start for s in box]) - 1
    padded = np.pad(_fill_edge_contacts(array[box]), 1).astype(np.float32)
    verts_zyx, faces, _, _ = marching_cubes(padded, level=0.5, allow_degenerate=False)
    world = geometry.index_to_world((verts_zyx + start_zyx)[:, ::-1])
    mesh = trimesh.Trimesh(vertices=world, faces=faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    voxel_volume = float(array.sum()) * geometry.voxel_volume_mm3
    if smoothing_iterations:
        trimesh.smoothing.filter_taubin(mesh, lamb=_TAUBIN_LAMBDA, nu=_TAUBIN_NU,
                                        iterations=int(smoothing_iterations))
        _restore_volume(mesh, voxel_volume, 0.5 * min(geometry.spacing_xyz_mm))
    if decimate is not None and decimate < 1:
        try:
            import fast_simplification  # noqa: F401
        except ImportError as err:
            raise UsageError(
                "--decimate needs the optional package 'fast-simplification' "
                "(pip install fast-simplification); run without --decimate otherwise."
            ) from err
        mesh = _decimate_watertight(mesh, decimate)
    if not mesh.is_watertight:
        logger.warning("The mesh is not watertight (%d faces); check it before 3D printing.", len(mesh.faces))
    return mesh


def label_to_mesh(labels: Volume, *, label: int, smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
                  decimate: float | None = None,
                  min_component_mm3: float = DEFAULT_MIN_COMPONENT_MM3) -> trimesh.Trimesh:
    """The surface of one label of a label map, in LPS mm (see :func:`mask_to_mesh`).

    Raises:
        InputError: the label is absent (the message lists the labels present).
    """
    present = labels.array == label
    if not present.any():
        values = [int(v) for v in np.unique(labels.array) if v != 0]
        raise InputError(f"Label {label} is not in the label map; labels present: {values or 'none'}.")
    return mask_to_mesh(labels.with_array(present), smoothing_iterations=smoothing_iterations,
                        decimate=decimate, min_component_mm3=min_component_mm3)


def mesh_to_bytes(mesh: trimesh.Trimesh, *, fmt: str = "stl", space: str = "lps") -> bytes:
    """Serialise an LPS mesh as binary STL, binary PLY or OBJ in LPS or RAS mm.

    The coordinate space is written in the header: STL ``SPACE=LPS`` at the start of
    the 80-byte header, PLY ``comment SPACE=LPS``, OBJ ``# SPACE=LPS``.

    Example:
        >>> box = trimesh.creation.box()
        >>> mesh_to_bytes(box)[:9]
        b'SPACE=LPS'
        >>> b"comment SPACE=RAS" in mesh_to_bytes(box, fmt="ply", space="ras")
        True
    """
    fmt = check_choice(fmt, MESH_FORMATS, "mesh format")
    space = check_choice(space, SPACES, "coordinate space")
    if space == "ras":
        # negating x and y is a rotation (determinant +1): winding stays outward
        mesh = trimesh.Trimesh(vertices=mesh.vertices * np.array([-1.0, -1.0, 1.0]), faces=mesh.faces,
                               process=False)
    tag = f"SPACE={space.upper()}"
    if fmt == "stl":
        data = trimesh.exchange.stl.export_stl(mesh)
        header = f"{tag} renalseg mesh, units mm".encode("ascii").ljust(80, b" ")
        return header + data[80:]
    if fmt == "ply":
        data = trimesh.exchange.ply.export_ply(mesh, encoding="binary", include_attributes=False)
        first_line_end = data.index(b"\n", data.index(b"format")) + 1
        return data[:first_line_end] + f"comment {tag}\n".encode("ascii") + data[first_line_end:]
    text = trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_color=False,
                                           include_texture=False, header=None)
    return f"# {tag}\n# renalseg mesh, units mm\n{text}".encode("utf-8")


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "label"


def _midline_x(geometry: Geometry) -> float:
    """LPS x of the centre of the field of view."""
    return float(geometry.corners_world()[:, 0].mean())


#: a field of view narrower than this across the body (LPS x) is one kidney's crop, not a
#: body (an adult abdomen is 250 mm or more across; a kidney ROI with its vessels to the
#: aorta 100-160 mm): it is not split at its centre
CROP_MAX_WIDTH_MM = 200.0


#: the renal vessels beyond the kidney must lie this far (LPS x, mm) to one side of its
#: centre before a crop's side is read from them (34-69 mm in the 44 held-out phantom crops)
CROP_SIDE_MIN_MM = 10.0


#: the structures :func:`side_from_vessels` reads, in KiPA22's values
_KIPA_KINDS = {key: [BY_KEY[key].value] for key in STRUCTURE_KEYS}


def side_from_vessels(values: np.ndarray, grid: Geometry, kinds: dict[str, list[int]] | None = None
                      ) -> tuple[str | None, float | None]:
    """The patient's side of the kidney in a crop, from its labels: the renal artery and
    vein leave the kidney at its hilum medially, towards the aorta and the IVC. A crop's
    own coordinates need not say it (a crop saved without its scan's origin starts at 0, 0, 0).
    ``kinds`` gives the label values of each structure (``artery``, ``vein``, ``kidney``,
    ``tumour``, as :func:`renalseg.labels.values_of_kind` reads a ``labels.json``);
    default KiPA22's (1 vein, 2 kidney, 3 artery, 4 tumour).

    Returns:
        ``(side, offset_mm)``: ``"left"`` where the vessel voxels more than 5 mm outside
        the kidney (its largest piece with the tumour) lie to the patient's right of its
        centre, and how far (LPS x, mm, negative to the right); ``(None, offset)`` under
        :data:`CROP_SIDE_MIN_MM`, ``(None, None)`` without a kidney or such vessels.

    Example:
        >>> g = Geometry((40, 40, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> v = np.zeros(g.shape_zyx, np.uint8); v[10:30, 10:30, 35:55] = 2  # kidney
        >>> v[20, 20, 5:35] = 3  # its artery runs to the patient's right (-x): a left kidney
        >>> side_from_vessels(v, g)
        ('left', -27.5)
    """
    from scipy import ndimage

    kinds = _KIPA_KINDS if kinds is None else kinds
    organ = values_mask(values, [*kinds.get("kidney", []), *kinds.get("tumour", [])])
    pieces, count = ndimage.label(organ, STRUCTURE_26)
    vessels = values_mask(values, [*kinds.get("artery", []), *kinds.get("vein", [])])
    if not count or not vessels.any():
        return None, None
    kidney = pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
    spacing_zyx = np.asarray(grid.spacing_xyz_mm, float)[::-1]
    vessels &= ndimage.distance_transform_edt(~kidney, sampling=spacing_zyx) > 5.0
    if not vessels.any():
        return None, None
    centres = grid.index_to_world(np.stack([np.argwhere(m).mean(axis=0)[::-1] for m in (vessels, kidney)]))
    offset = round(float(centres[0][0] - centres[1][0]), 1)
    if abs(offset) < CROP_SIDE_MIN_MM:
        return None, offset
    return ("left" if offset < 0 else "right"), offset


def split_sides(mask: np.ndarray, geometry: Geometry, rois: list[dict] | None = None, *,
                midline_x: float | None = None) -> dict[str, np.ndarray]:
    """Assign each foreground voxel to the patient's left or right.

    With ``rois`` (the ``"rois"`` of a ``report.json``: dicts with ``"side"`` and
    ``"box_mm_lps": {"min": [x, y, z], "max": [x, y, z]}``), a voxel goes to the ROI
    whose box it lies in; a voxel inside both boxes or neither goes to the nearest box
    (ties: the nearest box centre). Without ROIs the body midline is taken as the LPS
    x of the centre of the field of view (CT is acquired with the patient centred;
    pass ``midline_x`` when ``geometry`` is a crop): voxels with larger LPS x are on
    the patient's **left**.

    Returns:
        ``{"left": bool (Z, Y, X), "right": bool (Z, Y, X)}`` (sides with no ROI absent).
    """
    index = np.argwhere(mask)
    world = geometry.index_to_world(index[:, ::-1]) if len(index) else np.zeros((0, 3))
    sides: dict[str, np.ndarray] = {}
    if rois:
        names, lows, highs = [], [], []
        for roi in rois:
            side = str(roi.get("side", "")).lower()
            box = roi.get("box_mm_lps") or {}
            if side not in ("left", "right") or "min" not in box or "max" not in box:
                raise InputError(f"A ROI in report.json lacks 'side' or 'box_mm_lps': {roi!r}.")
            half_voxel = 0.5 * np.asarray((roi.get("model_grid") or {}).get("spacing_xyz_mm", (0.0, 0.0, 0.0)))
            names.append(side)
            lows.append(np.minimum(box["min"], box["max"]) - half_voxel)
            highs.append(np.maximum(box["min"], box["max"]) + half_voxel)
        lo, hi = np.asarray(lows, float), np.asarray(highs, float)
        outside = np.maximum(0.0, np.maximum(lo[None] - world[:, None], world[:, None] - hi[None]))
        to_box = np.linalg.norm(outside, axis=2)
        to_centre = np.linalg.norm(world[:, None] - (lo + hi)[None] / 2, axis=2)
        inside_count = (to_box == 0).sum(axis=1, keepdims=True)
        score = np.where(inside_count == 1, to_box, to_box + 1e-6 * to_centre)
        choice = np.argmin(score, axis=1) if len(index) else np.zeros(0, int)
        for r, side in enumerate(names):
            sides.setdefault(side, np.zeros(mask.shape, bool))
            chosen = index[choice == r]
            sides[side][tuple(chosen.T)] = True
        return sides
    if midline_x is None:
        midline_x = _midline_x(geometry)
    is_left = world[:, 0] > midline_x
    for side, pick in (("left", is_left), ("right", ~is_left)):
        sides[side] = np.zeros(mask.shape, bool)
        sides[side][tuple(index[pick].T)] = True
    return sides


def _write_centerlines(out_dir: Path, stem: str, polylines: list[dict], *, space: str) -> list[str]:
    """``<stem>_centerline.vtp`` and ``<stem>_centerline.mrk.json``; their paths."""
    from renalseg.io.centerline import centerline_markups, centerline_vtp
    from renalseg.io.terminology import structure_for

    vtp = atomic_write_bytes(out_dir / f"{stem}_centerline.vtp",
                             centerline_vtp(polylines, space=space, name=f"{stem} centerline"))
    markups = atomic_write_bytes(out_dir / f"{stem}_centerline.mrk.json", centerline_markups(
        polylines, color_rgb=structure_for(stem).rgb, space=space, name=f"{stem} branch").encode("utf-8"))
    return [str(vtp), str(markups)]


def export_meshes(labels: Volume, out_dir: Path | str, *, label_names: dict[int, str] | None = None,
                  rois: list[dict] | None = None, split: bool = True, space: str = "lps", fmt: str = "stl",
                  smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS, decimate: float | None = None,
                  min_component_mm3: float = DEFAULT_MIN_COMPONENT_MM3,
                  on_progress: Callable[[str], None] | None = None) -> dict:
    """Write one mesh per label and side plus ``tree.json`` into ``out_dir``.

    Files are ``<label name>_<side>.<fmt>`` (e.g. ``renal_artery_left.stl``), or
    ``<label name>.<fmt>`` with ``split=False``; every write is atomic. Each artery
    tree's centerline goes beside it as ``<label name>_<side>_centerline.vtp`` (VTK
    PolyData: radius per point, ``BranchId`` per cell) and ``..._centerline.mrk.json``
    (3D Slicer curves), in ``space`` (:mod:`renalseg.io.centerline`); the branch ids
    are the ``id`` of ``tree.json``'s ``segment_list``. A side with
    nothing left after dropping specks gets no file (its ``tree.json`` entry says 0
    components).

    Args:
        labels: the label map (0 = background), any orientation.
        out_dir: the folder to write into (created; the caller stages it).
        label_names: ``{value: name}`` (from ``labels.json``); unnamed values are
            called ``label_<value>``.
        rois: the ``"rois"`` list of ``report.json``, to split sides by kidney ROI;
            ``None`` splits at the midline (see :func:`split_sides`), except in a field of
            view narrower than :data:`CROP_MAX_WIDTH_MM`: one kidney's crop, all on one
            side, read from its vessels (:func:`side_from_vessels`; labels named by
            ``label_names``, or KiPA22's values 1-4) or else from the crop's centre.
        split: ``False`` writes one mesh per label (e.g. a single-kidney ROI crop).
        space: ``"lps"`` (default) or ``"ras"`` for the mesh files and ``tree.json``.
        fmt: ``"stl"``, ``"ply"`` or ``"obj"``.
        smoothing_iterations, decimate, min_component_mm3: see :func:`mask_to_mesh`.
        on_progress: called with a short text before each mesh.

    Returns:
        ``{"out_dir", "space", "format", "split", "meshes": [{"label", "name", "side",
        "path", "faces", "vertices", "volume_ml", "voxel_volume_ml", "watertight", "bodies"}],
        "tree_json", "centerlines": [paths], "trees": {name: {side: analyze_tree dict}}}``.
    """
    fmt = check_choice(fmt, MESH_FORMATS, "mesh format")
    space = check_choice(space, SPACES, "coordinate space")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    full_geometry = labels.geometry
    occupied = labels.array != 0
    if occupied.any():
        # work on the labelled box only (a CT is ~60 M voxels, the arteries a few
        # thousand); world coordinates are unchanged by the crop
        box = bounding_box(occupied)
        start = tuple(s.start for s in box)
        labels = crop(labels, start, tuple(s.stop - s.start for s in box))
    values = [int(v) for v in np.unique(labels.array) if v != 0]
    meshes: list[dict] = []
    centerlines: list[str] = []
    trees: dict[str, dict] = {}
    method = "none" if not split else ("roi" if rois else "midline")
    crop_side = None
    if method == "midline" and np.ptp(full_geometry.corners_world()[:, 0]) < CROP_MAX_WIDTH_MM:
        # structures by their labels' names; an unnamed map of values 1-4 is KiPA22's
        kinds = ({key: values_of_kind(names, key) for key in _KIPA_KINDS} if names
                 else _KIPA_KINDS if set(values) <= {1, 2, 3, 4} else None)
        crop_side = side_from_vessels(labels.array, labels.geometry, kinds)[0] if kinds is not None else None
        method = "crop: vessels" if crop_side else "crop: coordinates"
        crop_side = crop_side or ("left" if _midline_x(full_geometry) > 0 else "right")
    for value in values:
        name = _safe_name(names.get(value, f"label_{value}"))
        mask = labels.array == value
        if crop_side is not None:  # one kidney: not cut in two at the crop's centre
            parts = {crop_side: mask}
        else:
            parts = (split_sides(mask, labels.geometry, rois, midline_x=_midline_x(full_geometry)) if split
                     else {"all": mask})
        trees[name] = {}
        for side, part in parts.items():
            if on_progress is not None:
                on_progress(f"{name} {side}")
            kept = drop_small_components(part, labels.geometry.spacing_xyz_mm, min_component_mm3)
            part_volume = labels.with_array(kept)
            kind = structure_kind(name)
            if kind in SOLID_KEYS:  # solid: no skeleton (see solid_stats)
                trees[name][side] = solid_stats(part_volume)
            else:
                trees[name][side] = analyze_tree(part_volume, min_component_mm3=0.0, polylines=kind == "artery")
            polylines = trees[name][side].pop("polylines", [])
            if polylines:
                stem = name if side == "all" else f"{name}_{side}"
                centerlines.extend(_write_centerlines(out_dir, stem, polylines, space=space))
            if space == "ras":
                for key in ("branch_points_mm", "end_points_mm"):  # a vessel's; a kidney has none
                    if key in trees[name][side]:
                        trees[name][side][key] = [[-x, -y, z] for x, y, z in trees[name][side][key]]
            if not kept.any():
                continue
            mesh = mask_to_mesh(part_volume, smoothing_iterations=smoothing_iterations, decimate=decimate,
                                min_component_mm3=0.0)
            filename = f"{name}.{fmt}" if side == "all" else f"{name}_{side}.{fmt}"
            path = atomic_write_bytes(out_dir / filename, mesh_to_bytes(mesh, fmt=fmt, space=space))
            meshes.append({
                "label": value,
                "name": name,
                "side": side,
                "path": str(path),
                "faces": int(len(mesh.faces)),
                "vertices": int(len(mesh.vertices)),
                "volume_ml": round(float(mesh.volume) / 1000.0, 4),
                "voxel_volume_ml": round(float(kept.sum()) * labels.geometry.voxel_volume_mm3 / 1000.0, 4),
                "watertight": bool(mesh.is_watertight),
                "bodies": int(mesh.body_count),
            })
    tree_doc = {
        "coordinate_space": space.upper(),
        "units": "mm",
        "side_split": method,
        "min_component_mm3": min_component_mm3,
        "trees": trees,
    }
    tree_path = atomic_write_json(out_dir / "tree.json", tree_doc)
    return {
        "out_dir": str(out_dir),
        "space": space.upper(),
        "format": fmt,
        "split": method,
        "meshes": meshes,
        "tree_json": str(tree_path),
        "centerlines": centerlines,
        "trees": trees,
    }
