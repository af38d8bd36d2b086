"""What a wheel carries, checked without building one (`make test-wheel` builds and installs it for real):
every data file under qaforge/ matches pyproject's package-data, and every path qaforge.paths names exists."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

import pytest

from qaforge import paths

REPO = Path(__file__).resolve().parents[1]


def _package_data_patterns() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return config["tool"]["setuptools"]["package-data"]["qaforge"]


def _data_files() -> list[str]:
    """Tracked non-Python files of the package, relative to qaforge/ (git knows what a fresh clone has)."""
    try:
        listed = subprocess.run(["git", "ls-files", "qaforge"], cwd=REPO, capture_output=True, text=True,
                                check=True, timeout=60).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return [name.removeprefix("qaforge/") for name in listed if not name.endswith(".py")]


def test_every_data_file_of_the_package_ships_in_the_wheel():
    patterns = _package_data_patterns()
    files = _data_files()
    assert len(files) > 30  # corpus, profiles, prompts, templates, ...
    # setuptools' "*" stops at a slash, as fnmatch's does not: compare folder by folder
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"


def test_every_named_path_exists_inside_the_package():
    named = {name: value for name, value in vars(paths).items() if name.isupper() and isinstance(value, Path)}
    assert {"DEFAULT_CORPUS_DIR", "WARMUP_QUESTIONS", "PROFILES_DIR", "TEMPLATES_DIR", "PROMPTS_DIR"} <= set(named)
    for name, path in named.items():
        if name in ("RUNS_DIR", "REPO_DIR"):
            continue
        assert path.exists(), f"qaforge.paths.{name} = {path} does not exist"
        assert paths.PACKAGE_DIR in (path, *path.parents), f"{name} lies outside the package: {path}"
    assert len(list(paths.DEFAULT_CORPUS_DIR.glob("ch*.md"))) == 11
    assert len(list(paths.PROFILES_DIR.glob("*.yaml"))) >= 6


def test_runs_go_under_the_working_directory():
    assert not paths.RUNS_DIR.is_absolute()  # resolved where the command runs, never inside site-packages
    assert paths.RUNS_DIR == Path("runs")


def test_the_checkout_has_no_data_left_outside_the_package():
    tracked = subprocess.run(["git", "ls-files", "data", "profiles"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert tracked.stdout.split() == [], "data files belong under qaforge/ (qaforge/paths.py)"
