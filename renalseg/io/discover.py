"""Which studies the paths on a command line mean: files, DICOM folders, batches.

Rules:

- an image file (NIfTI, NRRD, MetaImage) is one study; any other file named
  explicitly is kept too, so that reading it gives a clear per-study error;
- a folder that directly holds DICOM files is one study (one series folder);
- any other folder is a batch: each image file in it is a study and each
  sub-folder is searched the same way (so ``patient/study/series/*.dcm`` exports
  work); hidden files and folders are skipped, and so are the series folders of a
  PACS export that hold no CT volume (localizers, dose reports and other secondary
  captures, other modalities: :func:`renalseg.io.dicom.holds_no_ct_volume`), each
  named in a warning. A folder named on the command line is always read.

The order is deterministic: the paths in the order given, and inside each folder
sorted by name. A path given twice (or reached twice) is kept once. Each real
folder is searched once, so a symbolic link to a parent (a loop) ends there; the
folders in ``exclude`` (the command's own ``--out``, when it lies inside an input
folder) are not searched, so a rerun never reads its own outputs as studies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from renalseg.errors import UsageError
from renalseg.io.dicom import holds_no_ct_volume, is_dicom_file
from renalseg.io.image import image_format

__all__ = ["discover_studies", "holds_dicom_series"]

logger = logging.getLogger(__name__)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def holds_dicom_series(folder: Path) -> bool:
    """Whether ``folder`` directly holds DICOM files (so it is one study, not a batch).

    Example:
        >>> holds_dicom_series(Path("no/such/folder"))
        False
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return any(p.is_file() and is_dicom_file(p) for p in sorted(folder.iterdir()))


def _expand(folder: Path, seen: set[Path], exclude: set[Path]) -> list[Path]:
    """The studies in a batch folder (recursively), sorted by name; each real folder once."""
    studies: list[Path] = []
    try:
        children = sorted(folder.iterdir())
    except OSError as err:
        logger.warning("%s: cannot be listed (%s); skipped.", folder, err.strerror or err)
        return studies
    for child in children:
        if not _visible(child):
            continue
        if child.is_dir():
            real = child.resolve()
            if real in seen or real in exclude:
                logger.debug("%s: already searched (a link) or an output folder; skipped", child)
                continue
            seen.add(real)
            if holds_dicom_series(child):
                why = holds_no_ct_volume(child)
                if why:
                    logger.warning("%s: passed over, no CT volume in it (%s).", child, why)
                else:
                    studies.append(child)
            else:
                studies.extend(_expand(child, seen, exclude))
        elif child.is_file() and image_format(child) is not None:
            studies.append(child)
    return studies


def discover_studies(paths: Iterable[Path | str], *, exclude: Iterable[Path | str] = ()) -> list[Path]:
    """Expand command-line paths into one path per study.

    Args:
        paths: image files, DICOM series folders, and/or folders of studies.
        exclude: folders not to search inside a batch folder (e.g. ``--out``).

    Returns:
        One path per study: image files and DICOM series folders, in the order of
        ``paths``, each folder's studies sorted by name, without repeats.

    Raises:
        UsageError: a path does not exist (all missing ones are named), a folder
            holds no study, or no path was given.

    Example:
        >>> discover_studies(["no/such/scan.nii.gz"])
        Traceback (most recent call last):
        ...
        renalseg.errors.UsageError: no/such/scan.nii.gz: no such file or folder. Check the path.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("No study given: pass image files, DICOM folders or folders of studies.")
    missing = [p for p in paths if not p.exists()]
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise UsageError(f"{names}: no such file or folder. Check the path.")
    excluded = {Path(p).resolve() for p in exclude}
    seen: set[Path] = set()
    studies: list[Path] = []
    for path in paths:
        if path.is_dir():
            if holds_dicom_series(path):
                found = [path]
                subfolders = [c for c in path.iterdir() if c.is_dir() and _visible(c)]
                if subfolders:
                    logger.warning("%s holds DICOM files, so it is read as one series; its %d "
                                   "sub-folder(s) are not searched.", path, len(subfolders))
            else:
                seen.add(path.resolve())
                found = _expand(path, seen, excluded)
                if not found:
                    raise UsageError(
                        f"{path}: no study found in this folder (no DICOM files, no NIfTI/NRRD/"
                        "MetaImage files, in it or its sub-folders). Check the path."
                    )
        else:
            found = [path]
        studies.extend(found)
    unique: list[Path] = []
    seen: set[Path] = set()
    for study in studies:
        key = study.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(study)
    logger.debug("discovered %d studies", len(unique))
    return unique
