"""Quiet by default: third-party chatter hidden unless ``verbose=true``.

A run prints its own progress and results; the libraries under it (Ray, Flower's
SQLite migrations through alembic, the Hugging Face hub's retries, matplotlib's font
cache) log INFO lines and warnings a user cannot act on. Errors are unaffected: the
project reports them itself, in one line.
"""

from __future__ import annotations

import logging
import os
import warnings

# Loggers whose INFO (and their retry WARNINGs) are noise for a user of a run.
NOISY_LOGGERS: tuple[str, ...] = (
    "alembic",
    "matplotlib",
    "matplotlib.font_manager",
    "huggingface_hub",
    "datasets",
    "fsspec",
    "urllib3",
    "filelock",
)


def quiet_third_party(*, verbose: bool = False) -> None:
    """Hide third-party INFO logs, retry lines and warnings unless ``verbose``.

    Also sets the environment the same way for libraries imported and processes
    started later (Ray's workers inherit it).
    """
    if verbose:
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation and future warnings of the libraries we pin (Flower, Ray, Opacus) say
    # nothing the user of a run can act on; the project's own warnings stay.
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!deai_flower(\.|$))")
    # Processes started later (Ray's workers) run library code: the same, by category.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    # Hugging Face's libraries set their loggers' levels from these when imported.
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
