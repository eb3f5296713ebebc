"""``renalseg segment INPUT... --out DIR``: label maps for one study or a whole batch."""

from __future__ import annotations

import dataclasses
from enum import Enum
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


#: ``--side`` choices (= renalseg.pipeline.SIDES), an Enum so --help shows them
Side = Enum("Side", {name: name for name in ("both", "left", "right")}, type=str)


def _run(studies: list[BatchStudy], out: Path, config: Any, segmenter: Any, *, overwrite: bool,
         show_progress: bool, dicom_seg: bool = True, dicom_sc: bool = True, report_page: bool = False,
         artery_segmenter: Any = None) -> list[dict]:
    """:func:`renalseg.batch.run_batch` with ``segment_study``, under a progress display."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from renalseg.batch import run_batch
    from renalseg.pipeline import segment_study, write_outputs

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console, disable=not show_progress, transient=True)
    studies_task = progress.add_task("studies", total=len(studies))
    windows_task = progress.add_task("", total=1, visible=False)

    def process(study: BatchStudy, destination: Path, replace: bool) -> dict:
        def on_progress(stage: str, done: int, total: int) -> None:
            progress.update(windows_task, description=f"  {study.study_id}: {stage}", completed=done,
                            total=max(total, 1), visible=True)

        result = segment_study(study.path, config, segmenter=segmenter, on_progress=on_progress,
                               artery_segmenter=artery_segmenter)
        result.report["study_id"] = study.study_id
        write_outputs(result, destination, overwrite=replace, dicom_seg=dicom_seg, dicom_sc=dicom_sc)
        if report_page:
            from renalseg.report import write_report

            write_report(destination, overwrite=True)  # the folder was just written whole
        written = "artery" in result.report["settings"]["structures"]
        arteries = result.report["arteries"] if written else {}  # "—" where no artery was written
        quality = result.report.get("quality", {})
        return {"artery_ml": {side: arteries[side]["artery_volume_ml"] for side in arteries},
                "components": {side: arteries[side]["components"] for side in arteries},
                "verdict": quality.get("verdict"), "phase": quality.get("phase"),
                "warnings": quality.get("warnings", [])}

    def on_start(study: BatchStudy) -> None:
        progress.update(studies_task, description=f"studies ({study.study_id})")

    def on_finish(study: BatchStudy, row: dict, error: Exception | None) -> None:
        if error is not None:
            print_error(f"{study.study_id}: {describe_error(error)}")
        progress.advance(studies_task)
        progress.update(windows_task, visible=False)

    with progress:
        return run_batch(studies, out, process, overwrite=overwrite, debug=STATE["debug"],
                         on_start=on_start, on_finish=on_finish)


def _summary_table(rows: list[dict]) -> Any:
    from rich.table import Table

    from rich.markup import escape

    colours = {"ok": "green", "check": "yellow", "unreliable": "red"}
    table = Table("study", "status", "verdict", "time (s)", "right artery (ml)", "left artery (ml)",
                  "output / reason")
    for row in rows:
        ok = row["status"] == "ok"
        ml = row.get("artery_ml", {})
        verdict = row.get("verdict")
        reason = row["output"] if ok else f"{row['error']}: {row['message'].splitlines()[0][:80]}"
        if ok and row.get("warnings"):
            reason += "\n" + row["warnings"][0][:100]
        table.add_row(
            row["study"], "[green]ok[/]" if ok else "[red]error[/]",
            f"[{colours.get(verdict, 'white')}]{verdict}[/]" if verdict else "—", f"{row['seconds']:.1f}",
            f"{ml['right']:.2f}" if "right" in ml else "—", f"{ml['left']:.2f}" if "left" in ml else "—",
            escape(reason),
        )
    return table


#: what ``--thin-branches`` gives, as measured (docs/validation.md, "`four_scans` is the default")
THIN_BRANCH_GAIN = "22 held-out arterial phantoms: 94% of the sub-2 mm centerline, not 65%"


def _structures(text: str | None, classes: Any) -> tuple[str, ...]:
    """``--structures`` checked against the model's classes (a usage error before any study)."""
    from renalseg.labels import STRUCTURES, output_values, parse_structures

    values = set(output_values(classes).values())
    return parse_structures(text, [s.key for s in STRUCTURES if s.value in values])


@handle_errors
def segment(
    inputs: StudiesArgument,
    out: OutOption,
    weights: Annotated[Optional[Path], typer.Option(help="Weights file/folder (default: the shipped weights).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto: CUDA if usable).",
                                        metavar="<auto|cpu|cuda|cuda:N|mps>")] = "auto",
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap fraction in [0, 1).")] = 0.5,
    tta: Annotated[Optional[bool], typer.Option(
        "--tta/--no-tta", help="Mirroring test-time augmentation (8× slower). Default: on for CUDA, off on CPU.",
        show_default=False)] = None,
    side: Annotated[Side, typer.Option(help="Which kidney (the patient's side; with --input-is-roi, the side of "
                                            "the crop).", case_sensitive=False)] = Side.both,
    input_is_roi: Annotated[bool, typer.Option(
        "--input-is-roi", help="Each input is already one kidney ROI crop (e.g. KiPA22): skip localisation.")] = False,
    save_probabilities: Annotated[bool, typer.Option(
        "--save-probabilities", help="Also write probabilities.nii.gz (float32 artery probability).")] = False,
    overwrite: OverwriteOption = False,
    shard: ShardOption = None,
    min_component_mm3: Annotated[float, typer.Option(
        "--min-component-mm3", help="Remove disconnected pieces smaller than this (mm³); 0 keeps all.")] = 0.0,
    max_gap_mm: Annotated[float, typer.Option(
        "--max-gap-mm", help="Per kidney, remove artery pieces farther than this (mm) from its largest piece "
        "(the other abdominal arteries); inf keeps every piece.")] = 10.0,  # = postprocess.DEFAULT_MAX_GAP_MM (tested)
    series: SeriesOption = None,
    dicom_seg: Annotated[bool, typer.Option(
        "--dicom-seg/--no-dicom-seg", help="For DICOM input, also write labels.seg.dcm: a DICOM SEG "
        "referencing the source series, for PACS viewers.")] = True,
    dicom_sc: Annotated[bool, typer.Option(
        "--dicom-sc/--no-dicom-sc", help="For DICOM input, also write preview.sc.dcm: preview.png as a DICOM "
        "Secondary Capture in the study, which every PACS viewer shows.")] = True,
    force: ForceOption = False,
    report_page: Annotated[bool, typer.Option(
        "--report", help="Also write report.html in each study folder (as `renalseg report`; needs "
        "pip install 'renalseg[report]').")] = False,
    structures: Annotated[Optional[str], typer.Option(
        "--structures", metavar="artery,vein,kidney,tumour",
        help="Which structures to write (KiPA22 values: 1 vein, 2 kidney, 3 artery, 4 tumour; labels.json names "
             "them). Default: every structure the model labels.", show_default=False)] = None,
    thin_branches: Annotated[Optional[bool], typer.Option(
        "--thin-branches/--no-thin-branches", help="Also run the artery-only weights (dpa_densebiasnet_artery) "
        "and take the artery inside the kidney from whichever model is surer: more of the interlobar branches "
        f"({THIN_BRANCH_GAIN}), for a second network pass over the kidney (about 15 s on a 2-core Xeon). "
        "Default: on when the study's contrast phase is called arterial, off in other phases (report.json says "
        "which and why). --thin-branches also runs it in a kidney crop (--input-is-roi) called otherwise; "
        "--no-thin-branches: one pass only.", show_default=False)] = None,
    keep_fluid_tumour: Annotated[bool, typer.Option(
        "--keep-fluid-tumour", help="Keep tumour pieces of fluid attenuation (interior median at most 20 HU, no "
        "enhancing wall). By default they are taken for simple cysts (the Bosniak 2019 threshold) and given to "
        "the most probable other class; report.json counts them under cleanup.")] = False,
    keep_bright_artery: Annotated[bool, typer.Option(
        "--keep-bright-artery", help="Keep artery voxels brighter than contrast in the study's arteries can be "
        "(more than 150 HU or 30% above the aorta). By default they are taken for stones, contrast excreted into "
        "the collecting system, calcification or bone and given to the most probable other class; report.json "
        "counts them under cleanup.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress, device line or table; only errors and the synthetic-data notice.")] = False,
    json_output: JsonOption = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 1 when a study's quality verdict is 'unreliable' (its outputs are still "
        "written).")] = False,
) -> None:
    """Segment the renal artery tree, vein, kidney and tumour of each study (the default weights label all four).

    Writes [bold]DIR/<study>/[/]: labels.nii.gz (on the input's grid exactly), labels.json,
    labels.seg.nrrd (3D Slicer), report.json, preview.png (and probabilities.nii.gz; for
    DICOM input labels.seg.dcm, a DICOM SEG). A study that fails gets
    error.json and no labels; the others go on (exit code 1).

    Example: [bold]renalseg segment patient_dicom/ scans/*.nii.gz --out results/[/]
    """
    from renalseg.batch import parse_shard, plan_batch
    from renalseg.errors import ModelError
    from renalseg.io.output import check_writable_folder
    from renalseg.pipeline import SYNTHETIC_NOTICE, SegmentConfig, batch_thin_branch_segmenter
    from renalseg.postprocess import FLUID_MAX_HU
    from renalseg.segmenter import load_model
    from renalseg.weights import resolve_weights

    configure_logging(quiet=quiet)
    k, n = parse_shard(shard)
    check_writable_folder(out)  # now, not after the computing
    if weights is not None:
        weights = resolve_weights(weights)
    config = SegmentConfig(
        weights=weights, device=device, overlap=overlap, tta=tta, side=Side(side).value, input_is_roi=input_is_roi,
        save_probabilities=save_probabilities, min_component_mm3=min_component_mm3, max_gap_mm=max_gap_mm,
        series_uid=series, force=force, thin_branches=thin_branches,
        fluid_max_hu=None if keep_fluid_tumour else FLUID_MAX_HU, keep_bright_artery=keep_bright_artery,
    )
    studies = plan_batch(inputs, shard=(k, n), out=out)
    if not studies:
        say_empty_shard((k, n), out, quiet=quiet, json_output=json_output)
        return
    if report_page:
        import importlib.util

        if importlib.util.find_spec("plotly") is None:
            raise UsageError("--report needs plotly: pip install 'renalseg[report]'.")
    try:
        segmenter = load_model(weights, device)
        config = dataclasses.replace(config, structures=_structures(structures, segmenter.spec.classes))
        # loaded once for the batch; asked for, a main model without artery and kidney stops here
        artery_segmenter = batch_thin_branch_segmenter(segmenter, thin_branches, device)
    except ModelError as err:  # no study could run: a usage error, found before the first one
        raise UsageError(f"{'--weights ' + str(weights) if weights else 'the shipped weights'}: {err}") from err
    if not quiet:
        err_console.print(f"device: {segmenter.device_reason}", highlight=False)
    if segmenter.spec.synthetic_training_only:
        err_console.print(f"[yellow]notice:[/] {SYNTHETIC_NOTICE}", highlight=False, soft_wrap=True)
    rows = _run(studies, out, config, segmenter, overwrite=overwrite, show_progress=not quiet and not json_output,
                dicom_seg=dicom_seg, dicom_sc=dicom_sc, report_page=report_page, artery_segmenter=artery_segmenter)
    finish_batch(rows, out, _summary_table, quiet=quiet, json_output=json_output,
                 extra={"device": segmenter.current_device})
    unreliable = [row["study"] for row in rows if row.get("verdict") == "unreliable"]
    if strict and unreliable:
        print_error(f"{len(unreliable)} study(ies) judged unreliable (--strict): {', '.join(unreliable)}; "
                    "see quality.warnings in their report.json.")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("segment")(segment)
