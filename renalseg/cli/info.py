"""``renalseg info STUDY...``: what is in each study, without any model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from renalseg.cli.common import STATE, console, handle_errors, print_error
from renalseg.errors import RenalsegError

__all__ = ["register"]


def _row(path: Path, series: str | None) -> tuple[list[str], list[str]]:
    """The table cells of one study and the series its DICOM folder passed over (reads it;
    raises RenalsegError when it cannot)."""
    import SimpleITK as sitk

    from renalseg.io.study import read_study

    study = read_study(path, series_uid=series)
    g = study.geometry
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(study.image)
    values = _label_values(study.image, stats.GetMinimum(), stats.GetMaximum())
    shown = (f"labels {', '.join(map(str, values))}" if values is not None
             else f"{stats.GetMinimum():.0f}…{stats.GetMaximum():.0f} HU")
    if study.format == "dicom":
        uid = study.series_uid or "(empty)"
        slices = str(study.slice_count)
    else:
        uid, slices = "–", str(g.shape_zyx[0])
    return [
        study.study_id,
        study.format,
        "×".join(map(str, g.shape_xyz)),
        "×".join(f"{s:.3g}" for s in g.spacing_xyz_mm),
        g.orientation,
        shown,
        uid,
        slices,
    ], list(study.extra.get("series_skipped") or [])


def _label_values(image, lowest: float, highest: float) -> list[int] | None:
    """The values of a label map (integer pixels, 0 … 255, at most 32 values); ``None`` for a CT."""
    import numpy as np
    import SimpleITK as sitk

    integer = image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
                                     sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64)
    if not integer or lowest < 0 or highest > 255:
        return None
    values = np.unique(sitk.GetArrayViewFromImage(image))
    return [int(v) for v in values] if len(values) <= 32 else None


@handle_errors
def info(
    studies: Annotated[list[Path], typer.Argument(
        help="Image files (NIfTI, NRRD, MHA), DICOM series folders, or folders of studies.",
        show_default=False, metavar="STUDY")],
    series: Annotated[str | None, typer.Option(
        "--series", help="SeriesInstanceUID to read when a DICOM folder holds several CT volumes "
        "('(empty)' for a series without UID); with * or ?, a pattern for the series description "
        "(e.g. '*arter*').", show_default=False, metavar="UID")] = None,
) -> None:
    """Describe studies: format, size, spacing, orientation, HU range (label values for a label map), DICOM series.

    A folder of studies gives one row per study. A study that cannot be read gets
    one red line and the others are still listed (exit code 1). Where a DICOM folder
    holds one CT volume beside localizers, dose reports or reformats, the volume is
    described and the series passed over are named below the table.

    Example: [bold]renalseg info patient_dicom/ scans/[/]
    """
    from renalseg.io.discover import discover_studies

    paths = discover_studies(studies)  # UsageError (exit 2) for a missing path
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("study", overflow="fold")
    table.add_column("format")
    table.add_column("size x×y×z", no_wrap=True)
    table.add_column("spacing mm", no_wrap=True)
    table.add_column("orient.")
    table.add_column("values", no_wrap=True)
    table.add_column("series UID", overflow="fold")
    table.add_column("slices", justify="right")
    failed = 0
    passed_over: list[str] = []
    for path in paths:
        try:
            cells, skipped = _row(path, series)
            table.add_row(*cells)
            passed_over += [f"{cells[0]}: passed over series {line}" for line in skipped]
        except RenalsegError as err:
            if STATE["debug"]:
                raise
            failed += 1
            print_error(str(err))
    if table.row_count:
        # piped or captured output has no width to fit: do not squash the columns
        out = console if console.is_terminal else Console(width=max(console.width, 240),
                                                          no_color=console.no_color)
        out.print(table)
        for line in passed_over:
            out.print(line, style="dim", markup=False, highlight=False)
    if failed:
        print_error(f"{failed} of {len(paths)} studies could not be read.")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
