"""``renalseg train --stage dae|seg``: the paper's two training stages.

Works unchanged under ``torchrun --nproc_per_node=N -m renalseg train ...``: the
command reads torchrun's environment, each process trains on its share of every
global batch, and only rank 0 draws progress and writes files.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from renalseg.cli.common import configure_logging, console, err_console, handle_errors
from renalseg.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from renalseg.training.distributed import DistributedContext
    from renalseg.training.config import TrainConfig
    from renalseg.training.loop import TrainProgress, TrainResult

__all__ = ["register", "parse_triple"]


def parse_triple(text: str, *, name: str, kind: type = int) -> tuple:
    """``"152,152,64"`` → ``(152, 152, 64)`` (x, y, z as typed).

    Raises:
        UsageError: not three comma-separated positive numbers.

    Example:
        >>> parse_triple("96,96,48", name="--patch")
        (96, 96, 48)
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise UsageError(f"{name} {text!r}: expected three positive numbers x,y,z, e.g. 152,152,64.")
    return values


def _dpa_options_from_plain(plain: dict, encoder: Path) -> dict:
    """DPA-DenseBiasNet hyper-parameters for plain weights' ``plain`` ones and the DAE ``encoder``.

    (Whether the DAE fits, its group size included, is checked where it is loaded.)

    Raises:
        UsageError: the DAE file is missing.
    """
    from renalseg.weights import read_card

    if not encoder.exists():
        raise UsageError(f"--encoder {encoder}: no such file; train one with `renalseg train --stage dae`.")
    dae = read_card(encoder).hyperparameters
    options = {k: v for k, v in plain.items() if k != "prior_channels"}
    if "widths" in dae:
        options["encoder_widths"] = list(dae["widths"])
    return options


@handle_errors
def train_command(
    stage: Annotated[str, typer.Option("--stage", help="dae: denoising autoencoder on images; "
                                       "seg: DenseBiasNet (DPA) on labelled data.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="KiPA22 layout: DATA/image/<case>.nii.gz or a DICOM "
                                       "series folder DATA/image/<case>/ (+ DATA/label/<case>.nii.gz for seg); "
                                       "or nnU-Net's: DATA/imagesTr/<case>_0000.nii.gz (+ DATA/labelsTr/).",
                                       show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics, weights.",
                                      show_default=False)],
    encoder: Annotated[Path | None, typer.Option("--encoder", help="dae.safetensors from a --stage dae run "
                                                 "(required for DPA).")] = None,
    no_dpa: Annotated[bool, typer.Option("--no-dpa", help="Plain DenseBiasNet (the ablation).")] = False,
    init: Annotated[Path | None, typer.Option("--init", help="Seg stage: start from these weights (e.g. the "
                                              "shipped ones, to fine-tune on your labelled CTA) instead of "
                                              "a random initialisation; network and hyper-parameters come "
                                              "from their card. Plain DenseBiasNet weights with --encoder "
                                              "start DPA-DenseBiasNet (DAE inputs at zero weight).")] = None,
    label_map: Annotated[str, typer.Option("--label-map", help="Source value → class, e.g. "
                                           "'3:renal_artery' or '3:renal_artery,1:renal_vein'.")] = "3:renal_artery",
    val_data: Annotated[Path | None, typer.Option("--val-data", help="Separate validation folder "
                                                  "(same layout); else --val-fraction of --data.")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of --data held out "
                                                "for validation (seeded split).")] = 0.2,
    loss: Annotated[str, typer.Option("--loss", help="Segmentation loss: hra (paper), ce, ce_dice, ce_dice_present "
                                      "(Dice of the classes in each patch only: for classes absent from most "
                                      "patches, e.g. a tumour), hra_dice, ce_dice_cldice.")] = "hra",
    hra_threshold: Annotated[float, typer.Option("--hra-threshold", help="HRA threshold T.")] = 0.1,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-4,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Adam weight decay.")] = 1e-5,
    batch: Annotated[int, typer.Option("--batch", help="Samples per process per step.")] = 1,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision: the forward pass in bfloat16 "
                                      "(GPU tensor cores, CPUs with AVX-512 BF16 or AMX; float32 on other "
                                      "CPUs, where bfloat16 is many times slower); weights and loss stay "
                                      "float32.")] = False,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs (paper: 200).")] = 200,
    samples_per_epoch: Annotated[int | None, typer.Option("--samples-per-epoch", help="Patches per "
                                                          "epoch (default: one per training case).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many steps.")] = None,
    time_limit: Annotated[float | None, typer.Option("--time-limit-min", help="Stop (checkpointed) after "
                                                     "this many minutes; continue with --resume.")] = None,
    patch: Annotated[str, typer.Option("--patch", help="Training patch x,y,z voxels (smaller on a CPU, "
                                       "e.g. 96,96,48).")] = "152,152,64",
    window: Annotated[str, typer.Option("--window", help="Inference window x,y,z voxels (model card; "
                                        "validation uses it too).")] = "152,152,64",
    spacing: Annotated[str, typer.Option("--spacing", help="Model grid spacing x,y,z mm.")] = "0.7,0.7,1.0",
    foreground_share: Annotated[float, typer.Option("--foreground-share", help="Share of patches "
                                                    "centred near artery voxels.")] = 0.5,
    hard_negative_share: Annotated[float, typer.Option("--hard-negative-share", help="Share of patches "
                                                       "centred near bright unlabelled voxels (≥ 200 HU: "
                                                       "bone, bowel contrast, other arteries).")] = 0.0,
    class_share: Annotated[float, typer.Option("--class-share", help="Share of patches centred near a "
                                               "voxel of a class drawn uniformly among those the case "
                                               "holds (the tumour as often as the kidney).")] = 0.0,
    mimic_share: Annotated[float, typer.Option("--mimic-share", help="Share of patches centred near "
                                               "unlabelled tissue that looks like a tumour (spleen, liver, "
                                               "bowel, pancreas, adrenal, renal cyst; needs DATA/tissue/).")] = 0.0,
    mirror: Annotated[bool, typer.Option("--mirror/--no-mirror", help="Random flips on x, y, z.")] = True,
    rotate_deg: Annotated[float, typer.Option("--rotate-deg", help="Random rotation within ±degrees.")] = 10.0,
    intensity: Annotated[bool, typer.Option("--intensity-jitter/--no-intensity-jitter",
                                            help="Contrast, brightness, gamma, noise, blur.")] = True,
    domain_randomisation: Annotated[float, typer.Option("--domain-randomisation", help="Probability of "
                                                        "re-rendering a phantom patch from its tissue map "
                                                        "(SynthSeg-style); needs DATA/tissue/.")] = 0.0,
    thick_slices: Annotated[float, typer.Option("--thick-slices", help="Probability of showing a patch as "
                                                "a scan of 1.5-5 mm slices shows it (slabs averaged along z, "
                                                "interpolated back; the label stays fine).")] = 0.0,
    noisy_scans: Annotated[float, typer.Option("--noisy-scans", help="Probability of adding 20-60 HU of "
                                               "noise to a patch, as a low-dose scan or a large patient "
                                               "shows it.")] = 0.0,
    scanner_grids: Annotated[float, typer.Option("--scanner-grids", help="Probability of showing a patch "
                                                 "as a scan on a coarser grid (0.7-1.6 mm in-plane, 1-3 mm "
                                                 "slices, 15-60 HU of noise) shows it once resampled.")] = 0.0,
    spare_thin_branches: Annotated[bool, typer.Option("--spare-thin-branches", help="In the patches "
                                                      "--scanner-grids coarsens, leave the renal artery's "
                                                      "branches under 2 mm out of the loss (such a scan blurs "
                                                      "them into its noise). Measured: the network then finds "
                                                      "fewer thin branches on every scan (docs/training.md).")] = False,
    network_options: Annotated[str, typer.Option("--network-options", help="JSON of network "
                                                 "hyper-parameters, e.g. '{\"bias_quantity\": 2}'.")] = "{}",
    whole_studies: Annotated[bool, typer.Option("--whole-studies", help="Images are whole abdominal CTs: "
                                                "locate both kidneys and train on their ROIs (cached).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seeds initialisation and every sample.")] = 0,
    val_every: Annotated[int, typer.Option("--val-every", help="Validate every N epochs.")] = 1,
    val_overlap: Annotated[float, typer.Option("--val-overlap", help="Sliding-window overlap of the "
                                               "whole-case validation.")] = 0.25,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Checkpoint every N epochs.")] = 1,
    checkpoint_minutes: Annotated[float, typer.Option("--checkpoint-minutes", help="... and at least "
                                                      "every this many minutes.")] = 10.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.",
                                                             metavar="<auto|cpu|cuda|cuda:N>")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for torch.")] = None,
    loader_workers: Annotated[int, typer.Option("--loader-workers", help="Processes building the next "
                                                "batches while the network trains (for a GPU: about "
                                                "the CPU cores; the run is the same with any number).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.")] = False,
) -> None:
    """Train the denoising autoencoder (stage dae) or DPA-DenseBiasNet (stage seg).

    Example: [bold]renalseg train --stage dae --data kipa/ --out runs/dae && renalseg train --stage seg
    --data kipa/ --encoder runs/dae/dae.safetensors --out runs/seg[/]
    """
    import torch

    from renalseg.inference import select_device
    from renalseg.phantom.tissues import TISSUE_IDS, TISSUE_RANGES_HU
    from renalseg.training.augment import AugmentConfig, domain_limits
    from renalseg.training.data import find_cases, load_cases, parse_label_map, split_cases
    from renalseg.training.config import TrainConfig
    from renalseg.training.distributed import context_from_env, init_distributed, shutdown_distributed

    configure_logging(quiet=quiet)
    context = context_from_env(os.environ)
    if threads is not None:
        torch.set_num_threads(threads)
    torch_device, reason = select_device(device)
    if context.is_main and not quiet:
        err_console.print(f"device: {reason}" + (f"; {context.world_size} processes" if context.distributed else ""))
    try:
        options = json.loads(network_options)
    except json.JSONDecodeError as err:
        raise UsageError(f"--network-options is not JSON ({err}); e.g. '{{\"bias_quantity\": 2}}'.") from err
    if not isinstance(options, dict):
        raise UsageError("--network-options must be a JSON object, e.g. '{\"bias_quantity\": 2}'.")
    mapping = parse_label_map(label_map)
    spare_thin_class = 0
    if spare_thin_branches:
        if "renal_artery" not in mapping.class_names:
            raise UsageError(f"--spare-thin-branches spares the renal artery's thin branches; --label-map "
                             f"{label_map!r} has no renal_artery class.")
        spare_thin_class = mapping.class_names.index("renal_artery")
    stage = stage.strip().lower()
    stored_run = out / "config.json"
    if stage == "seg" and init is not None and not init.exists() and resume and stored_run.exists():
        # resuming: the checkpoint holds every parameter and the run its network
        stored = json.loads(stored_run.read_text(encoding="utf-8"))
        network, options = stored["network"], {**stored["network_options"], **options}
    elif stage == "seg" and init is not None:
        from renalseg.weights import read_card

        if not init.exists():
            raise UsageError(f"--init {init}: no such file; pass a .safetensors saved by renalseg.")
        card = read_card(init)
        if card.classes.get("1") and not set(card.classes.values()) & set(mapping.class_names[1:]):
            raise UsageError(f"--init {init}: its classes ({', '.join(card.classes.values())}) share none with "
                             f"--label-map {label_map!r}; name the classes it was trained on (extra ones may be added).")
        if no_dpa and card.name != "densebiasnet":
            raise UsageError(f"--init {init} holds {card.name!r} weights; drop --no-dpa.")
        network, stored = card.name, card.hyperparameters
        if card.name == "densebiasnet" and encoder is not None and not no_dpa:
            # plain weights + a DAE: DPA-DenseBiasNet that starts out as the plain network
            network, stored = "dpa_densebiasnet", _dpa_options_from_plain(card.hyperparameters, encoder)
        options = {**stored, "num_classes": mapping.num_classes, **options}
    elif stage == "seg":
        network = "densebiasnet" if no_dpa else "dpa_densebiasnet"
        options.setdefault("num_classes", mapping.num_classes)
    else:
        network = "dae"
    patch_xyz = parse_triple(patch, name="--patch")
    window_xyz = parse_triple(window, name="--window")
    spacing_xyz = parse_triple(spacing, name="--spacing", kind=float)
    ranges = {TISSUE_IDS[name]: rng for name, rng in TISSUE_RANGES_HU.items()}
    labelled = stage == "seg"
    files = find_cases(data, labelled=labelled)
    synthetic = (data / "cases.json").exists()
    if val_data is not None:
        val_files = find_cases(val_data, labelled=labelled)
        overlap = sorted({f.case_id for f in files} & {f.case_id for f in val_files})
        if overlap:
            raise UsageError(f"--val-data shares case names with --data ({', '.join(overlap[:5])}); "
                             "validation cases must never be trained on.")
        train_files = files
        synthetic = synthetic and (val_data / "cases.json").exists()
    else:
        train_ids, val_ids = split_cases([f.case_id for f in files], val_fraction=val_fraction, seed=seed)
        train_files = [f for f in files if f.case_id in train_ids]
        val_files = [f for f in files if f.case_id in val_ids]
    description = (f"{len(train_files)} training cases from {data}"
                   + (f", {len(val_files)} validation cases" if val_files else "")
                   + (f" from {val_data}" if val_data else ""))
    config = TrainConfig(
        stage=stage, network=network, network_options=options,
        encoder=str(encoder) if encoder and stage == "seg" else None,
        init_weights=str(init) if init is not None and stage == "seg" else None,
        label_map=mapping.to_text(),
        patch_zyx=(patch_xyz[2], patch_xyz[1], patch_xyz[0]),
        window_zyx=(window_xyz[2], window_xyz[1], window_xyz[0]),
        spacing_xyz_mm=spacing_xyz,  # type: ignore[arg-type]
        loss=loss, hra_threshold=hra_threshold, lr=lr, weight_decay=weight_decay, batch_size=batch, amp=amp,
        epochs=epochs, samples_per_epoch=samples_per_epoch, max_steps=max_steps, time_limit_min=time_limit,
        foreground_share=foreground_share, hard_negative_share=hard_negative_share, class_share=class_share,
        mimic_share=mimic_share,
        augment=AugmentConfig(mirror=mirror, rotate_deg=rotate_deg, intensity=intensity,
                              domain_randomisation=domain_randomisation, thick_slices=thick_slices,
                              noisy_scans=noisy_scans, scanner_grids=scanner_grids,
                              spare_thin_class=spare_thin_class,
                              tissue_ranges_hu=ranges if domain_randomisation > 0 else {},
                              tissue_limits_hu=domain_limits() if domain_randomisation > 0 else {}),
        seed=seed, val_every=val_every, val_overlap=val_overlap, checkpoint_every=checkpoint_every,
        checkpoint_minutes=checkpoint_minutes, synthetic_data=synthetic, data_description=description,
    )
    cache = out / "cache"
    train_cases = load_cases(train_files, spacing_xyz_mm=spacing_xyz, label_map=mapping if labelled else None,
                             cache_dir=cache, whole_studies=whole_studies)
    val_cases = load_cases(val_files, spacing_xyz_mm=spacing_xyz, label_map=mapping if labelled else None,
                           cache_dir=cache, whole_studies=whole_studies)
    init_distributed(context, torch_device)
    try:
        result = _run(config, out, train_cases, val_cases, resume=resume, context=context,
                      device=str(torch_device), show=context.is_main and not quiet,
                      loader_workers=loader_workers)
    finally:
        shutdown_distributed(context)
    if context.is_main:
        score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
        console.print(f"{result.steps} steps, {result.epochs_done} epochs, {result.wall_s / 60:.1f} min; "
                      f"best {result.score_name} {score}"
                      + (f"; stopped: {result.stopped_early} (continue with --resume)" if result.stopped_early else ""))
        console.print(f"weights: {result.best_weights}" if result.best_weights is not None
                      else f"weights: no best weights in {out} (validation did not beat the checkpoint's best "
                           f"score since the run was copied); last weights: {result.last_weights}")
        if result.interrupted_by is not None:  # a script must not go on as if the run were done
            raise typer.Exit(128 + int(getattr(signal, result.interrupted_by)))


def _run(config: TrainConfig, out: Path, train_cases: list, val_cases: list, *, resume: bool,
         context: DistributedContext, device: str, show: bool, loader_workers: int = 0) -> TrainResult:
    """Train with a live rich display (terminal), plain log lines (file), or nothing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from renalseg.training.loop import TrainProgress, train

    def run(on_progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
        return train(config, out, train_cases=train_cases, val_cases=val_cases, resume=resume, context=context,
                     device=device, on_progress=on_progress, loader_workers=loader_workers)

    if not show:
        return run()
    if not err_console.is_terminal:  # a log file (nohup, a batch job): plain lines, not a live display
        def log_line(event: TrainProgress) -> None:
            if event.kind == "step" and event.step % 10 and event.step != event.total_steps:
                return
            parts = [f"{config.stage} {event.kind}", f"epoch {event.epoch}/{event.epochs}",
                     f"step {event.step}/{event.total_steps}"]
            if event.loss is not None:
                parts.append(f"loss {event.loss:.4f}")
            if event.score is not None:
                parts.append(f"{event.score_name} {event.score:.4f} (best {event.best_score:.4f})")
            parts.append(f"{event.elapsed_s / 60:.1f} min")
            if event.eta_s is not None:
                parts.append(f"ETA {event.eta_s / 60:.0f} min")
            err_console.print(", ".join(parts), highlight=False, soft_wrap=True)

        return run(log_line)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[score]}"),
               TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"))
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(f"train {config.stage}", total=None, loss="…", score="", eta="…")

        def on_progress(event: TrainProgress) -> None:
            fields: dict = {"completed": event.step, "total": event.total_steps,
                            "description": f"{config.stage} epoch {event.epoch + (event.kind == 'step')}/{event.epochs}"}
            if event.loss is not None:
                fields["loss"] = f"{event.loss:.4f}"
            if event.eta_s is not None:
                fields["eta"] = f"{event.eta_s / 60:.0f} min"
            if event.best_score is not None:
                name = "Dice" if config.stage == "seg" else "MSE"
                last = f"{event.score:.4f} " if event.score is not None else ""
                fields["score"] = f"val {name} {last}(best {event.best_score:.4f})"
            progress.update(task, **fields)

        return run(on_progress)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
