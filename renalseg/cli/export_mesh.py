"""``renalseg export-mesh LABELS... --out DIR``: artery meshes and ``tree.json``."""

from __future__ import annotations

import json
from enum import Enum
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from renalseg.cli.common import configure_logging, console, err_console, handle_errors, study_failure

__all__ = ["register", "resolve_label_input"]


#: ``--space`` and ``--format`` choices, from the library's lists (so --help shows them)
Space = Enum("Space", {name: name for name in ("lps", "ras")}, type=str)  # = renalseg.mesh.SPACES
MeshFormat = Enum("MeshFormat", {name: name for name in ("stl", "ply", "obj")}, type=str)  # = MESH_FORMATS


def resolve_label_input(path: Path) -> tuple[str, Path, Path | None, Path | None]:
    """``(study_id, labels file, report.json or None, labels.json or None)`` for one input.

    A folder must hold ``labels.nii.gz`` (a ``renalseg segment`` output folder); a
    file named ``labels.*`` takes its study id and side files from its folder.
    """
    from renalseg.errors import UsageError
    from renalseg.study import safe_study_id

    if not path.exists():
        raise UsageError(f"{path}: no such file or folder. Check the path.")
    if path.is_dir():
        labels = path / "labels.nii.gz"
        if not labels.is_file():
            from renalseg.batch import no_labels_message

            raise UsageError(no_labels_message(path, f"{path}: no labels.nii.gz in this folder; pass a label file or "
                                                     "a segment output folder."))
        folder, study_id = path, safe_study_id(path)
    else:
        labels = path
        if path.name.lower().startswith("labels."):
            folder, study_id = path.parent, safe_study_id(path.parent.resolve())
        else:
            folder, study_id = None, safe_study_id(path)
    report = folder / "report.json" if folder is not None and (folder / "report.json").is_file() else None
    names = folder / "labels.json" if folder is not None and (folder / "labels.json").is_file() else None
    return study_id, labels, report, names


def _read_json(path: Path | None) -> dict:
    from renalseg.errors import InputError

    if path is None:
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot be read as JSON ({err}).") from err


@handle_errors
def export_mesh(
    labels: Annotated[list[Path], typer.Argument(help="labels.nii.gz files or `renalseg segment` output folders.",
                                                 show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; one sub-folder per study.")],
    space: Annotated[Space, typer.Option(help="Mesh coordinates: lps (DICOM/ITK, 3D Slicer) or ras.",
                                         case_sensitive=False)] = Space.lps,
    smooth: Annotated[int, typer.Option("--smooth", min=0,
                                        help="Taubin smoothing iterations (volume-preserving; 0 = off).")] = 10,
    decimate: Annotated[float | None, typer.Option(
        help="Keep this fraction of faces, 0 < F ≤ 1 (needs the fast-simplification package).")] = None,
    min_component_mm3: Annotated[float, typer.Option("--min-component-mm3", min=0.0,
                                                     help="Drop pieces smaller than this (mm³).")] = 5.0,
    fmt: Annotated[MeshFormat, typer.Option("--format", help="Mesh file format.",
                                            case_sensitive=False)] = MeshFormat.stl,
    split: Annotated[bool, typer.Option("--split/--no-split",
                                        help="One mesh per kidney side (ROIs from report.json, else the "
                                             "midline; a field of view under 200 mm across is one kidney's "
                                             "crop, its side read from its vessels), or one per label.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    """Surface meshes (STL) of each kidney's artery tree, plus tree.json.

    Meshes are in patient LPS millimetres with [bold]SPACE=LPS[/] in the STL header (as
    3D Slicer reads it); [bold]--space ras[/] writes RAS. Output per study:
    DIR/<study>/renal_artery_left.stl, renal_artery_right.stl, tree.json, and each artery
    tree's centerline as renal_artery_<side>_centerline.vtp (VTK, radius per point, BranchId
    per cell as in tree.json) and .mrk.json (3D Slicer curves).

    Example: [bold]renalseg export-mesh results/patient01 --out meshes/[/]
    """
    from renalseg.errors import UsageError, check_choice
    from renalseg.io.image import read_label_image
    from renalseg.io.output import StagedDir, check_writable_folder
    from renalseg.mesh import MESH_FORMATS, SPACES, export_meshes
    from renalseg.volume import Volume

    configure_logging(quiet=quiet)
    space = check_choice(Space(space).value, SPACES, "coordinate space")
    fmt = check_choice(MeshFormat(fmt).value, MESH_FORMATS, "mesh format")
    inputs = [resolve_label_input(path) for path in labels]
    check_writable_folder(out)  # now, not after the meshing
    table = Table("study", "mesh", "faces", "volume (ml)", "centerline (mm)", "branch pts", "end pts")
    summaries, failed = [], 0
    for study_id, label_path, report_path, names_path in inputs:
        start = time.perf_counter()
        try:
            volume = Volume.from_sitk(read_label_image(label_path))
            report = _read_json(report_path)
            names = {int(k): v for k, v in _read_json(names_path).items() if str(k).lstrip("-").isdigit()}
            with StagedDir(out / study_id, overwrite=overwrite) as staging:
                summary = export_meshes(volume, staging, label_names=names, rois=report.get("rois") or None,
                                        split=split, space=space, fmt=fmt, smoothing_iterations=smooth,
                                        decimate=decimate, min_component_mm3=min_component_mm3)
        except UsageError:
            raise  # a bad option fails the same way for every study: exit 2 now
        except Exception as err:  # noqa: BLE001 - one study's failure, whatever it is, must not end the batch
            failed += 1
            summaries.append({"study_id": study_id, "status": "error", "error": study_failure(study_id, err)})
            continue
        final = out / study_id
        for mesh in summary["meshes"]:
            mesh["path"] = str(final / Path(mesh["path"]).name)
        summary.update({"study_id": study_id, "status": "ok", "out_dir": str(final),
                        "tree_json": str(final / "tree.json"), "seconds": round(time.perf_counter() - start, 2)})
        summaries.append(summary)
        for mesh in summary["meshes"]:
            tree = summary["trees"][mesh["name"]][mesh["side"]]
            vessel = "centerline_length_mm" in tree  # a kidney or a tumour has no centerline ("–")
            table.add_row(study_id, Path(mesh["path"]).name, f"{mesh['faces']:,}", f"{mesh['volume_ml']:.2f}",
                          f"{tree['centerline_length_mm']:.1f}" if vessel else "–",
                          str(tree["branch_points"]) if vessel else "–", str(tree["end_points"]) if vessel else "–")
        if not summary["meshes"] and not quiet:
            err_console.print(f"{study_id}: no labelled voxels left to mesh (tree.json written).")
    if as_json:
        console.print_json(json.dumps({"studies": summaries}, default=str))
    elif not quiet:
        console.print(table)
        console.print(f"Meshes in {out} ({space.upper()} mm).")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("export-mesh")(export_mesh)
