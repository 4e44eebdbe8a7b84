"""``sentiment predict``: classify texts from options, a file or stdin, without Kafka.

Results stream: each chunk of :data:`CHUNK` records is classified, written and flushed before the
next chunk is read, in input order. SIGINT and SIGTERM stop the run between whole chunks of output
(a chunk being written is finished first), so every line written is complete; stderr then says
how many results were written and the exit status is 130 (SIGINT) or 143 (SIGTERM).

A line that cannot be read (not UTF-8, not valid JSON, a JSON object without a string ``text``)
does not end the run: it gets an error record ``{"line": N, "error": "..."}`` in its place, so
output line k still belongs to input record k (blank lines are no records), and the exit status
is :data:`EXIT_BAD_LINES`; with ``--skip-bad`` it is left out and the exit status stays 0. Either
way stderr names the first bad line when it is read, and ends with how many lines were bad, of
which kind, and where the first of each kind was.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, islice
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import click
import orjson
from tqdm import tqdm

from models.text_lines import BadRow, Skipped, plural, utf8_lines
from schemas.errors import ConfigError
from worker.settings import Settings

if TYPE_CHECKING:
    from models.engine.classifier import Classifier

CHUNK = 256
"""Records classified, written and flushed at a time."""
EXIT_BAD_LINES = 3
"""Exit status when some input lines were bad and got error records (without ``--skip-bad``)."""

Item = tuple[int | None, str | BadRow]  # (input line, or None for a --text; the text or why not)


def read_records(stream: Iterable[bytes], name: str) -> Iterator[tuple[int, str | BadRow]]:
    """``(line number, text)`` for each non-blank line of ``stream``; a line that is a JSON object
    contributes its ``text`` field. A line that cannot be read comes as ``(line number, BadRow)``
    in its place: not UTF-8, not valid JSON, or a JSON line without a string ``text``."""
    pending: list[BadRow] = []
    for n, line in utf8_lines(stream, name, on_error=pending.append):
        yield from ((err.line, err) for err in pending)
        pending.clear()
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield n, BadRow(name, n, "not valid JSON", f"not valid JSON: {exc}")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                yield n, BadRow(name, n, "no string 'text'", "JSON line has no string 'text' field")
                continue
            line = obj["text"]
        yield n, line
    yield from ((err.line, err) for err in pending)


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, as KeyboardInterrupt is, so that no library's
    ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """While entered, SIGINT and SIGTERM raise :class:`Stopped` at once (also mid-computation),
    except inside :meth:`held`, which defers them to its end so that output is written whole."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._held = False
        self._pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # a background job of a script ignores SIGINT: so does predict
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # kept pending even when raised: should the raise land where Python swallows it (in a
        # finaliser: "Exception ignored in …"), the next chunk's write still ends the run
        self._pending = self._pending or signum
        if not self._held:
            raise Stopped(signum)

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._pending is not None:  # a stop that was raised but swallowed: nothing more written
            raise Stopped(self._pending)
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._pending is not None:
            raise Stopped(self._pending)


@dataclass
class Progress:
    total: int | None  # records to classify, when the input can be counted ahead
    written: int = 0  # output lines written and flushed
    last_line: int | None = None  # input line of the last record written


def count_records(stream: IO[bytes]) -> int | None:
    """Non-blank lines of a seekable stream (a file, or stdin redirected from one), read ahead and
    rewound; ``None`` for a pipe or terminal, which cannot be read twice."""
    try:
        if not stream.seekable():
            return None
        start = stream.tell()
        # blank as read_records judges it (str.strip: U+3000 and other Unicode spaces included)
        n = sum(1 for raw in stream if raw.decode("utf-8", "replace").lstrip("\ufeff").strip())
        stream.seek(start)
    except OSError:
        return None
    return n


def result_json(text: str, p: Any, labels: Sequence[str]) -> bytes:
    line = {
        "text": text,
        "label": labels[p.label_id],
        "label_id": p.label_id,
        "scores": dict(zip(labels, p.probabilities, strict=True)),
        "truncated": p.truncated,
    }
    return orjson.dumps(line) + b"\n"


def error_json(err: BadRow) -> bytes:
    return orjson.dumps({"line": err.line, "error": err.detail}) + b"\n"


def table_row(label: str, score: str, trunc: str, text: str, width: int) -> bytes:
    return f"{label:<{width}}  {score:>6}  {trunc:>5}  {text}\n".encode()


def short(text: str) -> str:
    return text if len(text) <= 40 else text[:39] + "…"


def interrupted(progress: Progress, name: str | None) -> str:
    of = f" of {progress.total}" if progress.total is not None else ""
    line = f"interrupted: wrote {progress.written}{of} results"
    if name is not None and progress.last_line is not None:
        line += f" (input lines 1-{progress.last_line} of {name}"
        if name != "<stdin>":
            line += f"; the rest: tail -n +{progress.last_line + 1} {shlex.quote(name)}"
        line += ")"
    return line


def run_predict(
    settings: Settings, texts: list[str], file: IO[bytes] | None, fmt: str, *, skip_bad: bool = False
) -> None:
    """Classify ``texts`` then the records of ``file``, streaming results to stdout; exits the
    process with 130/143 when stopped by a signal, or :data:`EXIT_BAD_LINES` after bad lines."""
    items: Iterable[Item] = [(None, t) for t in texts]
    name = None if file is None else str(getattr(file, "name", "<stdin>"))
    progress = Progress(total=None)
    bad = Skipped(name or "--text")
    show = file is not None and sys.stderr.isatty()  # a bar for files, on a terminal only
    try:
        with StopSignals() as stops:  # before counting: a large file takes a moment to count
            if file is not None:
                assert name is not None
                counted = count_records(file)
                progress.total = None if counted is None else len(texts) + counted
                items = chain(items, read_records(file, name))
            else:
                progress.total = len(texts)
            with tqdm(total=progress.total, unit="text", desc="classifying", disable=not show) as bar:
                stream(settings, items, fmt, progress, bad, stops, bar, skip_bad=skip_bad, name=name)
    except Stopped as stop:
        if bad:
            click.echo(bad_summary(bad, skip_bad), err=True)
        if skip_bad and bad:
            progress.total = None  # skipped lines write nothing: "of N" would never be reached
        click.echo(interrupted(progress, name), err=True)
        sys.exit(128 + stop.signum)
    if bad:
        click.echo(bad_summary(bad, skip_bad), err=True)
        if not skip_bad:
            sys.exit(EXIT_BAD_LINES)


def bad_summary(bad: Skipped, skip_bad: bool) -> str:
    if skip_bad:
        return f"skipped {plural(bad.total, 'bad line')} of {bad.name}: {bad.breakdown()}"
    return (
        f"{plural(bad.total, 'bad line')} of {bad.name} got an error record in place of a result: "
        f"{bad.breakdown()}"
    )


def stream(
    settings: Settings,
    items: Iterable[Item],
    fmt: str,
    progress: Progress,
    bad: Skipped,
    stops: StopSignals,
    bar: tqdm[Any],
    *,
    skip_bad: bool,
    name: str | None,
) -> None:
    def kept() -> Iterator[Item]:
        for line, item in items:
            if isinstance(item, BadRow):
                if not bad:  # the first one at once (a long run can be stopped); the rest at the end
                    then = "skipped" if skip_bad else "an error record takes its place"
                    tqdm.write(f"warning: {item} ({then}; bad lines are counted at the end)", file=sys.stderr)
                bad.add(item)
                if skip_bad:
                    bar.update(1)
                    continue
            yield line, item

    records = kept()
    chunk = list(islice(records, CHUNK))
    if not chunk:
        reason = f"; every line was bad: {bad.breakdown()}" if bad else ""
        if name == "<stdin>" and not bad:
            reason = " (give --text, --file, or lines on stdin)"
        raise ConfigError(f"{name or 'the input'} holds no text to classify{reason}")

    engine: Classifier | None = None  # loaded for the first text: a file of bad lines needs none
    labels: tuple[str, ...] = ()
    out = click.get_binary_stream("stdout")
    width = 0
    while chunk:
        texts = [item for _, item in chunk if isinstance(item, str)]
        if texts and engine is None:
            from models.demo.default import default_checkpoint
            from models.engine.classifier import load_classifier  # torch: only once there is a text

            engine = load_classifier(
                settings.checkpoint or default_checkpoint(settings.home),
                device=settings.device,
                dtype=settings.dtype,
                max_batch_tokens=settings.max_batch_tokens,
                compile=settings.compile == "on",  # a compile costs more than a few texts take
                **settings.engine_options(),
            )
            labels = engine.info.labels
        preds = iter(engine.classify(texts) if engine is not None and texts else ())
        lines = []
        if fmt == "table" and not width:  # the header, sized for the labels when known by now
            width = max([5, *(len(label) for label in labels)])
            lines.append(table_row("label", "score", "trunc", "text", width))
        for _, item in chunk:
            if isinstance(item, BadRow):
                err = f"line {item.line}: {item.detail}"
                lines.append(error_json(item) if fmt == "json" else table_row("ERROR", "-", "-", err, width))
                continue
            p = next(preds)
            if fmt == "json":
                lines.append(result_json(item, p, labels))
            else:
                score, trunc = f"{p.probabilities[p.label_id]:6.3f}", "yes" if p.truncated else "no"
                lines.append(table_row(labels[p.label_id], score, trunc, short(item), width))
        data = b"".join(lines)
        with stops.held():  # a signal now waits until the chunk is written whole
            out.write(data)
            out.flush()
            progress.written += len(chunk)
            progress.last_line = next((n for n, _ in reversed(chunk) if n is not None), progress.last_line)
        bar.update(len(chunk))
        chunk = list(islice(records, CHUNK))
