"""Output folders that appear whole or not at all.

A study's outputs are written into a hidden staging folder beside the destination
and renamed into place only when every file is complete. On failure (or Ctrl-C /
SIGTERM, which the CLI turns into an exception) the staging folder is removed, so
``DIR/<study_id>/`` never holds a partial label map.

Files and folders get the permissions the user's umask gives (``0644``/``0755``
under the usual ``022``), as any other program's outputs would: the temporary
names come from ``mkstemp``/``mkdtemp``, which create them private (``0600``/``0700``),
so the mode is set before they are renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from renalseg.errors import OutputExistsError, UsageError

__all__ = ["StagedDir", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "user_umask",
           "check_writable_folder"]


#: characters of a target's name kept in its temporary name: any legal name stays legal
#: with the random part and suffix added (255-byte limit)
_PREFIX_CHARS = 120


def user_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``).

    Example:
        >>> 0 <= user_umask() <= 0o777
        True
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable_folder(folder: Path | str, *, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be written.

    The folder need not exist: its nearest existing parent must then be a writable
    folder (nothing is created here). A probe file is created and removed, so a
    read-only mount, missing permission or a full inode table shows now, not after
    the computing.

    Raises:
        UsageError: the path (or a parent) is a file, or the folder cannot be written.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under {existing}, which is a file"
        raise UsageError(f"{option} {folder} {where}; give a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".renalseg-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(f"{option} {folder}: cannot write in {existing} ({reason}). Choose a folder you can "
                         "write to, or fix its permissions.") from err
    return folder


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:_PREFIX_CHARS]}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~user_umask())  # mkstemp's 0600 is for the temporary name only
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, data: object) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


class StagedDir:
    """Context manager: build a folder in staging, publish it on success.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> with StagedDir(root / "case1") as staging:
        ...     _ = (staging / "a.txt").write_text("hi")
        >>> (root / "case1" / "a.txt").read_text()
        'hi'

    Args:
        destination: the folder to create.
        overwrite: replace an existing ``destination`` (only once the new one is
            complete); without it an existing folder raises :class:`OutputExistsError`.
    """

    def __init__(self, destination: Path | str, *, overwrite: bool = False) -> None:
        self.destination = Path(destination)
        self.overwrite = overwrite
        self.path: Path | None = None

    def __enter__(self) -> Path:
        if self.destination.exists() and not self.overwrite:
            raise OutputExistsError(
                f"{self.destination} exists; pass --overwrite to replace it, or choose another --out."
            )
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.destination.name[:_PREFIX_CHARS]}.", suffix=".partial",
                                          dir=self.destination.parent))
        os.chmod(self.path, 0o777 & ~user_umask())  # mkdtemp's 0700 is for staging only
        return self.path

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.path is None:
            return
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        old = None
        if self.destination.exists():
            old = self.destination.with_name(f".{self.destination.name[:_PREFIX_CHARS]}.old-{os.getpid()}")
            os.replace(self.destination, old)
        os.replace(self.path, self.destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
