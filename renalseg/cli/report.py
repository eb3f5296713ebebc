"""``renalseg report STUDY_DIR... [--out FILE]``: one self-contained report.html per study."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from renalseg.cli.common import configure_logging, console, err_console, handle_errors, study_failure

__all__ = ["register"]


@handle_errors
def report(
    study_dirs: Annotated[list[Path], typer.Argument(
        help="renalseg segment output folders (each holds labels.nii.gz).", show_default=False,
        metavar="STUDY_DIR")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="The page to write (one STUDY_DIR only); default STUDY_DIR/report.html.",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing page.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    """One self-contained page per study: interactive 3D view, facts, volumes, plan, previews.

    The page opens offline in any current browser (plotly.js is inlined).

    Needs the optional package plotly: [bold]pip install 'renalseg\\[report]'[/].

    Example: [bold]renalseg report results/patient01[/]
    """
    from renalseg.errors import UsageError
    from renalseg.report import _import_plotly, write_report

    configure_logging(quiet=quiet)
    if out is not None and len(study_dirs) > 1:
        raise UsageError(f"--out names one page but {len(study_dirs)} study folders were given; "
                         "omit --out to write STUDY_DIR/report.html for each.")
    missing = [str(p) for p in study_dirs if not p.is_dir()]
    if missing:
        raise UsageError(f"No such folder: {', '.join(missing)}. Pass renalseg segment output folders.")
    _import_plotly()  # a missing optional package fails once, before any study
    rows, failed = [], 0
    for study_dir in study_dirs:
        started = time.perf_counter()
        try:
            page = write_report(study_dir, out, overwrite=overwrite)
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001 - one study's failure, whatever it is, must not end the batch
            failed += 1
            rows.append({"study_dir": str(study_dir), "status": "error", "error": study_failure(str(study_dir), err)})
            continue
        rows.append({"study_dir": str(study_dir), "status": "ok", "report": str(page),
                     "megabytes": round(page.stat().st_size / 1e6, 2),
                     "seconds": round(time.perf_counter() - started, 2)})
        if not quiet and not as_json:
            err_console.print(f"{study_dir}: {page} ({rows[-1]['megabytes']:.1f} MB, "
                              f"{rows[-1]['seconds']:.1f} s)", highlight=False)
    if as_json:
        console.print_json(json.dumps({"studies": rows}))
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
