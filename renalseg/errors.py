"""The errors a user can cause, one hierarchy, each with an exit code.

Every message says what was wrong, the observed and expected values, and what to do.
The CLI catches only :class:`RenalsegError`; anything else is a bug and shows its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "RenalsegError",
    "UsageError",
    "InputError",
    "DicomError",
    "SeriesSelectionError",
    "GeometryError",
    "ModelError",
    "NonFiniteLossError",
    "NoKidneyFoundError",
    "RegistrationError",
    "OutputExistsError",
    "DataLayoutError",
    "suggest",
    "check_choice",
]


class RenalsegError(Exception):
    """Base class of every error a user can cause (bad input, bad option, bad file).

    ``exit_code`` is what the CLI exits with when this error ends a command:
    1 for a failed study, 2 for a usage error.
    """

    exit_code: int = 1


class UsageError(RenalsegError, ValueError):
    """A bad option value or a path that does not exist (exit code 2)."""

    exit_code = 2


class InputError(RenalsegError, ValueError):
    """A study that cannot be read or is not a CT study we can use."""


class DicomError(InputError):
    """A DICOM folder that is unreadable, incomplete or inconsistent."""


class SeriesSelectionError(DicomError):
    """Several series in one folder and none (or an unknown one) chosen."""


class GeometryError(RenalsegError, ValueError):
    """Two grids that should agree do not, or a geometry that cannot be valid."""


class ModelError(RenalsegError):
    """Weights or a model card that cannot be loaded or do not match."""


class NonFiniteLossError(ModelError):
    """Training diverged: the loss became NaN or infinite (on any process of a torchrun job).

    Every process raises it at the same step with the same message, which names the
    step and the rank(s) whose loss it was, so no process is left waiting in a
    collective operation for one that stopped.
    """


class NoKidneyFoundError(RenalsegError):
    """No usable kidney in the field of view (absent, or cut with its hilum outside)."""


class RegistrationError(RenalsegError):
    """Atlas registration did not converge to a plausible alignment."""


class OutputExistsError(RenalsegError):
    """An output already exists and ``--overwrite`` was not given."""


class DataLayoutError(RenalsegError, ValueError):
    """A training data folder whose layout or contents are wrong."""


def suggest(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""``.

    Example:
        >>> suggest("denseBiasNet", ["DenseBiasNet", "UNet3D"])
        " Did you mean 'DenseBiasNet'?"
        >>> suggest("zzz", ["DenseBiasNet"])
        ''
    """
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if value.lower() in lowered:
            close = [lowered[value.lower()]]
    return f" Did you mean '{close[0]}'?" if close else ""


def check_choice(value: str, choices: Iterable[str], what: str) -> str:
    """``value`` lower-cased when it is one of ``choices``, else a :class:`UsageError`.

    Raises:
        UsageError: naming ``what``, the valid choices and the closest one.

    Example:
        >>> check_choice("STL", ("stl", "ply"), "mesh format")
        'stl'
        >>> check_choice("stk", ("stl", "ply"), "mesh format")
        Traceback (most recent call last):
        ...
        renalseg.errors.UsageError: Unknown mesh format 'stk'; choose one of stl, ply. Did you mean 'stl'?
    """
    choices = tuple(choices)
    lowered = str(value).lower()
    if lowered not in choices:
        raise UsageError(f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.{suggest(value, choices)}")
    return lowered
