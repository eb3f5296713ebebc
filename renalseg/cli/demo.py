"""``renalseg demo --out DIR``: the whole pipeline on a synthetic abdomen, in one command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from renalseg.cli.common import configure_logging, console, err_console, handle_errors

__all__ = ["register", "DEMO_SEED", "plan_lines", "truth_lines"]

#: a phantom seed used neither for training nor for validation (the shipped card lists
#: validation seeds 9000–9001 and unseen 9100–9103), so the demo's
#: Dice is a held-out figure
DEMO_SEED = 9201


@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the phantom, the segmentation and meshes.",
                                      show_default=False)],
    seed: Annotated[int, typer.Option(help="Phantom seed (the default is not used in training).")] = DEMO_SEED,
    weights: Annotated[Optional[Path], typer.Option(help="Weights file (default: the shipped weights).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.",
                                                metavar="<auto|cpu|cuda|cuda:N|mps>")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier demo in --out.")] = False,
    thin_branches: Annotated[Optional[bool], typer.Option(
        "--thin-branches/--no-thin-branches",
        help="As [bold]renalseg segment[/]: by default the artery-only weights' second pass runs when the "
             "phantom's phase is called arterial (it is drawn arterial), with a model that labels the artery "
             "and the kidney; --no-thin-branches: one network pass.", show_default=False)] = None,
) -> None:
    """Synthesise one abdomen CTA phantom, segment it, export meshes, plan, compare with the truth.

    Writes DIR/input/phantom.nii.gz (+ phantom_truth.nii.gz, KiPA22 labels, and
    phantom_territories.nii.gz/.json, the true perfusion territories and feeding
    segmental arteries), DIR/phantom/ (what [bold]renalseg segment[/] writes: the phantom
    is an arterial-phase CTA, so with the thin-branch pass), DIR/phantom/meshes/ (STL + tree.json) and the
    surgical plan in DIR/phantom/ (what [bold]renalseg plan DIR/phantom[/] writes), then prints
    the paths, the time of each step, the Dice of each structure the model labels (artery
    first) and the plan's feeding branches beside the phantom's true ones.

    Example: [bold]renalseg demo --out demo/[/]
    """
    import numpy as np
    from rich.table import Table

    from renalseg.errors import OutputExistsError, UsageError
    from renalseg.io.image import write_image
    from renalseg.io.output import StagedDir, atomic_write_json
    from renalseg.labels import BY_KEY, structure_kind, values_of_kind
    from renalseg.mesh import export_meshes
    from renalseg.metrics import FOUND_LABELS, dice, found_by_diameter
    from renalseg.phantom import synthesize_abdomen
    from renalseg.phantom.territory import compare_plan
    from renalseg.plan import plan_study
    from renalseg.pipeline import (SYNTHETIC_NOTICE, SegmentConfig, batch_thin_branch_segmenter, segment_study,
                                   serves_thin_branches, write_outputs)
    from renalseg.segmenter import load_model
    from renalseg.study import Study
    from renalseg.volume import Volume
    from renalseg.weights import resolve_weights

    configure_logging()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder.")
    if weights is not None:
        weights = resolve_weights(weights)
    destination = out / "phantom"
    if destination.exists() and not overwrite:
        raise OutputExistsError(f"{destination} exists; pass --overwrite to replace the earlier demo.")
    times: dict[str, float] = {}

    with err_console.status("loading the model…"):
        started = time.perf_counter()
        segmenter = load_model(weights, device)
        # the thin-branch pass needs a main model that labels the kidney (the artery-only weights do not)
        if not serves_thin_branches(segmenter.spec.classes):
            thin_branches = False
        artery_segmenter = batch_thin_branch_segmenter(segmenter, thin_branches, device)
        times["load model"] = time.perf_counter() - started
    err_console.print(f"device: {segmenter.device_reason}", highlight=False)
    if segmenter.spec.synthetic_training_only:
        err_console.print(f"[yellow]notice:[/] {SYNTHETIC_NOTICE}", highlight=False, soft_wrap=True)

    with err_console.status(f"synthesising an abdomen phantom (seed {seed})…"):
        started = time.perf_counter()
        case = synthesize_abdomen(seed, territories=True)
        image_path = write_image(case.image, out / "input" / "phantom.nii.gz", overwrite=True)
        truth_path = write_image(case.label, out / "input" / "phantom_truth.nii.gz", overwrite=True)
        if case.territory is not None:
            write_image(case.territory, out / "input" / "phantom_territories.nii.gz", overwrite=True)
            atomic_write_json(out / "input" / "phantom_territories.json", case.truth)
        times["synthesise phantom"] = time.perf_counter() - started
    study = Study(image=case.image.to_sitk(), path=image_path, format="nifti", study_id="phantom")

    with err_console.status("segmenting…") as status:
        def on_progress(stage: str, done: int, total: int) -> None:
            status.update(f"segmenting: {stage} {done}/{total}")

        started = time.perf_counter()
        result = segment_study(study, SegmentConfig(device=device, thin_branches=thin_branches), segmenter=segmenter,
                               on_progress=on_progress, artery_segmenter=artery_segmenter)
        write_outputs(result, destination, overwrite=overwrite)
        thin_pass = result.report.get("thin_branches", {}).get("applied", False)
        times[f"segment (renalseg segment, {'with' if thin_pass else 'without'} the thin-branch pass)"] = (
            time.perf_counter() - started)

    with err_console.status("exporting meshes…"):
        started = time.perf_counter()
        labels = Volume.from_sitk(result.labels)
        with StagedDir(destination / "meshes", overwrite=True) as staging:
            meshes = export_meshes(labels, staging, label_names={int(k): v for k, v in result.label_names.items()},
                                   rois=result.report["rois"])
        times["meshes (renalseg export-mesh)"] = time.perf_counter() - started

    # the plan needs the artery and the kidney (the artery-only weights label no kidney)
    planned = None
    if values_of_kind(result.label_names, "artery") and values_of_kind(result.label_names, "kidney"):
        with err_console.status("planning…"):
            started = time.perf_counter()
            planned = plan_study(destination, overwrite=True)
            times["plan (renalseg plan)"] = time.perf_counter() - started

    # the phantom's truth and the label map both use the KiPA22 values (renalseg.labels)
    truth = case.label.array == BY_KEY["artery"].value
    predicted = np.isin(labels.array, values_of_kind(result.label_names, "artery"))
    score = dice(predicted, truth)
    found = found_by_diameter(predicted, truth, labels.geometry.spacing_xyz_mm)
    table = Table("step", "seconds", title=f"renalseg demo (phantom seed {seed})")
    for step, seconds in times.items():
        table.add_row(step, f"{seconds:.1f}")
    for stage, seconds in result.report["timings_s"].items():
        if stage not in ("total", "read"):
            table.add_row(f"  segment: {stage}", f"{seconds:.1f}")
    console.print(table)
    console.print(f"phantom CT       {image_path}", highlight=False)
    console.print(f"phantom truth    {truth_path}", highlight=False)
    console.print(f"label map        {destination / 'labels.nii.gz'}", highlight=False)
    console.print(f"report, preview  {destination / 'report.json'}, {destination / 'preview.png'}",
                  highlight=False)
    for mesh in meshes.get("meshes", []):
        console.print(f"mesh             {destination / 'meshes' / Path(mesh['path']).name}", highlight=False)
    arteries = result.report.get("arteries", {})
    for side in ("right", "left"):
        if side in arteries:
            # one definition of a component (renalseg.components): the three figures agree
            entry = arteries[side]
            trees = [t[side]["components"] for name, t in meshes["trees"].items()
                     if side in t and structure_kind(name) == "artery"]
            bodies = sum(m["bodies"] for m in meshes["meshes"]
                         if m["side"] == side and structure_kind(m["name"]) == "artery")
            console.print(f"{side} artery tree: {entry['artery_volume_ml']:.2f} ml, {entry['components']} "
                          f"component(s) in report.json, {sum(trees)} in tree.json, {bodies} mesh bod"
                          f"{'y' if bodies == 1 else 'ies'}; {entry['specks']} speck(s) under 5 mm³ not counted",
                          highlight=False)
    console.print(f"[bold]artery Dice vs the phantom's truth: {score:.3f}[/] "
                  f"(truth {int(truth.sum())} voxels, predicted {int(predicted.sum())})",
                  soft_wrap=True)
    bands = ", ".join(f"{label} {format(share, '.0%') if np.isfinite(share) else 'n/a'}"
                      for label, share in zip(FOUND_LABELS, found.values()))
    console.print(f"true centerline found, by vessel diameter: {bands}", soft_wrap=True, highlight=False)
    others = []
    for key in ("vein", "kidney", "tumour"):
        values = values_of_kind(result.label_names, key)
        true = case.label.array == BY_KEY[key].value
        if values and true.any():
            others.append(f"{key} {dice(np.isin(labels.array, values), true):.3f}")
    if others:
        console.print(f"Dice of the other structures vs the truth: {', '.join(others)}", soft_wrap=True,
                      highlight=False)
    if planned is None:
        console.print("surgical plan    not made: this model labels no kidney (renalseg plan needs the artery "
                      "and the kidney)", soft_wrap=True, highlight=False)
        return
    console.print(f"surgical plan    {destination / 'plan.json'}, {destination / 'plan.png'}", highlight=False)
    for line in plan_lines(planned.plan):
        console.print(line, soft_wrap=True, highlight=False)
    if case.territory is not None:
        rows = compare_plan(planned.plan, planned.territories.array, case.truth, case.territory.array,
                            case.label.array == BY_KEY["kidney"].value)
        for line in truth_lines(rows, case.truth):
            console.print(line, soft_wrap=True, highlight=False)


def plan_lines(plan: dict) -> list[str]:
    """One line per kidney of ``plan.json``: the tumour, its feeding branches, what
    clamping them costs and its R.E.N.A.L. score, in words.

    Example:
        >>> plan = {"kidneys": [{"side": "left", "status": "planned",
        ...     "branches": [{"id": 3, "name": "segmental 2", "tumour_percent": 80.0}],
        ...     "tumour": {"volume_ml": 12.3, "feeding": [3],
        ...                "nephrometry": {"score": 8, "suffix": "p", "complexity": "moderate"}},
        ...     "clamping": {"strategy": "selective", "candidates": [{"name": "segmental 2"}],
        ...                  "ischaemic_ml": 20.0, "ischaemic_percent": 14.2}},
        ...     {"side": "right", "status": "no_tumour", "branches": [], "tumour": None, "clamping": None}]}
        >>> print("\\n".join(plan_lines(plan)))
        ... # doctest: +NORMALIZE_WHITESPACE
        left kidney: a 12.3 ml tumour fed by segmental 2 (80% of tumour + margin); clamping segmental 2 leaves 20.0 ml
        (14%) of healthy kidney without blood; R.E.N.A.L. 8p (moderate) on the segmented tumour
        right kidney: no tumour
    """
    from renalseg.nephrometry import notation
    from renalseg.plan import proposed_clamping

    lines = []
    for kidney in plan["kidneys"]:
        side, tumour, clamping = kidney["side"], kidney["tumour"], kidney["clamping"]
        if kidney["status"] != "planned" or not tumour:
            lines.append(f"{side} kidney: {kidney['status'].replace('_', ' ')}")
            continue
        by_id = {b["id"]: b for b in kidney["branches"]}
        feeding = [f"{by_id[i]['name']} ({by_id[i]['tumour_percent']:.0f}%{' of tumour + margin' * (k == 0)})"
                   for k, i in enumerate(tumour["feeding"])]
        line = f"{side} kidney: a {tumour['volume_ml']:.1f} ml tumour fed by {', '.join(feeding) or 'no branch'}"
        if clamping:
            names, cost = proposed_clamping(clamping)
            line += (f"; clamping {', '.join(names)} leaves {cost['ischaemic_ml']:.1f} ml "
                     f"({cost['ischaemic_percent']:.0f}%) of healthy kidney without blood")
            if clamping["strategy"] == "selective" and clamping.get("fewest"):
                fewest = clamping["fewest"]
                line += (f"; with the fewest clamps, {', '.join(fewest['names'])}, "
                         f"{fewest['ischaemic_ml']:.1f} ml ({fewest['ischaemic_percent']:.0f}%)")
            elif clamping["strategy"] == "fewest" and clamping["candidates"]:
                line += (f"; the deepest candidates, {len(clamping['candidates'])} branches, "
                         f"{clamping['ischaemic_ml']:.1f} ml ({clamping['ischaemic_percent']:.0f}%)")
        score = tumour.get("nephrometry")
        if score:
            line += f"; R.E.N.A.L. {notation(score)} ({score['complexity']}) on the segmented tumour"
        lines.append(line)
    return lines


def _segment(name: str) -> str:
    """A phantom's segmental artery name in words: ``posterior_lower_segmental`` → ``posterior lower``."""
    return name.removesuffix("_segmental").replace("_", " ")


def truth_lines(rows: list[dict], truth: dict) -> list[str]:
    """The plan against the phantom's truth (:func:`renalseg.phantom.territory.compare_plan`'s
    rows), one line per kidney with a true tumour.

    Example:
        >>> truth = {"kidneys": {"left": {"feeding": ["inferior_segmental", "posterior_segmental"],
        ...     "tumour_percent": {"inferior_segmental": 70.0, "posterior_segmental": 30.0}}}}
        >>> rows = [{"side": "left", "tp": 1, "fp": 0, "fn": 1, "agreement": 0.8123,
        ...          "plan_feeding": ["inferior_segmental"]}]
        >>> print(truth_lines(rows, truth)[0])
        left kidney, the phantom's truth: fed by the inferior (70%) and posterior (30%) segmental arteries; the plan's feeding territories lie on the inferior: 1 of 2 found, 0 false; territory agreement 0.81
    """
    lines = []
    for row in rows:
        if "error" in row:
            continue
        shares = truth["kidneys"][row["side"]]["tumour_percent"]
        true = [f"{_segment(name)} ({shares[name]:.0f}%)" for name in truth["kidneys"][row["side"]]["feeding"]]
        if not true:
            continue
        fed = ", ".join(true[:-1]) + f" and {true[-1]}" if len(true) > 1 else true[0]
        lies = ", ".join(_segment(name) for name in row["plan_feeding"]) or "none"
        lines.append(f"{row['side']} kidney, the phantom's truth: fed by the {fed} segmental arteries; the plan's "
                     f"feeding territories lie on the {lies}: {row['tp']} of {row['tp'] + row['fn']} found, "
                     f"{row['fp']} false; territory agreement {row['agreement']:.2f}")
    return lines


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
