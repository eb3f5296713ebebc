"""The README and docs/ point only at files that exist in the repository.

A reader follows `benchmarks/...`, `recipes/...`, `weights/...` and `docs/...` paths to
reproduce a figure; a renamed script or a moved page must not leave them pointing nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_PATH = re.compile(r"(?<![\w/.])((?:benchmarks|recipes|docs|weights|renalseg|tests|\.ci)/[\w./-]*[\w/])")


def repository_paths(text: str) -> set[str]:
    """Paths into this repository's own folders named in a Markdown page."""
    return {match.group(1) for match in REPO_PATH.finditer(text)}


def exists(path: str) -> bool:
    """A file or folder, or a model named by its stem (`weights/densebiasnet`)."""
    target = ROOT / path
    return target.exists() or target.with_name(target.name + ".safetensors").exists()


def test_repository_paths_finds_the_paths_a_reader_would_follow() -> None:
    text = ("run `python recipes/evaluate_shipped.py weights/x.safetensors` (see [here](docs/a.md)),"
            " not runs/x or my/benchmarks/y")
    assert repository_paths(text) == {"recipes/evaluate_shipped.py", "weights/x.safetensors", "docs/a.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_repository_path_in_the_docs_exists(page: Path) -> None:
    missing = sorted(path for path in repository_paths(page.read_text(encoding="utf-8")) if not exists(path))
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("script", sorted((ROOT / "recipes").glob("*.sh")), ids=lambda p: p.name)
def test_the_recipe_scripts_parse_and_print_their_usage(script: Path) -> None:
    """The recipes reproduce the shipped weights over days of resumed runs: a syntax
    error must show here, not hours into a phase."""
    import subprocess

    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=ROOT)
    assert usage.returncode == 2 and "resume" in usage.stderr


@pytest.mark.parametrize("script", sorted([*(ROOT / "recipes").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]),
                         ids=lambda p: p.name)
def test_the_recipe_and_benchmark_scripts_compile(script: Path) -> None:
    compile(script.read_text(encoding="utf-8"), str(script), "exec")
