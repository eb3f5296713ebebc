"""``renalseg demo --out DIR``: the whole pipeline on a synthetic abdomen, in one command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from renalseg.cli.common import configure_logging, console, err_console, handle_errors

__all__ = ["register", "DEMO_SEED"]

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
    thin_branches: Annotated[bool, typer.Option(
        "--thin-branches/--no-thin-branches",
        help="Segment as [bold]renalseg segment --thin-branches[/] does, as recommended for the demo's "
             "arterial-phase scan (a second network pass: more of the interlobar branches); with a model that "
             "labels the artery and the kidney.")] = True,
) -> None:
    """Synthesise one abdomen CTA phantom, segment it, export meshes, compare with the truth.

    Writes DIR/input/phantom.nii.gz (+ phantom_truth.nii.gz, KiPA22 labels),
    DIR/phantom/ (what [bold]renalseg segment --thin-branches[/] writes: the phantom is an
    arterial-phase CTA) and DIR/phantom/meshes/ (STL +
    tree.json), then prints the paths, the time of each step and the Dice of each
    structure the model labels (artery first).

    Example: [bold]renalseg demo --out demo/[/]
    """
    import numpy as np
    from rich.table import Table

    from renalseg.errors import OutputExistsError, UsageError
    from renalseg.io.image import write_image
    from renalseg.io.output import StagedDir
    from renalseg.labels import BY_KEY, values_of_kind
    from renalseg.mesh import export_meshes
    from renalseg.metrics import FOUND_LABELS, dice, found_by_diameter
    from renalseg.phantom import synthesize_abdomen
    from renalseg.pipeline import (SYNTHETIC_NOTICE, SegmentConfig, segment_study, serves_thin_branches,
                                   thin_branch_segmenter, write_outputs)
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
        # --thin-branches needs a main model that labels the kidney (the artery-only weights do not)
        thin_branches = thin_branches and serves_thin_branches(segmenter.spec.classes)
        artery_segmenter = thin_branch_segmenter(segmenter, device=device) if thin_branches else None
        times["load model"] = time.perf_counter() - started
    err_console.print(f"device: {segmenter.device_reason}", highlight=False)
    if segmenter.spec.synthetic_training_only:
        err_console.print(f"[yellow]notice:[/] {SYNTHETIC_NOTICE}", highlight=False, soft_wrap=True)

    with err_console.status(f"synthesising an abdomen phantom (seed {seed})…"):
        started = time.perf_counter()
        case = synthesize_abdomen(seed)
        image_path = write_image(case.image, out / "input" / "phantom.nii.gz", overwrite=True)
        truth_path = write_image(case.label, out / "input" / "phantom_truth.nii.gz", overwrite=True)
        times["synthesise phantom"] = time.perf_counter() - started
    study = Study(image=case.image.to_sitk(), path=image_path, format="nifti", study_id="phantom")

    with err_console.status("segmenting…") as status:
        def on_progress(stage: str, done: int, total: int) -> None:
            status.update(f"segmenting: {stage} {done}/{total}")

        started = time.perf_counter()
        result = segment_study(study, SegmentConfig(device=device, thin_branches=thin_branches), segmenter=segmenter,
                               on_progress=on_progress, artery_segmenter=artery_segmenter)
        write_outputs(result, destination, overwrite=overwrite)
        times[f"segment (renalseg segment{' --thin-branches' if thin_branches else ''})"] = (
            time.perf_counter() - started)

    with err_console.status("exporting meshes…"):
        started = time.perf_counter()
        labels = Volume.from_sitk(result.labels)
        with StagedDir(destination / "meshes", overwrite=True) as staging:
            meshes = export_meshes(labels, staging, label_names={int(k): v for k, v in result.label_names.items()},
                                   rois=result.report["rois"])
        times["meshes (renalseg export-mesh)"] = time.perf_counter() - started

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
            trees = [t[side]["components"] for t in meshes["trees"].values() if side in t]
            bodies = sum(m["bodies"] for m in meshes["meshes"] if m["side"] == side)
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


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
