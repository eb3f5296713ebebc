"""``renalseg plan STUDY_DIR...``: feeding branches, territories and clamping candidates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from renalseg.cli.common import configure_logging, console, handle_errors, study_failure

__all__ = ["register"]


@handle_errors
def plan(
    studies: Annotated[list[Path] | None, typer.Argument(help="`renalseg segment` output folders.",
                                                         show_default=False)] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="A label map from any tool (one study); with a "
                                                "STUDY_DIR it must lie on that study's grid.")] = None,
    label_map: Annotated[str | None, typer.Option("--label-map", metavar="V:NAME,...",
                                                  help="Which label value is which structure, e.g. "
                                                  "\"3:artery,2:kidney,4:tumour,1:vein\" (default: labels.json; "
                                                  "the vein scores R.E.N.A.L.'s hilar h).")] = None,
    tumour: Annotated[Path | None, typer.Option(
        "--tumour", help="The tumour from a file on the study's grid (drawn or corrected by hand, e.g. in 3D "
        "Slicer, or another tool's), planned in place of the segmented tumour (one study).")] = None,
    tumour_value: Annotated[int | None, typer.Option(
        "--tumour-value", min=1, help="The tumour's value in --tumour's file (default: its one non-zero value; "
        "renalseg's labels.seg.nrrd: 4).")] = None,
    tumour_at: Annotated[str | None, typer.Option(
        "--tumour-at", metavar="X,Y,Z", help="The tumour's centre in patient LPS mm (ras:X,Y,Z for RAS, as 3D Slicer "
        "shows a point), e.g. from the radiology report, planned in place of the segmented tumour (one study): "
        "with --tumour-diameter-mm a sphere that wide there, else the segmented tumour pieces within 10 mm of "
        "it, the others left out.")] = None,
    tumour_diameter_mm: Annotated[float | None, typer.Option(
        "--tumour-diameter-mm", min=0.0, help="The tumour's longest diameter (mm), with --tumour-at: "
        "plans a sphere that wide (it errs towards clamping more).")] = None,
    margin_mm: Annotated[float, typer.Option("--margin-mm", min=0.0, help="Resection margin around the tumour (mm).")] = 5.0,
    coverage: Annotated[float, typer.Option("--coverage", min=0.5, max=1.0,
                                            help="Share of tumour + margin the clamped territories must hold.")] = 0.95,
    min_tumour_ml: Annotated[float, typer.Option(
        "--min-tumour-ml", min=0.0, help="Tumour pieces smaller than this (ml) are left out of the feeding branches "
        "and the clamping (listed as small pieces); 0 plans every piece.")] = 0.1,
    fewest_tolerance_percent: Annotated[float, typer.Option(
        "--fewest-tolerance-percent", min=0.0, max=100.0, help="Propose the fewest clamps (a division, say) over "
        "the deepest candidates when they take fewer branches and leave at most this many points more of the "
        "kidney without blood; 0: only when they cost no more.")] = 5.0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder, one sub-folder per study "
                                             "(default: into each study folder).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing plan.")] = False,
    dicom_seg: Annotated[bool, typer.Option(
        "--dicom-seg", help="For a study segmented from DICOM, also write territories.seg.dcm: the territories as a "
        "DICOM SEG referencing the series, for PACS viewers (a few seconds and tens of MB on a whole study).")] = False,
    dicom_sc: Annotated[bool, typer.Option(
        "--dicom-sc/--no-dicom-sc", help="For a study segmented from DICOM, also write plan.sc.dcm: plan.png as a "
        "DICOM Secondary Capture in that study, which every PACS viewer shows.")] = True,
    meshes: Annotated[bool, typer.Option("--meshes", help="Also write one STL surface per territory "
                                         "(territories/territory_<value>.stl, LPS mm).")] = False,
    report: Annotated[bool, typer.Option("--report", help="Also (re)write the study's report.html with the plan "
                                         "(renalseg report; the plan must go into the study folder).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plans' summary as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    """The surgical plan: which artery branches feed the tumour, and what clamping them costs.

    Per kidney: the artery tree as a rooted, named branch graph, the perfusion territory
    of each segmental branch, the branches feeding the tumour (+ margin) and the
    clamping candidates with the healthy kidney each leaves without blood. Writes
    [bold]plan.json[/], [bold]territories.nii.gz[/] (on the study's grid),
    [bold]territories.json[/] and [bold]plan.png[/]; with [bold]--meshes[/] one surface per territory,
    with [bold]--report[/] the study's [bold]report.html[/].

    Example: [bold]renalseg plan out/case1[/], or
    [bold]renalseg plan --labels seg.nii.gz --label-map "3:artery,2:kidney,4:tumour" --out plans[/], or with
    the tumour drawn by hand: [bold]renalseg plan out/case1 --tumour tumour.nii.gz[/], or as the
    radiology report gives it: [bold]renalseg plan out/case1 --tumour-at ras:62,-18,105 --tumour-diameter-mm 38[/]
    """
    from renalseg.errors import RenalsegError, UsageError
    from renalseg.nephrometry import describe, notation
    from renalseg.plan import (PlanConfig, check_tumour_options, parse_label_map, parse_point, plan_study,
                               proposed_clamping)

    configure_logging(quiet=quiet)
    studies = list(studies or [])
    if labels is not None and len(studies) > 1:
        raise UsageError("--labels goes with one study folder at most.")
    if tumour is not None and len(studies) > 1:
        raise UsageError("--tumour goes with one study at a time: each study has its own tumour.")
    if tumour_at is not None and len(studies) > 1:
        raise UsageError("--tumour-at goes with one study at a time: each study has its own tumour.")
    check_tumour_options(tumour, tumour_at, tumour_diameter_mm)  # before any study: a usage error, exit 2
    point = parse_point(tumour_at) if tumour_at is not None else None
    if tumour_value is not None and tumour is None:
        raise UsageError("--tumour-value says which value of the --tumour file is the tumour; give --tumour FILE.")
    if not studies and labels is None:
        raise UsageError("Give a STUDY_DIR (renalseg segment output) or --labels FILE.")
    if not studies and out is None:
        raise UsageError("With --labels alone, say where the plan goes with --out DIR.")
    if report and (out is not None or not studies):
        raise UsageError("--report writes the study folder's report.html with its plan: give STUDY_DIR and "
                         "no --out.")
    config = PlanConfig(margin_mm=margin_mm, coverage=coverage, min_tumour_piece_ml=min_tumour_ml,
                        fewest_tolerance=fewest_tolerance_percent / 100)
    mapping = parse_label_map(label_map) if label_map is not None else None
    jobs = [(s, s.name) for s in studies] or [(None, labels.name.split(".")[0])]
    summary, failed = [], 0
    for study, study_id in jobs:
        target = (out / study_id) if out is not None else None
        try:
            result = plan_study(study, labels=labels, label_map=mapping, config=config, out_dir=target,
                                overwrite=overwrite, meshes=meshes, tumour=tumour, tumour_value=tumour_value,
                                tumour_at=point, tumour_diameter_mm=tumour_diameter_mm, dicom_seg=dicom_seg,
                                dicom_sc=dicom_sc)
            if report:
                from renalseg.report import write_report

                write_report(study, overwrite=True)  # the page must show the plan just written
        except Exception as err:  # noqa: BLE001 - one study's failure, whatever it is, must not end the batch
            if len(jobs) == 1 and isinstance(err, RenalsegError):
                raise
            failed += 1
            summary.append({"study": study_id, "status": "error", "error": study_failure(study_id, err)})
            continue
        where = str(target or study)
        for side, why in result.plan["study"].get("not_located", {}).items():
            summary.append({"study": study_id, "side": side, "status": "not_located",
                            "notes": [f"not planned: renalseg segment located no {side} kidney ({why.rstrip('.')}); "
                                      "if the patient has one, check the images there"], "out": where})
        for kidney in result.plan["kidneys"]:
            clamping = kidney["clamping"] or {}
            proposed, cost = proposed_clamping(clamping) if clamping else ([], {})
            summary.append({"study": study_id, "side": kidney["side"], "status": kidney["status"],
                            "feeding": [b["name"] for b in kidney["branches"]
                                        if b["id"] in ((kidney["tumour"] or {}).get("feeding") or [])],
                            "strategy": clamping.get("strategy"),
                            "fewest": (clamping.get("fewest") or {}).get("names"),
                            "clamp": proposed, "ischaemic_percent": cost.get("ischaemic_percent"),  # of the proposal
                            "nephrometry": (kidney["tumour"] or {}).get("nephrometry"),
                            "notes": kidney["notes"], "out": where})
    if as_json:
        console.print_json(json.dumps(summary))
    elif not quiet:
        table = Table(title="renalseg plan")
        for column in ("study", "side", "status", "feeding", "clamp", "ischaemic", "R.E.N.A.L."):
            table.add_column(column)
        for row in summary:
            score = row.get("nephrometry")
            table.add_row(row["study"], row.get("side", ""), row["status"], ", ".join(row.get("feeding") or []),
                          ", ".join(row.get("clamp") or []),
                          f"{row['ischaemic_percent']:.0f}%" if row.get("ischaemic_percent") is not None else "",
                          notation(score) if score else "")
        console.print(table)
        for row in summary:
            if row.get("nephrometry"):
                console.print(f"{row['study']} {row['side']}: {describe(row['nephrometry'])}")
            for note in row.get("notes") or []:
                console.print(f"[yellow]{row['study']} {row.get('side', '')}:[/] {note}")
        if tumour is None and tumour_at is None and any(row.get("status") == "planned" for row in summary):
            console.print("[dim]Planned and scored (R.E.N.A.L.) on the segmented tumour, which finds part of a "
                          "tumour and can add false pieces: check it. To plan the tumour you know, give its centre and "
                          "longest diameter (--tumour-at X,Y,Z --tumour-diameter-mm D) or draw it (--tumour FILE).[/]")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
