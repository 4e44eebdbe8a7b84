"""``sentiment_consumer_lag`` per input partition: the high watermark minus what is finished.

Updated when a batch finishes and on a timer (``refresh``), so lag still shows while the model
is stalled and nothing finishes. Before anything was taken from a partition, the consumer's
position there (where the previous owner, or the offset reset, left it) stands in for "finished".

The high watermark is the larger of two readings: the one carried by the consumer's last fetch
of the partition, and the partition's end offset asked for by ``refresh``. The first alone goes
stale under backpressure: a partition whose fetched records are still waiting is not fetched
again, so messages arriving meanwhile would not show as lag.
"""

from __future__ import annotations

from typing import Protocol

from aiokafka import TopicPartition

from worker.batching.pipeline import MicroBatch
from worker.metrics import Metrics


class Source(Protocol):
    """What the lag is read from (``worker.kafka.consumer.KafkaSource``)."""

    def assignment(self) -> set[TopicPartition]: ...
    def highwater(self, tp: TopicPartition) -> int | None: ...
    async def end_offsets(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]: ...
    def done_up_to(self, tp: TopicPartition) -> int | None: ...
    async def position(self, tp: TopicPartition) -> int | None: ...


class LagTracker:
    def __init__(self, source: Source, metrics: Metrics, topic: str) -> None:
        self.source = source
        self.gauge = metrics.consumer_lag
        self.topic = topic
        self.shown: set[int] = set()
        self.ends: dict[TopicPartition, int] = {}

    def on_finished(self, batch: MicroBatch) -> None:
        partitions = {rec.partition for rec in batch.records}
        for tp in self._assigned():
            if tp.partition in partitions:
                self._show(tp, self.source.done_up_to(tp))

    async def refresh(self) -> None:
        """Every assigned partition; partitions no longer assigned are removed from the gauge."""
        assigned = self._assigned()
        for partition in self.shown - {tp.partition for tp in assigned}:
            self.gauge.remove(self.topic, str(partition))
            self.shown.discard(partition)
        self.ends = await self.source.end_offsets(assigned) if assigned else {}
        for tp in assigned:
            done = self.source.done_up_to(tp)
            self._show(tp, done if done is not None else await self.source.position(tp))

    def _assigned(self) -> set[TopicPartition]:
        return {tp for tp in self.source.assignment() if tp.topic == self.topic}

    def _show(self, tp: TopicPartition, done: int | None) -> None:
        readings = [h for h in (self.source.highwater(tp), self.ends.get(tp)) if h is not None]
        highwater = max(readings, default=None)
        if highwater is None or done is None:  # not known yet: the next refresh tries again
            return
        self.gauge.labels(topic=self.topic, partition=str(tp.partition)).set(max(0, highwater - done))
        self.shown.add(tp.partition)
