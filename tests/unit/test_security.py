"""TLS and SASL settings become faust credentials and aiokafka arguments; secrets stay hidden."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path
from typing import Any

import certifi
import pytest

from schemas.errors import ConfigError
from worker.kafka.security import aiokafka_security, broker_credentials
from worker.settings import load_settings


def test_plaintext_by_default() -> None:
    assert broker_credentials(load_settings()) is None
    assert aiokafka_security(load_settings()) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_plaintext_and_over_tls(mechanism: str) -> None:
    settings = load_settings(sasl_mechanism=mechanism, sasl_username="svc", sasl_password="s3cret-pw")
    kwargs = aiokafka_security(settings)
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"]) == (mechanism, "svc")
    assert kwargs["sasl_plain_password"] == "s3cret-pw"
    tls = aiokafka_security(load_settings(sasl_mechanism=mechanism, sasl_username="svc",
                                          sasl_password="s3cret-pw", ssl_cafile=certifi.where()))  # fmt: skip
    assert tls["security_protocol"] == "SASL_SSL" and isinstance(tls["ssl_context"], ssl.SSLContext)
    assert tls["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_the_password_never_shows_in_reprs() -> None:
    settings = load_settings(sasl_mechanism="PLAIN", sasl_username="svc", sasl_password="s3cret-pw")
    for text in (repr(settings), str(settings.model_dump()), repr(broker_credentials(settings))):
        assert "s3cret-pw" not in text


def test_sasl_without_a_password_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="needs --sasl-username and a password"):
        broker_credentials(load_settings(sasl_mechanism="SCRAM-SHA-512", sasl_username="svc"))


def test_tls_file_errors_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--ssl-cafile .*nope.pem: no such file"):
        broker_credentials(load_settings(ssl_cafile=tmp_path / "nope.pem"))
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        broker_credentials(load_settings(ssl_certfile=cert))
    with pytest.raises(ConfigError, match="cannot use the TLS files"):
        broker_credentials(load_settings(ssl_cafile=cert))


def test_client_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=worker",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    kwargs = aiokafka_security(load_settings(ssl_certfile=cert, ssl_keyfile=key))
    assert kwargs["security_protocol"] == "SSL" and isinstance(kwargs["ssl_context"], ssl.SSLContext)


def check(monkeypatch: pytest.MonkeyPatch, error: BaseException | None, **settings: Any) -> list[dict]:
    """``check_connection`` with the settings' security, against a fake ``create_conn``."""
    from worker.kafka import admin

    calls: list[dict] = []

    class Conn:
        def close(self) -> None:
            calls.append({"closed": True})

    async def create_conn(host: str, port: int, **kwargs: Any) -> Conn:
        calls.append({"address": f"{host}:{port}", **kwargs})
        if error is not None:
            raise error
        return Conn()

    monkeypatch.setattr(admin, "create_conn", create_conn)
    security = aiokafka_security(load_settings(**settings))
    asyncio.run(admin.check_connection(["k1:9092"], security, timeout_s=1))
    return calls


def test_the_connection_check_logs_in_as_the_clients_will(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = check(monkeypatch, None, sasl_mechanism="PLAIN", sasl_username="svc", sasl_password="pw")
    assert calls[0]["address"] == "k1:9092" and calls[-1] == {"closed": True}
    assert (calls[0]["security_protocol"], calls[0]["sasl_plain_password"]) == ("SASL_PLAINTEXT", "pw")


def test_a_refused_login_is_a_broker_error_naming_the_mechanism(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.errors import SaslAuthenticationFailed

    from worker.kafka.admin import BrokerError

    with pytest.raises(BrokerError) as info:
        check(monkeypatch, SaslAuthenticationFailed("bad credentials"),
              sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password="s3cret-pw")  # fmt: skip
    message = str(info.value)
    assert message.startswith("k1:9092 refused the connection (--sasl-mechanism SCRAM-SHA-512): ")
    assert "SaslAuthenticationFailed" in message and "s3cret-pw" not in message


def test_a_failed_tls_handshake_is_a_broker_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.kafka.admin import BrokerError

    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    with pytest.raises(BrokerError, match=r"^TLS handshake with k1:9092 failed: "):
        check(monkeypatch, error, ssl_cafile=certifi.where())


@pytest.mark.parametrize(("error", "reason"), [
    (ConnectionRefusedError(111, "Connection refused"), "k1:9092: Connection refused"),
    (TimeoutError(), "k1:9092: no answer within 1 s"),
])  # fmt: skip
def test_no_answer_is_a_config_error_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, reason: str
) -> None:
    with pytest.raises(ConfigError, match=f"^cannot reach any Kafka broker in k1:9092 \\({reason}; "):
        check(monkeypatch, error)
