"""``deai silo check``: a silo's node config checked against the real chain (the embedded
EVM served over JSON-RPC), its real keystore, data file and store, one line per check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.test_deployed_participants import _consortium

from deai_flower.cli.deai import main
from deai_flower.consortium.localnet import toml_node_config
from deai_flower.participant.silo_check import check_node_config


@pytest.fixture
def silo(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A registered silo's node config, its contract pinned, on a chain served over JSON-RPC."""
    for admin, _, configs in _consortium(tmp_path, allow_dev_methods=False):
        yield {**configs[0], "contract": admin.address, "max-stake": "2 ether"}


def _deai_silo_check(node_config: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``deai silo check --node-config '...'`` (the string a SuperNode is started with)."""
    try:
        main(["silo", "check", "--node-config", toml_node_config(node_config), "--timeout", "3"])
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().out.splitlines()


def test_a_good_node_config_passes_every_check(silo: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = _deai_silo_check(silo, capsys)
    assert status == 0, lines
    assert [line.split()[1].rstrip(":") for line in lines] == ["keys", "terms", "key", "data", "chain", "contract",
                                                               "store", "participant"]  # fmt: skip
    assert all(line.startswith("ok") for line in lines), lines
    assert "stake ≤ 2000000000000000000" in lines[1] and "40 examples of 4 features" in lines[3]


@pytest.mark.parametrize(("change", "failing", "named"), [
    ({"data-path": "/nonexistent/trian.npz"}, "data", "'data-path': /nonexistent/trian.npz does not exist"),
    ({"password-file": "WRONG"}, "key", "cannot decrypt keystore"),
    ({"chain-url": "http://127.0.0.1:9"}, "chain", "is unreachable"),
    ({"contract": "0x" + "12" * 20}, "contract", "no contract at"),
    ({"max-epsilon": "many"}, "terms", "'max-epsilon' must be a positive finite number"),
])  # fmt: skip
def test_each_misconfiguration_is_one_failing_line_and_a_non_zero_exit(
    silo: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str],
    failing: str, named: str,
) -> None:  # fmt: skip
    if change.get("password-file") == "WRONG":
        (tmp_path / "wrong-password").write_text("not-it\n")
        change = {"password-file": str(tmp_path / "wrong-password")}
    status, lines = _deai_silo_check({**silo, **change}, capsys)
    assert status == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith(f"FAIL {failing}: "), lines
    assert named in failed[0]
    assert all(len(line) < 400 for line in lines)  # one line each, no traceback


def test_a_misspelt_optional_key_is_named(silo: dict[str, Any]) -> None:
    checks = check_node_config({**silo, "max-epsilom": 3})
    assert checks[0].ok and "ignored, not known: max-epsilom" in checks[0].detail


def test_an_unparseable_node_config_is_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["silo", "check", "--node-config", 'keystore="unterminated'])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --node-config cannot be parsed") and "\n" not in err
