"""The ``renalseg`` command: top-level options and command registration."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from renalseg import __version__
from renalseg.cli.common import STATE

__all__ = ["app", "main"]

app = typer.Typer(
    name="renalseg",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # local variables can hold patient data
    rich_markup_mode="rich",
    add_completion=False,
    help="Renal artery tree segmentation from abdominal CT angiography (DPA-DenseBiasNet).",
)

#: one module per command in renalseg/cli/, each with ``register(app)``
COMMAND_MODULES: tuple[str, ...] = ("info", "weights", "segment", "train", "export_mesh", "evaluate", "locate", "demo", "synth",
                                     "plan", "report")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"renalseg {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    """Renal artery trees from CT angiography, for partial-nephrectomy planning."""
    STATE["debug"] = debug


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"renalseg.cli.{name}").register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()
