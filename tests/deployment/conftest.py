"""The deployment tier: real ``flower-superlink`` / ``flower-supernode`` processes with TLS and
SuperNode authentication, anvil as the chain, a store directory every silo reaches. Silos run
pinned, as the runbook says: each SuperNode (``--isolation process``) hands its messages to a
``deai release gate`` that runs only the release :class:`LocalConsortium` approved.

Every test here is marked ``deployment`` (and ``slow``); the processes are started by the fixtures and
stopped on teardown, whatever happened. Skipped, with the reason, only when Flower's
executables or anvil (npm) are missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deai_flower.chain.devnode import find_anvil
from deai_flower.consortium.localnet import PROJECT_ROOT, tools_missing


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.deployment)
            item.add_marker(pytest.mark.slow)  # minutes each: not part of the fast tier


@pytest.fixture(scope="session", autouse=True)
def _deployment_tools() -> None:
    import shutil

    missing = tools_missing()
    if missing:
        pytest.skip(f"Flower's deployment executables are missing: {', '.join(missing)}")
    if find_anvil(search_from=PROJECT_ROOT) is None and shutil.which("npm") is None:
        pytest.skip("anvil not found and npm is not installed to install it")
