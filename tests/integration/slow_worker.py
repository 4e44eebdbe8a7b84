"""The real worker app serving the tiny checkpoint, with every model call slowed down.

For the backpressure test: the model is the real engine, only made to sleep ``--delay-s`` per
micro-batch, so the worker can take from Kafka much faster than it can classify.

    python -m tests.integration.slow_worker --brokers H:P --topic-suffix S --group G \
        --checkpoint DIR --web-port N --delay-s 0.2 --batch-size 8 --max-in-flight 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from models.engine.classifier import Prediction, Qwen3Engine, Tokenised, load_classifier
from worker.app import create_app, quiet_worker
from worker.event_loop import use_event_loop
from worker.settings import load_settings


class Slowed:
    """A classifier that sleeps before each model call and otherwise is ``engine``."""

    def __init__(self, engine: Qwen3Engine, delay_s: float) -> None:
        self.engine = engine
        self.delay_s = delay_s

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        time.sleep(self.delay_s)
        return self.engine.classify_tokenised(tok)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--brokers", "--input-topic", "--output-topic", "--dlq-topic", "--group-id", "--home"):
        parser.add_argument(name, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--web-port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-in-flight", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings(
        brokers=args.brokers, input_topic=args.input_topic, output_topic=args.output_topic,
        dlq_topic=args.dlq_topic, group_id=args.group_id, web_port=args.web_port, web_host="127.0.0.1",
        session_timeout_s=6, home=Path(args.home), batch_size=args.batch_size,
        max_in_flight=args.max_in_flight, log_level="warning",
    )  # fmt: skip
    settings.home.joinpath("faust").mkdir(parents=True, exist_ok=True)
    use_event_loop(settings.event_loop)  # as run_worker does
    engine = load_classifier(args.checkpoint, device="cpu", max_batch_size=args.batch_size)
    app = create_app(settings, Slowed(engine, args.delay_s), CollectorRegistry())
    quiet_worker(app, settings.log_level).execute_from_commandline()


if __name__ == "__main__":
    main()
