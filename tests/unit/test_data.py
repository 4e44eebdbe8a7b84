"""Reading labelled files, de-duplication, leak checks and splits."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from models.demo.splits import SPLIT_NAMES, build_demo_splits, demo_path, demo_splits
from models.text_lines import DataError, NotUtf8Error, Skipped, utf8_lines
from models.training.data import (
    LabelledText,
    deduplicate,
    leaks,
    parse_label_map,
    prepare_splits,
    read_labelled,
    split,
)
from schemas.errors import ConfigError

LABELS = ("negative", "positive")


def write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.tsv", "text\tlabel\n很好\tpositive\n太差了\t0\n"),
        ("d.csv", "sentence,label\n很好,1\n太差了,negative\n"),
        ("d.csv", "label,text\npositive,很好\n0,太差了\n"),
        ("d.jsonl", '{"text": "很好", "label": 1}\n\n{"text": "太差了", "label": "negative"}\n'),
    ],
)
def test_each_format_reads_names_and_indices(tmp_path: Path, name: str, content: str) -> None:
    assert read_labelled(write(tmp_path, name, content), LABELS) == [
        LabelledText("很好", "positive"),
        LabelledText("太差了", "negative"),
    ]


def test_label_map_turns_star_ratings_into_three_classes(tmp_path: Path) -> None:
    path = write(tmp_path, "stars.tsv", "差\t1\n一般\t3\n好\t5\n")
    stars = {"1": "negative", "2": "negative", "3": "neutral", "4": "positive", "5": "positive"}
    got = read_labelled(path, ("negative", "neutral", "positive"), label_map=stars)
    assert [ex.label for ex in got] == ["negative", "neutral", "positive"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.tsv", "很好\tpositive\n太差了\tmeh\n", r"d\.tsv:2: label 'meh' is not one of"),
        ("d.tsv", "很好\tpositive\nno tab here\n", r"d\.tsv:2: expected 'text<TAB>label'"),
        ("d.tsv", "很好\t7\n", r"d\.tsv:1: label '7'"),
        ("d.tsv", " \tpositive\n", r"d\.tsv:1: empty text"),
        ("d.csv", "body,label\nx,1\n", r"d\.csv:1: a CSV needs a header"),
        ("d.jsonl", '{"text": "x", "label": 1}\n{"text": 5}\n', r"d\.jsonl:2: needs an object"),
        ("d.jsonl", "{oops\n", r"d\.jsonl:1: not valid JSON"),
    ],
)
def test_a_bad_row_is_named_by_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_labelled(write(tmp_path, name, content), LABELS)


def test_deduplicate_drops_repeats_and_contradictions() -> None:
    data = [LabelledText(t, lb) for t, lb in [("a", "positive"), ("b", "negative"), ("a", "positive"),
                                               ("c", "positive"), ("c", "negative")]]  # fmt: skip
    result = deduplicate(data)
    assert result.examples == [LabelledText("a", "positive"), LabelledText("b", "negative")]
    assert result.duplicates == 1
    assert result.conflicts == ["c"]


def test_split_is_seeded_stratified_and_leak_free() -> None:
    data = [LabelledText(f"neg {i}", "negative") for i in range(60)] + [
        LabelledText(f"pos {i}", "positive") for i in range(40)
    ]
    a, b = split(data, seed=3), split(data, seed=3)
    assert a == b
    assert (len(a.train), len(a.dev), len(a.test)) == (80, 10, 10)
    assert sum(ex.label == "positive" for ex in a.test) == 4
    assert leaks(a.train, a.dev) == [] and leaks(a.train, a.test) == []
    assert leaks(a.train, [a.train[0]]) == [a.train[0].text]


def test_prepare_holds_out_dev_and_removes_leaked_texts(tmp_path: Path) -> None:
    rows = [f"第{i}条评论\t{'positive' if i % 2 else 'negative'}" for i in range(100)]
    train = write(
        tmp_path, "train.tsv", "\n".join([*rows, rows[0], "矛盾\tpositive", "矛盾\tnegative"]) + "\n"
    )
    test = write(tmp_path, "test.tsv", "第3条评论\tpositive\n新的评论\tnegative\n")
    data = prepare_splits(train, None, test, LABELS, seed=1)
    s = data.splits
    assert len(s.train) + len(s.dev) == 100 and len(s.dev) == 10
    assert not leaks(s.train, s.dev)
    assert {ex.label for ex in s.dev} == set(LABELS)  # stratified
    assert "10% of" in data.sources["dev"]
    assert any(
        "dropped 1 repeated text(s) and 1 text(s) that carry contradicting labels" in n for n in data.notes
    )
    if "第3条评论" in {ex.text for ex in s.train}:
        assert [ex.text for ex in s.test] == ["新的评论"]
        assert any("1 text(s) of the test split also occur in train" in n for n in data.notes)


def test_label_map_maps_star_ratings_to_three_classes(tmp_path: Path) -> None:
    path = write(tmp_path, "stars.csv", "text,label\n很好,5\n一般,3\n很差,1\n")
    mapping = parse_label_map("1=negative,2=negative,3=neutral,4=positive,5=positive")
    got = read_labelled(path, ("negative", "neutral", "positive"), label_map=mapping)
    assert [ex.label for ex in got] == ["positive", "neutral", "negative"]
    with pytest.raises(DataError, match="not RAW=LABEL"):
        parse_label_map("1=negative,oops")


def test_shipped_demo_splits_are_exactly_what_the_builder_makes() -> None:
    shipped, rebuilt = demo_splits(), build_demo_splits()
    for name in SPLIT_NAMES:
        assert getattr(shipped, name) == getattr(rebuilt, name), name
    assert (len(shipped.train), len(shipped.dev), len(shipped.test)) == (13891, 1736, 1736)
    texts = [{ex.text for ex in getattr(shipped, n)} for n in SPLIT_NAMES]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert "MIT" in (demo_path("train").parent / "NOTICE").read_text()


def test_utf8_lines_numbers_every_line_and_drops_endings_and_bom() -> None:
    raw = io.BytesIO("\ufeff很好\r\n\n  太差了 \nlast".encode())
    assert list(utf8_lines(raw, "r.txt")) == [(1, "很好"), (2, ""), (3, "  太差了 "), (4, "last")]
    raw.seek(0)
    assert [t for _, t in utf8_lines(raw, "r.txt", keepends=True)] == [
        "很好\r\n",
        "\n",
        "  太差了 \n",
        "last",
    ]


def test_utf8_lines_names_the_file_line_byte_and_column_of_gbk_text() -> None:
    raw = io.BytesIO("ok\n好".encode() + "物流很快".encode("gbk") + b"\nnever read\n")
    lines = utf8_lines(raw, "reviews.txt")
    assert next(lines) == (1, "ok")
    with pytest.raises(NotUtf8Error) as info:
        next(lines)
    assert str(info.value) == (
        "reviews.txt:2: not UTF-8 (byte 0xce at column 2); convert it first, e.g. iconv -f GBK -t UTF-8"
    )
    assert isinstance(info.value, ConfigError)  # the CLI prints it as one line, exit 2
    assert (info.value.line, info.value.kind) == (2, "not UTF-8")


def test_utf8_lines_hands_a_bad_line_to_on_error_in_its_place_and_goes_on() -> None:
    seen: list[tuple[int, str]] = []
    raw = io.BytesIO(b"a\n\xff\xfe\nb\n")
    for n, text in utf8_lines(raw, "<stdin>", on_error=lambda err: seen.append((err.line, str(err)))):
        seen.append((n, text))
    assert [n for n, _ in seen] == [1, 2, 3]
    assert seen[0] == (1, "a") and seen[2] == (3, "b")
    assert seen[1][1].startswith("<stdin>:2: not UTF-8 (byte 0xff at column 1); convert it first")


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("d.tsv", "很好\tpositive\n", "物流很快\tpositive\n"),
        ("d.csv", "text,label\n很好,1\n", "物流很快,1\n"),
        ("d.jsonl", '{"text": "很好", "label": 1}\n', '{"text": "物流很快", "label": 1}\n'),
    ],
)
def test_a_gbk_row_is_a_bad_row_named_by_file_and_line(
    tmp_path: Path, name: str, good: str, bad: str
) -> None:
    path = tmp_path / name
    path.write_bytes(good.encode() + bad.encode("gbk") + good.splitlines(keepends=True)[-1].encode())
    line = len(good.splitlines()) + 1
    with pytest.raises(NotUtf8Error, match=rf"d\.{path.suffix[1:]}:{line}: not UTF-8 \(byte 0xce at column "):
        read_labelled(path, LABELS)
    skipped = Skipped(str(path))
    assert [ex.text for ex in read_labelled(path, LABELS, skipped=skipped)] == ["很好", "很好"]
    assert skipped.summary() == f"skipped 1 row of {path}: 1 not UTF-8 ({path}:{line})"


def test_skipped_rows_are_counted_by_reason_with_the_first_line_of_each(tmp_path: Path) -> None:
    rows = ["好\tpositive", "差\tmeh", "no tab", "也好\t1", "差\t9", " \t0", "还行\tpositive"]
    path = tmp_path / "train.tsv"
    path.write_bytes("\n".join(rows).encode() + b"\n" + "坏".encode("gbk") + b"\tpositive\n")
    skipped = Skipped("train.tsv")
    got = read_labelled(path, LABELS, skipped=skipped)
    assert [ex.text for ex in got] == ["好", "也好", "还行"]
    assert skipped.total == 5
    assert skipped.summary() == (
        "skipped 5 rows of train.tsv: 2 unknown label (first at train.tsv:2), 1 no tab (train.tsv:3), "
        "1 empty text (train.tsv:6), 1 not UTF-8 (train.tsv:8)"
    )
    with pytest.raises(DataError, match=r"train\.tsv:2: label 'meh'"):
        read_labelled(path, LABELS)


def test_csv_rows_keep_their_line_numbers_around_a_skipped_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b'text,label\n"two\nlines",1\n' + "坏".encode("gbk") + b",1\nok,seven\n")
    skipped = Skipped("d.csv")
    assert read_labelled(path, LABELS, skipped=skipped) == [LabelledText("two\nlines", "positive")]
    assert skipped.breakdown() == "1 not UTF-8 (d.csv:4), 1 unknown label (d.csv:5)"


def test_every_row_skipped_still_says_no_examples_and_why(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '{"text": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"d\.jsonl: no examples \(skipped 2 rows of .*1 not a text/label"):
        read_labelled(path, LABELS, skipped=Skipped(str(path)))


def test_prepare_with_skip_bad_notes_what_it_skipped(tmp_path: Path) -> None:
    rows = [f"第{i}条评论\t{'positive' if i % 2 else 'negative'}" for i in range(40)]
    train = write(tmp_path, "train.tsv", "\n".join([*rows[:17], "坏的\tmeh", *rows[17:]]) + "\n")
    with pytest.raises(DataError, match=r"train\.tsv:18: label 'meh'"):
        prepare_splits(train, None, None, LABELS)
    data = prepare_splits(train, None, None, LABELS, skip_bad=True)
    assert len(data.splits.train) + len(data.splits.dev) == 40
    assert f"skipped 1 row of {train}: 1 unknown label ({train}:18)" in data.notes
