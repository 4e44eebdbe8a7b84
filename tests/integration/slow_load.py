"""``sentiment`` with a model that takes ``SLOW_LOAD_S`` seconds (default 30) to load.

For the test of a stop during loading: the real CLI and ``run_worker``, only
``models.engine.classifier.load_classifier`` sleeps first, so a signal surely arrives while it loads.

    python -m tests.integration.slow_load worker --brokers H:P --checkpoint DIR ...
"""

from __future__ import annotations

import os
import time
from typing import Any

import models.engine.classifier
from worker.commands.cli import main

real_load = models.engine.classifier.load_classifier


def slow_load(*args: Any, **kwargs: Any) -> Any:
    time.sleep(float(os.environ.get("SLOW_LOAD_S", "30")))
    return real_load(*args, **kwargs)


if __name__ == "__main__":
    models.engine.classifier.load_classifier = slow_load
    main()
