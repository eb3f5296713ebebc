"""Centerline files: VTK XML PolyData (``.vtp``) and 3D Slicer markups curves (``.mrk.json``).

The ``.vtp`` holds one polyline cell per branch (a chain of the centerline tree
between branch and end points, :func:`renalseg.tree.analyze_tree`), the way VMTK and
Slicer's centerline modules exchange centerlines:

* points in millimetres, patient **LPS** (``space="ras"`` negates x and y), stated in
  a ``SPACE=LPS`` XML comment and a ``CoordinateSpace`` field;
* per point ``MaximumInscribedSphereRadius`` (mm), VMTK's name for the radius of the
  largest sphere inside the vessel at that point (here: the distance-transform
  radius, distance to the nearest background voxel centre minus half the smallest
  spacing);
* per cell ``BranchId``: the ``id`` of the branch in ``tree.json``'s ``segment_list``.

No VTK library is needed: the XML is written here (ASCII data arrays; a few thousand
points per tree) and any VTK reader (``vtkXMLPolyDataReader``, ParaView, Slicer,
meshio) opens it.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from renalseg.errors import check_choice
from renalseg.io.slicer import dumps_markups, markups_curves

__all__ = ["RADIUS_ARRAY", "BRANCH_ARRAY", "centerline_vtp", "centerline_markups"]

#: VMTK's point-data array name for the radius
RADIUS_ARRAY = "MaximumInscribedSphereRadius"
#: cell-data array: the branch id of tree.json
BRANCH_ARRAY = "BranchId"


def _to_space(points_mm: np.ndarray, space: str) -> np.ndarray:
    points = np.asarray(points_mm, float).reshape(-1, 3)
    return points * np.array([-1.0, -1.0, 1.0]) if space == "ras" else points


def _numbers(values: np.ndarray, fmt: str) -> str:
    return " ".join(format(v, fmt) for v in np.asarray(values).ravel())


def centerline_vtp(polylines: Sequence[dict], *, space: str = "lps", name: str = "centerline") -> bytes:
    """One branch per polyline cell as VTK XML PolyData.

    Args:
        polylines: ``[{"id", "points_mm": (K, 3) LPS mm, "radius_mm": (K,)}]``
            (``analyze_tree(..., polylines=True)["polylines"]``).
        space: ``"lps"`` or ``"ras"``.
        name: written in the file's comment.

    Example:
        >>> import xml.etree.ElementTree as ET
        >>> data = centerline_vtp([{"id": 3, "points_mm": [[0, 0, 0], [0, 0, 1]], "radius_mm": [1.0, 1.5]}])
        >>> piece = ET.fromstring(data).find("PolyData/Piece")
        >>> piece.get("NumberOfPoints"), piece.get("NumberOfLines"), piece.find("CellData/DataArray").text
        ('2', '1', '3')
    """
    space = check_choice(space, ("lps", "ras"), "coordinate space")
    points = [_to_space(p["points_mm"], space) for p in polylines]
    counts = [len(p) for p in points]
    all_points = np.concatenate(points) if points else np.zeros((0, 3))
    radii = np.concatenate([np.asarray(p["radius_mm"], float).ravel() for p in polylines]) if polylines \
        else np.zeros(0)
    offsets = np.cumsum(counts, dtype=np.int64)
    ids = [int(p["id"]) for p in polylines]
    # VTK's ASCII string arrays: the characters' codes, each string ended by a 0
    space_chars = _numbers(np.frombuffer(space.upper().encode("ascii") + bytes(1), dtype=np.uint8), "d")
    text = f"""<?xml version="1.0"?>
<!-- SPACE={space.upper()}; units mm; {name}; written by renalseg -->
<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">
  <PolyData>
    <FieldData>
      <Array type="String" Name="CoordinateSpace" NumberOfTuples="1" format="ascii">{space_chars}</Array>
    </FieldData>
    <Piece NumberOfPoints="{len(all_points)}" NumberOfVerts="0" NumberOfLines="{len(points)}" NumberOfStrips="0" NumberOfPolys="0">
      <PointData Scalars={quoteattr(RADIUS_ARRAY)}>
        <DataArray type="Float64" Name={quoteattr(RADIUS_ARRAY)} format="ascii">{_numbers(radii, ".6g")}</DataArray>
      </PointData>
      <CellData Scalars={quoteattr(BRANCH_ARRAY)}>
        <DataArray type="Int32" Name={quoteattr(BRANCH_ARRAY)} format="ascii">{_numbers(ids, "d")}</DataArray>
      </CellData>
      <Points>
        <DataArray type="Float64" Name="Points" NumberOfComponents="3" format="ascii">{_numbers(all_points, ".6f")}</DataArray>
      </Points>
      <Lines>
        <DataArray type="Int64" Name="connectivity" format="ascii">{_numbers(np.arange(len(all_points)), "d")}</DataArray>
        <DataArray type="Int64" Name="offsets" format="ascii">{_numbers(offsets, "d")}</DataArray>
      </Lines>
    </Piece>
  </PolyData>
</VTKFile>
"""
    return text.encode("ascii")


def centerline_markups(polylines: Sequence[dict], *, color_rgb: tuple[int, int, int], space: str = "lps",
                       name: str = "branch") -> str:
    """The branches as Slicer markups open curves, one per branch, named ``<name> <id>``.

    Example:
        >>> import json
        >>> doc = json.loads(centerline_markups([{"id": 2, "points_mm": [[1, 2, 3]], "radius_mm": [1]}],
        ...                                     color_rgb=(255, 0, 0), space="ras"))
        >>> m = doc["markups"][0]
        >>> m["name"], m["coordinateSystem"], m["controlPoints"][0]["position"]
        ('branch 2', 'RAS', [-1.0, -2.0, 3.0])
    """
    space = check_choice(space, ("lps", "ras"), "coordinate space")
    curves = [{"name": f"{name} {p['id']}", "points_mm": _to_space(p["points_mm"], space),
               "description": f"BranchId {p['id']} of tree.json"} for p in polylines]
    document = markups_curves(curves, color_rgb=color_rgb)
    for markup in document["markups"]:
        markup["coordinateSystem"] = space.upper()
        if space == "ras":
            for point in markup["controlPoints"]:
                point["orientation"] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    return dumps_markups(document)
