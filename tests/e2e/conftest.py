"""One small finished run, shared by the modules that only read it.

test_experiment, test_verify and test_privacy_run check different things about the same
experiment (:data:`support.SMALL_RUN`): it runs once per session, and those modules run
on one xdist worker (``SHARED_FIXTURES`` in tests/conftest.py). Tests that tamper with a
run do it on a copy of its output directory.
"""

from __future__ import annotations

import json

import pytest
from support import SMALL_RUN, SmallRun, compose_with

from deai_flower.experiment import run_experiment


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> SmallRun:
    out = tmp_path_factory.mktemp("small-run")
    state_dir = tmp_path_factory.mktemp("client-state")
    run_experiment(compose_with(*SMALL_RUN, f"privacy.state_dir={state_dir}"), output_dir=out)
    return SmallRun(out=out, results=json.loads((out / "results.json").read_text()), state_dir=state_dir)
