"""What every command shares: the consoles, the --debug switch, error rendering."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from renalseg.errors import RenalsegError

__all__ = ["console", "err_console", "STATE", "handle_errors", "print_error", "configure_logging"]

#: results go to stdout; progress, warnings and errors to stderr
console = Console()
err_console = Console(stderr=True)

#: set by the top-level callback (``renalseg --debug ...``)
STATE: dict[str, Any] = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def print_error(message: str, *, prefix: str = "error") -> None:
    """One red line (or a short block) on stderr, no traceback."""
    # escaped: a message's own brackets (``renalseg[report]``, a path) are text, not markup
    err_console.print(f"[bold red]{prefix}:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def handle_errors(fn: F) -> F:
    """Turn a :class:`RenalsegError` into one red line and its exit code.

    With ``--debug`` the error is re-raised so its full traceback shows. Any other
    exception is a bug and always shows its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RenalsegError as err:
            if STATE["debug"]:
                raise
            print_error(str(err))
            raise typer.Exit(err.exit_code) from None

    return wrapper  # type: ignore[return-value]


def configure_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """Library log records (warnings and up by default) rendered by rich on stderr."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose or STATE["debug"] else logging.WARNING)
    root = logging.getLogger("renalseg")
    root.handlers[:] = [RichHandler(console=err_console, show_time=False, show_path=False, markup=False)]
    root.setLevel(level)
    root.propagate = False
