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


#: The root handler ``opacus.utils.module_utils`` installs with ``logging.basicConfig`` on
#: import: every record of a propagating logger (Flower's among them) is printed a second
#: time, in this format, at any level.
_OPACUS_ROOT_FORMAT = "%(asctime)s:%(levelname)s:%(message)s"


def drop_opacus_root_handler() -> None:
    """Remove the root handler Opacus' import added (Flower's lines printed twice, once
    in Flower's format and once in this one). Called once Opacus is imported; any other
    root handler is left alone."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        formatter = handler.formatter
        if formatter is not None and formatter._fmt == _OPACUS_ROOT_FORMAT:  # noqa: SLF001 - no public accessor
            root.removeHandler(handler)


#: The run's log-file handlers :func:`flower_lines_once` gave Flower's logger.
_FILES_FOR_FLOWER: list[logging.Handler] = []


def flower_lines_once() -> None:
    """Print each of Flower's log lines once under Hydra's job logging.

    Flower's logger prints its records with a console handler of its own and passes them
    on to the root logger, where Hydra's job logging prints them again (and writes them to
    the run's log file). Flower's records stop at Flower's logger, which is handed the
    root's file handlers instead, so the log file still holds them. Called once Hydra set
    up a job's logging (each job of a sweep has a log file of its own).
    """
    flower, root = logging.getLogger("flwr"), logging.getLogger()
    for handler in _FILES_FOR_FLOWER:
        flower.removeHandler(handler)
    _FILES_FOR_FLOWER[:] = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    for handler in _FILES_FOR_FLOWER:
        flower.addHandler(handler)
    flower.propagate = False


class _ProjectErrorsInOneLine(logging.Filter):
    """A record carrying one of the project's own errors (:class:`~deai_flower.errors.DeaiError`,
    whose message already says what is wrong) loses its traceback: the line ends with the
    error's message instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from .errors import DeaiError

        error = record.exc_info[1] if record.exc_info else None
        while error is not None and not isinstance(error, DeaiError):
            error = error.__cause__ or error.__context__
        if isinstance(error, DeaiError):
            record.msg, record.args = f"{record.getMessage()}: {error}", ()
            record.exc_info, record.exc_text = None, None
        return True


def project_errors_in_one_line(logger_name: str = "flwr") -> None:
    """Flower logs a ServerApp's exception with its traceback; for the project's own
    errors (a config error, a refused run) one line says it all."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _ProjectErrorsInOneLine) for f in logger.filters):
        logger.addFilter(_ProjectErrorsInOneLine())
