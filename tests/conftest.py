"""Shared fixtures: tiny Qwen3 checkpoints (real tokenizer, real loading code) and the dev broker."""

from __future__ import annotations

import os

# OpenMP threads (torch, MKL, scikit-learn) that finish a parallel region sleep instead of spinning
# until the next one. Set before torch is imported, here and in every process the tests start
# (workers, CLIs, the embeddings server inherit it): thread counts, and so results, are unchanged,
# but under `-n 2` on 2 cores spinning threads took the CPU from the other worker's tests (two
# training tests alone: 51 s of CPU spinning, 29 s sleeping, the same 32 s wall time).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.bases.tiny import build_tiny_checkpoint


def pytest_addoption(parser: pytest.Parser) -> None:
    """Sizes for the fault-injection suite (tests/faults): quick by default, so CI can run it."""
    group = parser.getgroup("faults", "fault injection (tests/faults)")
    group.addoption("--long", action="store_true", help="long sizes: more kills, longer outages")
    group.addoption("--quick", action="store_true", help="quick sizes (the default)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("long") and config.getoption("quick"):
        raise pytest.UsageError("--long and --quick exclude each other")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the converted Qwen tokenizer is cached for the whole session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A random tiny Qwen3 sequence classifier, saved and loaded like a real one."""
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny", cache_dir=cache_dir, max_length=64, seed=1
    )


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """The real dev broker (tansu) on a free port, for the whole session; yields host:port."""
    from worker.commands.dev_broker import DevBroker
    from worker.ports import free_port

    with DevBroker(free_port()) as dev:
        yield dev.bootstrap


@pytest.fixture
def topics() -> dict[str, str]:
    """Topic and group names unique to one test, so tests sharing the broker never collide."""
    tag = uuid.uuid4().hex[:10]
    return {
        "input": f"reviews-{tag}",
        "output": f"reviews.sentiment-{tag}",
        "dlq": f"reviews.dlq-{tag}",
        "group": f"sentiment-test-{tag}",
    }


FAULT_SUITE = "tests/faults/"
# modules whose tests go to one worker together, as one unit: those whose module-scoped fixtures are
# slow to build (trained checkpoints, hub-like bases, an embeddings server), so each fixture is built
# once, not twice; and test_tooling, whose mypy run (~30 s) would otherwise be handed out last of
# all (units of several tests go out first, single tests in collection order), to run alone on one
# worker while the other had nothing left
ONE_WORKER_MODULES = (
    "tests/model/test_hub_bases.py",
    "tests/model/test_trainers.py",
    "tests/model/test_embedding_head.py",
    "tests/model/test_load_noise.py",
    "tests/integration/test_trained_checkpoints.py",
    "tests/integration/test_remote_embeddings.py",
    "tests/unit/test_tooling.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under the README's `-n 2 --dist loadgroup` the fault suite runs on one xdist worker, one test
    at a time, as its sizes were chosen for; the other tests are shared out between both workers
    (each worker starts its own dev broker); the tests of each of ``ONE_WORKER_MODULES`` go to
    one worker together, as one unit (why: see there).

    xdist's own loadgroup marks a group by renaming ``item._nodeid``, which pytest 9.2 no longer
    reads (``nodeid`` comes from ``_id``), so its groups fell apart silently and the fault tests
    ran on both workers at once. This scheduler keys the group on the test's path instead."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FaultSuiteTogether(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(FAULT_SUITE):
                return FAULT_SUITE
            module = nodeid.split("::", 1)[0]
            if module in ONE_WORKER_MODULES:
                return module
            return str(super()._split_scope(nodeid))

    return FaultSuiteTogether(config, log)
