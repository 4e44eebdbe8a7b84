"""What /readyz reports beyond assignment: is the broker reachable, is publishing going through,
is the model working (or waiting for an embedding server that is away). One small object the
Kafka edge, the pipeline and the web views share.

Publishing doubles as a gate: while a batch's results are being retried (the broker is away,
refusing writes, or a topic is missing), :meth:`Health.wait_publishing` holds every new batch
before it starts, so the worker stops taking from Kafka (backpressure) instead of piling more
work behind the failure, and the retries of the batches in flight are all that happens.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

FIRST_BACKOFF_S = 0.25


@dataclass
class Backoff:
    """Exponential backoff for the retry loops (fetch, commit, publish): ``FIRST_BACKOFF_S``,
    doubled after each failure up to ``cap_s``; :meth:`reset` after a success."""

    cap_s: float
    delay_s: float = FIRST_BACKOFF_S

    def next(self) -> float:
        """The delay to wait now; the following one doubles."""
        delay = self.delay_s
        self.delay_s = min(delay * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        self.delay_s = FIRST_BACKOFF_S


@dataclass
class Health:
    broker_reachable: bool = True
    broker_error: str | None = None
    publish_error: str | None = None
    model_broken: str | None = None
    model_unavailable: str | None = None
    publish_failing_since: float | None = None
    _publishing_ok: asyncio.Event | None = field(default=None, repr=False)
    _retrying: int = 0

    # --- publishing ----------------------------------------------------------------------------

    def _event(self) -> asyncio.Event:
        if self._publishing_ok is None:  # made lazily: it must belong to the running loop
            self._publishing_ok = asyncio.Event()
            if self._retrying == 0:
                self._publishing_ok.set()
        return self._publishing_ok

    def publish_retrying(self, error: str) -> None:
        """A batch failed to publish and will try again (call once per retrying batch)."""
        self._retrying += 1
        self.publish_error = error
        if self.publish_failing_since is None:
            self.publish_failing_since = time.monotonic()
        self._event().clear()

    def publish_recovered(self) -> None:
        """The batch that called :meth:`publish_retrying` got through (or was given up)."""
        self._retrying = max(0, self._retrying - 1)
        if self._retrying == 0:
            self.publish_error = None
            self.publish_failing_since = None
            self._event().set()

    @property
    def publishing(self) -> str:
        return "retrying" if self._retrying else "ok"

    async def wait_publishing(self) -> None:
        """Return once no batch is retrying its publishing."""
        await self._event().wait()

    # --- broker and model ----------------------------------------------------------------------

    def broker_seen(self) -> None:
        self.broker_reachable, self.broker_error = True, None

    def broker_lost(self, error: str) -> None:
        self.broker_reachable, self.broker_error = False, error

    def model_failed(self, error: str) -> None:
        self.model_broken = error

    def model_waiting(self, error: str) -> None:
        """The model cannot answer for now (its server is away); a batch or probe will retry."""
        self.model_unavailable = error

    def model_answered(self) -> None:
        self.model_unavailable = None

    def report(self) -> dict[str, object]:
        """The readiness fields this object owns (``ok`` is whether they allow ready)."""
        body: dict[str, object] = {
            "broker": self.broker_reachable,
            "publishing": self.publishing,
            "model": "broken" if self.model_broken else "unavailable" if self.model_unavailable else "ok",
        }
        if self.publish_failing_since is not None:
            body["publishing_failing_s"] = round(time.monotonic() - self.publish_failing_since, 1)
        for key, value in (
            ("broker_error", self.broker_error),
            ("publish_error", self.publish_error),
            ("model_error", self.model_broken or self.model_unavailable),
        ):
            if value:
                body[key] = value
        return body

    @property
    def ok(self) -> bool:
        model_ok = not self.model_broken and not self.model_unavailable
        return self.broker_reachable and not self._retrying and model_ok
