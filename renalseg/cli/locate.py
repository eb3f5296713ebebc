"""``renalseg locate INPUT... --out DIR``: kidney ROIs only (step 2 of the pipeline)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from renalseg.cli.common import (STATE, ForceOption, JsonOption, OutOption, OverwriteOption, SeriesOption,
                                 ShardOption, StudiesArgument, configure_logging, describe_error, err_console,
                                 finish_batch, handle_errors, print_error, say_empty_shard)
from renalseg.errors import UsageError

if TYPE_CHECKING:
    from renalseg.batch import BatchStudy

__all__ = ["register"]


def _run(studies: list[BatchStudy], out: Path, *, crop: bool, atlases: list[Path], series_uid: str | None,
         seed: int, overwrite: bool, show_progress: bool, force: bool = False) -> list[dict]:
    """:func:`renalseg.batch.run_batch` with ``locate_study``, a spinner per study."""
    from renalseg.batch import run_batch
    from renalseg.pipeline import locate_study, write_locate_outputs

    def process(study: BatchStudy, destination: Path, replace: bool) -> dict:
        status = (err_console.status(f"locating kidneys in {study.study_id}", spinner="dots")
                  if show_progress else contextlib.nullcontext())
        with status:
            localisation = locate_study(study.path, atlases=atlases, seed=seed, series_uid=series_uid,
                                        force=force)
            localisation.report["study_id"] = study.study_id
            write_locate_outputs(localisation, destination, crop=crop, overwrite=replace)
        return {"sides": [roi.side for roi in localisation.rois],
                "truncated": [roi.side for roi in localisation.rois if roi.truncated]}

    def on_finish(study: BatchStudy, row: dict, error: Exception | None) -> None:
        if error is not None:
            print_error(f"{study.study_id}: {describe_error(error)}")

    return run_batch(studies, out, process, overwrite=overwrite, debug=STATE["debug"], on_finish=on_finish)


def _summary_table(rows: list[dict]) -> Any:
    from rich.table import Table

    table = Table("study", "status", "time (s)", "kidneys", "output / reason")
    for row in rows:
        ok = row["status"] == "ok"
        kidneys = ", ".join(side + (" (cut)" if side in row["truncated"] else "") for side in row["sides"]) \
            if ok else "—"
        table.add_row(row["study"], "[green]ok[/]" if ok else "[red]error[/]", f"{row['seconds']:.1f}",
                      kidneys, row["output"] if ok else f"{row['error']}: {row['message'][:90]}")
    return table


@handle_errors
def locate(
    inputs: StudiesArgument,
    out: OutOption,
    crop: Annotated[bool, typer.Option(
        "--crop", help="Also write each ROI resampled on the model grid (roi_left.nii.gz, roi_right.nii.gz) "
        "and each kidney's mask (kidney_left.nii.gz, kidney_right.nii.gz; 3 mm grid).")] = False,
    atlas: Annotated[Optional[list[Path]], typer.Option(
        "--atlas", help="Extra atlas folder (atlas_ct.nii.gz + atlas_kidneys.nii.gz); repeat for more. "
        "Atlases are fused by majority vote.", show_default=False)] = None,
    overwrite: OverwriteOption = False,
    shard: ShardOption = None,
    series: SeriesOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the registration's random sampling.")] = 0,
    force: ForceOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or table; errors only.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Find the left and right kidney ROIs: atlas registration, then each kidney on its own.

    Writes [bold]DIR/<study>/[/]report.json (ROIs: side, box in voxels and mm,
    kidney volume, method, confidence, truncated pole; absent kidneys with the
    reason) and preview.png (boxes and kidney outlines on a coronal and an axial view). A study
    whose kidneys are not usable gets error.json saying why; the others go on (exit 1).

    Example: [bold]renalseg locate scans/*.nii.gz --out rois/ --crop[/]
    """
    from renalseg.batch import parse_shard, plan_batch
    from renalseg.errors import RenalsegError
    from renalseg.io.output import check_writable_folder
    from renalseg.registration import load_atlas

    configure_logging(quiet=quiet)
    k, n = parse_shard(shard)
    atlases = list(atlas or [])
    check_writable_folder(out)  # now, not after the computing
    for folder in atlases:
        if not folder.is_dir():
            raise UsageError(f"--atlas {folder}: no such folder. An atlas folder holds atlas_ct.nii.gz "
                             "and atlas_kidneys.nii.gz.")
        try:  # a bad atlas would fail every study: say so before the first
            load_atlas(folder)
        except RenalsegError as err:
            raise UsageError(f"--atlas {folder}: {err}") from err
    studies = plan_batch(inputs, shard=(k, n), out=out)
    if not studies:
        say_empty_shard((k, n), out, quiet=quiet, json_output=json_output)
        return
    rows = _run(studies, out, crop=crop, atlases=atlases, series_uid=series, seed=seed, overwrite=overwrite,
                show_progress=not quiet and not json_output, force=force)
    finish_batch(rows, out, _summary_table, quiet=quiet, json_output=json_output)


def register(app: typer.Typer) -> None:
    app.command("locate")(locate)
