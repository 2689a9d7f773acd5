"""One line for overrides that do not compose, the same for every way in: the CLI,
``flwr run --run-config 'overrides=...'`` and ``deai consortium create-run``."""

from __future__ import annotations

import logging

import pytest

from deai_flower.compose import compose_overrides, composition_error
from deai_flower.errors import ConfigError
from deai_flower.logs import _ProjectErrorsInOneLine, drop_opacus_root_handler

HINT = "unknown config key 'privacy.epsilonn' (did you mean privacy.epsilon?"


def test_a_misspelt_key_gets_did_you_mean() -> None:
    assert composition_error(["privacy.epsilonn=3"]).startswith(HINT)
    assert composition_error(["model.hiden=[3]"]).startswith("unknown config key 'model.hiden' (did you mean model.hidden?")
    assert composition_error(["num_rounds=3", "strategy=krum"]) is None


def test_flwr_runs_overrides_say_the_same() -> None:
    with pytest.raises(ConfigError) as caught:
        compose_overrides("num_rounds=2 privacy.epsilonn=3")
    assert HINT in str(caught.value) and "\n" not in str(caught.value)


def test_a_project_error_is_logged_in_one_line() -> None:
    try:
        raise ConfigError("unknown config key 'x'")
    except ConfigError as exc:
        record = logging.LogRecord("flwr", logging.ERROR, __file__, 1, "%s raised an exception", ("ServerApp",),
                                   (type(exc), exc, exc.__traceback__))  # fmt: skip
    assert _ProjectErrorsInOneLine().filter(record)
    assert record.getMessage() == "ServerApp raised an exception: unknown config key 'x'" and record.exc_info is None


def test_opacus_root_handler_is_dropped_and_others_kept() -> None:
    root = logging.getLogger()
    ours, theirs = logging.StreamHandler(), logging.StreamHandler()
    theirs.setFormatter(logging.Formatter("%(asctime)s:%(levelname)s:%(message)s"))
    root.addHandler(ours)
    root.addHandler(theirs)
    try:
        drop_opacus_root_handler()
        assert ours in root.handlers and theirs not in root.handlers
    finally:
        root.removeHandler(ours)
