"""Kafka connection security from the settings: TLS (CA, client certificate) and SASL.

One place builds faust's credentials object; every Kafka client here (the worker's consumer,
producer and admin client, and produce, tail, demo) is aiokafka and gets the same settings
through faust's own translation (``aiokafka_security``).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from schemas.errors import ConfigError
from worker.settings import Settings


def _readable(path: Path | None, option: str) -> Path | None:
    if path is not None and not path.is_file():
        raise ConfigError(f"{option} {path}: no such file")
    return path


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A verifying client context when any TLS file is given, else ``None`` (no TLS)."""
    cafile = _readable(settings.ssl_cafile, "--ssl-cafile")
    certfile = _readable(settings.ssl_certfile, "--ssl-certfile")
    keyfile = _readable(settings.ssl_keyfile, "--ssl-keyfile")
    if (certfile is None) != (keyfile is None):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
    if cafile is None and certfile is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        if certfile is not None:
            context.load_cert_chain(str(certfile), str(keyfile))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot use the TLS files: {exc}") from None
    return context


def broker_credentials(settings: Settings) -> Any:
    """faust's ``broker_credentials``: SASL (over TLS when configured), TLS alone, or ``None``."""
    context = ssl_context(settings)
    if settings.sasl_mechanism == "none":
        return faust.SSLCredentials(context) if context is not None else None
    if not settings.sasl_username or settings.sasl_password is None:
        raise ConfigError(
            f"--sasl-mechanism {settings.sasl_mechanism} needs --sasl-username and a password "
            "(SENTIMENT_SASL_PASSWORD)"
        )
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.get_secret_value(),
        mechanism=settings.sasl_mechanism,
        ssl_context=context,
    )


def aiokafka_security(settings: Settings) -> Mapping[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``/the admin client."""
    return dict(credentials_to_aiokafka_auth(broker_credentials(settings)))
