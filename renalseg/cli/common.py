"""What every command shares: the consoles, the --debug switch, error rendering."""

from __future__ import annotations

import functools
import json
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from renalseg.errors import RenalsegError

__all__ = ["console", "err_console", "STATE", "Terminated", "EXIT_SIGINT", "EXIT_SIGTERM", "handle_errors",
           "print_error", "describe_error", "study_failure", "configure_logging", "say_empty_shard", "finish_batch",
           "StudiesArgument", "OutOption", "OverwriteOption", "ShardOption", "SeriesOption", "JsonOption",
           "ForceOption"]

#: results go to stdout; progress, warnings and errors to stderr
console = Console()
err_console = Console(stderr=True)

#: set by the top-level callback (``renalseg --debug ...``)
STATE: dict[str, Any] = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])

# -- the options of the batch commands (segment, locate), worded once -----------------------

StudiesArgument = Annotated[list[Path], typer.Argument(
    help="Image files (.nii.gz, .nrrd, .mha), DICOM series folders, or folders of studies.",
    show_default=False, metavar="INPUT")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder; one sub-folder per study.",
                                         show_default=False)]
OverwriteOption = Annotated[bool, typer.Option(
    "--overwrite", help="Replace existing output folders (without it they are an error; a folder "
    "holding only an earlier error.json is always retried).")]
ShardOption = Annotated[Optional[str], typer.Option(
    "--shard", help="K/N: only every N-th study starting at K (K from 0), to split a batch over jobs.",
    show_default=False)]
SeriesOption = Annotated[Optional[str], typer.Option(
    "--series", help="DICOM SeriesInstanceUID (or the key listed) when a folder holds several CT volumes; "
    "with * or ?, a pattern for the series description, so one option picks the phase in every folder of a "
    "batch (e.g. '*arter*').", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the batch summary as JSON on stdout.")]
ForceOption = Annotated[bool, typer.Option(
    "--force", help="Process a study whose values do not look like CT Hounsfield units (8-bit, nothing below "
    "0, no air below -500 HU); NaN/Inf voxels are refused regardless.")]


def print_error(message: str, *, prefix: str = "error") -> None:
    """One red line (or a short block) on stderr, no traceback."""
    # escaped: a message's own brackets (``renalseg[report]``, a path) are text, not markup
    err_console.print(f"[bold red]{prefix}:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def describe_error(error: BaseException, *,
                   traceback_hint: str = "error.json holds the traceback with --debug") -> str:
    """A study's error for its red line: the message, with the type when it is not one of
    ours (a bug), and where its traceback is to be had."""
    if isinstance(error, RenalsegError):
        return str(error)
    return f"unexpected {type(error).__name__}: {error} (a bug in renalseg or a library; {traceback_hint})"


def study_failure(study_id: str, error: Exception) -> str:
    """A study's failure in a command's own loop over studies (``export-mesh``, ``plan``,
    ``report``): its red line printed and its message returned, so that the loop goes on
    to the next study and the command exits 1. A bug (not a ``RenalsegError``) is named as
    one, and re-raised under ``--debug`` for its traceback."""
    if STATE["debug"] and not isinstance(error, RenalsegError):
        raise error
    message = describe_error(error, traceback_hint="--debug shows the traceback")
    print_error(f"{study_id}: {message}")
    return message


class Terminated(BaseException):
    """SIGTERM, raised where the program is, as Ctrl-C raises ``KeyboardInterrupt``.

    A ``BaseException`` like ``KeyboardInterrupt``: a batch does not take it for a
    study's failure, and every staging folder and temporary file is removed on the
    way out (``StagedDir``, ``atomic_write_*``), so a killed job (a scheduler's time
    limit, ``docker stop``) leaves no hidden ``.partial`` folder behind.
    """


#: exit codes of an interrupted command, as a shell reports them (128 + signal number)
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def handle_errors(fn: F) -> F:
    """Turn a :class:`RenalsegError` into one red line and its exit code.

    With ``--debug`` the error is re-raised so its full traceback shows. Any other
    exception is a bug and always shows its traceback. Ctrl-C and SIGTERM stop the
    command cleanly: outputs being written are removed, finished ones kept, one line
    says so, and the exit code is 130 or 143.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            return fn(*args, **kwargs)
        except RenalsegError as err:
            if STATE["debug"]:
                raise
            print_error(str(err))
            raise typer.Exit(err.exit_code) from None
        except (KeyboardInterrupt, Terminated) as err:
            name, code = ("SIGTERM", EXIT_SIGTERM) if isinstance(err, Terminated) else ("Ctrl-C", EXIT_SIGINT)
            print_error(f"interrupted ({name}): the output being written was removed; finished outputs are kept.",
                        prefix="stopped")
            raise typer.Exit(code) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return wrapper  # type: ignore[return-value]


def configure_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """Library log records (warnings and up by default) rendered by rich on stderr."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose or STATE["debug"] else logging.WARNING)
    root = logging.getLogger("renalseg")
    root.handlers[:] = [RichHandler(console=err_console, show_time=False, show_path=False, markup=False)]
    root.setLevel(level)
    root.propagate = False


def say_empty_shard(shard: tuple[int, int], out: Any, *, quiet: bool, json_output: bool) -> None:
    """What a batch command says when its shard holds no study (then it exits 0)."""
    from renalseg.batch import summarize

    if not quiet:
        err_console.print(f"shard {shard[0]}/{shard[1]}: no studies to process.", highlight=False)
    if json_output:
        typer.echo(json.dumps(summarize([], out), indent=2))


def finish_batch(rows: list[dict], out: Any, table: Callable[[list[dict]], Any], *, quiet: bool, json_output: bool,
                 extra: dict | None = None) -> None:
    """Print a batch's summary (JSON with ``extra``, or the rich ``table(rows)``); exit 1 if a study failed."""
    from renalseg.batch import summarize

    summary = summarize(rows, out)
    if json_output:
        typer.echo(json.dumps({**summary, **(extra or {})}, indent=2))
    elif not quiet:
        console.print(table(rows))
    if summary["failed"]:
        raise typer.Exit(1)
