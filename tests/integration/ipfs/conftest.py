"""A real IPFS peer for the ``ipfs`` tier: Kubo if installed, else js-ipfs from npm.

The daemon runs offline on loopback with a temporary repository, started once for the
session and stopped after it (see :mod:`deai_flower.storage.ipfs_daemon`). js-ipfs is
installed into the user's cache directory on first use (a few minutes, once). The tier
is skipped only when no implementation can be run: no Kubo and no node/npm.
Set ``DEAI_IPFS_IMPL=kubo`` or ``js-ipfs`` to choose one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from deai_flower.errors import StoreUnavailableError
from deai_flower.storage.ipfs_daemon import DaemonCommand, IpfsDaemon, find_daemon


@pytest.fixture(scope="session")
def ipfs_command() -> DaemonCommand:
    prefer = os.environ.get("DEAI_IPFS_IMPL") or None
    if prefer != "kubo" and shutil.which("ipfs") is None and not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("no IPFS peer can be run here: neither Kubo (`ipfs`) nor node and npm (for js-ipfs) on PATH")
    try:
        return find_daemon(install=True, prefer=prefer)
    except StoreUnavailableError as exc:
        if prefer == "kubo":
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="session")
def ipfs_daemon(ipfs_command: DaemonCommand) -> Iterator[IpfsDaemon]:
    with IpfsDaemon(ipfs_command) as daemon:
        yield daemon
