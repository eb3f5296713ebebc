"""Training: data layout, label maps, patches, the trainer (loss, resume, frozen encoder), CLI.

Everything runs on tiny volumes and tiny network widths (a few seconds in all).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LPS, RAS
from typer.testing import CliRunner

from renalseg.errors import DataLayoutError, NonFiniteLossError, UsageError
from renalseg.geometry import Geometry
from renalseg.io.image import write_image
from renalseg.training.augment import (
    AugmentConfig,
    add_scan_noise,
    randomise_domain,
    sample_patch,
    simulate_scanner_grid,
    simulate_thick_slices,
    thin_parts,
)
from renalseg.training.data import (
    IGNORE_INDEX,
    TrainingCase,
    find_cases,
    load_case,
    load_cases,
    parse_label_map,
    split_cases,
)
from renalseg.training.batches import epoch_plan
from renalseg.training.config import TrainConfig
from renalseg.training.loop import train
from renalseg.volume import Volume

SPACING = (0.7, 0.7, 1.0)
TINY_SEG = {"widths": [4] * 14, "bias_quantity": 1, "encoder_widths": [4, 4, 4, 4]}
TINY_PLAIN = {"widths": [4] * 14, "bias_quantity": 1}
TINY_DAE = {"widths": [4, 4, 4, 4]}
NO_AUGMENT = AugmentConfig(mirror=False, rotate_deg=0.0, intensity=False)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tiny networks here run faster without contention on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _phantom(seed: int, shape_zyx=(16, 24, 24)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft tissue, a kidney blob (KiPA 2) and a bright tube (KiPA 3 artery) along z."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape_zyx)
    label = np.zeros(shape_zyx, np.uint8)
    cy, cx = rng.integers(8, shape_zyx[1] - 8), rng.integers(8, shape_zyx[2] - 8)
    kidney = ((y - cy) / 6.0) ** 2 + ((x - cx) / 5.0) ** 2 + ((z - shape_zyx[0] / 2) / 6.0) ** 2 <= 1
    label[kidney] = 2
    artery = (y - cy) ** 2 + (x - cx + 6) ** 2 <= 2
    label[artery] = 3
    tissue = np.where(label == 3, 9, np.where(label == 2, 5, 1)).astype(np.uint8)
    image = np.where(label == 3, 400.0, np.where(label == 2, 180.0, -80.0))
    image = image + rng.normal(0, 10, shape_zyx)
    return image.astype(np.int16), label, tissue


def _write_dataset(root: Path, seeds, *, direction=LPS, spacing=SPACING, tissue=False) -> Path:
    for seed in seeds:
        image, label, tissues = _phantom(seed)
        g = Geometry(image.shape, spacing, (10.0, -20.0, 30.0), direction)
        write_image(Volume(image, g), root / "image" / f"case{seed:02d}.nii.gz")
        write_image(Volume(label, g), root / "label" / f"case{seed:02d}.nii.gz")
        if tissue:
            write_image(Volume(tissues, g), root / "tissue" / f"case{seed:02d}.nii.gz")
    return root


def _cases(root: Path, label_map: str = "3:renal_artery"):
    return load_cases(find_cases(root), spacing_xyz_mm=SPACING, label_map=parse_label_map(label_map))


def _config(**kw) -> TrainConfig:
    base = dict(stage="seg", network="densebiasnet", network_options=dict(TINY_PLAIN), patch_zyx=(16, 16, 16),
                window_zyx=(16, 24, 24),
                lr=3e-3, epochs=1000, foreground_share=0.7, val_overlap=0.0, loss="hra")
    base.update(kw)
    return TrainConfig(**base)


class NanAtCall(torch.nn.Module):
    """A network whose logits turn NaN at its ``nan_call``-th call (0: never): a diverging run."""

    def __init__(self, inner: torch.nn.Module, nan_call: int) -> None:
        super().__init__()
        self.inner, self.nan_call, self.calls = inner, nan_call, 0
        self.hyperparameters = inner.hyperparameters

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner.logits(x)
        return out * float("nan") if self.calls == self.nan_call else out

    forward = logits


def nan_at_call(config: TrainConfig, *, nan_call: int) -> NanAtCall:
    """``train``'s ``network_factory``: the config's network, diverging at ``nan_call``."""
    from renalseg.training.network import build_training_network

    return NanAtCall(build_training_network(config), nan_call)


def _losses(config, run, cases, **kw) -> list[float]:
    seen: list[float] = []
    train(config, run, train_cases=cases, on_progress=lambda e: seen.append(e.loss) if e.kind == "step" else None,
          **kw)
    return seen


# ----------------------------------------------------------------------------- data


def test_label_map_maps_kipa_values_to_classes():
    m = parse_label_map("3:renal_artery,1:renal_vein")
    assert m.class_names == ("background", "renal_artery", "renal_vein")
    assert m.apply(np.array([0, 1, 2, 3, 4])).tolist() == [0, 2, 0, 1, 0]
    for bad in ("renal_artery", "0:x", "3:a,3:b", ""):
        with pytest.raises(UsageError):
            parse_label_map(bad)


def test_label_map_option_changes_the_training_target(tmp_path):
    root = _write_dataset(tmp_path / "d", [1])
    artery = _cases(root, "3:renal_artery")[0]
    kidney = _cases(root, "2:kidney,3:renal_artery")[0]
    image, label, _ = _phantom(1)
    assert np.array_equal(artery.label, (label == 3).astype(np.uint8))
    assert np.array_equal(kidney.label, np.select([label == 2, label == 3], [1, 2], 0))


def test_a_float_label_map_trains_its_whole_values_and_a_probability_map_is_refused_by_name(tmp_path):
    """A label map stored as floats (2.9999 for the artery, through a scale factor) is its
    whole values: the artery is trained on, not dropped; fractions (a probability map)
    stop the run naming the file."""
    root = _write_dataset(tmp_path / "d", [1])
    image, label, _ = _phantom(1)
    g = Geometry(image.shape, SPACING, (10.0, -20.0, 30.0), LPS)
    stored = np.where(label == 3, 2.9999, label).astype(np.float32)
    write_image(Volume(stored, g), root / "label" / "case01.nii.gz", overwrite=True)
    assert np.array_equal(_cases(root)[0].label, (label == 3).astype(np.uint8))
    write_image(Volume((label == 3) * np.float32(0.8), g), root / "label" / "case01.nii.gz", overwrite=True)
    with pytest.raises(DataLayoutError, match=r"case 'case01'.*case01\.nii\.gz.*not whole numbers.*0\.8"):
        _cases(root)


def test_an_nnunet_dataset_folder_trains_as_the_kipa_layout_one_channel(tmp_path):
    """imagesTr/<case>_0000 + labelsTr/<case>: the same cases as image/ + label/; a second
    channel is refused naming the case."""
    kipa = _write_dataset(tmp_path / "kipa", [1, 2])
    nn = tmp_path / "Dataset501_Renal"
    for case in ("case01", "case02"):
        (nn / "imagesTr").mkdir(parents=True, exist_ok=True), (nn / "labelsTr").mkdir(exist_ok=True)
        shutil.copy(kipa / "image" / f"{case}.nii.gz", nn / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(kipa / "label" / f"{case}.nii.gz", nn / "labelsTr" / f"{case}.nii.gz")
    found = find_cases(nn)
    assert [(c.case_id, c.image.name, c.label.name) for c in found] == [
        ("case01", "case01_0000.nii.gz", "case01.nii.gz"), ("case02", "case02_0000.nii.gz", "case02.nii.gz")]
    assert np.array_equal(_cases(nn)[1].label, _cases(kipa)[1].label)
    assert [c.case_id for c in find_cases(nn, labelled=False)] == ["case01", "case02"]
    shutil.copy(nn / "imagesTr" / "case02_0000.nii.gz", nn / "imagesTr" / "case02_0001.nii.gz")
    with pytest.raises(DataLayoutError, match="case02_0001.*channel 0001 of case 'case02'"):
        find_cases(nn)
    (nn / "imagesTr" / "case02_0001.nii.gz").unlink()
    (nn / "labelsTr" / "case02.nii.gz").unlink()
    with pytest.raises(DataLayoutError, match="do not match.*case02"):
        find_cases(nn)


def test_a_dicom_series_folder_is_a_training_case_as_synth_writes_it(tmp_path):
    """image/<case>/ holding a DICOM series (renalseg synth --format dicom), its label a
    NIfTI file: the same case as the NIfTI image gives."""
    from renalseg.phantom.writer import write_dicom_series

    nifti = _write_dataset(tmp_path / "nifti", [1])
    image, label, _ = _phantom(1)
    g = Geometry(image.shape, SPACING, (10.0, -20.0, 30.0), LPS)
    dicom = tmp_path / "dicom"
    write_dicom_series(Volume(image, g), dicom / "image" / "case01", uid_key="t/case01", patient_id="t")
    shutil.copytree(nifti / "label", dicom / "label")
    (found,) = find_cases(dicom)
    assert found.case_id == "case01" and found.image.is_dir()
    from_dicom, from_nifti = _cases(dicom)[0], _cases(nifti)[0]
    assert np.array_equal(from_dicom.label, from_nifti.label)
    assert np.allclose(from_dicom.image_hu, from_nifti.image_hu, atol=0.5)
    assert from_dicom.geometry.is_same_grid(from_nifti.geometry)


def test_unmatched_names_are_named(tmp_path):
    root = _write_dataset(tmp_path / "d", [1, 2])
    (root / "label" / "case02.nii.gz").rename(root / "label" / "case2.nii.gz")
    with pytest.raises(DataLayoutError, match="case02.*case2|images without a label: case02"):
        find_cases(root)
    assert [c.case_id for c in find_cases(root, labelled=False)] == ["case01", "case02"]


def test_label_on_another_grid_is_named(tmp_path):
    root = _write_dataset(tmp_path / "d", [1])
    image, label, _ = _phantom(1)
    shifted = Geometry(label.shape, SPACING, (11.0, -20.0, 30.0), LPS)
    write_image(Volume(label, shifted), root / "label" / "case01.nii.gz", overwrite=True)
    with pytest.raises(DataLayoutError, match="case 'case01'.*not on the image's grid"):
        _cases(root)


def test_empty_label_is_named(tmp_path):
    root = _write_dataset(tmp_path / "d", [1, 2])
    with pytest.raises(DataLayoutError, match="case 'case01'.*no voxel"):
        _cases(root, "4:tumour")


def test_missing_folders_say_what_layout_is_expected(tmp_path):
    (tmp_path / "d" / "image").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match="no images"):
        find_cases(tmp_path / "d")
    with pytest.raises(DataLayoutError, match="no image/ folder"):
        find_cases(tmp_path)


def test_cases_come_onto_the_patient_oriented_model_grid(tmp_path):
    """A RAS, 1.4 mm study: resampled to LPS identity at model spacing, anatomy in place."""
    root = _write_dataset(tmp_path / "d", [3], direction=RAS, spacing=(1.4, 1.4, 2.0))
    files = find_cases(root)[0]
    case = load_case(files, spacing_xyz_mm=SPACING, label_map=parse_label_map("3:renal_artery"))
    assert case.geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert case.geometry.spacing_xyz_mm == SPACING
    image, label, _ = _phantom(3)
    source = Geometry(image.shape, (1.4, 1.4, 2.0), (10.0, -20.0, 30.0), RAS)
    artery_world = source.index_to_world(np.argwhere(label == 3)[:, ::-1]).mean(axis=0)
    resampled_world = case.geometry.index_to_world(np.argwhere(case.label == 1)[:, ::-1]).mean(axis=0)
    assert np.allclose(artery_world, resampled_world, atol=0.5)  # mm
    assert case.label.sum() > 0.5 * (label == 3).sum() * (1.4 * 1.4 * 2.0) / (0.7 * 0.7 * 1.0)


def test_float32_spacing_does_not_cost_a_voxel_or_a_resampling(tmp_path):
    """NIfTI keeps 0.7 mm as 0.69999999 mm: a 160-voxel ROI stays 160 voxels, exactly."""
    image = np.random.default_rng(0).integers(-200, 600, (4, 160, 160)).astype(np.int16)
    write_image(Volume(image, Geometry(image.shape, SPACING, (1.0, 2.0, 3.0), LPS)),
                tmp_path / "d" / "image" / "c.nii.gz")
    case = load_case(find_cases(tmp_path / "d", labelled=False)[0], spacing_xyz_mm=SPACING)
    assert case.image_hu.shape == image.shape
    assert np.array_equal(case.image_hu, image)


def test_cache_returns_the_same_case(tmp_path):
    root = _write_dataset(tmp_path / "d", [1])
    files = find_cases(root)[0]
    kw = dict(spacing_xyz_mm=SPACING, label_map=parse_label_map("3:renal_artery"), cache_dir=tmp_path / "cache")
    first, second = load_case(files, **kw), load_case(files, **kw)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert np.array_equal(first.image_hu, second.image_hu) and np.array_equal(first.label, second.label)
    assert first.geometry == second.geometry


def test_split_is_seeded_and_disjoint():
    ids = [f"c{i}" for i in range(10)]
    train_ids, val_ids = split_cases(ids, val_fraction=0.2, seed=3)
    assert len(val_ids) == 2 and not set(train_ids) & set(val_ids)
    assert split_cases(ids, val_fraction=0.2, seed=3) == (train_ids, val_ids)


# ----------------------------------------------------------------------------- patches


def test_patch_without_augmentation_is_an_exact_crop(tmp_path):
    case = _cases(_write_dataset(tmp_path / "d", [1]))[0]
    image, label = sample_patch(case, (16, 24, 24), np.random.default_rng(0), foreground_share=0.0)
    assert np.array_equal(label, case.label)
    assert np.allclose(image, (np.clip(case.image_hu, -1024, 1024) + 1024) / 2048, atol=1e-6)


def test_artery_centred_share_and_determinism(tmp_path):
    case = _cases(_write_dataset(tmp_path / "d", [1]))[0]
    aug = AugmentConfig()
    hits = [sample_patch(case, (8, 8, 8), np.random.default_rng(s), foreground_share=1.0, augment=aug)[1].any()
            for s in range(20)]
    assert np.mean(hits) >= 0.9
    a = sample_patch(case, (8, 8, 8), np.random.default_rng(5), augment=aug)
    b = sample_patch(case, (8, 8, 8), np.random.default_rng(5), augment=aug)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_hard_negative_patches_centre_on_bright_unlabelled_voxels(tmp_path):
    """A rib-like bright block far from the artery: --hard-negative-share finds it."""
    from renalseg.training.data import HARD_NEGATIVE_HU

    image, label, _ = _phantom(1, shape_zyx=(16, 48, 48))
    image[:, 40:, 40:] = 700  # bone, unlabelled
    g = Geometry(image.shape, SPACING, (0.0, 0.0, 0.0), LPS)
    write_image(Volume(image, g), tmp_path / "d" / "image" / "c.nii.gz")
    write_image(Volume(label, g), tmp_path / "d" / "label" / "c.nii.gz")
    case = _cases(tmp_path / "d")[0]
    marked = np.zeros(case.image_hu.shape, bool)
    marked[tuple(case.hard_negatives.T)] = True
    assert marked[:, 40:, 40:].all()  # every bone voxel
    assert (case.image_hu[tuple(case.hard_negatives.T)] >= HARD_NEGATIVE_HU).all()
    assert not case.label[tuple(case.hard_negatives.T)].any()

    def bone_share(**kw):
        patches = [sample_patch(case, (8, 8, 8), np.random.default_rng(s), augment=None, **kw)[0] for s in range(40)]
        return np.mean([(p >= (700 + 1024) / 2048 - 1e-6).any() for p in patches])

    assert bone_share(foreground_share=0.0, hard_negative_share=1.0) >= 0.9
    assert bone_share(foreground_share=0.0) < 0.5
    with pytest.raises(UsageError, match="hard-negative-share"):
        _config(foreground_share=0.7, hard_negative_share=0.5)


def test_class_share_centres_a_rare_class_as_often_as_a_common_one():
    """A small tumour-like class far from the large one: --class-share puts it in view
    about half the time (two classes present), uniform placement seldom; the classes
    are drawn among those the case holds, so a case without the rare class still samples."""
    from renalseg.training.data import make_case

    label = np.zeros((16, 64, 64), np.uint8)
    label[:, :32, :] = 1  # a common class filling half the case
    label[6:9, 58:61, 58:61] = 4  # a rare one in a corner
    g = Geometry(label.shape, SPACING, (0.0, 0.0, 0.0), LPS)
    case = make_case("c", np.zeros(label.shape, np.float32), g, label, None, None)

    def rare_share(**kw):
        labels = [sample_patch(case, (8, 8, 8), np.random.default_rng(s), augment=None, **kw)[1] for s in range(60)]
        return np.mean([(p == 4).any() for p in labels])

    assert 0.3 <= rare_share(foreground_share=0.0, class_share=1.0) <= 0.7
    assert rare_share(foreground_share=0.0) < 0.1
    common_only = make_case("d", np.zeros(label.shape, np.float32), g, np.where(label == 4, 0, label), None, None)
    patch = sample_patch(common_only, (8, 8, 8), np.random.default_rng(0), foreground_share=0.0, class_share=1.0)[1]
    assert patch.shape == (8, 8, 8)
    with pytest.raises(UsageError, match="class-share"):
        _config(foreground_share=0.5, hard_negative_share=0.3, class_share=0.3)


def test_mimic_share_centres_patches_on_tissue_that_looks_like_a_tumour():
    """A spleen tip far from the kidney in the tissue map: --mimic-share puts it in view
    most of the time, uniform placement seldom; labelled voxels of a mimic tissue are
    not mimics, and a case without a tissue map has none (and still samples)."""
    from renalseg.phantom.tissues import TISSUE_IDS
    from renalseg.training.data import make_case

    label = np.zeros((16, 64, 64), np.uint8)
    label[:, :8, :8] = 2  # kidney in a corner
    tissue = np.full(label.shape, TISSUE_IDS["fat"], np.uint8)
    tissue[6:10, 56:60, 56:60] = TISSUE_IDS["spleen"]  # a spleen tip in the far corner
    tissue[:, :2, :2] = TISSUE_IDS["spleen"]  # labelled kidney: not a mimic
    image = np.where(label == 0, np.where(tissue == TISSUE_IDS["spleen"], 120.0, 0.0), 0.0).astype(np.float32)
    g = Geometry(label.shape, SPACING, (0.0, 0.0, 0.0), LPS)
    case = make_case("c", image, g, label, tissue, None)
    assert len(case.mimics) == 4 * 4 * 4
    assert (tissue[tuple(case.mimics.T)] == TISSUE_IDS["spleen"]).all() and not label[tuple(case.mimics.T)].any()

    def spleen_in_view(**kw):
        patches = [sample_patch(case, (8, 8, 8), np.random.default_rng(s), augment=None, **kw)[0] for s in range(60)]
        return np.mean([np.isclose(p, (120 + 1024) / 2048).any() for p in patches])

    assert spleen_in_view(foreground_share=0.0, mimic_share=1.0) >= 0.8
    assert spleen_in_view(foreground_share=0.0) < 0.2
    no_map = make_case("d", image, g, label, None, None)
    assert no_map.mimics is None
    patch = sample_patch(no_map, (8, 8, 8), np.random.default_rng(0), foreground_share=0.0, mimic_share=1.0)[1]
    assert patch.shape == (8, 8, 8)
    with pytest.raises(UsageError, match="mimic-share"):
        _config(foreground_share=0.5, class_share=0.3, mimic_share=0.3)
    from renalseg.training.loop import _check_cases

    with pytest.raises(DataLayoutError, match="tissue map"):
        _check_cases(_config(mimic_share=0.2), [no_map], ())


class BrightIsTumour(torch.nn.Module):
    """Labels every voxel brighter than 0 HU class 2 (the tumour of a two-class map), the rest background."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x > 1024 / 2048).float()
        return torch.cat([1 - bright, torch.zeros_like(bright), bright], dim=1)


def test_validation_reports_tumour_dice_where_present_and_false_volume_where_absent():
    """One false voxel in a tumour-free case scores its tumour Dice 0 however much is
    labelled; the extra figures tell a speck from a false organ."""
    from renalseg.training.data import make_case
    from renalseg.training.metrics_log import validate

    g = Geometry((8, 16, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LPS)
    cases = []
    for tumour_in_label, false_voxels in ((True, 0), (False, 1000), (False, 0)):
        image = np.full(g.shape_zyx, -100.0, np.float32)
        label = np.zeros(g.shape_zyx, np.uint8)
        label[0, 0, :4] = 1  # a kidney the network never labels
        if tumour_in_label:
            image[2:4, 2:6, 2:6] = 200
            label[2:4, 2:6, 2:6] = 2
        if false_voxels:
            image.reshape(-1)[-false_voxels:] = 200  # the last 1000 voxels, away from the kidney
        cases.append(make_case(f"c{len(cases)}", image, g, label, None, None))
    config = _config(label_map="2:kidney,4:tumour", window_zyx=(8, 16, 16))
    result = validate(BrightIsTumour(), config, cases, torch.device("cpu"))
    assert result["val_dice_tumour"] == pytest.approx((1 + 0 + 1) / 3)
    assert result["val_dice_tumour_present"] == pytest.approx(1.0)
    assert result["val_false_ml_tumour"] == pytest.approx((1.0 + 0.0) / 2)  # 1000 mm3 in one of two
    assert "val_dice_kidney_present" not in result  # every case holds a kidney


def test_domain_randomisation_changes_contrast_but_not_labels(tmp_path):
    case = _cases(_write_dataset(tmp_path / "d", [1], tissue=True))[0]
    ranges = {1: (-120.0, -60.0), 5: (150.0, 250.0), 9: (250.0, 500.0)}
    aug = AugmentConfig(mirror=False, rotate_deg=0.0, intensity=False, domain_randomisation=1.0,
                        tissue_ranges_hu=ranges)
    first = sample_patch(case, (16, 24, 24), np.random.default_rng(1), foreground_share=0.0, augment=aug)
    second = sample_patch(case, (16, 24, 24), np.random.default_rng(2), foreground_share=0.0, augment=aug)
    assert np.array_equal(first[1], second[1]) and np.array_equal(first[1], case.label)
    means = [[float(img[case.tissue == t].mean()) for t in (1, 5, 9)] for img, _ in (first, second)]
    assert not np.allclose(means[0], means[1], atol=0.01)
    hu = randomise_domain(case.tissue, (1.0, 0.7, 0.7), ranges, np.random.default_rng(0))
    assert hu.dtype == np.float32 and hu.shape == case.tissue.shape


def test_a_thick_slice_patch_averages_slabs_along_z_and_keeps_the_fine_label(tmp_path):
    """Routine abdominal CT is often reconstructed at 3-5 mm: the augmentation must show
    such a scan as the pipeline sees it (slabs averaged, interpolated back linearly),
    change nothing in-plane, lower and z-correlate the noise, and leave the label fine."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 20.0, size=(60, 32, 32)).astype(np.float32)
    thick = simulate_thick_slices(noise + 100.0, 1.0, 4.0, 0.3)
    assert thick.shape == noise.shape and thick.dtype == np.float32
    assert abs(float(thick.mean()) - 100.0) < 1.0  # the averaging keeps the level
    assert thick.std() < 0.6 * noise.std()  # four 1 mm voxels a slice: σ halves, less between slices
    flat = thick - thick.mean()
    z_corr = float((flat[1:] * flat[:-1]).mean() / flat.var())
    assert z_corr > 0.7 and float((noise[1:] * noise[:-1]).mean() / noise.var()) < 0.1
    # a 1 mm bright sheet becomes a ~4 mm partial-volume smear of the same total HU
    sheet = np.zeros((40, 4, 4), np.float32)
    sheet[20] = 400.0
    smeared = simulate_thick_slices(sheet, 1.0, 4.0, 0.0)[:, 0, 0]
    assert smeared.max() < 150.0 and (smeared > 10.0).sum() >= 4
    assert abs(float(smeared.sum()) - 400.0) < 40.0
    assert np.array_equal(simulate_thick_slices(sheet, 1.0, 0.8, 0.0), sheet)  # finer than the grid: as is
    # in a training patch: the label is the same crop as without it, the image loses z detail
    case = _cases(_write_dataset(tmp_path / "d", [1]))[0]
    plain = AugmentConfig(mirror=False, rotate_deg=0.0, intensity=False)
    with_thick = replace(plain, thick_slices=1.0)
    (a, label_a), (b, label_b) = (sample_patch(case, (16, 24, 24), np.random.default_rng(3), foreground_share=0.0,
                                               augment=aug) for aug in (plain, with_thick))
    assert np.array_equal(label_a, label_b)
    assert np.abs(np.diff(b, axis=0)).mean() < 0.7 * np.abs(np.diff(a, axis=0)).mean()
    assert np.abs(np.diff(b, axis=2)).mean() > 0.3 * np.abs(np.diff(a, axis=2)).mean()
    with pytest.raises(UsageError, match="--thick-slices"):
        _config(augment=AugmentConfig(thick_slices=1.5))


def test_a_noisy_scan_patch_gains_the_drawn_noise_and_keeps_the_label_and_old_runs(tmp_path):
    """Real CT measures 31-36 HU of noise where the phantoms carry 8-25: the augmentation
    must add noise of the drawn size, correlated as a reconstruction correlates it, keep
    the level and the label, and draw nothing when off (so earlier runs resume exactly)."""
    noisy = add_scan_noise(np.full((32, 48, 48), 40.0, np.float32), 50.0, np.random.default_rng(1))
    assert abs(float(noisy.mean()) - 40.0) < 2.0 and abs(float(noisy.std()) - 50.0) < 1.0
    flat = noisy - noisy.mean()
    assert 0.2 < float((flat[:, :, 1:] * flat[:, :, :-1]).mean() / flat.var()) < 0.8
    case = _cases(_write_dataset(tmp_path / "d", [1]))[0]
    plain = AugmentConfig(mirror=False, rotate_deg=0.0, intensity=False)
    (a, label_a), (b, label_b) = (sample_patch(case, (16, 24, 24), np.random.default_rng(3), foreground_share=0.0,
                                               augment=aug) for aug in (plain, replace(plain, noisy_scans=1.0)))
    assert np.array_equal(label_a, label_b)
    added = (b - a) * 2048.0  # normalised units back to HU (clip [-1024, 1024] to [0, 1])
    inside = (a > 0.0) & (a < 1.0) & (b > 0.0) & (b < 1.0)  # away from the clip
    assert 20.0 * 0.8 < float(added[inside].std()) < 60.0 * 1.2
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    sample_patch(case, (16, 24, 24), rng_a, augment=plain)
    sample_patch(case, (16, 24, 24), rng_b, augment=replace(plain, noisy_scans=0.0))
    assert rng_a.random() == rng_b.random()
    with pytest.raises(UsageError, match="--noisy-scans"):
        _config(augment=AugmentConfig(noisy_scans=-0.1))


def test_a_scanner_grid_patch_is_blurred_and_noised_as_a_coarse_scan_and_keeps_the_label(tmp_path):
    """A real 1.5 mm CTA carries 36 HU on its voxels and 18 HU once resampled onto the model
    grid, and its thin arteries are blurred over 1.5 mm: the augmentation must put the noise
    on the scan's voxels (less once interpolated back), blur an edge over about one scan
    voxel on every axis, keep the label, and draw nothing when off."""
    flat = simulate_scanner_grid(np.full((48, 64, 64), 40.0, np.float32), (1.0, 0.7, 0.7), (1.5, 1.4, 1.4), 36.0,
                                 np.random.default_rng(2))
    assert abs(float(flat.mean()) - 40.0) < 2.0
    assert 36.0 * 0.3 < float(flat.std()) < 36.0 * 0.8  # interpolated between scan voxels
    for axis in range(3):  # a step edge along each axis spreads over about a scan voxel (2 patch voxels)
        step = np.zeros((48, 64, 64), np.float32)
        step[tuple(slice(24, None) if a == axis else slice(None) for a in range(3))] = 100.0
        out = simulate_scanner_grid(step, (1.0, 0.7, 0.7), (2.0, 1.4, 1.4), 0.0, np.random.default_rng(4))
        profile = out.mean(axis=tuple(a for a in range(3) if a != axis))
        ramp = int(((profile > 5.0) & (profile < 95.0)).sum())
        assert 1 <= ramp <= 4, (axis, profile[20:28])
    case = _cases(_write_dataset(tmp_path / "d", [1]))[0]
    plain = AugmentConfig(mirror=False, rotate_deg=0.0, intensity=False)
    (a, label_a), (b, label_b) = (sample_patch(case, (16, 24, 24), np.random.default_rng(3), foreground_share=0.0,
                                               augment=aug) for aug in (plain, replace(plain, scanner_grids=1.0)))
    assert np.array_equal(label_a, label_b) and not np.array_equal(a, b)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    sample_patch(case, (16, 24, 24), rng_a, augment=plain)
    sample_patch(case, (16, 24, 24), rng_b, augment=replace(plain, scanner_grids=0.0))
    assert rng_a.random() == rng_b.random()
    with pytest.raises(UsageError, match="--scanner-grids"):
        _config(augment=AugmentConfig(scanner_grids=1.5))


def test_a_coarse_scan_patch_leaves_the_thin_branches_out_of_the_loss_and_only_there(tmp_path):
    """A 1.5-3 mm scan blurs a sub-2 mm artery into its noise: with --spare-thin-branches a
    coarse-grid patch marks such branches IGNORE_INDEX (neither artery nor background) and
    keeps the thick artery and the kidney; a patch shown as made keeps every label."""
    spacing = (1.0, 0.7, 0.7)
    _, y, x = np.indices((24, 40, 40))
    label = np.zeros((24, 40, 40), np.uint8)
    label[((y - 20) / 8.0) ** 2 + ((x - 28) / 6.0) ** 2 <= 1] = 2            # kidney
    trunk = ((y - 10) * 0.7) ** 2 + ((x - 10) * 0.7) ** 2 <= 2.0 ** 2          # 4 mm artery along z
    twig = (np.abs(y - 30) <= 0) & (np.abs(x - 8) <= 1)                        # 0.7 x 2.1 mm branch
    label[trunk | twig] = 1
    thin = thin_parts(label == 1, spacing)
    assert thin[twig].all() and not thin[trunk].any()
    case = TrainingCase("c", np.where(label > 0, 200.0, 40.0).astype(np.float32),
                        Geometry(label.shape[::-1], spacing[::-1], (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                        label=label)
    plain = AugmentConfig(mirror=False, rotate_deg=0.0, intensity=False, spare_thin_class=1)
    _, kept = sample_patch(case, (24, 40, 40), np.random.default_rng(1), augment=plain)
    _, spared = sample_patch(case, (24, 40, 40), np.random.default_rng(1), augment=replace(plain, scanner_grids=1.0))
    assert np.array_equal(kept, label)
    assert (spared[twig] == IGNORE_INDEX).all() and (spared[trunk] == 1).all()
    assert np.array_equal(spared[~twig], label[~twig])
    with pytest.raises(UsageError, match="--spare-thin-branches"):
        _config(augment=AugmentConfig(spare_thin_class=1))
    from renalseg.cli.app import app

    result = CliRunner().invoke(app, ["train", "--stage", "seg", "--out", str(tmp_path / "run"), "--data",
                                      str(_write_dataset(tmp_path / "d", [1, 2])), "--label-map", "2:kidney",
                                      "--scanner-grids", "0.5", "--spare-thin-branches", "--no-dpa", "--quiet"])
    assert result.exit_code == 2 and "no renal_artery class" in " ".join(result.output.split())


def test_epoch_plan_visits_every_case_each_pass():
    plan = epoch_plan(5, 10, seed=1, epoch=2)
    assert sorted(plan[:5].tolist()) == list(range(5)) and sorted(plan[5:].tolist()) == list(range(5))
    assert not np.array_equal(plan, epoch_plan(5, 10, seed=1, epoch=3))


# ----------------------------------------------------------------------------- trainer


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    config = _config(patch_zyx=(16, 24, 24), augment=NO_AUGMENT, max_steps=25, lr=1e-2, loss="ce")
    losses = _losses(config, tmp_path / "run", cases)
    assert len(losses) == 25
    assert np.mean(losses[-3:]) < 0.5 * losses[0]


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    seen: list[float] = []
    with pytest.raises(NonFiniteLossError, match=r"The loss became nan at step 2; training stopped\. Lower --lr"):
        train(_config(max_steps=4), tmp_path / "run", train_cases=cases,
              network_factory=partial(nan_at_call, nan_call=2), on_progress=lambda e: seen.append(e.step) if e.kind == "step" else None)
    assert seen == [1]  # step 1 was reported, step 2 stopped the run


def test_mixed_precision_learns_and_keeps_float32_weights(tmp_path, monkeypatch):
    """--amp: the forward pass in bfloat16 (autocast), yet the loss falls as in float32
    and the saved weights and optimiser stay float32."""
    monkeypatch.setattr("renalseg.training.loop.bfloat16_pays", lambda device: True)  # any CPU
    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    config = _config(patch_zyx=(16, 24, 24), augment=NO_AUGMENT, max_steps=25, lr=1e-2, loss="ce", amp=True)
    losses = _losses(config, tmp_path / "amp", cases)
    full = _losses(replace(config, amp=False), tmp_path / "fp32", cases)
    assert np.mean(losses[-3:]) < 0.5 * losses[0]
    assert losses[0] == pytest.approx(full[0], rel=0.02)  # same start, bfloat16 rounding only
    assert losses != full  # the forward pass did run in bfloat16
    state = torch.load(tmp_path / "amp" / "checkpoint.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def test_amp_on_a_cpu_without_bfloat16_instructions_trains_in_float32_and_says_so(tmp_path, monkeypatch,
                                                                                     caplog):
    """Where bfloat16 has no instructions, autocast would run many times slower than
    float32: --amp gives exactly the float32 run, with a warning naming the reason."""
    monkeypatch.setattr("renalseg.training.loop.bfloat16_pays", lambda device: False)
    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    config = _config(patch_zyx=(16, 24, 24), augment=NO_AUGMENT, max_steps=3, lr=1e-2, loss="ce", amp=True)
    with caplog.at_level("WARNING", logger="renalseg.training.loop"):
        losses = _losses(config, tmp_path / "amp", cases)
    assert losses == _losses(replace(config, amp=False), tmp_path / "fp32", cases)
    assert any("no bfloat16 instructions" in r.getMessage() for r in caplog.records)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    cases = _cases(_write_dataset(tmp_path / "d", [1, 2]))
    config = _config(max_steps=5, checkpoint_every=1)
    straight = _losses(config, tmp_path / "a", cases)
    first = _losses(replace(config, max_steps=3), tmp_path / "b", cases)
    rest = _losses(config, tmp_path / "b", cases, resume=True)
    assert first == straight[:3]
    assert rest == straight[3:]  # bit for bit: model, Adam state and every sample restored
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 5]


def _signal_after_step(monkeypatch, number: int, after: int) -> None:
    """Send this process signal ``number`` once step ``after`` is done (as a scheduler would)."""
    import os

    from renalseg.training.loop import _Trainer

    real = _Trainer.step

    def step(self, images, labels):
        loss = real(self, images, labels)
        if self.position.global_step + 1 == after:
            os.kill(os.getpid(), number)
        return loss

    monkeypatch.setattr(_Trainer, "step", step)


def test_a_stop_signal_ends_the_step_writes_the_checkpoint_and_resume_continues_exactly(tmp_path, monkeypatch):
    """SIGTERM (a batch scheduler's notice) mid-epoch: the run stops after that step with
    a checkpoint, without validating, and --resume continues as if never stopped."""
    import signal

    cases = _cases(_write_dataset(tmp_path / "d", [1, 2]))
    config = _config(max_steps=5, checkpoint_every=1, samples_per_epoch=4)
    straight = _losses(config, tmp_path / "a", cases, val_cases=cases[:1])
    _signal_after_step(monkeypatch, signal.SIGTERM, after=2)
    seen: list[float] = []
    result = train(config, tmp_path / "b", train_cases=cases, val_cases=cases[:1],
                   on_progress=lambda e: seen.append(e.loss) if e.kind == "step" else None)
    assert result.interrupted_by == "SIGTERM" and result.steps == 2 and seen == straight[:2]
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["global_step"] == 2
    row = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 2 and "val_dice" not in row
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    monkeypatch.undo()
    assert _losses(config, tmp_path / "b", cases, val_cases=cases[:1], resume=True) == straight[2:]


def test_cli_exits_128_plus_the_signal_when_interrupted(tmp_path, monkeypatch):
    """A script running phases one after another must not go on after an interrupted run."""
    import signal

    from renalseg.cli.app import app

    root = _write_dataset(tmp_path / "d", [1, 2])
    args = ["train", "--stage", "seg", "--out", str(tmp_path / "r"), "--data", str(root), "--patch", "16,16,16",
            "--window", "24,24,16", "--network-options", json.dumps(TINY_PLAIN), "--no-dpa", "--max-steps", "3",
            "--device", "cpu", "--quiet"]
    _signal_after_step(monkeypatch, signal.SIGINT, after=1)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "--resume" in result.output
    monkeypatch.undo()
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output


def test_loader_workers_train_the_same_run(tmp_path):
    """Batches built ahead in worker processes are the batches built in place (any count)."""
    cases = _cases(_write_dataset(tmp_path / "d", [1, 2, 3]))
    config = _config(max_steps=6, batch_size=2, samples_per_epoch=6)
    in_place = _losses(config, tmp_path / "a", cases)
    ahead = _losses(config, tmp_path / "b", cases, loader_workers=2)
    assert len(in_place) == 6
    assert ahead == in_place


def test_negative_loader_workers_is_a_usage_error(tmp_path):
    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    with pytest.raises(UsageError, match="--loader-workers -1"):
        train(_config(max_steps=1), tmp_path / "run", train_cases=cases, loader_workers=-1)
    assert not (tmp_path / "run").exists()


def test_cases_made_on_demand_are_made_only_when_sampled(tmp_path):
    """A training set that makes each case when a batch asks for it (e.g. phantoms made
    afresh) is not walked up front: only the sampled cases are made."""
    from collections.abc import Sequence

    cases = _cases(_write_dataset(tmp_path / "d", [1, 2]))

    class OnDemand(Sequence):
        made_on_demand = True

        def __init__(self) -> None:
            self.made: list[int] = []

        def __len__(self) -> int:
            return 100_000

        def __getitem__(self, index):
            self.made.append(index)
            return cases[index % 2]

    virtual = OnDemand()
    losses = _losses(_config(max_steps=3, samples_per_epoch=2), tmp_path / "run", virtual)
    assert len(losses) == 3 and len(virtual.made) == 3
    assert len(set(virtual.made)) == 3  # three draws from 100,000: three different cases


def test_resume_refuses_changed_options_and_missing_runs(tmp_path):
    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    config = _config(max_steps=1)
    train(config, tmp_path / "run", train_cases=cases)
    with pytest.raises(UsageError, match="loss"):
        train(replace(config, loss="ce", max_steps=2), tmp_path / "run", train_cases=cases, resume=True)
    with pytest.raises(UsageError, match="already holds a run"):
        train(config, tmp_path / "run", train_cases=cases)
    with pytest.raises(UsageError, match="no checkpoint"):
        train(config, tmp_path / "other", train_cases=cases, resume=True)


def test_resume_may_continue_at_a_lower_learning_rate(tmp_path):
    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    config = _config(max_steps=2)
    train(config, tmp_path / "run", train_cases=cases)
    train(replace(config, lr=3e-4, max_steps=4), tmp_path / "run", train_cases=cases, resume=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in rows] == [(1, 3e-3), (2, 3e-3), (3, 3e-4), (4, 3e-4)]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [3e-4]


def test_best_score_restarts_when_the_validation_cases_change(tmp_path, caplog):
    """A best Dice measured on other validation cases is no yardstick for the new ones."""
    cases = _cases(_write_dataset(tmp_path / "d", [1, 2, 3]))
    config = _config(max_steps=1, samples_per_epoch=1)
    first = train(config, tmp_path / "run", train_cases=cases[:1], val_cases=cases[1:2])
    same = train(replace(config, max_steps=2), tmp_path / "run", train_cases=cases[:1], val_cases=cases[1:2],
                 resume=True)
    assert "validation cases changed" not in caplog.text
    assert same.best_score == max(first.best_score, same.best_score)
    with caplog.at_level("WARNING"):
        other = train(replace(config, max_steps=3), tmp_path / "run", train_cases=cases[:1],
                      val_cases=cases[2:3], resume=True)
    assert "validation cases changed" in caplog.text
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert other.best_score == last["val_dice"]  # the only score on the new cases so far


def test_resume_may_validate_on_other_cases_but_not_train_on_other_data(tmp_path, caplog):
    """`renalseg train --resume --val-data OTHER` continues the run:
    the data description differs only in its validation clause; other training data is refused."""
    cases = _cases(_write_dataset(tmp_path / "d", [1, 2, 3]))
    config = _config(max_steps=1, samples_per_epoch=1,
                     data_description="1 training cases from d, 1 validation cases from v1")
    train(config, tmp_path / "run", train_cases=cases[:1], val_cases=cases[1:2])
    moved = replace(config, max_steps=2, data_description="1 training cases from d, 1 validation cases from v2")
    with caplog.at_level("WARNING"):
        train(moved, tmp_path / "run", train_cases=cases[:1], val_cases=cases[2:3], resume=True)
    assert "validation cases changed" in caplog.text
    stored = json.loads((tmp_path / "run" / "last.json").read_text())
    assert stored["training"]["data"].endswith("from v2")  # the card names the cases that chose
    other_data = replace(config, max_steps=3, data_description="1 training cases from e, 1 validation cases from v2")
    with pytest.raises(UsageError, match="training data: run has '1 training cases from d'"):
        train(other_data, tmp_path / "run", train_cases=cases[:1], val_cases=cases[2:3], resume=True)


def test_a_copied_checkpoint_never_passes_its_last_weights_off_as_the_best(tmp_path, caplog):
    """recipes/state holds a checkpoint without the run's best weights: resumed, best.safetensors
    appears only once validation beats the stored best score."""
    cases = _cases(_write_dataset(tmp_path / "d", [1, 2]))
    config = _config(max_steps=1, samples_per_epoch=1)
    train(config, tmp_path / "run", train_cases=cases[:1], val_cases=cases[1:])
    copied = tmp_path / "copied"
    copied.mkdir()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    state["best_score"] = 1.01  # a best no Dice can beat
    torch.save(state, copied / "checkpoint.pt")
    with caplog.at_level("WARNING"):
        result = train(replace(config, max_steps=2), copied, train_cases=cases[:1], val_cases=cases[1:],
                       resume=True)
    assert result.best_weights is None and not (copied / "best.safetensors").exists()
    assert result.last_weights == copied / "last.safetensors" and result.last_weights.exists()
    assert "no best.safetensors" in caplog.text
    state["best_score"] = 0.0  # beaten by the next validation: the best weights are written
    torch.save(state, copied / "checkpoint.pt")
    result = train(replace(config, max_steps=2), copied, train_cases=cases[:1], val_cases=cases[1:], resume=True)
    assert result.best_weights == copied / "best.safetensors" and result.best_weights.exists()


def test_dae_then_dpa_keeps_the_encoder_frozen(tmp_path):
    from renalseg.weights import load_model_files

    root = _write_dataset(tmp_path / "d", [1, 2, 3])
    images = load_cases(find_cases(root, labelled=False), spacing_xyz_mm=SPACING)
    dae_config = TrainConfig(stage="dae", network="dae", network_options=TINY_DAE, patch_zyx=(16, 16, 16),
                             window_zyx=(16, 16, 16),
                             max_steps=2, lr=1e-2)
    result = train(dae_config, tmp_path / "dae", train_cases=images[:2], val_cases=images[2:])
    assert result.best_weights.name == "dae.safetensors" and result.score_name == "val_mse"
    dae, _ = load_model_files(result.best_weights)

    cases = _cases(root)
    config = _config(network="dpa_densebiasnet", network_options=TINY_SEG, encoder=str(result.best_weights),
                     max_steps=3)
    from renalseg.training.network import build_training_network

    network = build_training_network(config)

    def factory(_config):
        return network

    assert not any(p.requires_grad for p in network.encoder.parameters())
    out = train(config, tmp_path / "seg", train_cases=cases[:2], val_cases=cases[2:], network_factory=factory)
    assert all(p.grad is None and not p.requires_grad for p in network.encoder.parameters())
    for key, value in dae.encoder.state_dict().items():
        assert torch.equal(network.encoder.state_dict()[key], value), key
    trained, card = load_model_files(out.best_weights)
    assert card.name == "dpa_densebiasnet" and card.classes == {"0": "background", "1": "renal_artery"}
    assert "val_dice" in card.metrics and card.training["steps"] >= 1
    assert (tmp_path / "seg" / "metrics.csv").read_text().startswith("epoch,step")
    # fine-tuning from those weights needs no --encoder: it comes with them, still frozen
    tuned = build_training_network(replace(config, encoder=None, init_weights=str(out.best_weights)))
    assert not any(p.requires_grad for p in tuned.encoder.parameters())
    for key, value in trained.state_dict().items():
        assert torch.equal(tuned.state_dict()[key], value), key


def test_init_starts_from_saved_weights_and_refuses_another_network(tmp_path):
    from renalseg.errors import ModelError
    from renalseg.training.network import build_training_network
    from renalseg.weights import load_model_files

    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    config = _config(max_steps=2)
    first = train(config, tmp_path / "a", train_cases=cases)
    saved, _ = load_model_files(first.last_weights)
    tuned = build_training_network(replace(config, init_weights=str(first.last_weights), seed=7))
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in saved.state_dict().items())
    losses = _losses(replace(config, init_weights=str(first.last_weights)), tmp_path / "b", cases)
    assert len(losses) == 2
    # the checkpoint holds every parameter: the run resumes after the init file is gone
    shutil.move(first.last_weights, tmp_path / "elsewhere.safetensors")
    more = _losses(replace(config, init_weights=str(tmp_path / "elsewhere.safetensors"), max_steps=3),
                   tmp_path / "b", cases, resume=True)
    assert len(more) == 1
    shutil.move(tmp_path / "elsewhere.safetensors", first.last_weights)
    with pytest.raises(UsageError, match="a.last.safetensors.*plain DenseBiasNet.*--encoder"):
        build_training_network(replace(config, network="dpa_densebiasnet", network_options=TINY_SEG,
                                       init_weights=str(first.last_weights)))
    with pytest.raises(ModelError, match="4 channels per group, this run's 1.*group_size"):
        build_training_network(replace(config, network_options={**TINY_PLAIN, "group_size": 1},
                                       init_weights=str(first.last_weights)))
    with pytest.raises(ModelError, match="other hyper-parameters"):
        build_training_network(replace(config, network_options={**TINY_PLAIN, "widths": [8] * 14},
                                       init_weights=str(first.last_weights)))
    with pytest.raises(UsageError, match="no such file"):
        build_training_network(replace(config, init_weights=str(tmp_path / "none.safetensors")))


def test_dpa_without_encoder_is_a_usage_error(tmp_path):
    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    with pytest.raises(UsageError, match="--encoder"):
        train(_config(network="dpa_densebiasnet", network_options=TINY_SEG, max_steps=1), tmp_path / "r",
              train_cases=cases)


# ----------------------------------------------------------------------------- CLI


def test_cli_trains_both_stages_and_writes_shipped_format(tmp_path):
    from renalseg.cli.app import app
    from renalseg.weights import load_model_files

    root = _write_dataset(tmp_path / "d", [1, 2, 3])
    runner = CliRunner()
    common = ["--data", str(root), "--patch", "16,16,16", "--window", "24,24,16", "--max-steps", "2", "--device", "cpu", "--quiet"]
    result = runner.invoke(app, ["train", "--stage", "dae", "--out", str(tmp_path / "dae"),
                                 "--network-options", json.dumps(TINY_DAE), *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--stage", "seg", "--out", str(tmp_path / "seg"),
                                 "--encoder", str(tmp_path / "dae" / "dae.safetensors"),
                                 "--network-options", json.dumps(TINY_SEG), *common])
    assert result.exit_code == 0, result.output
    network, card = load_model_files(tmp_path / "seg" / "best.safetensors")
    assert card.spacing_xyz_mm == SPACING and card.training["val_cases"]
    # fine-tuning: network and hyper-parameters come from the weights' card, no --encoder
    best = str(tmp_path / "seg" / "best.safetensors")
    result = runner.invoke(app, ["train", "--stage", "seg", "--out", str(tmp_path / "tuned"), "--init", best,
                                 "--loss", "ce", "--loader-workers", "1", *common])
    assert result.exit_code == 0, result.output
    assert load_model_files(tmp_path / "tuned" / "best.safetensors")[1].training["recipe"]["init_weights"] == best
    # resuming (e.g. recipes/state copied into a run folder) needs no --init file
    shutil.move(best, tmp_path / "moved.safetensors")
    result = runner.invoke(app, ["train", "--stage", "seg", "--out", str(tmp_path / "tuned"), "--init", best,
                                 "--loss", "ce", "--resume", *common[:6], "--max-steps", "3", "--device", "cpu",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    shutil.move(tmp_path / "moved.safetensors", best)
    # adding a class (the kidney) to trained artery weights
    result = runner.invoke(app, ["train", "--stage", "seg", "--out", str(tmp_path / "k"), "--init", best,
                                 "--label-map", "3:renal_artery,2:kidney", *common])
    assert result.exit_code == 0, result.output
    card = load_model_files(tmp_path / "k" / "best.safetensors")[1]
    assert card.classes == {"0": "background", "1": "renal_artery", "2": "kidney"}
    result = runner.invoke(app, ["train", "--stage", "seg", "--out", str(tmp_path / "y"), "--init", best,
                                 "--label-map", "1:renal_vein", *common])
    assert result.exit_code == 2 and "share none" in result.output and "best.safetensors" in result.output
    result = runner.invoke(app, ["train", "--stage", "seg", "--out", str(tmp_path / "x"), "--data",
                                 str(tmp_path / "nowhere"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 2 and "no such folder" in result.output


def test_cli_resume_may_move_to_other_validation_cases(tmp_path):
    """README: a resumed run may validate on other cases (its best score restarts)."""
    from renalseg.cli.app import app

    data, first, second = (_write_dataset(tmp_path / name, seeds) for name, seeds in
                           (("d", [1, 2]), ("v1", [3]), ("v2", [4])))
    common = ["train", "--stage", "seg", "--out", str(tmp_path / "run"), "--data", str(data), "--patch", "16,16,16",
              "--window", "24,24,16", "--no-dpa", "--network-options", json.dumps(TINY_PLAIN), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(app, [*common, "--val-data", str(first), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*common, "--val-data", str(second), "--max-steps", "2", "--resume"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "run" / "last.json").read_text())
    assert card["training"]["val_cases"] == ["case04"] and card["training"]["steps"] == 2
    # other training data is still refused
    result = CliRunner().invoke(app, [*common[:6], str(second), *common[7:], "--val-data", str(first),
                                      "--max-steps", "3", "--resume"])
    assert result.exit_code == 2 and "training data" in " ".join(result.output.split())


@pytest.mark.slow
def test_whole_studies_are_located_and_cropped_per_kidney(tmp_path):
    """A whole-abdomen phantom becomes one case per kidney on its ROI grid, cached."""
    import time

    from renalseg.phantom.abdomen import synthesize_abdomen
    from renalseg.training.data import load_whole_study

    case = synthesize_abdomen(5, spacing_xyz_mm=(1.2, 1.2, 2.5), inplane_voxels=320)
    write_image(case.image, tmp_path / "d" / "image" / "abd.nii.gz")
    write_image(case.label, tmp_path / "d" / "label" / "abd.nii.gz")
    files = find_cases(tmp_path / "d")[0]
    kw = dict(spacing_xyz_mm=SPACING, label_map=parse_label_map("3:renal_artery"), cache_dir=tmp_path / "cache")
    cases = load_whole_study(files, **kw)
    assert sorted(c.case_id for c in cases) == ["abd_left", "abd_right"]
    for c in cases:
        assert min(c.image_hu.shape[1:]) >= 152 and c.geometry.spacing_xyz_mm == SPACING  # wider: aorta in view
        assert c.label.sum() > 50  # the artery of that kidney is inside its ROI
    t0 = time.perf_counter()
    again = load_whole_study(files, **kw)
    assert time.perf_counter() - t0 < 5.0
    assert all(np.array_equal(a.label, b.label) and a.geometry == b.geometry for a, b in zip(cases, again))


def test_init_adds_a_class_and_keeps_what_the_weights_learnt(tmp_path):
    """--init 2-class artery weights into an artery + kidney run: shared classes keep their rows."""
    from renalseg.training.network import build_training_network
    from renalseg.weights import load_model_files

    cases = _cases(_write_dataset(tmp_path / "d", [1]))
    first = train(_config(max_steps=2), tmp_path / "a", train_cases=cases)
    saved, _ = load_model_files(first.last_weights)
    config = _config(label_map="2:kidney,3:renal_artery", network_options={**TINY_PLAIN, "num_classes": 3},
                     init_weights=str(first.last_weights))
    grown = build_training_network(config).state_dict()
    fresh = build_training_network(replace(config, init_weights=None)).state_dict()
    # kidney (new, class 1) keeps the seeded initialisation; background and artery (now class 2) are copied
    assert torch.equal(grown["head.weight"][0], saved.state_dict()["head.weight"][0])
    assert torch.equal(grown["head.weight"][2], saved.state_dict()["head.weight"][1])
    assert torch.equal(grown["head.bias"][2], saved.state_dict()["head.bias"][1])
    assert torch.equal(grown["head.weight"][1], fresh["head.weight"][1])
    assert all(torch.equal(grown[k], v) for k, v in saved.state_dict().items() if not k.startswith("head."))


def test_dpa_starts_from_plain_weights_computing_what_they_did(tmp_path):
    """--init plain weights + --encoder: DPA-DenseBiasNet whose output equals the plain net's, then learns."""
    from renalseg.errors import ModelError
    from renalseg.training.network import build_training_network
    from renalseg.weights import load_model_files

    root = _write_dataset(tmp_path / "d", [1, 2])
    images = load_cases(find_cases(root, labelled=False), spacing_xyz_mm=SPACING)
    dae = train(TrainConfig(stage="dae", network="dae", network_options=TINY_DAE, patch_zyx=(16, 16, 16),
                            window_zyx=(16, 16, 16), max_steps=2, lr=1e-2), tmp_path / "dae",
                train_cases=images[:1], val_cases=images[1:])
    cases = _cases(root)
    plain_run = train(_config(max_steps=2), tmp_path / "plain", train_cases=cases[:1])
    plain, _ = load_model_files(plain_run.last_weights)
    config = _config(network="dpa_densebiasnet", network_options=TINY_SEG, encoder=str(dae.best_weights),
                     init_weights=str(plain_run.last_weights), max_steps=2, loss="ce_dice")
    with pytest.raises(ModelError, match="plain.last.safetensors.*does not fit"):
        build_training_network(replace(config, network_options={**TINY_SEG, "widths": [8] * 14}))
    dpa = build_training_network(config).eval()
    x = torch.rand(1, 1, 16, 24, 16)
    with torch.no_grad():
        priors = dpa.encoder(x)
        assert max(float(p.abs().max()) for p in priors) > 0  # the DAE features are there, weighted zero
        for fast in (True, False):
            dpa.use_fast_inference(fast)
            assert torch.allclose(dpa(x), plain.eval()(x), atol=1e-6)
    trained_dae, _ = load_model_files(dae.best_weights)
    for key, value in trained_dae.encoder.state_dict().items():
        assert torch.equal(dpa.encoder.state_dict()[key], value), key
    # the zero-weighted DAE inputs get a gradient, so training can start using them
    dpa.train()
    loss = dpa.logits(x)[:, 1].mean()
    loss.backward()
    prior_in = dpa.segmenter.layer_in_channels(1) - dpa.segmenter.prior_channels[0]
    grad = dpa.segmenter.layers[1].conv.weight.grad[:, prior_in:]
    assert float(grad.abs().max()) > 0
    out = train(config, tmp_path / "dpa", train_cases=cases[:1], val_cases=cases[1:])
    card = load_model_files(out.best_weights)[1]
    assert card.name == "dpa_densebiasnet"
    # the DAE must normalise as the plain network does
    dae_gs1 = train(TrainConfig(stage="dae", network="dae", network_options={**TINY_DAE, "group_size": 1},
                                patch_zyx=(16, 16, 16), window_zyx=(16, 16, 16), max_steps=1),
                    tmp_path / "dae1", train_cases=images[:1], val_cases=images[1:])
    from renalseg.cli.app import app

    result = CliRunner().invoke(app, ["train", "--stage", "seg", "--data", str(root), "--out", str(tmp_path / "c"),
                                      "--init", str(plain_run.last_weights), "--encoder",
                                      str(dae_gs1.best_weights), "--device", "cpu", "--quiet"])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "normalises 1 channels per GroupNorm group, this network 4" in said
    assert "dae1" in said
    result = CliRunner().invoke(app, ["train", "--stage", "seg", "--data", str(root), "--out", str(tmp_path / "c"),
                                      "--init", str(plain_run.last_weights), "--encoder", str(dae.best_weights),
                                      "--patch", "16,16,16", "--window", "16,24,24", "--max-steps", "1",
                                      "--loss", "ce", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_model_files(tmp_path / "c" / "best.safetensors")[1].name == "dpa_densebiasnet"


def test_init_grows_the_shipped_artery_weights_into_four_structures_with_the_artery_logits_unchanged():
    """--init the shipped 2-class weights into a KiPA22 five-output run: background and artery compute what they did."""
    from renalseg.training.network import build_training_network
    from renalseg.weights import load_model_files, read_card, resolve_weights

    artery_weights = resolve_weights("dpa_densebiasnet_artery")
    card = read_card(artery_weights)
    assert card.classes == {"0": "background", "1": "renal_artery"}
    shipped, _ = load_model_files(artery_weights)
    config = TrainConfig(stage="seg", network="dpa_densebiasnet",
                         network_options={**card.hyperparameters, "num_classes": 5},
                         label_map="1:renal_vein,2:kidney,3:renal_artery,4:tumour",
                         init_weights=str(artery_weights), patch_zyx=(16, 32, 32), window_zyx=(16, 32, 32))
    grown = build_training_network(config).eval()
    x = torch.rand(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = shipped.eval().logits(x), grown.logits(x)
    assert after.shape[1] == 5
    assert torch.allclose(after[:, 0], before[:, 0], atol=1e-5)  # background
    assert torch.allclose(after[:, 3], before[:, 1], atol=1e-5)  # the artery: KiPA22 class 3, was 1


def test_a_run_saved_before_a_tissue_class_existed_resumes_with_its_default_range():
    """The phantoms gained `tumour_necrosis`; a run whose saved domain-randomisation ranges
    lack it must load as the options a new run gets (resume compares them), and a run
    without domain randomisation keeps no ranges at all."""
    from renalseg.phantom.tissues import TISSUE_IDS, TISSUE_RANGES_HU

    today = {TISSUE_IDS[name]: r for name, r in TISSUE_RANGES_HU.items()}
    necrosis = TISSUE_IDS["tumour_necrosis"]
    saved = AugmentConfig(domain_randomisation=0.5, tissue_ranges_hu=today).to_dict()
    del saved["tissue_ranges_hu"][str(necrosis)]
    loaded = AugmentConfig.from_dict(json.loads(json.dumps(saved)))
    assert loaded == AugmentConfig(domain_randomisation=0.5, tissue_ranges_hu=today)
    assert loaded.tissue_ranges_hu[necrosis] == TISSUE_RANGES_HU["tumour_necrosis"]
    assert AugmentConfig.from_dict(AugmentConfig().to_dict()).tissue_ranges_hu == {}


def test_a_randomised_tumour_stays_a_solid_enhancing_mass():
    """Domain randomisation widens each tissue's range; the tumour's must not reach the
    fat and fluid labelled background elsewhere, or its class cannot be learnt."""
    from renalseg.phantom.tissues import DOMAIN_LIMITS_HU, TISSUE_IDS, TISSUE_RANGES_HU

    tumour = TISSUE_IDS["tumour"]
    tissue = np.full((8, 16, 16), tumour, np.uint8)
    ranges = {tumour: TISSUE_RANGES_HU["tumour"]}
    limits = {tumour: DOMAIN_LIMITS_HU["tumour"]}

    def means(limited):  # the bias field moves a mean by at most 40 HU, the noise by ~1
        return np.array([randomise_domain(tissue, (1.0, 0.7, 0.7), ranges, np.random.default_rng(seed),
                                          limits if limited else None).mean() for seed in range(30)])

    low, high = DOMAIN_LIMITS_HU["tumour"]
    limited = means(True)
    assert means(False).min() < TISSUE_RANGES_HU["cyst"][1]  # unlimited: as dark as a cyst
    assert low - 42 <= limited.min() and limited.max() <= high + 42
    # a run saved before the limits existed resumes with them (its options as a new run's)
    today = {TISSUE_IDS[name]: r for name, r in TISSUE_RANGES_HU.items()}
    saved = AugmentConfig(domain_randomisation=0.5, tissue_ranges_hu=today).to_dict()
    del saved["tissue_limits_hu"]
    assert AugmentConfig.from_dict(saved).tissue_limits_hu == {tumour: (low, high)}
