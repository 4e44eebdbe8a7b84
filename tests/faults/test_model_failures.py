"""The model fails under load: out of memory, one bad text, a broken device, a hung call (alone
and in one of `--processes 2`).

Faults are injected into the engine's ``forward`` (``fault_worker.py``), under the engine's
split-on-OOM and the worker's one-by-one retry, so the real recovery code runs.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import psutil
import pytest

from tests.faults.conftest import Sizes
from tests.faults.harness import Fleet, ReadyzPoller, children
from tests.faults.ledger import Ledger, Message, Report, reviews

pytestmark = [pytest.mark.faults, pytest.mark.integration]
SATURATED = ("--batch-size", "8", "--max-in-flight", "2")
MARKER = "FAULTMARKER"
EXIT_MODEL_BROKEN = 71


def healthz(port: int) -> int:
    """The status of ``/healthz`` (the liveness probe)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_oom_on_big_batches_is_split_and_answers_everything(
    fleet: Fleet, ledger: Ledger, sizes: Sizes
) -> None:
    """OOM on every call of more than 3 texts: the engine halves the batch until it fits."""
    ledger.produce(reviews(sizes.model_backlog, "o"))
    worker = fleet.start(*SATURATED, faults=("--delay-s", "0.01", "--oom-over", "3"))
    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"OOM over 3 texts: {report.summary}")
    assert not report.lost and report.duplicates == 0, report.summary
    assert report.dead_letters == 0, f"{report.summary}: an OOM split must not dead-letter anything"
    assert "out of memory on a batch of" in worker.log_text(), "the OOM never happened"
    assert worker.alive() and not worker.crashed_lines(), worker.tail()


def test_a_failing_text_is_dead_lettered_alone(fleet: Fleet, ledger: Ledger, sizes: Sizes) -> None:
    """Every 13th text makes the model raise: exactly those become ``model_error`` dead letters,
    after the worker has retried its batch one text at a time."""
    messages = reviews(sizes.model_backlog, "x")
    for i in range(0, len(messages), 13):
        rid = messages[i].id
        messages[i] = Message(rid, orjson.dumps({"id": rid, "text": f"{MARKER} 不好"}), key=messages[i].key)
    marked = {m.id for m in messages if m.value is not None and MARKER.encode() in m.value}
    ledger.produce(messages)
    worker = fleet.start(*SATURATED, faults=("--delay-s", "0.02", "--fail-marker", MARKER))
    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"a failing text: {report.summary}")
    assert not report.lost and report.duplicates == 0, report.summary
    dead_ids = {ledger.by_coords[c].id: [d.reason for d in ds] for c, ds in report.dead.items()}
    assert set(dead_ids) == marked, (
        f"wrongly dead-lettered or not: {sorted(map(str, set(dead_ids) ^ marked))[:10]}"
    )
    assert all(r == ["model_error"] for r in dead_ids.values()), dead_ids
    assert set(report.result_ids) == {m.id for m in messages} - marked
    assert worker.alive() and not worker.crashed_lines(), worker.tail()


def test_a_broken_device_stops_the_worker_without_committing(
    fleet: Fleet, ledger: Ledger, sizes: Sizes
) -> None:
    """After 15 calls every forward fails (an illegal memory access: the device is gone). The
    worker must not dead-letter the stream as model errors: it turns not ready and exits 71
    without committing the failing batch, so a healthy worker answers every input afterwards."""
    n = sizes.model_backlog
    ledger.produce(reviews(n, "d"))
    broken = fleet.start(*SATURATED, faults=("--delay-s", "0.02", "--broken-after", "15"))
    with ReadyzPoller(broken.web_port, every_s=0.1) as poll:
        rc = broken.wait_exit(timeout_s=60)
    at_exit = ledger.outputs()
    statuses = [status for _, status, _ in poll.samples]
    assert rc == EXIT_MODEL_BROKEN, f"exit code {rc}, /readyz {statuses[-5:]}\n{broken.tail()}"
    assert 0 < at_exit < n, f"{at_exit} outputs before the device broke: it must break mid-stream"

    fleet.start(*SATURATED)
    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"broken device, exit {rc} at {at_exit} outputs: {report.summary}")
    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]}"
    assert report.dead_letters == 0, (
        f"{report.summary}: texts of the broken period became dead letters "
        f"({[d.reason for ds in report.dead.values() for d in ds][:5]})"
    )
    assert report.duplicates <= 3 * 8, report.summary  # only what was in flight at the exit


def test_a_hung_model_call_makes_the_worker_not_ready_until_it_returns(
    fleet: Fleet, ledger: Ledger, sizes: Sizes
) -> None:
    """The 10th call hangs 6 s, past ``--stuck-batch-s 2``: /readyz 503 ``stuck`` and /healthz
    503 (liveness: a restart is the cure) while it hangs, both 200 after, and nothing lost."""
    n = sizes.model_backlog
    ledger.produce(reviews(n, "h"))
    faults = ("--delay-s", "0.02", "--hang-at", "10", "--hang-s", "6")
    worker = fleet.start(*SATURATED, "--stuck-batch-s", "2", faults=faults)
    with ReadyzPoller(worker.web_port) as poll:
        worker.wait_log("hangs for")
        hung_at, outputs_at_hang = poll.now(), ledger.outputs()
        time.sleep(3)  # past --stuck-batch-s: liveness fails, so Kubernetes would restart the pod
        live_while_hung = healthz(worker.web_port)
        worker.wait_log("resumes")
        resumed_at = poll.now()
        deadline = time.monotonic() + 30
        while poll.samples[-1][1] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"a hung call at {outputs_at_hang} outputs: {report.summary}")
    hung = poll.between(hung_at + 2.5, resumed_at - 0.5)  # the margin: the test sees the resume late
    assert outputs_at_hang < n, "the hang came after the backlog was done"
    assert hung and all(s == 503 and b is not None and b["stuck"] for _, s, b in hung), hung[-3:]
    assert poll.samples[-1][1] == 200, f"not ready again after the hung call: {poll.samples[-1]}"
    assert live_while_hung == 503, f"/healthz answered {live_while_hung} while the model call hung"
    assert healthz(worker.web_port) == 200
    assert not report.lost and report.duplicates == 0, report.summary
    assert worker.alive() and not worker.crashed_lines(), worker.tail()


def assert_replaced_alone(report: Report, hung_pid: int, other: psutil.Process, batch: int = 16) -> None:
    """Every input answered once, repeats within what was in flight, no dead letter; the hung
    child gone, the other one never stopped."""
    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]}"
    assert report.duplicates <= (4 + 2) * batch, report.summary  # the default --max-in-flight is 4
    assert report.dead_letters == 0, report.summary
    assert not psutil.pid_exists(hung_pid) or psutil.Process(hung_pid).status() == psutil.STATUS_ZOMBIE
    assert other.is_running() and other.status() != psutil.STATUS_ZOMBIE, "the healthy child was stopped"


def test_processes_2_a_child_whose_model_call_hangs_is_replaced_and_nothing_is_stuck(
    fleet: Fleet, ledger: Ledger, sizes: Sizes, tmp_path: Path
) -> None:
    """``--processes 2``, an unslowed tiny model, a backlog: one child's 20th model call hangs for
    good (a wedged GPU). It goes on heartbeating, so Kafka leaves its partitions with it; a pod's
    liveness probe reaches only the first port. The parent probes each child's /healthz: after
    three failures in a row it replaces the hung one (SIGTERM, SIGKILL after 60 s), and the
    partitions it held are worked again. The ledger: every input answered; the other child is
    left alone."""
    n = sizes.processes_backlog
    ledger.produce(reviews(n, "g"))
    hang = (
        "--in-children",
        "--hang-at",
        "20",
        "--hang-s",
        "3600",
        "--hang-once-file",
        str(tmp_path / "hung"),
    )
    parent, ports = fleet.start_processes("--batch-size", "16", "--stuck-batch-s", "5", faults=hang)
    kids = {kid.pid: kid for kid in children(parent.pid)}
    parent.wait_log("hangs for", timeout_s=120)
    at_hang = ledger.outputs()
    [hung_pid] = [int(pid) for pid in re.findall(r"hangs for \S+ s \(pid (\d+)\)", parent.log_text())]
    [other] = [kid for pid, kid in kids.items() if pid != hung_pid]
    parent.wait_log("checks in a row: replacing it", timeout_s=120)
    parent.wait_ports_ready(ports, timeout_s=150)  # the replacement too

    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"--processes 2, a child hung at {at_hang} outputs: {report.summary}")
    assert at_hang < n, "the hang came after the backlog was done: not mid-stream"
    assert_replaced_alone(report, hung_pid, other)
    log = parent.log_text()
    assert "model call hung" in log and "stopping the others" not in log, parent.tail()
    assert parent.terminate() == 0, parent.tail()


def test_processes_2_a_child_whose_model_load_hangs_is_restarted_by_its_start_deadline(
    fleet: Fleet, ledger: Ledger, sizes: Sizes, tmp_path: Path
) -> None:
    """``--processes 2`` and a backlog: one child's model loading hangs for good in a C call that
    holds the GIL (CUDA initialisation on a failing GPU). It never serves /healthz, and a port
    that refuses is one still loading to the parent's probe: before the start deadline, the slot
    and its GPU stayed dead for good, the other child doing all the work. Now, past
    ``--start-timeout-s``, faulthandler's watchdog (no GIL needed) prints the stacks and exits 1;
    the parent restarts it, and its replacement serves. The ledger: every input answered."""
    n = sizes.processes_backlog
    ledger.produce(reviews(n, "s"))
    hang = ("--in-children", "--load-hang-s", "3600", "--hang-once-file", str(tmp_path / "hung"))
    parent, ports = fleet.start_processes(
        "--batch-size", "16", "--start-timeout-s", "15", faults=hang, ready=False
    )  # fmt: skip
    kids = {kid.pid: kid for kid in children(parent.pid)}
    parent.wait_log("model loading hangs", timeout_s=120)
    [hung_pid] = [int(pid) for pid in re.findall(r"model loading hangs .* \(pid (\d+)\)", parent.log_text())]
    [other] = [kid for pid, kid in kids.items() if pid != hung_pid]
    parent.wait_log("exited with 1; restarting it", timeout_s=120)
    parent.wait_ports_ready(ports, timeout_s=180)  # the restarted one too

    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"--processes 2, a child's model loading hung: {report.summary}")
    assert_replaced_alone(report, hung_pid, other)
    log = parent.log_text()
    # the GIL was held: faulthandler's watchdog fired, naming where the load hung
    assert "Timeout (0:00:25)!" in log and "in hang_holding_the_gil" in log, parent.tail()
    assert "stopping the others" not in log, parent.tail()
    assert parent.terminate() == 0, parent.tail()
