"""``renalseg weights info PATH`` and ``renalseg weights list``: what a model is, without loading it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from renalseg.cli.common import console, handle_errors

__all__ = ["register", "weights_app"]

weights_app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                          help="Inspect model weights and their model cards (no model is loaded).")


def _checksum_status(weights: Path, expected: str) -> str:
    from renalseg.weights import sha256_file

    if not weights.is_file():
        return "[red]weights file missing[/]"
    return "[green]ok[/]" if sha256_file(weights) == expected else "[red]MISMATCH (file changed or corrupt)[/]"


@weights_app.command("info")
@handle_errors
def info(
    path: Annotated[Path, typer.Argument(help="A shipped model's name (see `renalseg weights list`), a .safetensors "
                                               "file or its .json model card.", show_default=False,
                                         metavar="NAME|PATH")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the model card as JSON.")] = False,
) -> None:
    """Print a model's card: network, hyper-parameters, classes, spacing, normalisation, checksum.

    Example: [bold]renalseg weights info dpa_densebiasnet[/]
    """
    from renalseg.weights import model_paths, read_card, resolve_weights, sha256_file

    path = resolve_weights(path, option="weights info")
    card = read_card(path)
    weights, card_path = model_paths(path)
    if as_json:
        console.print_json(json.dumps(card.to_dict()))
        return
    table = Table(show_header=False, title=f"{weights.name} ({card_path.name})", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "network": card.name,
        "hyperparameters": json.dumps(card.hyperparameters),
        "parameters": f"{card.parameter_count:,}",
        "classes": ", ".join(f"{k}: {v}" for k, v in card.classes.items()),
        "spacing (x, y, z mm)": " × ".join(f"{s:g}" for s in card.spacing_xyz_mm),
        "window (z, y, x voxels)": " × ".join(map(str, card.window_zyx)),
        "normalisation": f"clip HU to {card.normalization['clip_hu']}, scale to {card.normalization['scale']}",
        "training": json.dumps(card.training) if card.training else "(not described)",
        "metrics": json.dumps(card.metrics) if card.metrics else "(none)",
        "synthetic training only": "yes — not validated on patients" if card.synthetic_training_only else "no",
        "quality limits": _limits_text(card.limits),
        "sha256": card.sha256,
        "checksum": _checksum_status(weights, card.sha256),
        "format / renalseg": f"{card.format_version} / {card.renalseg_version}",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    if not weights.is_file() or sha256_file(weights) != card.sha256:
        # a damaged or swapped model must not look fine to a script checking the exit code
        raise typer.Exit(1)


def _limits_text(limits: dict) -> str:
    """What the card says the weights were validated on (the quality verdict's limits)."""
    from renalseg.quality import PHASE_WORDS, limits_from_card

    parsed = limits_from_card(limits)
    return (("" if limits else "(no limits block: defaults) ")
            + f"phases {', '.join(PHASE_WORDS[p] for p in parsed.phases)}; in-plane "
            f"{parsed.inplane_spacing_mm[0]:g}–{parsed.inplane_spacing_mm[1]:g} mm; slices "
            f"{parsed.slice_thickness_mm[0]:g}–{parsed.slice_thickness_mm[1]:g} mm; noise SD "
            f"{parsed.noise_sd_hu[0]:g}–{parsed.noise_sd_hu[1]:g} HU")


@weights_app.command("list")
@handle_errors
def list_models(
    folder: Annotated[Path | None, typer.Argument(help="Folder of models (default: the shipped weights).",
                                                   show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the models in a folder (default: the shipped ones) and the registered networks.

    Example: [bold]renalseg weights list[/]
    """
    from renalseg.errors import ModelError, UsageError
    from renalseg.weights import DEFAULT_WEIGHTS_PATH, read_card

    folder = folder if folder is not None else DEFAULT_WEIGHTS_PATH.parent
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give a folder that holds .safetensors + .json models.")
    models: list[dict[str, object]] = []
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            card = read_card(weights)
        except ModelError as err:
            models.append({"file": str(weights), "error": str(err)})
            continue
        models.append({"file": str(weights), "network": card.name, "classes": card.classes,
                       "parameters": card.parameter_count, "synthetic_training_only": card.synthetic_training_only,
                       "sha256": card.sha256})
    if as_json:
        console.print_json(json.dumps({"folder": str(folder), "models": models,
                                       "networks": _registered_networks()}))
        return
    table = Table(title=f"models in {folder}", title_justify="left")
    for column in ("model", "network", "classes", "parameters", "synthetic only", "sha256"):
        table.add_column(column, overflow="fold")
    for model in models:
        if "error" in model:
            table.add_row(Path(str(model["file"])).name, f"[red]{model['error']}[/]", "", "", "", "")
            continue
        table.add_row(Path(str(model["file"])).name, str(model["network"]),
                      ", ".join(model["classes"].values()),  # type: ignore[attr-defined]
                      f"{model['parameters']:,}", "yes" if model["synthetic_training_only"] else "no",
                      str(model["sha256"])[:12])
    if not models:
        table.add_row("(none)", "", "", "", "", "")
    console.print(table)
    console.print("networks: " + ", ".join(_registered_networks()))


def _registered_networks() -> list[str]:
    from renalseg.weights import NETWORK_NAMES  # the registry's names, without importing torch

    return sorted(NETWORK_NAMES)


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
