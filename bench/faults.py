"""The long fault run: one saturated stream through kill -9s, rebalances, broker outages and poison.

The harness of the fault-injection suite (``tests/faults``): a ledger that records every
input's (partition, offset) and reads the output and dead-letter topics with a consumer of its
own, and workers that run the real CLI with a slowed model (``tests/faults/fault_worker.py``).
One run, on a dev broker of its own:

1. ``--messages`` inputs are produced up front (the poison corpus ``--poison-rounds`` times,
   the rest real reviews), so the workers start with a backlog they cannot keep up with;
2. two slowed workers start, then the events run in a shuffled order while the backlog lasts:
   ``--kills`` kill -9 of a random worker at a random moment (a replacement is started),
   ``--rebalances`` times a worker joins and another leaves by SIGTERM (two rebalances each),
   ``--outages`` broker freezes of ``--outage-s`` (SIGSTOP/SIGCONT of tansu: the data is kept,
   so the ledger stays exact; a restart of the in-memory dev broker would lose every message);
3. two unslowed workers take over the rest, the slowed ones leave, and the ledger settles.

The result, ``lost`` (inputs with neither a result nor a dead letter), must be 0; duplicates
are reported with the bound the in-flight work allows, and ``unexpected_exits`` counts workers
that ended on their own or did not exit 0 on SIGTERM.

    python bench/faults.py            # the long run: bench/results/faults-cpu.json
    python bench/faults.py --quick    # a rehearsal of a few minutes (written to the temp dir)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.bases.tiny import build_tiny_checkpoint
from tests.faults.conftest import create_topics
from tests.faults.harness import Fleet, ReadyzPoller, Worker, frozen
from tests.faults.ledger import Ledger, Message, Report, Topics, reviews
from tests.faults.poison import poison_corpus
from worker.commands.dev_broker import DevBroker
from worker.ports import free_port

RESULTS = Path(__file__).resolve().parent / "results"
BATCH, IN_FLIGHT, PARTITIONS = 8, 2, 6
SATURATED = ("--batch-size", str(BATCH), "--max-in-flight", str(IN_FLIGHT))


@dataclass
class Tally:
    kills: int = 0
    rebalances: int = 0
    outages: int = 0
    not_mid_stream: int = 0  # events that came after the backlog was done
    outages_never_unready: int = 0  # freezes during which no worker's /readyz said 503
    log: list[str] = field(default_factory=list)


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.processor() or platform.machine()} / {os.cpu_count()} cores"


def inputs(total: int, rounds: int) -> tuple[list[Message], dict[str, str | None]]:
    """``total`` inputs: the poison corpus ``rounds`` times among real reviews; and what each
    poison entry (by its ``poison`` header) must become."""
    expected: dict[str, str | None] = {}
    poison: list[Message] = []
    for r in range(rounds):
        for message, reason in poison_corpus(f"bench{r}"):
            poison.append(message)
            expected[dict(message.headers)["poison"].decode()] = reason
    good = reviews(max(0, total - len(poison)), "m")
    step = max(1, len(good) // max(1, len(poison)))
    messages: list[Message] = []
    for i, message in enumerate(poison):
        messages += [*good[i * step : (i + 1) * step], message]
    return messages + good[len(poison) * step :], expected


def poison_mistakes(ledger: Ledger, report: Report, expected: dict[str, str | None]) -> list[str]:
    wrong = []
    for s in ledger.by_coords.values():
        name = dict(s.message.headers[:1]).get("poison", b"").decode()
        if not name:
            continue
        reasons = [d.reason for d in report.dead.get((s.partition, s.offset), [])]
        want = expected[name]
        if (want is None and reasons) or (want is not None and want not in reasons):
            wrong.append(f"{name}: expected {want or 'a result'}, got {reasons}")
    return wrong


class Run:
    def __init__(self, args: argparse.Namespace, fleet: Fleet, ledger: Ledger, dev: DevBroker) -> None:
        self.args, self.fleet, self.ledger, self.dev = args, fleet, ledger, dev
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.slow = ("--delay-s", str(args.delay_s))

    def note(self, what: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {what} (outputs {self.ledger.outputs()})"
        self.tally.log.append(line)
        print(line, flush=True)

    def mid_stream(self) -> None:
        if self.ledger.outputs() >= self.args.messages:
            self.tally.not_mid_stream += 1

    def start(self, *, slow: bool = True) -> Worker:
        return self.fleet.start(*SATURATED, faults=self.slow if slow else (), timeout_s=180)

    def kill(self) -> None:
        victim = self.rng.choice(self.fleet.running())
        time.sleep(self.rng.uniform(0.2, 3.0))
        self.mid_stream()
        victim.kill()
        self.tally.kills += 1
        self.note(f"kill -9 {victim.name}")
        self.start()

    def rebalance(self) -> None:
        leaver = self.rng.choice(self.fleet.running())
        joiner = self.start()
        self.tally.rebalances += 1
        self.mid_stream()
        self.note(f"{joiner.name} joined")
        rc = leaver.terminate(timeout_s=120)
        self.tally.rebalances += 1
        self.note(f"{leaver.name} left by SIGTERM: exit {rc}")

    def outage(self) -> None:
        with contextlib.ExitStack() as stack:
            pollers = [
                stack.enter_context(ReadyzPoller(w.web_port, every_s=1.0)) for w in self.fleet.running()
            ]
            self.mid_stream()
            with frozen(self.dev):
                self.note(f"broker frozen for {self.args.outage_s} s")
                time.sleep(self.args.outage_s)
        self.tally.outages += 1
        if not any(status == 503 for p in pollers for _, status, _ in p.samples):
            self.tally.outages_never_unready += 1
        for w in self.fleet.running():
            w.wait_ready(timeout_s=180)
        self.note("broker back, every worker ready")

    def keep_two(self) -> None:
        """Workers that died on their own are replaced (and counted as unexpected exits)."""
        while len(self.fleet.running()) < 2:
            self.note("a worker ended on its own; starting another")
            self.start()

    def events(self) -> None:
        a = self.args
        plan = ["kill"] * a.kills + ["rebalance"] * a.rebalances + ["outage"] * a.outages
        self.rng.shuffle(plan)
        for w in [self.start() for _ in range(2)]:
            w.wait_ready()
        for event in plan:
            getattr(self, event)()
            self.keep_two()

    def drain(self) -> Report:
        slowed = self.fleet.running()
        fast = [self.start(slow=False) for _ in range(2)]
        self.note(f"{', '.join(w.name for w in fast)} (unslowed) joined to drain")
        for w in slowed:
            rc = w.terminate(timeout_s=120)
            self.note(f"{w.name} left by SIGTERM: exit {rc}")
        report = self.ledger.wait(timeout_s=self.args.drain_timeout_s, settle_s=5)
        for w in self.fleet.running():
            w.terminate(timeout_s=120)
        return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short rehearsal (overrides the sizes below)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument(
        "--rebalances", type=int, default=5, help="join-and-leave cycles (two rebalances each)"
    )
    parser.add_argument("--outages", type=int, default=2)
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--poison-rounds", type=int, default=5)
    parser.add_argument("--delay-s", type=float, default=0.1, help="model slowdown per call: saturation")
    parser.add_argument("--drain-timeout-s", type=float, default=1800)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/faults-cpu.json")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="checkpoint and worker logs (default: temp)"
    )
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the ledger's clients, during the freezes
    if args.quick:
        args.messages, args.kills, args.rebalances, args.outages = 6000, 3, 2, 1
        args.outage_s, args.poison_rounds, args.delay_s = 45.0, 1, 0.3
    args.seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    default_out = (
        Path(tempfile.gettempdir()) / "faults-cpu-quick.json" if args.quick else RESULTS / "faults-cpu.json"
    )
    out = args.out or default_out
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"seed {args.seed}; logs in {work}", flush=True)

    checkpoint = work / "tiny"
    if not checkpoint.exists():
        build_tiny_checkpoint(checkpoint, cache_dir=work / "cache", max_length=64, seed=1)
    topics = Topics("reviews-bench", "reviews.sentiment-bench", "reviews.dlq-bench", "sentiment-bench")
    started = time.monotonic()
    with DevBroker(free_port(), log_file=work / "broker.log") as dev:
        asyncio.run(create_topics(dev.bootstrap, topics, partitions=PARTITIONS))
        with Ledger(dev.bootstrap, topics) as ledger:
            messages, expected = inputs(args.messages, args.poison_rounds)
            for i in range(0, len(messages), 10_000):
                ledger.produce(messages[i : i + 10_000])
            print(f"produced {len(messages)} inputs", flush=True)
            fleet = Fleet(dev.bootstrap, topics, checkpoint, work)
            run = Run(args, fleet, ledger, dev)
            try:
                run.events()
                report = run.drain()
            finally:
                fleet.stop_all()
            wrong = poison_mistakes(ledger, report, expected)
    tally = run.tally
    exits = fleet.unexpected_exits()
    bound = (tally.kills * (IN_FLIGHT + 2) + (tally.rebalances + 4) * (IN_FLIGHT + 1)
             + tally.outages * 3 * (IN_FLIGHT + 2)) * BATCH  # fmt: skip
    record: dict[str, Any] = {
        "bench": "faults", "case": "kill9+rebalance+freeze+poison", "model": "tiny-qwen3", "device": "cpu",
        "metric": "lost", "value": len(report.lost), "unit": "messages", "baseline": None, "ratio": None,
        "command": " ".join(["python", "bench/faults.py", *sys.argv[1:]]),
        "date": dt.date.today().isoformat(),
        "kills": tally.kills, "rebalances": tally.rebalances, "outages": tally.outages,
        "outage_s": args.outage_s, "outage_kind": "freeze (SIGSTOP/SIGCONT: data kept, exact ledger)",
        "messages": report.sent, "duplicates": report.duplicates, "duplicates_bound": bound,
        "results": report.results, "dead_letters": report.dead_letters, "unknown": report.unknown,
        "poison_rounds": args.poison_rounds, "poison_mistakes": len(wrong),
        "runs": len(fleet.workers), "unexpected_exits": len(exits),
        "events_not_mid_stream": tally.not_mid_stream, "outages_never_unready": tally.outages_never_unready,
        "seed": args.seed, "wall_s": round(time.monotonic() - started, 1), "machine": machine(),
        "quick": args.quick,
    }  # fmt: skip
    print(json.dumps(record, indent=1, ensure_ascii=False))
    for line in [*exits, *wrong, *(f"lost: {s}" for s in report.lost[:10])]:
        print(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([record], indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    sys.exit(0 if not report.lost and not exits and not wrong and report.duplicates <= bound else 1)


if __name__ == "__main__":
    main()
