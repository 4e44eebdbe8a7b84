"""The embedded default checkpoint: the demo model, trained on first use under the data directory.

Light to import: the worker, ``predict`` and ``demo`` import it whether or not they train. The
trainer (:mod:`models.demo.model`) is imported only to train, which needs the ``[train]`` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

from models.extras import require_extra
from models.manifest import MANIFEST

DEMO_NAME = "demo-qwen3-snownlp"
DEMO_VERSION = "3"  # 2: distilled from the n-gram teacher; 3: that teacher fitted by scikit-learn
DEFAULT_NAME = f"{DEMO_NAME}-v{DEMO_VERSION}"


def default_path(home: Path) -> Path:
    """Where the default checkpoint lives under ``home`` (trained or not)."""
    return home / "checkpoints" / DEFAULT_NAME


def require_default_checkpoint(home: Path) -> None:
    """Before anything slow: one line naming the ``[train]`` extra (or ``--checkpoint``) when the
    default checkpoint is not trained yet and cannot be here."""
    path = default_path(home)
    if not (path / MANIFEST).is_file():
        require_extra(
            f"training the demo model (no --checkpoint given, and {path} is not there yet)",
            "matplotlib",
            "sklearn",
            otherwise="give --checkpoint DIR",
        )


def default_checkpoint(home: Path) -> Path:
    """Path of the default checkpoint under ``home``, training it the first time.

    The demo preset (``sentiment train --preset demo``): a small Qwen3 trained from scratch on
    the shipped SnowNLP reviews, about 2 minutes on an idle 2-core CPU, once per ``home``.
    """
    path = default_path(home)
    if not (path / MANIFEST).is_file():
        require_default_checkpoint(home)
        from models.demo.model import train_demo

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
