"""Finding and installing anvil for the integration tier (no node is started here)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deai_flower.chain import devnode
from deai_flower.errors import ChainUnavailableError


def _fake_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(devnode.ANVIL_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(devnode.shutil, "which", lambda name: None)


def test_explicit_binary_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(devnode.ANVIL_ENV, str(tmp_path / "my-anvil"))
    assert devnode.find_anvil(search_from=tmp_path) == tmp_path / "my-anvil"


def test_node_modules_of_a_parent_folder_then_the_user_cache(tmp_path: Path) -> None:
    project = tmp_path / "project" / "sub"
    project.mkdir(parents=True)
    assert devnode.find_anvil(search_from=project) is None
    cached = _fake_binary(devnode.npm_cache_dir() / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
    assert devnode.find_anvil(search_from=project) == cached
    local = _fake_binary(tmp_path / "project/node_modules/@foundry-rs/anvil-linux-arm64/bin/anvil")
    assert devnode.find_anvil(search_from=project) == local  # the nearer node_modules first


def test_install_without_npm_says_so(tmp_path: Path) -> None:
    assert devnode.npm_cache_dir() == tmp_path / "cache" / "deai-flower" / "npm"
    with pytest.raises(ChainUnavailableError, match="npm is not installed"):
        devnode.install_anvil()


def test_free_port_is_a_loopback_port() -> None:
    port = devnode.free_port()
    assert 0 < port < 65536
    assert devnode.AnvilNode(Path("anvil"), port=port).url == f"http://127.0.0.1:{port}"
