"""Text files read as UTF-8 one line at a time, and bad rows reported by file and line.

Shared by ``predict`` and ``produce`` (reviews, one per line) and the trainers' data files
(:mod:`models.training.data`): a file in another encoding is reported by file, line, byte and column,
with the command that converts it, not as a bare ``UnicodeDecodeError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from schemas.errors import ConfigError


class DataError(ConfigError):
    """A data file that cannot be used as given; the message names the file and line."""


class BadRow(DataError):
    """One unusable row (or line) of a data file: ``"{name}:{line}: {detail}"``.

    ``kind`` is a short reason for counting in summaries (``"unknown label"``, ``"not UTF-8"``,
    ``"not valid JSON"``, …); ``detail`` is the full reason without the file and line.
    """

    def __init__(self, name: str, line: int, kind: str, detail: str) -> None:
        super().__init__(f"{name}:{line}: {detail}")
        self.name, self.line, self.kind, self.detail = name, line, kind, detail


class NotUtf8Error(BadRow):
    """A line whose bytes are not UTF-8; the message names the byte and column and how to convert."""

    def __init__(self, name: str, line: int, raw: bytes, exc: UnicodeDecodeError) -> None:
        column = len(raw[: exc.start].decode("utf-8")) + 1  # the bytes before the bad one are UTF-8
        super().__init__(
            name,
            line,
            "not UTF-8",
            f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); convert it first, "
            f"e.g. iconv -f {_guess_encoding(raw[exc.start :])} -t UTF-8",
        )


def _guess_encoding(raw: bytes) -> str:
    """GBK when the line's bytes from the bad one on read as GBK (Chinese text saved by older Windows
    tools, the likely case here), else a stand-in."""
    try:
        raw.rstrip(b"\r\n").decode("gbk")
    except UnicodeDecodeError:
        return "ITS-ENCODING"
    return "GBK"


def utf8_lines(
    stream: Iterable[bytes],
    name: str,
    *,
    keepends: bool = False,
    on_error: Callable[[NotUtf8Error], None] | None = None,
) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each line of a binary stream, decoded as UTF-8 line by line.

    ``stream`` yields lines of bytes: a file opened ``"rb"``, ``sys.stdin.buffer``, a
    ``click.File("rb")``. ``name`` is what messages call it (the path as given, or ``<stdin>``).
    Lines end at ``\n``; the ending (``\n`` or ``\r\n``) is removed unless ``keepends``. A UTF-8
    byte-order mark at the start of the stream is dropped. Blank lines are yielded too, so the
    numbers are the file's line numbers (from 1).

    A line that is not UTF-8 raises :class:`NotUtf8Error` (a :class:`ConfigError`, which the CLI
    prints as one line: ``reviews.txt:3: not UTF-8 (byte 0xce at column 1); convert it first,
    e.g. iconv -f GBK -t UTF-8``). With ``on_error``, the error is passed to it instead, before the
    next line is yielded (so a caller can put a record in its place), and reading goes on.
    """
    for n, raw in enumerate(stream, 1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            err = NotUtf8Error(name, n, raw, exc)
            if on_error is None:
                raise err from None
            on_error(err)
            continue
        yield n, text if keepends else text.rstrip("\r\n")


@dataclass
class Skipped:
    """Bad rows left out of one file: how many of each kind, and the first of each."""

    name: str
    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, BadRow] = field(default_factory=dict)

    def add(self, err: BadRow) -> None:
        self.counts[err.kind] = self.counts.get(err.kind, 0) + 1
        self.first.setdefault(err.kind, err)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return bool(self.counts)

    def breakdown(self) -> str:
        """``"2 unknown label (first at train.tsv:17), 1 not UTF-8 (train.tsv:40)"``: most first."""
        kinds = sorted(self.counts, key=lambda k: (-self.counts[k], self.first[k].line))
        return ", ".join(
            f"{self.counts[k]} {k} ({'first at ' if self.counts[k] > 1 else ''}"
            f"{self.name}:{self.first[k].line})"
            for k in kinds
        )

    def summary(self) -> str:
        """``"skipped 3 rows of train.tsv: 2 unknown label (first at train.tsv:17), …"``."""
        return f"skipped {plural(self.total, 'row')} of {self.name}: {self.breakdown()}"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
