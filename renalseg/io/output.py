"""Output folders that appear whole or not at all.

A study's outputs are written into a hidden staging folder beside the destination
and renamed into place only when every file is complete. On failure the staging
folder is removed, so ``DIR/<study_id>/`` never holds a partial label map.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from renalseg.errors import OutputExistsError

__all__ = ["StagedDir", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", suffix=".partial",
                                          dir=self.destination.parent))
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
            old = self.destination.with_name(f".{self.destination.name}.old-{os.getpid()}")
            os.replace(self.destination, old)
        os.replace(self.path, self.destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
