"""The poison corpus (``poison.py``) among ordinary reviews, to a saturated worker.

Each bad input yields exactly one dead letter with its reason and its headers carried (the one
with 10,000 headers: ``too_large``, without them), each odd-but-valid and each ordinary review
exactly one result, and the worker's memory stays bounded.

The memory bound: the RSS once ready plus 200 MiB. The largest input is 10 MiB and may be held
a few times over at once (the fetch response, the record, its decoded text, the dead letter's
hash), the 100,000-deep JSON is refused by the parser at depth 1024, and 10,000 headers are
about 100 KiB. A worker that keeps the backlog in memory, or copies a value per retry, exceeds it.
"""

from __future__ import annotations

import hashlib
import threading

import pytest

from tests.faults.conftest import Sizes
from tests.faults.harness import Fleet
from tests.faults.ledger import Ledger, Message, reviews
from tests.faults.poison import MANY_HEADERS, poison_corpus

pytestmark = [pytest.mark.faults, pytest.mark.integration]
RSS_HEADROOM_KB = 200 * 1024
DLQ_MAX_VALUE_BYTES = 65536  # the worker's default --dlq-max-value-bytes


def test_the_poison_corpus_yields_one_dead_letter_each_and_memory_stays_bounded(
    fleet: Fleet, ledger: Ledger, sizes: Sizes
) -> None:
    expected: dict[str, str | None] = {}  # poison name (its header) -> reason, None for a result
    messages: list[Message] = []
    for r in range(sizes.poison_rounds):
        good = reviews(sizes.poison_good, f"ok{r}-")
        corpus = poison_corpus(f"p{r}")
        step = max(1, len(good) // len(corpus))
        for i, (message, reason) in enumerate(corpus):
            messages += good[i * step : (i + 1) * step]
            messages.append(message)
            expected[dict(message.headers)["poison"].decode()] = reason
        messages += good[len(corpus) * step :]
    sent = ledger.produce(messages)
    worker = fleet.start("--batch-size", "8", "--max-in-flight", "2", faults=("--delay-s", "0.05"))
    baseline_kb = worker.rss_kb()
    peak_kb, done = [baseline_kb], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak_kb.append(worker.rss_kb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        report = ledger.wait(timeout_s=sizes.drain_s)
    finally:
        done.set()
        sampler.join()
    print(f"poison ×{sizes.poison_rounds}: {report.summary}; RSS {baseline_kb} → peak {max(peak_kb)} KiB")

    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]}"
    assert report.duplicates == 0 and report.unknown == 0, report.summary
    wrong = []
    for s in sent:
        name = dict(s.message.headers[:1]).get("poison", b"").decode() or None
        reason = expected.get(name) if name else None
        dead = report.dead.get((s.partition, s.offset), [])
        got_result = s.id is not None and report.result_ids[s.id] > 0
        if reason is None and (dead or not got_result):
            wrong.append(f"{name or s.id}: expected a result, got dead letters {[d.reason for d in dead]}")
        elif reason is not None and ([d.reason for d in dead] != [reason] or got_result):
            wrong.append(f"{name}: expected one {reason} dead letter, got {[d.reason for d in dead]}"
                         f"{' and a result' if got_result else ''}")  # fmt: skip
        for d in dead:
            original = s.message.value or b""
            if name == "many-headers" and (len(d.headers) >= MANY_HEADERS or d.header("poison")):
                wrong.append(f"{name}: the dead letter carries the input's {len(d.headers)} headers")
            elif name != "many-headers" and d.header("poison") != (name or "").encode():
                wrong.append(f"{name or s.id}: the input's headers are not carried: {d.headers[:3]}")
            if d.header("original.sha256") != hashlib.sha256(original).hexdigest().encode():
                wrong.append(f"{name}: original.sha256 missing or wrong")
            if d.header("original.size") != str(len(original)).encode() or not original.startswith(d.value):
                wrong.append(f"{name}: original.size wrong, or the value is not a prefix of the original")
            if len(d.value) > DLQ_MAX_VALUE_BYTES:
                wrong.append(f"{name}: a dead letter keeps {len(d.value)} bytes of the value")
    assert not wrong, "\n".join(wrong)
    assert worker.alive() and not worker.crashed_lines(), worker.tail()
    assert max(peak_kb) - baseline_kb < RSS_HEADROOM_KB, (
        f"RSS grew from {baseline_kb} to {max(peak_kb)} KiB, over the {RSS_HEADROOM_KB} KiB bound"
    )
