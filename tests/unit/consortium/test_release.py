"""What a FAB holds, its hash, and the silo's verdict on it (deployment: tests/adversarial/test_fab_gate.py).

The FAB is built from a copy of the checkout by Flower's own build code, as ``flwr run``
builds it, with a consortium's working files left inside the copy (as the demo's work
directory was): only the app's code and configs may go into the archive.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from deai_flower.cli.deai import main as deai
from deai_flower.consortium.localnet import PROJECT_ROOT
from deai_flower.consortium.release import build_fab, fab_files, fab_sha256, unpack_fab
from deai_flower.errors import ConfigError
from deai_flower.silo_gate import fab_refusal, parse_approved

#: A consortium's working files and a virtual environment, left inside the checkout.
DECOYS = {
    "consortium-work/consortium/keys/coordinator.keystore.json": '{"crypto": {}, "address": "00"}',
    "consortium-work/silo-0/keys/chain.keystore.json": '{"crypto": {}, "address": "01"}',
    "consortium-work/silo-0/ledger/privacy-ledger-1.json": '{"epsilon": 1.0}',
    "consortium-work/results/results.json": '{"rounds": []}',
    "consortium-work/logs/notes.md": "the password is ...",
    "venv-silo/lib/python3.11/site-packages/evil/__init__.py": "raise SystemExit('evil')",
    "conf/results.json": '{"rounds": []}',
}
#: Where the app's code and configs live (``fab-include`` in pyproject.toml).
APP_PARTS = (("deai_flower/", ".py"), ("strategies/", ".py"), ("conf/", (".py", ".yaml")),
             ("contracts/artifacts/", ".json"))  # fmt: skip


@pytest.fixture(scope="module")
def checkout_with_decoys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout (the files git would see), with the decoys in it."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    copy = tmp_path_factory.mktemp("checkout") / "deai-flower"
    for name in listed:
        source = PROJECT_ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    for name, text in DECOYS.items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_text(text)
    return copy


def test_a_fab_holds_the_apps_code_and_configs_and_no_working_file(checkout_with_decoys: Path) -> None:
    names = fab_files(build_fab(checkout_with_decoys))
    assert not set(DECOYS) & set(names), sorted(set(DECOYS) & set(names))
    stray = [n for n in names if n not in ("pyproject.toml", ".info/CONTENT")
             and not any(n.startswith(where) and n.endswith(kinds) for where, kinds in APP_PARTS)]  # fmt: skip
    assert not stray, stray  # no tests, benchmarks, docs or results either
    assert {"deai_flower/apps.py", "deai_flower/participant/app.py", "deai_flower/server_app.py",
            "strategies/commit_reveal.py", "conf/config.yaml"} <= set(names)  # fmt: skip


def test_a_snapshot_of_a_release_builds_the_same_fab(checkout_with_decoys: Path, tmp_path: Path) -> None:
    fab = build_fab(checkout_with_decoys)
    assert build_fab(unpack_fab(fab, tmp_path / "release")) == fab  # what LocalConsortium submits is what it pinned
    assert fab_sha256(checkout_with_decoys) == hashlib.sha256(fab).hexdigest()


def test_a_silo_refuses_a_fab_that_differs_by_one_byte(checkout_with_decoys: Path) -> None:
    fab = build_fab(checkout_with_decoys)
    approved = parse_approved([hashlib.sha256(fab).hexdigest().upper()])
    assert fab_refusal(fab, approved) == ""
    tampered = bytearray(fab)
    tampered[len(fab) // 2] ^= 0x01
    refusal = fab_refusal(bytes(tampered), approved)
    assert "runs only releases it approved" in refusal and hashlib.sha256(tampered).hexdigest() in refusal


@pytest.mark.parametrize("pins", [[], ["abc"], ["g" * 64]])
def test_an_approved_hash_must_be_a_sha256(pins: list[str]) -> None:
    with pytest.raises(ConfigError, match="approved FAB hash"):
        parse_approved(pins)


def test_deai_release_hash_prints_the_hash_of_an_app_or_of_a_fab_file(
    checkout_with_decoys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fab = build_fab(checkout_with_decoys)
    (tmp_path / "app.fab").write_bytes(fab)
    for path in (checkout_with_decoys, tmp_path / "app.fab"):
        deai(["release", "hash", str(path)])
        assert capsys.readouterr().out.split()[0] == hashlib.sha256(fab).hexdigest()
    with pytest.raises(SystemExit) as exit_:
        deai(["release", "hash", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and "no such app directory or FAB file" in capsys.readouterr().err
