"""Geometry, Volume, crop/paste and atomic image writing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from renalseg.errors import GeometryError, OutputExistsError
from renalseg.geometry import Geometry, assert_same_grid
from renalseg.io.image import read_image, write_image
from renalseg.volume import Volume, crop, paste

from conftest import LAS, LPS, OBLIQUE_30DEG, RAS, make_ct


def test_index_to_world_matches_simpleitk():
    volume = make_ct()
    image = volume.to_sitk()
    index = [3, 7, 11]
    expected = image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index])
    np.testing.assert_allclose(volume.geometry.index_to_world([index])[0], expected, atol=1e-9)
    np.testing.assert_allclose(volume.geometry.world_to_index([expected])[0], index, atol=1e-9)


def test_paste_of_crop_is_exact_inverse():
    volume = make_ct()
    piece = crop(volume, (3, -2, 5), (10, 12, 50), pad_value=-1024)
    assert piece.array.shape == (10, 12, 50)
    assert (piece.array[:, :2] == -1024).all()  # outside the image: padded
    restored = paste(volume.with_array(np.zeros_like(volume.array)), piece)
    inside = (slice(3, 13), slice(0, 10), slice(5, 40))
    np.testing.assert_array_equal(restored.array[inside], volume.array[inside])
    # the crop's geometry is the matching sub-grid: same world point for the same voxel
    np.testing.assert_allclose(
        piece.geometry.index_to_world([[0, 2, 0]])[0], volume.geometry.index_to_world([[5, 0, 3]])[0], atol=1e-9
    )


def test_paste_rejects_patch_off_grid():
    volume = make_ct()
    g = volume.geometry
    shifted = Geometry((2, 2, 2), g.spacing_xyz_mm, tuple(np.add(g.origin_xyz_mm, 0.3)), g.direction)
    with pytest.raises(GeometryError, match="between voxels"):
        paste(volume, Volume(np.zeros((2, 2, 2), np.int16), shifted))


def test_non_orthonormal_direction_is_rejected():
    with pytest.raises(GeometryError, match="orthonormal"):
        Geometry((1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 0, 0, 1, 1, 0, 0, 0, 1))


def test_assert_same_grid_names_both():
    a = make_ct().geometry
    b = Geometry(a.shape_zyx, a.spacing_xyz_mm, (0.0, 0.0, 0.0), a.direction)
    with pytest.raises(GeometryError, match="prediction and truth"):
        assert_same_grid(a, b, names=("prediction", "truth"))


@pytest.mark.parametrize("direction", [LPS, RAS, LAS, OBLIQUE_30DEG], ids=["LPS", "RAS", "LAS", "oblique"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_label_round_trip_keeps_geometry(tmp_path, direction, suffix):
    volume = make_ct(direction=direction)
    labels = volume.with_array((volume.array > 0).astype(np.uint8))
    path = write_image(labels, tmp_path / f"labels{suffix}")
    back = Volume.from_sitk(read_image(path))
    assert back.geometry.is_same_grid(labels.geometry, atol=1e-4)
    np.testing.assert_array_equal(back.array, labels.array)
    assert back.array.dtype == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left


def test_write_refuses_existing_without_overwrite(tmp_path):
    volume = make_ct()
    path = write_image(volume, tmp_path / "ct.nii.gz")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_image(volume, path)
    write_image(volume.with_array(volume.array + 1), path, overwrite=True)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0, 0, 0] == volume.array[0, 0, 0] + 1


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused_not_read_as_zeros(tmp_path, suffix):
    from renalseg.errors import InputError

    path = write_image(make_ct(), tmp_path / f"ct{suffix}")
    assert Volume.from_sitk(read_image(path)).array.shape == (24, 32, 40)  # complete file reads
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"cut\.nii.*truncated"):
        read_image(cut)
