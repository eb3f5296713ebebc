"""Batches of studies: what a command line means, where each study's outputs go, and a
run that a failing study does not stop.

``renalseg segment`` and ``renalseg locate`` share this runner; each gives it the
work for one study. The rules:

- :func:`plan_batch` expands the INPUT paths into studies
  (:func:`renalseg.io.discover.discover_studies`), names each one's output folder
  with a filesystem-safe id that is unique in the whole batch (``case``,
  ``case_2``, …; the same in every shard), and keeps the shard's share: with
  ``--shard K/N`` every N-th study starting at K.
- :func:`run_batch` publishes each study's folder ``OUT/<study_id>/`` whole or not
  at all. An existing folder is an error for that study unless ``overwrite``, or
  unless it holds nothing but an earlier run's ``error.json``: a failed study is
  retried by running the batch again. A study that fails, for any reason (a
  :class:`~renalseg.errors.RenalsegError`, or any other exception: a bug, a
  ``MemoryError``, a library's ``RuntimeError``), gets a folder holding only
  ``error.json`` (never over an earlier result) and the batch goes on; only an
  interruption (Ctrl-C, SIGTERM) stops it.
- Every study gives one summary row (:func:`summarize` counts them).

Example (a "study" whose work writes one file):
    >>> import tempfile
    >>> from renalseg.errors import InputError
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a.nii.gz").write_bytes(b""), (root / "b.nii.gz").write_bytes(b"")
    >>> def work(study, destination, overwrite):
    ...     if study.study_id == "b":
    ...         raise InputError("b is broken")
    ...     with StagedDir(destination, overwrite=overwrite) as staging:
    ...         _ = (staging / "out.txt").write_text(study.study_id)
    ...     return {"note": "fine"}
    >>> rows = run_batch(plan_batch([root]), root / "out", work)
    >>> [(row["study"], row["status"]) for row in rows], sorted(p.name for p in (root / "out" / "b").iterdir())
    ([('a', 'ok'), ('b', 'error')], ['error.json'])
    >>> summarize(rows, root / "out")["failed"]
    1
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from renalseg import __version__
from renalseg.errors import OutputExistsError, UsageError
from renalseg.io.dicom import is_dicom_file
from renalseg.io.discover import discover_studies
from renalseg.io.image import image_format
from renalseg.io.output import StagedDir, atomic_write_json
from renalseg.study import safe_study_id

__all__ = [
    "ERROR_FILE",
    "BatchStudy",
    "ProcessStudy",
    "parse_shard",
    "unique_study_ids",
    "plan_batch",
    "run_batch",
    "error_report",
    "write_error_report",
    "summarize",
]

log = logging.getLogger(__name__)

#: the file a failed study's folder holds, and nothing else
ERROR_FILE = "error.json"


@dataclass(frozen=True)
class BatchStudy:
    """One study of a batch.

    Attributes:
        path: the image file or DICOM series folder it is read from.
        study_id: the name of its output folder, unique in the batch.
    """

    path: Path
    study_id: str


#: ``process(study, destination, overwrite) -> extra summary fields``: the work for one
#: study, publishing ``destination`` whole (``overwrite``: replacing what is there)
ProcessStudy = Callable[[BatchStudy, Path, bool], dict]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` -> (K, N), 0 ≤ K < N; ``None`` -> (0, 1) (everything).

    Raises:
        UsageError: not ``K/N`` with 0 ≤ K < N.

    Example:
        >>> parse_shard("1/4"), parse_shard(None)
        ((1, 4), (0, 1))
    """
    if text is None:
        return 0, 1
    k_text, slash, n_text = text.partition("/")
    if not slash or not k_text.strip().isdigit() or not n_text.strip().isdigit():
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. --shard 0/4 (K counts from 0).")
    k, n = int(k_text), int(n_text)
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text}: need 0 ≤ K < N (K counts from 0), e.g. 0/{max(n, 2)} … "
                         f"{max(n, 2) - 1}/{max(n, 2)}.")
    return k, n


def unique_study_ids(paths: Sequence[Path]) -> list[str]:
    """Output folder names: the safe study id, with ``_2``, ``_3`` … for repeats.

    Example:
        >>> unique_study_ids([Path("a/case.nii.gz"), Path("b/case.nii.gz"), Path("c/Case 7")])
        ['case', 'case_2', 'Case_7']
    """
    ids: list[str] = []
    counts: dict[str, int] = {}
    for path in paths:
        base = safe_study_id(Path(path))
        counts[base] = counts.get(base, 0) + 1
        ids.append(base if counts[base] == 1 else f"{base}_{counts[base]}")
    return ids


def plan_batch(inputs: Sequence[Path | str], *, shard: tuple[int, int] = (0, 1),
               out: Path | str | None = None) -> list[BatchStudy]:
    """The studies under ``inputs`` that shard ``(K, N)`` processes, with their output ids.

    Ids are given over the whole batch before sharding, so every shard names a
    study the same way and no two shards write the same folder. ``out`` (the
    batch's output folder) is never searched for studies.

    Raises:
        UsageError: a path does not exist, a folder holds no study, a file named on
            the command line is no image file (before any work, so no output folder
            is made for it), or a bad shard.
    """
    k, n = shard
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"shard {k}/{n}: need 0 ≤ K < N (K counts from 0).")
    paths = discover_studies(inputs, exclude=[out] if out is not None else [])
    not_images = [p for p in paths if p.is_file() and image_format(p) is None]
    if not_images:
        dicom = [p for p in not_images if is_dicom_file(p)]
        hint = (f" {dicom[0]} is a single DICOM file: pass the folder that holds its whole series." if dicom
                else "")
        raise UsageError(f"{', '.join(map(str, not_images))}: not an image file (NIfTI .nii/.nii.gz, NRRD "
                         f".nrrd/.nhdr, MetaImage .mha/.mhd) nor a DICOM series folder.{hint}")
    studies = [BatchStudy(path, study_id) for path, study_id in zip(paths, unique_study_ids(paths))]
    return studies[k::n]


def _holds_only_error(folder: Path) -> bool:
    """True for an output folder holding nothing but an earlier run's ``error.json``."""
    return folder.is_dir() and [p.name for p in folder.iterdir()] == [ERROR_FILE]


def no_labels_message(folder: Path | str, default: str) -> str:
    """Why ``folder`` holds no ``labels.nii.gz``: where it is an output folder of a study
    ``renalseg segment`` failed on (its ``error.json``), that failure, so that ``plan``,
    ``report``, ``export-mesh`` and ``evaluate`` send the user to the cause and not to look
    for a file; ``default`` otherwise.

    Example:
        >>> no_labels_message("no/such/folder", "no/such/folder: no labels.nii.gz.")
        'no/such/folder: no labels.nii.gz.'
    """
    import json

    path = Path(folder) / ERROR_FILE
    try:
        failure = json.loads(path.read_text(encoding="utf-8"))
        error, message = str(failure["error"]), str(failure["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return default
    return (f"{folder}: renalseg segment failed on this study, so there are no labels to use ({path.name}: "
            f"{error}: {message})")


def error_report(path: Path | str, error: BaseException, *, study_id: str | None = None,
                 debug: bool = False) -> dict:
    """The ``error.json`` content for a study that failed (``debug``: with the traceback).

    Example:
        >>> report = error_report("scans/Case 1.nii.gz", ValueError("unreadable"))
        >>> report["study_id"], report["error"], report["message"]
        ('Case_1', 'ValueError', 'unreadable')
    """
    return {
        "status": "error",
        "study_id": study_id if study_id is not None else safe_study_id(Path(path)),
        "input": str(path),
        "error": type(error).__name__,
        "message": str(error) or type(error).__name__,
        "renalseg_version": __version__,
        **({"traceback": "".join(traceback.format_exception(error))} if debug else {}),
    }


def write_error_report(destination: Path, path: Path, error: BaseException, *, overwrite: bool = False,
                       debug: bool = False) -> bool:
    """Publish ``destination`` holding only ``error.json``.

    An existing folder is replaced only with ``overwrite`` or when it holds nothing
    but an earlier ``error.json``: an earlier result is never lost to a failure.

    Returns:
        Whether the folder was written (False: an earlier output was kept).
    """
    destination = Path(destination)
    if destination.exists() and not (overwrite or _holds_only_error(destination)):
        return False
    with StagedDir(destination, overwrite=True) as staging:
        atomic_write_json(staging / ERROR_FILE, error_report(path, error, study_id=destination.name, debug=debug))
    return True


def run_batch(studies: Sequence[BatchStudy], out: Path | str, process: ProcessStudy, *, overwrite: bool = False,
              raise_errors: bool = False, debug: bool = False, on_start: Callable[[BatchStudy], None] | None = None,
              on_finish: Callable[[BatchStudy, dict, Exception | None], None] | None = None) -> list[dict]:
    """Run ``process`` for each study into ``out/<study_id>/``; a failing study never stops the batch.

    Args:
        studies: from :func:`plan_batch`.
        out: the batch's output folder.
        process: the work for one study (see :data:`ProcessStudy`); any exception
            it raises fails that study only (``KeyboardInterrupt`` and other
            ``BaseException`` stop the batch).
        overwrite: replace existing output folders (without it they fail the study,
            except a folder holding only an earlier ``error.json``, which is retried).
        raise_errors: re-raise a study's error instead of going on (for debugging).
        debug: keep each failure's traceback in its ``error.json``.
        on_start: called with each study before its work starts.
        on_finish: called with each study, its summary row and its error (``None``
            when it succeeded).

    Returns:
        One summary row per study: ``study``, ``input``, ``status`` (``"ok"`` or
        ``"error"``), ``seconds``, then ``process``'s fields (ok) or ``error`` (the
        error type) and ``message`` (failed), and ``output``: the study's folder (ok),
        its ``error.json`` or ``None`` when an earlier output was kept (failed).
    """
    out = Path(out)
    rows: list[dict] = []
    for study in studies:
        destination = out / study.study_id
        if on_start is not None:
            on_start(study)
        started = time.perf_counter()
        error: Exception | None = None
        try:
            replace = overwrite or _holds_only_error(destination)
            if destination.exists() and not replace:
                raise OutputExistsError(f"{destination} exists; pass --overwrite to replace it, or "
                                        "choose another --out.")
            extra = process(study, destination, replace)
            row = {"study": study.study_id, "input": str(study.path), "status": "ok",
                   "seconds": round(time.perf_counter() - started, 2), **extra, "output": str(destination)}
        except Exception as err:  # noqa: BLE001 - one study's failure, whatever it is, must not end the batch
            if raise_errors:
                raise
            error = err
            if debug:
                log.error("%s failed", study.study_id, exc_info=err)
            try:
                written = write_error_report(destination, study.path, err, overwrite=overwrite, debug=debug)
            except OSError as write_err:
                log.error("%s: error.json could not be written (%s)", study.study_id, write_err)
                written = False
            row = {"study": study.study_id, "input": str(study.path), "status": "error",
                   "seconds": round(time.perf_counter() - started, 2), "error": type(err).__name__,
                   "message": str(err) or type(err).__name__,
                   "output": str(destination / ERROR_FILE) if written else None}
        rows.append(row)
        if on_finish is not None:
            on_finish(study, row, error)
    return rows


def summarize(rows: Sequence[dict], out: Path | str) -> dict:
    """The batch summary ``--json`` prints: the rows, how many succeeded and failed, the folder.

    Example:
        >>> summarize([{"status": "ok"}, {"status": "error"}], "out")
        {'studies': [{'status': 'ok'}, {'status': 'error'}], 'ok': 1, 'failed': 1, 'out': 'out'}
    """
    failed = sum(row["status"] != "ok" for row in rows)
    return {"studies": list(rows), "ok": len(rows) - failed, "failed": failed, "out": str(out)}
