"""``renalseg segment INPUT... --out DIR``: label maps for one study or a whole batch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from renalseg.cli.common import STATE, configure_logging, console, err_console, handle_errors, print_error
from renalseg.errors import OutputExistsError, RenalsegError, UsageError

__all__ = ["register", "parse_shard", "expand_inputs", "run_batch"]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` -> (K, N), 0 ≤ K < N; ``None`` -> (0, 1) (everything).

    Example:
        >>> parse_shard("1/4"), parse_shard(None)
        ((1, 4), (0, 1))
    """
    if text is None:
        return 0, 1
    k_text, slash, n_text = text.partition("/")
    if not slash or not k_text.strip().isdigit() or not n_text.strip().isdigit():
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. --shard 0/4 (K counts from 0).")
    k, n = int(k_text), int(n_text)
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text}: need 0 ≤ K < N (K counts from 0), e.g. 0/{max(n, 2)} … "
                         f"{max(n, 2) - 1}/{max(n, 2)}.")
    return k, n


def _looks_like_study_file(path: Path) -> bool:
    from renalseg.io.image import image_format

    return image_format(path) is not None


def _fallback_expand(path: Path) -> list[Path]:
    """One INPUT -> studies, when ``renalseg.io.discover`` is not available.

    A file is one study. A folder holding (non-hidden) files that are not image
    files is one DICOM series; otherwise each image file and sub-folder in it is a study.
    """
    if path.is_file():
        return [path]
    children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    loose = [p for p in children if p.is_file() and not _looks_like_study_file(p)]
    if loose or not children:
        return [path]
    return [p for p in children if p.is_dir() or _looks_like_study_file(p)]


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Every study under the INPUT arguments, in order, without duplicates.

    Raises:
        UsageError: an INPUT does not exist, or nothing was found.
    """
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise UsageError(f"No such file or folder: {', '.join(missing)}. Check the path(s).")
    try:
        from renalseg.io.discover import discover_studies
    except ImportError:
        discover_studies = None
    if discover_studies is not None:
        studies = list(discover_studies([Path(p) for p in inputs]))
    else:
        studies = [s for p in inputs for s in _fallback_expand(Path(p))]
    seen: set[Path] = set()
    unique = []
    for study in studies:
        key = Path(study).resolve()
        if key not in seen:
            seen.add(key)
            unique.append(Path(study))
    if not unique:
        raise UsageError(f"No studies found in {', '.join(map(str, inputs))}: expected image files "
                         "(.nii.gz, .nrrd, .mha) or DICOM series folders.")
    return unique


def _unique_ids(paths: list[Path]) -> list[str]:
    """Output folder names: the safe study id, with ``_2``, ``_3`` … for repeats."""
    from renalseg.study import safe_study_id

    ids: list[str] = []
    counts: dict[str, int] = {}
    for path in paths:
        base = safe_study_id(path)
        counts[base] = counts.get(base, 0) + 1
        ids.append(base if counts[base] == 1 else f"{base}_{counts[base]}")
    return ids


def _only_error(folder: Path) -> bool:
    """True for an output folder holding nothing but an earlier run's ``error.json``."""
    return folder.is_dir() and [p.name for p in folder.iterdir()] == ["error.json"]


def _write_error(destination: Path, path: Path, error: BaseException, *, overwrite: bool) -> bool:
    """Publish ``destination`` holding only ``error.json``; False if an old output is kept."""
    from renalseg.io.output import StagedDir, atomic_write_json
    from renalseg.pipeline import error_report

    if destination.exists() and not (overwrite or _only_error(destination)):
        return False
    report = error_report(path, error)
    report["study_id"] = destination.name
    with StagedDir(destination, overwrite=True) as staging:
        atomic_write_json(staging / "error.json", report)
    return True


def run_batch(paths: list[Path], out: Path, config: Any, segmenter: Any, *, overwrite: bool,
              show_progress: bool) -> list[dict]:
    """Segment each study into ``out/<id>/``; a failing study never stops the batch.

    Returns:
        One summary row per study: study, input, status, seconds, artery ml per
        side (ok) or error type and message (failed), output folder.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from renalseg.pipeline import segment_study, write_outputs

    rows: list[dict] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console, disable=not show_progress, transient=True)
    with progress:
        studies_task = progress.add_task("studies", total=len(paths))
        windows_task = progress.add_task("", total=1, visible=False)
        for path, study_id in zip(paths, _unique_ids(paths)):
            destination = out / study_id
            progress.update(studies_task, description=f"studies ({study_id})")
            started = time.perf_counter()

            def on_progress(stage: str, done: int, total: int, study_id: str = study_id) -> None:
                progress.update(windows_task, description=f"  {study_id}: {stage}", completed=done,
                                total=max(total, 1), visible=True)

            try:
                # a folder left by an earlier *failed* run holds no results: retry it freely
                replace = overwrite or _only_error(destination)
                if destination.exists() and not replace:
                    raise OutputExistsError(f"{destination} exists; pass --overwrite to replace it, or "
                                            "choose another --out.")
                result = segment_study(path, config, segmenter=segmenter, on_progress=on_progress)
                result.report["study_id"] = study_id
                write_outputs(result, destination, overwrite=replace)
                arteries = result.report.get("arteries", {})
                rows.append({
                    "study": study_id, "input": str(path), "status": "ok",
                    "seconds": round(time.perf_counter() - started, 2),
                    "artery_ml": {side: arteries[side]["artery_volume_ml"] for side in arteries},
                    "components": {side: arteries[side]["components"] for side in arteries},
                    "output": str(destination),
                })
            except RenalsegError as err:
                if STATE["debug"]:
                    raise
                print_error(f"{study_id}: {err}")
                written = _write_error(destination, path, err, overwrite=overwrite)
                rows.append({
                    "study": study_id, "input": str(path), "status": "error",
                    "seconds": round(time.perf_counter() - started, 2),
                    "error": type(err).__name__, "message": str(err),
                    "output": str(destination / "error.json") if written else None,
                })
            progress.advance(studies_task)
            progress.update(windows_task, visible=False)
    return rows


def _summary_table(rows: list[dict]) -> Any:
    from rich.table import Table

    table = Table("study", "status", "time (s)", "right artery (ml)", "left artery (ml)", "output / reason")
    for row in rows:
        ok = row["status"] == "ok"
        ml = row.get("artery_ml", {})
        table.add_row(
            row["study"], "[green]ok[/]" if ok else "[red]error[/]", f"{row['seconds']:.1f}",
            f"{ml['right']:.2f}" if "right" in ml else "—", f"{ml['left']:.2f}" if "left" in ml else "—",
            row["output"] if ok else f"{row['error']}: {row['message'].splitlines()[0][:80]}",
        )
    return table


@handle_errors
def segment(
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files (.nii.gz, .nrrd, .mha), DICOM series folders, or folders of studies.",
        show_default=False, metavar="INPUT")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; one sub-folder per study.",
                                      show_default=False)],
    weights: Annotated[Optional[Path], typer.Option(help="Weights file/folder (default: the shipped weights).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto: CUDA if usable).")] = "auto",
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap fraction in [0, 1).")] = 0.5,
    tta: Annotated[Optional[bool], typer.Option(
        "--tta/--no-tta", help="Mirroring test-time augmentation (8× slower). Default: on for CUDA, off on CPU.",
        show_default=False)] = None,
    side: Annotated[str, typer.Option(help="Which kidney: both, left or right (the patient's side; with "
                                           "--input-is-roi, the side of the crop).")] = "both",
    input_is_roi: Annotated[bool, typer.Option(
        "--input-is-roi", help="Each input is already one kidney ROI crop (e.g. KiPA22): skip localisation.")] = False,
    save_probabilities: Annotated[bool, typer.Option(
        "--save-probabilities", help="Also write probabilities.nii.gz (float32 artery probability).")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace existing output folders (without it they are an error; a folder "
        "holding only an earlier error.json is always retried).")] = False,
    shard: Annotated[Optional[str], typer.Option(
        help="K/N: only every N-th study starting at K (K from 0), to split a batch over jobs.",
        show_default=False)] = None,
    min_component_mm3: Annotated[float, typer.Option(
        "--min-component-mm3", help="Remove disconnected pieces smaller than this (mm³); 0 keeps all.")] = 0.0,
    max_gap_mm: Annotated[float, typer.Option(
        "--max-gap-mm", help="Per kidney, remove artery pieces farther than this (mm) from its largest piece "
        "(the other abdominal arteries); inf keeps every piece.")] = 10.0,  # = postprocess.DEFAULT_MAX_GAP_MM (tested)
    series: Annotated[Optional[str], typer.Option(
        "--series", help="DICOM SeriesInstanceUID when a folder holds several series.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress, device line or table; only errors and the synthetic-data notice.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the batch summary as JSON on stdout.")] = False,
) -> None:
    """Segment the renal artery tree of each study.

    Writes [bold]DIR/<study>/[/]: labels.nii.gz (on the input's grid exactly), labels.json,
    report.json, preview.png (and probabilities.nii.gz). A study that fails gets
    error.json and no labels; the others go on (exit code 1).

    Example: [bold]renalseg segment patient_dicom/ scans/*.nii.gz --out results/[/]
    """
    from renalseg.pipeline import SYNTHETIC_NOTICE, SegmentConfig
    from renalseg.segmenter import load_model

    configure_logging(quiet=quiet)
    k, n = parse_shard(shard)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder.")
    if weights is not None and not weights.exists():
        raise UsageError(f"--weights {weights}: no such file or folder.")
    config = SegmentConfig(
        weights=weights, device=device, overlap=overlap, tta=tta, side=side.lower(), input_is_roi=input_is_roi,
        save_probabilities=save_probabilities, min_component_mm3=min_component_mm3, max_gap_mm=max_gap_mm,
        series_uid=series,
    )
    paths = expand_inputs(inputs)[k::n]
    say = (lambda message: err_console.print(message, highlight=False)) if not quiet else (lambda message: None)
    if not paths:
        say(f"shard {k}/{n}: no studies to process.")
        if json_output:
            typer.echo(json.dumps({"studies": [], "ok": 0, "failed": 0, "out": str(out)}, indent=2))
        return
    segmenter = load_model(weights, device)
    say(f"device: {segmenter.device_reason}")
    if segmenter.spec.synthetic_training_only:
        err_console.print(f"[yellow]notice:[/] {SYNTHETIC_NOTICE}", highlight=False, soft_wrap=True)
    rows = run_batch(paths, out, config, segmenter, overwrite=overwrite,
                     show_progress=not quiet and not json_output)
    failed = sum(row["status"] != "ok" for row in rows)
    if json_output:
        summary = {"studies": rows, "ok": len(rows) - failed, "failed": failed, "out": str(out),
                   "device": segmenter.current_device}
        typer.echo(json.dumps(summary, indent=2))
    elif not quiet:
        console.print(_summary_table(rows))
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("segment")(segment)
