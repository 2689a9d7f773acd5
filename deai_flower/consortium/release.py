"""A release as a consortium approves it: the FAB ``flwr run`` ships, and its SHA-256.

Flower builds a FAB reproducibly (sorted files, fixed dates), so every silo can build the
FAB of the release it installed and get the same hash the launcher's ``flwr run`` ships;
that hash is what a silo pins (``deai release gate --approved-fab``). Which files a FAB
holds is fixed by ``fab-include`` in ``[tool.flwr.app]`` of pyproject.toml: the app's code
and configs, never a working directory that happens to lie in the checkout.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

from ..errors import ConfigError

__all__ = ["build_fab", "fab_files", "fab_sha256", "unpack_fab"]


def build_fab(app: Path) -> bytes:
    """The FAB ``flwr run APP`` would ship, built by Flower's own code."""
    from flwr.cli.build import build_fab_from_disk

    if not (app / "pyproject.toml").is_file():
        raise ConfigError(f"{app} is not a Flower app (no pyproject.toml)")
    try:
        return build_fab_from_disk(app)
    except ValueError as exc:
        raise ConfigError(f"Flower cannot build a FAB from {app}: {exc}") from exc


def fab_sha256(path: Path) -> str:
    """SHA-256 of a FAB file (``flwr build``'s output) or of the FAB an app directory builds."""
    from flwr.common.constant import FAB_MAX_SIZE

    if path.is_dir():
        return hashlib.sha256(build_fab(path)).hexdigest()
    if not path.is_file():
        raise ConfigError(f"no such app directory or FAB file: {path}")
    if path.stat().st_size > FAB_MAX_SIZE:
        raise ConfigError(f"{path} is larger than a FAB may be ({FAB_MAX_SIZE} bytes)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fab_files(fab: bytes) -> list[str]:
    """The archive's member names."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            return archive.namelist()
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"not a FAB (zip archive): {exc}") from exc


def unpack_fab(fab: bytes, dest: Path) -> Path:
    """Write a FAB this process built into ``dest`` as an app directory: ``flwr run dest``
    ships the same FAB again (its pyproject.toml is already the normalized one), so a run
    submitted later cannot pick up edits made to the checkout since it was approved."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        for name in archive.namelist():
            if name.startswith(".info/"):  # Flower writes the manifest; a build adds it again
                continue
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    return dest
