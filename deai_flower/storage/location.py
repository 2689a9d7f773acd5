"""A store named by one string, as run configs and node configs carry it.

``local:DIR`` is a local CID-keyed directory, ``ipfs:MULTIADDR`` an IPFS node's RPC API
(``ipfs:/ip4/127.0.0.1/tcp/5001``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .ipfs import IpfsStore
from .local import LocalStore


def open_store(location: str, *, max_bytes: int | None = None, timeout_s: float = 30.0, retries: int = 2) -> Any:
    """The store at ``location``; ``max_bytes`` caps what a read may return (a local file
    above it is refused unread, an IPFS download stops past it); ``timeout_s`` and
    ``retries`` apply to an IPFS node."""
    kind, _, where = location.partition(":")
    if kind == "local" and where:
        return LocalStore(where, max_bytes=max_bytes)
    if kind == "ipfs" and where.startswith("/"):
        return IpfsStore(where, timeout=timeout_s, retries=retries, max_bytes=max_bytes)
    raise ConfigError(f"store {location!r}: expected local:DIRECTORY or ipfs:/ip4/HOST/tcp/PORT")


def store_location(cfg: Any, output_dir: Path) -> str:
    """The experiment's store: ``storage.root`` (relative to the output directory) or the IPFS API."""
    if cfg.storage.kind == "ipfs":
        return f"ipfs:{cfg.storage.api_addr}"
    root = Path(cfg.storage.root)
    return f"local:{root if root.is_absolute() else (output_dir / root).resolve()}"
