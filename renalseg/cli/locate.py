"""``renalseg locate INPUT... --out DIR``: kidney ROIs only (step 2 of the pipeline)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from renalseg.cli.common import STATE, configure_logging, console, err_console, handle_errors, print_error
from renalseg.errors import OutputExistsError, RenalsegError, UsageError

__all__ = ["register", "locate_one"]


def locate_one(path: Path, destination: Path, *, crop: bool, atlases: list[Path], overwrite: bool,
               series_uid: str | None, seed: int = 0) -> dict:
    """Locate the kidneys of one study and publish ``destination`` whole.

    Writes ``report.json`` and ``preview.png`` (and, with ``crop``, ``roi_<side>.nii.gz``
    and the kidney's mask ``kidney_<side>.nii.gz`` on the 3 mm localisation grid). Returns the report.

    Raises:
        RenalsegError: the study cannot be read or no kidney is usable.
    """
    from renalseg import __version__
    from renalseg.io.image import write_image
    from renalseg.io.output import StagedDir, atomic_write_bytes, atomic_write_json
    from renalseg.io.study import read_study
    from renalseg.roi import crop_to_roi, locate_kidneys
    from renalseg.roi_preview import render_locate_preview

    if destination.exists() and not overwrite:
        raise OutputExistsError(f"{destination} exists; pass --overwrite to replace it, or choose another --out.")
    started = time.perf_counter()
    study = read_study(path, series_uid=series_uid)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    refused: dict[str, str] = {}
    rois = locate_kidneys(study, atlases=atlases or None, seed=seed, refused=refused)
    locate_s = time.perf_counter() - started
    report = {
        "status": "ok",
        "study_id": destination.name,
        "input": study.describe(),
        "rois": [roi.to_dict() for roi in rois],
        "missing_sides": sorted({"left", "right"} - {roi.side for roi in rois}),
        "missing_reasons": refused,
        "atlases": ["shipped"] + [str(p) for p in atlases],
        "seed": seed,
        "seconds": {"read": round(read_s, 2), "locate": round(locate_s, 2)},
        "renalseg_version": __version__,
    }
    with StagedDir(destination, overwrite=overwrite) as staging:
        import io

        buffer = io.BytesIO()
        render_locate_preview(study, rois).save(buffer, format="PNG")
        atomic_write_bytes(staging / "preview.png", buffer.getvalue())
        if crop:
            for roi in rois:
                write_image(crop_to_roi(study, roi), staging / f"roi_{roi.side}.nii.gz")
                if roi.mask is not None:
                    write_image(roi.mask.to_sitk(), staging / f"kidney_{roi.side}.nii.gz")
        atomic_write_json(staging / "report.json", report)
    return report


def _write_error(destination: Path, path: Path, error: BaseException, *, overwrite: bool) -> bool:
    """Publish ``destination`` holding only ``error.json``; False if an old output is kept."""
    from renalseg import __version__
    from renalseg.io.output import StagedDir, atomic_write_json

    if destination.exists() and not overwrite:
        return False
    report = {"status": "error", "study_id": destination.name, "input": str(path),
              "error": type(error).__name__, "message": str(error), "renalseg_version": __version__}
    with StagedDir(destination, overwrite=True) as staging:
        atomic_write_json(staging / "error.json", report)
    return True


def _study_ids(paths: list[Path]) -> list[str]:
    """Output folder names: the safe study id, ``_2``, ``_3`` … for repeats."""
    from renalseg.study import safe_study_id

    ids, counts = [], {}  # type: ignore[var-annotated]
    for path in paths:
        base = safe_study_id(path)
        counts[base] = counts.get(base, 0) + 1
        ids.append(base if counts[base] == 1 else f"{base}_{counts[base]}")
    return ids


@handle_errors
def locate(
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files (.nii.gz, .nrrd, .mha), DICOM series folders, or folders of studies.",
        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; one sub-folder per study.",
                                      show_default=False)],
    crop: Annotated[bool, typer.Option(
        "--crop", help="Also write each ROI resampled on the model grid (roi_left.nii.gz, roi_right.nii.gz) "
        "and each kidney's mask (kidney_left.nii.gz, kidney_right.nii.gz; 3 mm grid).")] = False,
    atlas: Annotated[Optional[list[Path]], typer.Option(
        "--atlas", help="Extra atlas folder (atlas_ct.nii.gz + atlas_kidneys.nii.gz); repeat for more. "
        "Atlases are fused by majority vote.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace existing output folders (without it they are an error).")] = False,
    series: Annotated[Optional[str], typer.Option(
        "--series", help="DICOM SeriesInstanceUID when a folder holds several series.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the registration's random sampling.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table; errors only.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the batch summary as JSON on stdout.")] = False,
) -> None:
    """Find the left and right kidney ROIs: atlas registration, then each kidney on its own.

    Writes [bold]DIR/<study>/[/]report.json (ROIs: side, box in voxels and mm,
    kidney volume, method, confidence, truncated pole; absent kidneys with the
    reason) and preview.png (boxes on a coronal and an axial view). A study
    whose kidneys are not usable gets error.json saying why; the others go on (exit 1).

    Example: [bold]renalseg locate scans/*.nii.gz --out rois/ --crop[/]
    """
    from renalseg.io.discover import discover_studies

    configure_logging(quiet=quiet)
    atlases = list(atlas or [])
    for folder in atlases:
        if not folder.is_dir():
            raise UsageError(f"--atlas {folder}: no such folder. An atlas folder holds atlas_ct.nii.gz "
                             "and atlas_kidneys.nii.gz.")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder.")
    paths = discover_studies(inputs)
    rows = []
    for path, study_id in zip(paths, _study_ids(paths)):
        destination = out / study_id
        started = time.perf_counter()
        try:
            status = (err_console.status(f"locating kidneys in {study_id}", spinner="dots")
                      if not quiet and not json_output else contextlib.nullcontext())
            with status:
                report = locate_one(path, destination, crop=crop, atlases=atlases, overwrite=overwrite,
                                    series_uid=series, seed=seed)
            rows.append({"study": study_id, "input": str(path), "status": "ok",
                         "seconds": round(time.perf_counter() - started, 2),
                         "sides": [roi["side"] for roi in report["rois"]],
                         "truncated": [roi["side"] for roi in report["rois"] if roi["truncated"]],
                         "output": str(destination)})
        except RenalsegError as err:
            if STATE["debug"]:
                raise
            print_error(f"{study_id}: {err}")
            written = _write_error(destination, path, err, overwrite=overwrite)
            rows.append({"study": study_id, "input": str(path), "status": "error",
                         "seconds": round(time.perf_counter() - started, 2),
                         "error": type(err).__name__, "message": str(err),
                         "output": str(destination / "error.json") if written else None})
    failed = sum(row["status"] != "ok" for row in rows)
    if json_output:
        typer.echo(json.dumps({"studies": rows, "ok": len(rows) - failed, "failed": failed, "out": str(out)},
                              indent=2))
    elif not quiet:
        from rich.table import Table

        table = Table("study", "status", "time (s)", "kidneys", "output / reason")
        for row in rows:
            ok = row["status"] == "ok"
            kidneys = ", ".join(side + (" (cut)" if side in row["truncated"] else "") for side in row["sides"]) \
                if ok else "—"
            table.add_row(row["study"], "[green]ok[/]" if ok else "[red]error[/]", f"{row['seconds']:.1f}",
                          kidneys, row["output"] if ok else f"{row['error']}: {row['message'][:90]}")
        console.print(table)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("locate")(locate)
