"""The project's error hierarchy.

Everything the project raises on purpose derives from :class:`SentimentError`, so the CLI can
turn it into a clear message and a non-zero exit instead of a traceback. The class name of an
:class:`InvalidMessage` is what a dead letter carries in its ``error.class`` header, which is why
these live with the message contracts.
"""

from __future__ import annotations

from typing import Literal

DeadLetterReason = Literal["decode", "schema", "empty_text", "too_large", "model_error"]
"""Closed set of reasons a message is dead-lettered (one counter label each)."""

DEAD_LETTER_REASONS: tuple[DeadLetterReason, ...] = (
    "decode",
    "schema",
    "empty_text",
    "too_large",
    "model_error",
)


class SentimentError(Exception):
    """Root of every error the project raises on purpose."""


class ConfigError(SentimentError):
    """A setting or option has a value the program cannot use."""


class CheckpointError(SentimentError):
    """A checkpoint directory is missing a file or field, or contradicts itself."""


class InvalidMessage(SentimentError):
    """An input message the worker cannot classify; it goes to the dead-letter topic."""

    reason: DeadLetterReason = "schema"

    def __init__(self, message: str, *, reason: DeadLetterReason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DecodeError(InvalidMessage):
    """The value is not UTF-8 JSON."""

    reason: DeadLetterReason = "decode"


class SchemaError(InvalidMessage):
    """The value is JSON but not a review object (missing or mistyped field)."""

    reason: DeadLetterReason = "schema"


class EmptyTextError(InvalidMessage):
    """The review's text is empty or only white space."""

    reason: DeadLetterReason = "empty_text"


class TooLargeError(InvalidMessage):
    """The raw value is larger than the configured byte limit."""

    reason: DeadLetterReason = "too_large"


class HeadersTooLargeError(InvalidMessage):
    """The input carries more headers, or more header bytes, than the worker passes on.

    Its dead letter leaves the input's headers out: they are what was too large."""

    reason: DeadLetterReason = "too_large"


class ResultTooLargeError(InvalidMessage):
    """The result (which echoes ``meta`` and the headers) is over the output topic's size limit."""

    reason: DeadLetterReason = "too_large"


class ModelError(InvalidMessage):
    """The model failed on this message even when run alone."""

    reason: DeadLetterReason = "model_error"


class ModelUnavailable(SentimentError):
    """The model cannot answer now, for a reason that waiting cures (an embedding server that is
    down, overloaded or unreachable). The worker waits and tries the batch again, not ready
    meanwhile; nothing is dead-lettered for it."""
