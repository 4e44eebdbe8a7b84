"""The README's runnable blocks run as written.

Every ```bash block after a ``<!-- runs-in-ci -->`` line in README.md is run by bash with
``set -euo pipefail``, in a fresh shell (the venv's ``bin`` first on ``PATH``, as ``source
.venv/bin/activate`` puts it) and in a temporary copy of the repository (the files a clone holds,
with ``.venv`` linked in), so nothing is written to the checkout. What a reader's machine provides
and CI's may not is set through the ``SENTIMENT_<NAME>`` variables every option reads: a free
broker port and web port, a temporary ``--home``, and, for "Using it", the session's tiny
checkpoint instead of the demo model (whose first use trains it for minutes;
tests/model/test_trainers.py trains a quick one). The two blocks are independent: about 50 s and
30 s on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARK = "<!-- runs-in-ci -->"
# The marked blocks, and a command that tells each from the other.
BLOCKS = {"training": "sentiment train lora", "using": "sentiment broker"}
# What the blocks write in the repository root: never copied from a checkout where someone ran them.
OUTPUTS = ("data", "bases", "checkpoints", "broker.log", "worker.log", "labels.jsonl")
EXAMPLES = ROOT / "docs" / "examples" / "reviews.txt"
TEST_SLICE = 300  # data/test-300.tsv


def runnable_blocks() -> dict[str, str]:
    """The marked blocks, by what they do: ``training`` (train lora/head) and ``using`` (broker)."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(re.escape(MARK) + r"[ \t]*\n```bash\n(.*?)\n```", text, flags=re.S)
    assert len(blocks) == text.count(MARK), f"each {MARK} in README.md must be followed by a ```bash fence"
    named: dict[str, str] = {}
    for block in blocks:
        kinds = [name for name, says in BLOCKS.items() if says in block]
        assert len(kinds) == 1 and kinds[0] not in named, f"unexpected runnable block in README.md:\n{block}"
        named[kinds[0]] = block
    assert set(named) == set(BLOCKS), f"README.md's runnable blocks: {sorted(named)}"
    return named


def clone_like_copy(dest: Path) -> Path:
    """The files a clone of the checkout holds (tracked, and new ones git does not ignore), copied to
    ``dest``, with ``.venv`` a link to the running venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for raw in filter(None, listed.split(b"\0")):
        name = os.fsdecode(raw)
        src = ROOT / name
        if name.split("/", 1)[0] in OUTPUTS or not (src.is_file() or src.is_symlink()):
            continue  # a block's output, or a tracked file deleted in the checkout
        dst = dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    (dest / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return dest


@dataclass
class Ran:
    returncode: int | None  # None: timed out
    stdout: str
    stderr: str
    seconds: float

    def explain(self, cwd: Path) -> str:
        logs = "".join(
            f"\n--- {log.name} (end) ---\n{log.read_text(errors='replace')[-3000:]}"
            for log in (cwd / "broker.log", cwd / "worker.log")
            if log.is_file()
        )
        status = "timed out" if self.returncode is None else f"exit {self.returncode}"
        return (
            f"{status} after {self.seconds:.0f} s\n--- stdout (end) ---\n{self.stdout[-4000:]}"
            f"\n--- stderr (end) ---\n{self.stderr[-4000:]}{logs}"
        )


def run_block(block: str, cwd: Path, env: dict[str, str], logs: Path, timeout_s: float) -> Ran:
    """``block`` under ``bash`` with ``set -euo pipefail`` in its own process group, which is
    stopped afterwards: whatever the block left running (it failed before its ``kill``) goes too."""
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        proc = subprocess.Popen(
            ["bash", "-c", f"set -euo pipefail\n{block}\n"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            returncode: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            _stop_group(proc)
    return Ran(
        returncode,
        (logs / "stdout").read_text(errors="replace"),
        (logs / "stderr").read_text(errors="replace"),
        time.monotonic() - started,
    )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    if proc.poll() is None:
        proc.wait(timeout=10)


def fresh_shell(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A clone-like copy of the repository under ``tmp_path``, and the environment of a fresh shell
    with the venv's ``bin`` first on ``PATH`` and ``SENTIMENT_HOME`` in ``tmp_path``."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip(f"not running from a venv ({sys.prefix} has no bin/activate)")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout, to copy what a clone holds")
    repo = clone_like_copy(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        VIRTUAL_ENV=str(venv),
        HF_HUB_OFFLINE="1",
        SENTIMENT_HOME=str(tmp_path / "home"),
    )
    return repo, env


def test_training_block_trains_and_evaluates_both_kinds(tmp_path: Path) -> None:
    repo, env = fresh_shell(tmp_path)
    ran = run_block(runnable_blocks()["training"], repo, env, tmp_path / "logs", timeout_s=300)
    assert ran.returncode == 0, ran.explain(repo)
    for name, kind in (("lora-tiny", "sequence-classifier"), ("head-tiny", "embedding-head")):
        checkpoint = repo / "checkpoints" / name
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        assert manifest["kind"] == kind and manifest["name"] == name, manifest
        assert manifest["evaluation"]["test"]["n"] == TEST_SLICE, manifest["evaluation"]
        assert (checkpoint / "confusion-test.png").is_file()
    assert (repo / "checkpoints" / "lora-tiny" / "model.safetensors").is_file()
    assert (repo / "checkpoints" / "head-tiny" / "head.safetensors").is_file()
    assert "reproduced exactly" in ran.stderr, ran.explain(repo)  # sentiment eval
    print(f"README training block: {ran.seconds:.1f} s")


def test_using_it_block_streams_reviews_through_a_dev_broker(tiny_checkpoint: Path, tmp_path: Path) -> None:
    repo, env = fresh_shell(tmp_path)
    port, web_port = free_port(), free_port()
    env.update(
        SENTIMENT_PORT=str(port),
        SENTIMENT_BROKERS=f"127.0.0.1:{port}",
        SENTIMENT_WEB_PORT=str(web_port),
        SENTIMENT_WEB_HOST="127.0.0.1",
        SENTIMENT_SESSION_TIMEOUT_S="6",  # the dev broker holds a new group's first join for half of it
        # instead of the demo model, which the first use would train for minutes
        SENTIMENT_CHECKPOINT=str(tiny_checkpoint),
    )
    ran = run_block(runnable_blocks()["using"], repo, env, tmp_path / "logs", timeout_s=240)
    assert ran.returncode == 0, ran.explain(repo)  # `wait %2`: the worker exited 0 on SIGTERM
    assert f"broker listening on 127.0.0.1:{port}" in (repo / "broker.log").read_text(), ran.explain(repo)

    lines = [line for line in EXAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]
    produced = len(lines) + 20  # the example file, then 20 test reviews from stdin
    results = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    assert len(results) == produced, ran.explain(repo)  # sentiment tail --n
    assert {r["label"] for r in results} <= {"negative", "positive"}
    name = json.loads((tiny_checkpoint / "manifest.json").read_text())["name"]
    assert {r["model"]["name"] for r in results} == {name}  # served what SENTIMENT_CHECKPOINT names
    by_id = {r["id"]: r for r in results}
    assert by_id["order-1001"]["meta"] == {"shop": "demo"}, by_id["order-1001"]
    assert "order-1002" in by_id
    assert "物流很快" in ran.stdout  # predict --format table

    labelled = [json.loads(line) for line in (repo / "labels.jsonl").read_text().splitlines()]
    assert len(labelled) == len(lines), labelled
    assert all(r["label"] in ("negative", "positive") for r in labelled), labelled
    print(f"README using-it block: {ran.seconds:.1f} s")
