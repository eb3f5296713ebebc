"""Is what was read a CT volume in Hounsfield units? Checked before any work is spent on it.

Two stages, each refusing with a message that names the file and the cause:

- :func:`check_image_information`, from the header alone (before the pixels are
  allocated): a colour image, a 2D or 4D image, an empty extent, a zero, negative
  or non-finite spacing.
- :func:`check_ct_values`, on the pixels: NaN or infinite voxels (always refused,
  with their count), and values that cannot be HU (refused unless ``force``):

  =====================================  =========================================
  8-bit voxels                           HU need −1024…3071: 8 bits cannot hold them
  no value below 0                       every CT holds fat (about −100 HU) or air
  no air below −500 HU (whole scan)      a whole-abdomen CT shows air around the body
  values spanning under 200              normalised intensities, a mask, a constant
  =====================================  =========================================

  An MR volume, a CT stored without its rescale intercept (0…4095) and a
  probability map all fall under one of these rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from renalseg.errors import GeometryError, InputError

__all__ = ["NotHounsfieldError", "NonFiniteError", "NotALabelMapError", "check_spacing", "check_image_information",
           "check_ct_values", "integer_labels", "LABEL_WHOLE_TOLERANCE", "AIR_BELOW_HU"]

#: a float label value this close to a whole number is that number (storage rounding)
LABEL_WHOLE_TOLERANCE = 1e-3

#: a whole-abdomen CT holds voxels darker than this (air outside the body, bowel gas)
AIR_BELOW_HU = -500.0

#: voxels examined per step by the NaN count (bounded extra memory)
_SLAB_VOXELS = 1 << 24


class NotHounsfieldError(InputError):
    """Voxel values that cannot be Hounsfield units (pass ``--force`` to use them anyway)."""


class NonFiniteError(InputError):
    """NaN or infinite voxels."""


def check_spacing(path: Path | str, spacing: Sequence[float], where: str = "header") -> None:
    """Refuse a zero, negative or non-finite voxel spacing, naming it as spacing.

    Example:
        >>> check_spacing("scan.nii.gz", (0.7, 0.7, 0.0))
        Traceback (most recent call last):
        ...
        renalseg.errors.GeometryError: scan.nii.gz: voxel spacing (0.7, 0.7, 0.0) mm (header) is not a positive finite number in every axis, so distances and volumes cannot be measured. Fix the header's spacing (or export the scan again).
    """
    values = tuple(float(s) for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise GeometryError(f"{path}: voxel spacing {values} mm ({where}) is not a positive finite number in every "
                            "axis, so distances and volumes cannot be measured. Fix the header's spacing (or export "
                            "the scan again).")


def check_image_information(path: Path | str, *, dimension: int, size: Sequence[int], components: int,
                            spacing: Sequence[float]) -> None:
    """Refuse, from the header alone, what cannot be one CT volume.

    Raises:
        InputError: colour (several components per voxel), not 3D, or an empty extent.
        GeometryError: zero, negative or non-finite spacing.
    """
    shape = "×".join(map(str, size))
    if components > 1:
        kind = "a colour (RGB) image" if components in (3, 4) else f"a {components}-component (vector) image"
        raise InputError(f"{path}: {kind} with {components} values per voxel ({shape}), not a CT in Hounsfield "
                         "units (one grey value per voxel). Pass the original CT series, not a screenshot, "
                         "rendering or secondary capture.")
    if dimension != 3:
        what = "a single 2D image" if dimension == 2 else f"a {dimension}D image (a time series or several volumes)"
        raise InputError(f"{path}: {what} of size {shape}; renalseg needs one 3D CT volume. "
                         + ("Pass the whole series." if dimension == 2 else "Extract one 3D volume first."))
    if min(size) < 1:
        raise InputError(f"{path}: image size {shape} is empty in one axis.")
    check_spacing(path, spacing)


def _non_finite_count(image: sitk.Image) -> int:
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return 0
    array = sitk.GetArrayViewFromImage(image)  # no copy
    flat = array.reshape(-1)
    return sum(int(flat.size - np.count_nonzero(np.isfinite(flat[i:i + _SLAB_VOXELS])))
               for i in range(0, flat.size, _SLAB_VOXELS))


def check_ct_values(image: sitk.Image, name: Path | str, *, whole_scan: bool = True, force: bool = False) -> None:
    """Refuse voxels that are not finite, or that cannot be HU (unless ``force``).

    Args:
        image: the study as read (rescale applied).
        name: the file or folder, for messages.
        whole_scan: the image is a whole abdominal scan (not a kidney crop), so it
            must show air below :data:`AIR_BELOW_HU`.
        force: use values that do not look like HU anyway (NaN/Inf are still refused).

    Raises:
        NonFiniteError: NaN or infinite voxels (their count in the message).
        NotHounsfieldError: 8-bit voxels, no negative value, no air in a whole scan,
            or a range narrower than 200.

    Example:
        >>> import numpy as np
        >>> check_ct_values(sitk.GetImageFromArray(np.full((2, 2, 2), 100, np.uint16)), "mr.nii.gz")
        Traceback (most recent call last):
        ...
        renalseg.io.plausibility.NotHounsfieldError: mr.nii.gz: values 100…100 (16-bit unsigned integer) cannot be Hounsfield units: no value below 0 (a CT holds fat at about −100 HU and air at −1000 HU). Not a CT in Hounsfield units? (an MR, a CT stored without its rescale intercept, a mask or a probability map). If it is a CT, pass --force to process it anyway.
    """
    bad = _non_finite_count(image)
    if bad:
        total = math.prod(image.GetSize())
        raise NonFiniteError(f"{name}: {bad:,} of {total:,} voxels are NaN or infinite ({100 * bad / total:.2g}%); "
                             "a CT holds finite Hounsfield units everywhere. Fix the conversion that produced "
                             "this file.")
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    lo, hi = stats.GetMinimum(), stats.GetMaximum()
    pixel = image.GetPixelIDTypeAsString()
    reason = None
    if image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8):
        reason = "8-bit voxels cannot hold the −1024…3071 HU of a CT"
    elif lo >= 0:
        reason = "no value below 0 (a CT holds fat at about −100 HU and air at −1000 HU)"
    elif whole_scan and lo > AIR_BELOW_HU:
        reason = (f"no air below {AIR_BELOW_HU:g} HU, which a whole-abdomen CT shows around the body (for a "
                  "pre-cropped kidney, pass --input-is-roi)")
    elif hi - lo < 200:
        reason = "the values span less than 200 (normalised intensities or a mask?)"
    if reason is not None and not force:
        raise NotHounsfieldError(
            f"{name}: values {lo:g}…{hi:g} ({pixel}) cannot be Hounsfield units: {reason}. Not a CT in Hounsfield "
            "units? (an MR, a CT stored without its rescale intercept, a mask or a probability map). If it is a "
            "CT, pass --force to process it anyway.")


class NotALabelMapError(InputError):
    """A label map whose values are not whole numbers (a probability map?)."""


def integer_labels(image: sitk.Image, name: Path | str) -> sitk.Image:
    """A label map as integers: whole-valued floats kept, refused otherwise.

    A float label map with 0.5 where the artery is would otherwise be truncated to
    0 (the background) by an integer cast, and the background meshed. Values within
    :data:`LABEL_WHOLE_TOLERANCE` of a whole number (2.9999 for 3: a float label map
    written through a scale factor) are rounded to it; read as they were, such an
    artery fell silently out of training and scoring.

    Raises:
        NotALabelMapError: a value that is not a whole number (NaN included).

    Example:
        >>> import numpy as np
        >>> integer_labels(sitk.GetImageFromArray(np.array([[[0.0, 2.0]]])), "l.nii.gz").GetPixelIDTypeAsString()
        '32-bit signed integer'
        >>> sitk.GetArrayFromImage(integer_labels(sitk.GetImageFromArray(np.array([[[0.0, 2.9999]]])), "l")).tolist()
        [[[0, 3]]]
    """
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image
    array = sitk.GetArrayViewFromImage(image)
    rounded = np.round(array)
    whole = np.isfinite(array) & (np.abs(array - rounded) <= LABEL_WHOLE_TOLERANCE)
    if not whole.all():
        examples = np.unique(array[~whole])[:3]
        raise NotALabelMapError(
            f"{name}: {int((~whole).sum()):,} voxels hold values that are not whole numbers (e.g. "
            f"{', '.join(f'{v:g}' for v in examples)}): a label map holds integer labels (0 background). A "
            "probability map? Threshold it first (e.g. labels = probabilities >= 0.5).")
    if array.size and (rounded.min() < np.iinfo(np.int32).min or rounded.max() > np.iinfo(np.int32).max):
        raise NotALabelMapError(f"{name}: label values {array.min():g}…{array.max():g} do not fit 32-bit integers.")
    out = sitk.GetImageFromArray(rounded.astype(np.int32))
    out.CopyInformation(image)
    return out
