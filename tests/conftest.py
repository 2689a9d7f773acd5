"""Shared fixtures: a fresh chain (embedded unless overridden) with the contract deployed.

The suite runs on pytest-xdist workers (``-n auto`` in pyproject.toml: two more than
cores; ``-n 0`` runs it in one process). Tests that share an expensive fixture run on one
worker, which builds it once (:data:`SHARED_FIXTURES`), and the longest tier is handed
out first.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from support import Deployment, deploy_for_tests

from deai_flower.chain import ChainNode, connect_embedded

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: Test paths (prefixes) whose tests run on one worker, and the fixture they share.
SHARED_FIXTURES = {
    "tests/deployment/test_hospital_silos.py": "finished_run",
    "tests/e2e/test_experiment.py": "small_run",
    "tests/e2e/test_verify.py": "small_run",
    "tests/e2e/test_privacy_run.py": "small_run",
    "tests/e2e/test_cli.py": "main_job",
    # `flwr run .` starts Flower's local SuperLink on its fixed ports: one test at a time
    "tests/e2e/test_flwr_run.py": "local_superlink",
    "tests/integration/ipfs/": "ipfs_daemon",
}


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers more than cores. Much of the suite waits (on deadlines,
    processes starting, a SuperLink's polls) rather than computes; on 2 cores the whole
    suite took 18.6 min on 2 workers, 13.4 on 4 and 15.1 on 6."""
    return (os.cpu_count() or 1) + 2


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's ``loadscope`` scheduling, with the scopes of :data:`SHARED_FIXTURES`.

    (Its ``loadgroup`` reads ``xdist_group`` marks from node ids, which pytest 9.2 no
    longer lets it rewrite: pytest-xdist issue 1386.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((group for prefix, group in SHARED_FIXTURES.items() if path.startswith(prefix)), nodeid)

    return SharedFixtureScheduling(config, log)


@pytest.hookimpl(trylast=True)  # after tests/deployment/conftest.py has marked its tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Deployment tests first, then the other slow ones, each tier in collection order.

    Workers take tests in this order (``--no-loadscope-reorder``): the runs that take
    minutes start at once, and the short tests fill the gaps; a long test handed out last
    would keep the run going after the other workers are done.
    """

    def tier(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("deployment") else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=tier)


@pytest.fixture
def chain_node() -> ChainNode:
    """The chain the contract tests run on; tests/integration/chain overrides it with anvil."""
    return connect_embedded()


@pytest.fixture
def deployment(chain_node: ChainNode) -> Deployment:
    return deploy_for_tests(chain_node)
