"""The repository's own lint, format and type checks (ruff, mypy with disallow_untyped_defs), and
its packaging (pyproject.toml builds without warnings and ships every data file)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_passes(command: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _tracked(*paths: str) -> list[str]:
    """The files git tracks under ``paths`` (what a clone has: no caches, no one's scratch files)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout
    return [p for p in out.decode().split("\0") if p]


def test_packaging_is_warning_free_and_ships_every_data_file(tmp_path: Path) -> None:
    """Builds the wheel and the editable wheel with setuptools' own PEP 517 hooks, warnings as errors.

    `./setup.sh` shows every warning the build backend emits (a deprecated `project.license` table,
    a data directory missing from `packages`, the import-hook note of an editable install); each of
    them fails here. The wheel must then hold every file git tracks in the packages: the package-data
    globs in pyproject.toml match the shipped data (demo reviews, NOTICE, chat template, schemas).
    """
    packages = ("worker", "models", "schemas")
    files = _tracked("pyproject.toml", "README.md", *packages)
    src, out = tmp_path / "src", tmp_path / "out"
    for name in files:  # a copy: the build writes build/ and *.egg-info next to pyproject.toml
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    out.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "import sys; from setuptools import build_meta as b; out = sys.argv[1]; "
            "b.build_wheel(out); b.build_editable(out)",  # each hook rewrites sys.argv
            str(out),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    (editable,) = out.glob("*.editable-*.whl")
    (wheel,) = set(out.glob("*.whl")) - {editable}
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if ".dist-info/" not in n}
    expected = {n for n in files if n.startswith(tuple(f"{p}/" for p in packages))}
    assert expected - shipped == set(), "tracked but not in the wheel"
    assert shipped - expected == set(), "in the wheel but not tracked"
    assert {n for n in files if n.endswith((".tsv", ".jinja", "NOTICE", ".schema.json"))} <= shipped
    with zipfile.ZipFile(editable) as zf:
        pth = [n for n in zf.namelist() if n.endswith(".pth")]
        # a plain path entry (the repository root), not an import hook
        assert [zf.read(n).decode().strip() for n in pth] == [str(src.resolve())]
