"""``renalseg synth --out DIR --cases N --seed S``: synthetic CTA phantoms with ground truth."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from renalseg.cli.common import console, err_console, handle_errors

__all__ = ["register"]


class Kind(str, Enum):
    roi = "roi"
    abdomen = "abdomen"


class Format(str, Enum):
    nifti = "nifti"
    dicom = "dicom"


@handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to create.", show_default=False)],
    cases: Annotated[int, typer.Option("--cases", min=1, help="Number of cases.")] = 4,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of case 0; case i uses seed + i.")] = 0,
    kind: Annotated[Kind, typer.Option("--kind", help="roi: 152 × 152 × Z kidney crops; abdomen: whole "
                                       "512 × 512 × Z abdomen with both kidneys.")] = Kind.roi,
    fmt: Annotated[Format, typer.Option("--format", help="Image format (labels are always NIfTI).")] = Format.nifti,
    spacing: Annotated[str | None, typer.Option("--spacing", metavar="X,Y,Z",
                                                help="Fixed voxel spacing in mm (e.g. the model's 0.7,0.7,1.0); "
                                                "default: varied per case as in clinical scans.")] = None,
    phase_mix: Annotated[str | None, typer.Option(
        "--phase-mix", metavar="PHASE:SHARE,...",
        help="Draw each case's contrast phase (arterial, late-arterial, portal-venous, nephrographic) with these "
             "shares, e.g. arterial:0.4,late-arterial:0.2,portal-venous:0.3,nephrographic:0.1; cases.json records "
             "it. Default: arterial-phase intensities as before.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    phase: Annotated[str | None, typer.Option(
        "--phase", help="Contrast phase of every case: non-contrast, arterial, late-arterial, portal-venous, "
        "nephrographic (renalseg.phantom.phases).",
        show_default=False)] = None,
    drop: Annotated[str | None, typer.Option(
        "--drop", metavar="SIDE:MM", help="abdomen: that kidney sits MM lower (e.g. right:90; up to 150).",
        show_default=False)] = None,
    absent: Annotated[str | None, typer.Option("--absent", metavar="SIDE", help="abdomen: single kidney, "
                                               "this side absent.", show_default=False)] = None,
    malrotated: Annotated[str | None, typer.Option("--malrotated", metavar="SIDE", help="abdomen: that "
                                                   "kidney's hilum faces forward.", show_default=False)] = None,
    large_tumour: Annotated[str | None, typer.Option("--large-tumour", metavar="SIDE", help="abdomen: a 70–100 mm "
                                                     "exophytic tumour on that kidney.", show_default=False)] = None,
    horseshoe: Annotated[bool, typer.Option(
        "--horseshoe", help="abdomen: a horseshoe kidney (lower poles joined in front of the aorta and IVC).")] = False,
    fov_cut: Annotated[str | None, typer.Option(
        "--fov-cut", metavar="SIDE_POLE", help="abdomen: the scan stops inside that kidney's pole "
        "(right_lower, right_upper, left_lower, left_upper), hilum in view.", show_default=False)] = None,
    off_centre: Annotated[str | None, typer.Option("--off-centre", metavar="DX,DY", help="abdomen: the body "
                                                   "axis this far (mm) from the image centre.",
                                                   show_default=False)] = None,
    fov_mm: Annotated[float | None, typer.Option("--fov", help="abdomen: in-plane field of view, mm (300–500).",
                                                 show_default=False)] = None,
    slice_mm: Annotated[float | None, typer.Option("--slice", help="abdomen: slice spacing, mm (0.5–3).",
                                                   show_default=False)] = None,
    variant: Annotated[str | None, typer.Option(
        "--variant", help="abdomen: one hard case per seed: 'random' or one of drop, absent, malrotated, "
        "large_tumour, fov_cut, phase, off_centre, fov_slices, horseshoe (overrides the options above).",
        show_default=False)] = None,
    left_renal_vein: Annotated[str | None, typer.Option(
        "--left-renal-vein", metavar="COURSE", help="The left renal vein's course: preaortic (the usual, in front "
        "of the aorta), retroaortic (behind it, flattened against the spine) or circumaortic (both limbs).",
        show_default=False)] = None,
    stones: Annotated[bool, typer.Option(
        "--stones", help="1-3 stones (2-8 mm, 300-1500 HU) in each collecting system in view: bright, "
        "inside the kidney, labelled kidney, never artery.")] = False,
    excreted_contrast: Annotated[bool, typer.Option(
        "--excreted-contrast", help="Contrast excreted into the collecting systems and ureters (300-1500 HU), "
        "as in an excretory phase or a split-bolus scan.")] = False,
    tumour_site: Annotated[str, typer.Option(
        "--tumour-site", metavar="SITE", help="Where tumours grow: any (anywhere but the renal hilum) or hilar "
        "(in the hilum, against the main renal artery and vein: R.E.N.A.L.'s suffix h).")] = "any",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.")] = False,
) -> None:
    """Write deterministic synthetic CTA phantoms with known ground truth.

    Layout: [bold]DIR/image/case_0000.nii.gz[/] (or a DICOM series folder with
    --format dicom), [bold]DIR/label/[/] (KiPA22: 1 vein, 2 kidney, 3 artery, 4 tumour),
    [bold]DIR/tissue/[/] (tissue classes, for domain randomisation), [bold]DIR/territory/[/]
    (the true perfusion territories of the segmental arteries) and [bold]DIR/cases.json[/]
    (with each case's true feeding segmental arteries). Case i uses seed S + i, so any case can be regenerated alone.

    Example: [bold]renalseg synth --out phantoms --cases 20 --seed 0 --kind roi[/]
    """
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from renalseg.phantom import synthesize_abdomen, synthesize_roi, write_cases

    from renalseg.errors import UsageError

    options: dict = {"territories": True}
    if tumour_site != "any":
        from renalseg.phantom.abdomen import TUMOUR_SITES

        if tumour_site not in TUMOUR_SITES:
            raise UsageError(f"--tumour-site {tumour_site!r}: choose {' or '.join(TUMOUR_SITES)}.")
        options["tumour_site"] = tumour_site
    if stones:
        options["stones"] = True
    if excreted_contrast:
        options["excreted_contrast"] = True
    if left_renal_vein is not None:
        from renalseg.phantom.variants import check_variant_options

        check_variant_options({"left_renal_vein": left_renal_vein})
        options["left_renal_vein"] = left_renal_vein
    if spacing is not None:
        try:
            values = tuple(float(v) for v in spacing.split(","))
        except ValueError:
            values = ()
        if len(values) != 3 or min(values) <= 0:
            raise UsageError(f"--spacing {spacing!r}: give three positive numbers in mm, e.g. 0.7,0.7,1.0.")
        options["spacing_xyz_mm"] = values
    variants = _variant_options(phase=phase, drop=drop, absent=absent, malrotated=malrotated,
                                large_tumour=large_tumour, fov_cut=fov_cut, off_centre=off_centre, fov_mm=fov_mm,
                                slice_mm=slice_mm)
    if horseshoe:
        variants["horseshoe"] = True
    if (variants or variant) and kind is not Kind.abdomen:
        raise UsageError("--phase, --drop, --absent, --malrotated, --large-tumour, --horseshoe, --fov-cut, "
                         "--off-centre, --fov, --slice and --variant apply to --kind abdomen.")
    options.update(variants)
    make = synthesize_roi if kind is Kind.roi else synthesize_abdomen
    if variant is not None:
        from renalseg.phantom.variants import random_variant

        random_variant(0, None if variant == "random" else variant)  # validates the kind

        def make(case_seed: int, **fixed):  # type: ignore[no-redef]
            return synthesize_abdomen(case_seed, **{**fixed, **random_variant(
                case_seed, None if variant == "random" else variant)})
    mix = None
    if phase_mix is not None:
        from renalseg.phantom.phases import parse_phase_mix

        mix = parse_phase_mix(phase_mix)
    progress = Progress(TextColumn("[bold]synth[/] {task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        console=err_console, disable=quiet, transient=False)
    started = time.perf_counter()
    with progress:
        task = progress.add_task(f"{kind.value} phantoms", total=cases)

        def generate():
            for i in range(cases):
                progress.update(task, description=f"{kind.value} case_{i:04d} (seed {seed + i})")
                if mix is None:
                    yield make(seed + i, **options)
                else:
                    from renalseg.phantom.phases import draw_phase

                    yield make(seed + i, **options, phase=draw_phase(seed + i, mix))

        write_cases(out, generate(), kind=kind.value, fmt=fmt.value, overwrite=overwrite,
                    on_progress=lambda i, case: progress.advance(task))
    if not quiet:
        console.print(f"Wrote {cases} {kind.value} case(s) to [bold]{out}[/] "
                      f"({fmt.value}) in {time.perf_counter() - started:.1f} s; parameters in "
                      f"{out / 'cases.json'}.")


def _variant_options(*, phase, drop, absent, malrotated, large_tumour, fov_cut, off_centre, fov_mm,
                     slice_mm) -> dict:
    """``synthesize_abdomen`` options from the variant flags (validated there)."""
    from renalseg.errors import UsageError

    options: dict = {"phase": phase, "absent_kidney": absent, "malrotated": malrotated,
                     "large_tumour": large_tumour, "fov_cut": fov_cut, "fov_mm": fov_mm, "slice_mm": slice_mm}
    try:
        if drop is not None:
            side, mm = drop.split(":")
            options["kidney_drop_mm"] = {side.strip(): float(mm)}
        if off_centre is not None:
            dx, dy = (float(v) for v in off_centre.split(","))
            options["off_centre_mm"] = (dx, dy)
    except ValueError as err:
        raise UsageError(f"--drop SIDE:MM (e.g. right:90) and --off-centre DX,DY (e.g. 40,-20); got "
                         f"{drop or off_centre!r}.") from err
    return {key: value for key, value in options.items() if value is not None}


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
