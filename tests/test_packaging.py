"""The wheel: what `pip install` puts on a user's disk.

Built offline from a copy of the checkout (setuptools from the environment, no build
isolation), so the build's scratch folders never land in the repository.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import renalseg

ROOT = Path(__file__).resolve().parents[1]
#: what a checkout may hold beside its tracked files (.gitignore): not part of a build
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".ci-venv", "runs", "out", "demo", "build", "dist",
                                    "*.egg-info", "__pycache__", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--disable-pip-version-check", "-q", "-w", str(tmp / "dist"), str(source)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (tmp / "dist").glob("renalseg-*.whl")
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_wheel_holds_the_shipped_weights_cards_and_atlas(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = sorted(p for p in (ROOT / "weights").iterdir() if p.suffix in (".safetensors", ".json"))
        assert {p.stem for p in shipped} >= {"dpa_densebiasnet", "dpa_densebiasnet_artery", "densebiasnet", "dae"}
        for path in shipped:
            inside = f"renalseg/shipped_weights/{path.name}"
            assert inside in names, f"{inside} is not in {wheel.name}"
            assert _sha256(archive.read(inside)) == _sha256(path.read_bytes()), f"{inside} differs from {path}"
    assert {"renalseg/data/atlas/atlas_ct.nii.gz", "renalseg/data/atlas/atlas_kidneys.nii.gz",
            "renalseg/py.typed"} <= names


def test_the_wheel_holds_every_package_and_no_pickle_recipe_or_test(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "renalseg").rglob("__init__.py")}
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"pyproject.toml's package list lacks {missing}"
    pickles = [n for n in names if re.search(r"\.(pt|pth|pkl|pickle|ckpt)$", n)]
    assert not pickles, pickles
    outside = [n for n in names if n.startswith(("recipes/", "tests/", "benchmarks/", "weights/"))
               or "/state/" in n or re.search(r"(^|/)checkpoint\.[^/]+$", n)]  # not training/checkpoints.py
    assert not outside, outside


def test_the_wheel_carries_the_one_version_and_finds_its_weights(wheel, tmp_path):
    assert wheel.name.startswith(f"renalseg-{renalseg.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"renalseg-{renalseg.__version__}.dist-info/METADATA").decode()
        archive.extractall(tmp_path / "site")
    assert f"\nVersion: {renalseg.__version__}\n" in metadata
    # installed as the wheel lays it out (and not this checkout's package): the default
    # weights resolve inside it and their card reads
    probe = ("import renalseg.weights as w; c = w.read_card(w.DEFAULT_WEIGHTS_PATH); "
             "print(w.DEFAULT_WEIGHTS_PATH); print(c.name)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    path, name = found.stdout.split()
    assert Path(path) == tmp_path / "site" / "renalseg" / "shipped_weights" / "dpa_densebiasnet.safetensors"
    assert name == "dpa_densebiasnet"
