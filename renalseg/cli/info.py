"""``renalseg info STUDY...``: what is in a study, without any model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from renalseg.cli.common import console, handle_errors

__all__ = ["register"]


@handle_errors
def info(
    studies: Annotated[list[Path], typer.Argument(help="Image files or DICOM folders.", show_default=False)],
) -> None:
    """Describe studies: format, size, spacing, orientation, HU range.

    Example: [bold]renalseg info patient/[/]
    """
    import numpy as np

    from renalseg.io.study import read_study

    table = Table("study", "format", "size (x × y × z)", "spacing (mm)", "orientation", "HU range")
    for path in studies:
        study = read_study(path)
        g = study.geometry
        array = study.volume.array
        table.add_row(
            study.study_id, study.format, " × ".join(map(str, g.shape_xyz)),
            " × ".join(f"{s:.4g}" for s in g.spacing_xyz_mm), g.orientation,
            f"{float(np.min(array)):.0f} … {float(np.max(array)):.0f}",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
