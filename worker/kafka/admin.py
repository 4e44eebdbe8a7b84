"""Kafka administration the worker does itself: create its topics, check it can connect.

Both fail fast with one line (:class:`BrokerError`, :class:`~schemas.errors.ConfigError`) before the
model loads.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from schemas.errors import ConfigError, SentimentError

log = logging.getLogger(__name__)

DEFAULT_REPLICATION = "default.replication.factor"
RESOLVER_THREADS = "broker-check"  # the name prefix of require_reachable's host-name lookup threads
RESOLVER_JOIN_S = 2.0  # how long require_reachable waits for them to end after its check


class BrokerError(SentimentError):
    """A broker could not be started or reached, or refused a request (a topic, a login)."""


def parse_topic_config(text: str | None) -> dict[str, str]:
    """The ``topic_config`` setting (``key=value[,key=value]``) as a mapping.

    Only the shape is checked here, so a typo fails before the model loads; Kafka checks the
    names and values when it creates the topics (and :func:`create_topics` reports a refusal).
    """
    configs: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue  # a trailing comma
        key, sep, value = (part.strip() for part in item.partition("="))
        if not (sep and key and value):
            raise ConfigError(f"--topic-config: {item.strip()!r} is not key=value")
        if key in configs:
            raise ConfigError(f"--topic-config: {key} is given twice")
        configs[key] = value
    return configs


def _retriable(exc: BaseException) -> bool:
    """Connection-level failures (the broker still starting, a request timing out); an answer is final."""
    return isinstance(exc, OSError) or (isinstance(exc, KafkaError) and exc.retriable)


def _kafka_error(code: int, message: str | None = None) -> str:
    """``InvalidReplicationFactorError: <the broker's message, else Kafka's description>``."""
    error = for_code(code)
    return f"{error.__name__}: {message or error.description}"


def check_created(response: Any) -> None:
    """Raise for topics the broker refused to create.

    aiokafka returns CreateTopics' per-topic errors instead of raising them; unchecked, a refused
    topic shows only later, as a worker that cannot publish. TopicAlreadyExists is fine: another
    worker created it between our listing and our request.
    """
    refused = [
        f"{topic}: {_kafka_error(code, rest[0] if rest else None)}"
        for topic, code, *rest in response.topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
    ]
    if refused:
        raise BrokerError(f"cannot create topic {'; '.join(refused)}")


async def broker_default_replication(admin: AIOKafkaAdminClient, timeout_s: float = 5.0) -> int:
    """The cluster's ``default.replication.factor``, read from a broker with DescribeConfigs.

    Kafka takes -1 for "the broker's default" only from CreateTopics v4, and aiokafka sends v3,
    so the default is read and passed explicitly. 1, with a warning, when it cannot be read (no
    DescribeConfigs permission on the cluster, or a broker without it, like the dev broker).
    """
    try:
        cluster = await admin.describe_cluster()
        node = cluster.get("controller_id")
        if node is None or node < 0:
            node = cluster["brokers"][0]["node_id"]
        resource = ConfigResource(ConfigResourceType.BROKER, str(node), {DEFAULT_REPLICATION: None})
        [response] = await asyncio.wait_for(admin.describe_configs([resource]), timeout_s)
        for code, message, _type, _name, entries, *_ in response.resources:
            if code:
                raise BrokerError(_kafka_error(code, message))
            for name, value, *_ in entries:
                if name == DEFAULT_REPLICATION and value:
                    return int(value)
        reason = "the broker did not return it"
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
    log.warning(
        "cannot read the brokers' %s (%s): creating topics with replication factor 1 "
        "(--replication-factor sets it)", DEFAULT_REPLICATION, reason,
    )  # fmt: skip
    return 1


async def create_topics(
    brokers: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int | None = None,
    configs: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> None:
    """Create the topics that do not exist yet; existing ones are left alone, configs included.

    ``replication_factor``: None for the brokers' ``default.replication.factor``. ``configs``:
    topic configs (:func:`parse_topic_config`). ``security``: TLS/SASL keyword arguments
    (``worker.kafka.security.aiokafka_security``). Retries connection failures while the broker is
    still starting; a topic the broker refuses raises :class:`BrokerError` at once.
    """
    if partitions < 1:
        raise ConfigError("partitions must be at least 1")
    if replication_factor is not None and replication_factor < 1:
        raise ConfigError("the replication factor must be at least 1")
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers, request_timeout_ms=10_000, **(security or {}))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in dict.fromkeys(names) if name not in existing]
            if not missing:
                return
            replicas = replication_factor or await broker_default_replication(admin)
            response = await admin.create_topics(
                [NewTopic(name, partitions, replicas, topic_configs=dict(configs or {})) for name in missing]
            )
            check_created(response)
            log.debug("created topics %s (%d partitions, replication factor %d)",
                     ", ".join(missing), partitions, replicas)  # fmt: skip
            return
        except BrokerError:
            raise
        except Exception as exc:
            if not _retriable(exc) or time.monotonic() > deadline:
                raise BrokerError(f"cannot create topics on {brokers}: {exc!r}") from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def _connection_options(security: Mapping[str, Any]) -> dict[str, Any]:
    """The ``aiokafka_security`` keywords a single connection (``create_conn``) takes."""
    names = ("security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username",
             "sasl_plain_password", "sasl_kerberos_service_name", "sasl_kerberos_domain_name",
             "sasl_oauth_token_provider")  # fmt: skip
    return {name: security[name] for name in names if name in security}


async def check_connection(
    brokers: Iterable[str], security: Mapping[str, Any] | None = None, timeout_s: float = 5.0
) -> None:
    """Connect to a bootstrap server with the TLS/SASL settings, as every client will.

    Fails fast, with one line, before the model loads: :class:`ConfigError` when no server
    answers, :class:`BrokerError` when one answers but refuses the TLS handshake or the SASL
    login (an aiokafka client would retry that, and log it, until its own timeout).
    """
    options = _connection_options(security or {})
    addresses = list(brokers)
    failures = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host or "127.0.0.1", int(port), request_timeout_ms=int(timeout_s * 1000), **options
                ),
                timeout_s,
            )
        except ssl.SSLError as exc:
            detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
            raise BrokerError(f"TLS handshake with {address} failed: {detail}") from None
        except KafkaError as exc:
            if isinstance(exc, KafkaConnectionError):
                failures.append(f"{address}: {exc}")
                continue
            detail = getattr(exc, "description", "") or str(exc)
            mechanism = options.get("sasl_mechanism") or "none"
            raise BrokerError(
                f"{address} refused the connection (--sasl-mechanism {mechanism}): "
                f"{type(exc).__name__}: {detail}"
            ) from None
        except TimeoutError:  # a listener that does not answer Kafka: a TLS/plaintext mismatch?
            failures.append(f"{address}: no answer within {timeout_s:.0f} s")
            continue
        except ValueError:
            failures.append(f"{address}: not host:port")
            continue
        except OSError as exc:  # refused, unresolvable
            failures.append(f"{address}: {exc.strerror or exc}")
            continue
        conn.close()
        return
    raise ConfigError(
        f"cannot reach any Kafka broker in {','.join(addresses)} ({'; '.join(failures)}; "
        "is it running? see --brokers)"
    )


def require_reachable(
    brokers: list[str], timeout_s: float = 5.0, *, security: Mapping[str, Any] | None = None
) -> None:
    """Fail fast, with a plain message, when no bootstrap server accepts a connection, or one
    refuses the TLS/SASL settings (``security``, from ``aiokafka_security``): before the model
    loads, not as a client's retries and a traceback after it."""
    loop = asyncio.new_event_loop()  # not asyncio.run: that would unset the loop faust picks up later
    # the loop looks host names up in its executor's threads; an executor of our own, so that they
    # can be told apart and joined below
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix=RESOLVER_THREADS))
    try:
        loop.run_until_complete(check_connection(brokers, security, timeout_s))
    finally:
        loop.close()  # tells the executor's threads to end, without waiting for them
        _join_resolvers(RESOLVER_JOIN_S)


def _join_resolvers(timeout_s: float) -> None:
    """Wait (``timeout_s`` at most) for the lookup threads to end: the ``--processes`` parent forks
    its children right after a check, with a ``preexec_fn``, which is unsafe beside another thread
    (the child can deadlock before ``exec`` on a lock that thread held). A lookup that hangs
    longer is left behind, and said so."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name.startswith(RESOLVER_THREADS + "_"):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("a broker host name lookup is still running after %.0f s; going on", timeout_s)
                return
