"""`sentiment predict`, `eval` and `train head|lora` on a bad day, through the real console script:
Ctrl-C and SIGTERM mid-file, malformed lines, files in another encoding, empty input."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from worker.commands.predict import CHUNK

if TYPE_CHECKING:
    from models.engine.classifier import Qwen3Engine

GBK = "物流很快".encode("gbk")  # what a Windows tool in a Chinese locale saves
GBK_ERROR = "not UTF-8 (byte 0xce at column 1); convert it first, e.g. iconv -f GBK -t UTF-8"
WORDS = [
    "物流很快",
    "质量很好",
    "太差了",
    "一般般",
    "还会再来",
    "包装破损",
    "客服态度好",
    "不推荐",
    "非常满意",
]


def sentiment(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "worker", *map(str, args)], input=stdin, capture_output=True, timeout=120
    )
    out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert "Traceback" not in out.stderr, out.stderr
    return out


def reviews(n: int, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    return [f"{i} " + "".join(r.choice(WORDS) for _ in range(r.randint(1, 4))) for i in range(n)]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path) -> Qwen3Engine:
    """The same checkpoint loaded in this process: the independent reference for the CLI's output."""
    from models.engine.classifier import load_classifier

    return load_classifier(tiny_checkpoint, device="cpu")


def expected_json(engine: Qwen3Engine, texts: list[str]) -> list[dict[str, object]]:
    labels = engine.info.labels
    return [
        {
            "text": text,
            "label": labels[p.label_id],
            "label_id": p.label_id,
            "scores": dict(zip(labels, p.probabilities, strict=True)),
            "truncated": p.truncated,
        }
        for text, p in zip(texts, engine.classify(texts), strict=True)
    ]


@pytest.mark.parametrize(
    ("sig", "code", "fmt"),
    [(signal.SIGINT, 130, "json"), (signal.SIGTERM, 143, "table")],
    ids=["int", "term"],
)
def test_a_signal_mid_file_leaves_whole_lines_of_what_was_finished(
    tmp_path: Path, tiny_checkpoint: Path, engine: Qwen3Engine, sig: int, code: int, fmt: str
) -> None:
    texts = reviews(40_000)  # far more than the tiny model classifies before the signal comes
    src = tmp_path / "big.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    dst = tmp_path / "out"
    header = 1 if fmt == "table" else 0
    cmd = [sys.executable, "-m", "worker", "predict", "--checkpoint", str(tiny_checkpoint),
           "--device", "cpu", "--file", str(src), "--format", fmt]  # fmt: skip
    with dst.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while dst.read_bytes().count(b"\n") < header + CHUNK:  # the first chunk is out: mid-run now
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "no results within 90 s"
            time.sleep(0.02)
        proc.send_signal(sig)
        stderr = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    data = dst.read_bytes()
    assert data.endswith(b"\n")  # no half line
    lines = data.decode().splitlines()[header:]
    n = len(lines)
    assert n % CHUNK == 0 and 0 < n < len(texts)
    assert stderr.splitlines() == [
        f"interrupted: wrote {n} of {len(texts)} results (input lines 1-{n} of {src}; "
        f"the rest: tail -n +{n + 1} {src})"
    ]
    if fmt == "json":
        assert [orjson.loads(line) for line in lines] == expected_json(engine, texts[:n])
    else:
        labels = engine.info.labels
        assert data.decode().splitlines()[0].split() == ["label", "score", "trunc", "text"]
        assert [line.split(None, 3) for line in lines] == [
            [labels[p.label_id], f"{p.probabilities[p.label_id]:.3f}", "yes" if p.truncated else "no", t]
            for t, p in zip(texts[:n], engine.classify(texts[:n]), strict=True)
        ]


def mixed_file(tmp_path: Path) -> tuple[Path, list[str]]:
    """Lines 1-50 and 52 good, 51 bad JSON, 53 a JSON line without text, 54 blank, 55 GBK, 56 good
    JSON; returns the file and its good texts in order."""
    good = reviews(52, seed=1)
    lines = [t.encode() for t in good[:50]] + [
        b'{"text": "\xe5\xa5\xbd',
        good[50].encode(),
        b'{"txt": "x"}',
        b"",
        GBK,
        orjson.dumps({"text": good[51]}),
    ]
    src = tmp_path / "reviews.txt"
    src.write_bytes(b"\n".join(lines) + b"\n")
    return src, good


def test_bad_lines_get_error_records_in_their_place_and_exit_3(
    tmp_path: Path, tiny_checkpoint: Path, engine: Qwen3Engine
) -> None:
    src, good = mixed_file(tmp_path)
    proc = sentiment("predict", "--checkpoint", tiny_checkpoint, "--device", "cpu", "--file", src)
    assert proc.returncode == 3, proc.stderr
    got = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert len(got) == 55  # one per non-blank input line
    errors = {i: got.pop(i) for i in (53, 52, 50)}
    assert errors[50]["line"] == 51 and str(errors[50]["error"]).startswith("not valid JSON: ")
    assert errors[52] == {"line": 53, "error": "JSON line has no string 'text' field"}
    assert errors[53] == {"line": 55, "error": GBK_ERROR}
    assert got == expected_json(engine, good)
    warning, summary = proc.stderr.splitlines()
    assert warning.startswith(f"warning: {src}:51: not valid JSON: ")
    assert summary == (
        f"3 bad lines of {src} got an error record in place of a result: 1 not valid JSON ({src}:51), "
        f"1 no string 'text' ({src}:53), 1 not UTF-8 ({src}:55)"
    )


def test_skip_bad_leaves_bad_lines_out_counts_them_and_exits_0(
    tmp_path: Path, tiny_checkpoint: Path, engine: Qwen3Engine
) -> None:
    src, good = mixed_file(tmp_path)
    proc = sentiment(
        "predict", "--checkpoint", tiny_checkpoint, "--device", "cpu", "--file", src,
        "--skip-bad", "--format", "table",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["label", "score", "trunc", "text"]
    labels = engine.info.labels
    assert [row.split(None, 3)[::3] for row in rows] == [
        [labels[p.label_id], t] for t, p in zip(good, engine.classify(good), strict=True)
    ]
    assert proc.stderr.splitlines()[-1] == (
        f"skipped 3 bad lines of {src}: 1 not valid JSON ({src}:51), 1 no string 'text' ({src}:53), "
        f"1 not UTF-8 ({src}:55)"
    )


def test_gbk_on_stdin_is_reported_by_line_without_loading_the_model(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-checkpoint"  # loading it would fail: the run must not need it
    proc = sentiment("predict", "--checkpoint", nowhere, stdin=GBK + b"\n\n" + GBK + b"\n")
    assert proc.returncode == 3, proc.stderr
    assert [orjson.loads(line) for line in proc.stdout.splitlines()] == [
        {"line": 1, "error": GBK_ERROR},
        {"line": 3, "error": GBK_ERROR},
    ]
    then = "an error record takes its place; bad lines are counted at the end"
    assert proc.stderr.splitlines() == [
        f"warning: <stdin>:1: {GBK_ERROR} ({then})",
        "2 bad lines of <stdin> got an error record in place of a result: 2 not UTF-8 (first at <stdin>:1)",
    ]


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_empty_input_says_so_and_exits_2(tmp_path: Path, tiny_checkpoint: Path, via: str) -> None:
    src = tmp_path / "empty.txt"
    src.write_text("\n \n")
    if via == "file":
        proc = sentiment("predict", "--checkpoint", tiny_checkpoint, "--file", src)
        assert proc.stderr == f"error: {src} holds no text to classify\n"
    else:
        proc = sentiment("predict", "--checkpoint", tiny_checkpoint, stdin=src.read_bytes())
        assert (
            proc.stderr
            == "error: <stdin> holds no text to classify (give --text, --file, or lines on stdin)\n"
        )
    assert proc.returncode == 2 and proc.stdout == ""


def labelled_rows(tmp_path: Path, name: str = "data.tsv") -> Path:
    """12 good rows, an unknown label at line 5, a GBK row at line 9."""
    rows = [f"{t}\t{i % 2}".encode() for i, t in enumerate(reviews(12, seed=2))]
    rows.insert(4, "还行\tmeh".encode())
    rows.insert(8, GBK + b"\tpositive")
    path = tmp_path / name
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


@pytest.mark.parametrize("case", ["gbk", "unknown label"])
def test_eval_stops_at_a_bad_row_with_file_line_and_the_way_around(
    tmp_path: Path, tiny_checkpoint: Path, case: str
) -> None:
    data = labelled_rows(tmp_path)
    if case == "gbk":
        data.write_bytes(b"\xe5\xa5\xbd\t1\n" + GBK + b"\t1\n")
        expected = f"error: {data}:2: {GBK_ERROR}; --skip-bad leaves such rows out\n"
    else:
        expected = (
            f"error: {data}:5: label 'meh' is not one of ['negative', 'positive'] nor an index 0..1; "
            "--skip-bad leaves such rows out\n"
        )
    proc = sentiment("eval", "--checkpoint", tiny_checkpoint, "--data", data)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, expected, "")


def test_eval_skip_bad_skips_and_says_how_many_and_why(tmp_path: Path, tiny_checkpoint: Path) -> None:
    data = labelled_rows(tmp_path)
    proc = sentiment("eval", "--checkpoint", tiny_checkpoint, "--data", data, "--skip-bad", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"note: skipped 2 rows of {data}: 1 unknown label ({data}:5), 1 not UTF-8 ({data}:9)"
    ]
    assert orjson.loads(proc.stdout)["n"] == 12


@pytest.mark.parametrize("split", ["--train", "--dev", "--test"])
@pytest.mark.parametrize("command", ["head", "lora"])
def test_train_stops_at_a_gbk_row_of_any_split(tmp_path: Path, command: str, split: str) -> None:
    good = tmp_path / "good.tsv"
    good.write_text("".join(f"{t}\t{i % 2}\n" for i, t in enumerate(reviews(12, seed=2))), encoding="utf-8")
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"\xe5\xa5\xbd\t1\n" * 3 + GBK + b"\t1\n")
    files = {"--train": good, "--dev": good, "--test": good, split: bad}
    base = tmp_path / "base"
    base.mkdir()
    data = [arg for opt, path in files.items() for arg in (opt, path)]
    proc = sentiment("train", command, "--base", base, "--out", tmp_path / "out", *data)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"error: {bad}:4: {GBK_ERROR}; --skip-bad leaves such rows out"


@pytest.mark.parametrize("command", ["head", "lora"])
def test_train_skip_bad_skips_and_says_how_many_and_why(tmp_path: Path, command: str) -> None:
    data = labelled_rows(tmp_path)
    base = tmp_path / "base"
    base.mkdir()  # no model in it: the run stops right after reading the data
    proc = sentiment(
        "train", command, "--base", base, "--out", tmp_path / "out", "--train", data, "--skip-bad"
    )
    assert proc.stderr.splitlines()[0] == (
        f"note: skipped 2 rows of {data}: 1 unknown label ({data}:5), 1 not UTF-8 ({data}:9)"
    )
    assert "data: 10 train, 2 dev, 0 test examples" in proc.stderr
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1] == f"error: {base} has no config.json"
