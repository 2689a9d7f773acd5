"""Tests for deai_flower.protocol.epsilon: the protocol's ε is Opacus' own, bit for bit,
and computing it loads neither torch nor Opacus' package."""

from __future__ import annotations

import inspect
import math
import random
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from deai_flower.errors import ConfigError, ProtocolError
from deai_flower.protocol import epsilon as epsilon_module
from deai_flower.protocol.epsilon import (
    OPACUS_VERSION,
    PRV_EPS_ERROR,
    RDP_ORDERS,
    coalesce,
    epsilon_of,
)

ROOT = Path(__file__).resolve().parents[3]


def _histories(count: int, seed: int) -> list[tuple[list[tuple[float, float, int]], float]]:
    """Random participant histories: repeated rounds of one (σ, q), with changes of σ and q
    between rounds (a recalibration, a different partition) and a δ each."""
    rng = random.Random(seed)
    histories = []
    for _ in range(count):
        sigma, rate = rng.uniform(0.4, 5.0), rng.choice([50 / 210, 16 / 114, rng.uniform(0.001, 0.5)])
        history = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.3:
                sigma, rate = rng.uniform(0.4, 5.0), rng.uniform(0.001, 0.5)
            history.append((sigma, rate, rng.randint(1, 40)))
        histories.append((history, rng.choice([1e-3, 1e-5, 1e-6])))
    return histories


def _opacus_epsilon(accountant: RDPAccountant | PRVAccountant, history: list, delta: float) -> float:
    # Opacus' accountants merge equal consecutive (σ, q) as they step; so does the protocol.
    accountant.history = coalesce(history)
    return float(accountant.get_epsilon(delta=delta))


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
@pytest.mark.parametrize(("history", "delta"), _histories(40, seed=1))
def test_rdp_epsilon_is_opacus_rdp_accountant_bit_for_bit(history: list, delta: float) -> None:
    assert epsilon_of(history, delta=delta, accountant="rdp").hex() == (
        _opacus_epsilon(RDPAccountant(), history, delta).hex())


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
@pytest.mark.parametrize(("history", "delta"), _histories(6, seed=2))
def test_prv_epsilon_is_opacus_prv_accountant_bit_for_bit(history: list, delta: float) -> None:
    assert epsilon_of(history, delta=delta, accountant="prv").hex() == (
        _opacus_epsilon(PRVAccountant(), history, delta).hex())


def test_merged_rounds_are_one_mechanism_and_a_noiseless_round_spends_infinity() -> None:
    assert coalesce([(1.1, 0.25, 4), (1.1, 0.25, 4), (2.0, 0.25, 0), (1.1, 0.1, 3)]) == [
        (1.1, 0.25, 8), (1.1, 0.1, 3)]
    assert epsilon_of([(1.1, 0.25, 4)] * 2, delta=1e-5, accountant="rdp") == epsilon_of(
        [(1.1, 0.25, 8)], delta=1e-5, accountant="rdp")
    assert epsilon_of([], delta=1e-5, accountant="prv") == 0.0
    assert epsilon_of([(1.1, 0.25, 4), (0.0, 0.25, 1)], delta=1e-5, accountant="rdp") == math.inf
    with pytest.raises(ConfigError, match="must be one of: prv, rdp"):
        epsilon_of([(1.1, 0.25, 4)], delta=1e-5, accountant="gdp")


def test_run_specs_and_settings_accept_exactly_the_accountants_epsilon_is_defined_for() -> None:
    from deai_flower.privacy import settings
    from deai_flower.protocol import spec

    assert spec.ACCOUNTANTS is settings.ACCOUNTANTS is epsilon_module.ACCOUNTANTS


def test_the_pinned_opacus_and_its_defaults_are_the_ones_documented() -> None:
    # docs/protocol.md states these; a new Opacus release must be a deliberate protocol change.
    pinned = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
              if re.match(r"opacus\b", d)]  # fmt: skip
    assert pinned == [f"opacus=={OPACUS_VERSION}"]
    assert metadata.version("opacus") == OPACUS_VERSION
    assert list(RDP_ORDERS) == RDPAccountant.DEFAULT_ALPHAS and len(RDP_ORDERS) == 151
    assert inspect.signature(PRVAccountant.get_epsilon).parameters["eps_error"].default == PRV_EPS_ERROR


def test_another_opacus_release_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(epsilon_module.metadata, "version", lambda name: "1.5.4")
    with pytest.raises(ProtocolError, match=r"Opacus 1\.6\.0's accountants, but Opacus 1\.5\.4"):
        epsilon_module._install_opacus_accountants()


def _modules_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running ``code``."""
    script = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    return set(result.stdout.split())


def test_epsilon_and_the_ledger_load_neither_torch_nor_opacus() -> None:
    loaded = _modules_after(
        "from deai_flower.protocol.epsilon import epsilon_of\n"
        "from deai_flower.privacy import PrivacyLedger, calibrate_noise, reconcile_with_chain\n"
        "assert epsilon_of([(1.1, 0.25, 8)], delta=1e-5, accountant='rdp') > 0\n"
        "assert epsilon_of([(1.1, 0.25, 8)], delta=1e-5, accountant='prv') > 0\n"
        "assert PrivacyLedger(history=[(1.1, 0.25, 8)]).epsilon(1e-5, 'rdp') > 0"
    )
    assert "deai_flower" in loaded and not loaded & {"torch", "opacus"}


def test_deai_verify_loads_neither_torch_nor_opacus() -> None:
    assert not _modules_after("import deai_flower.verify") & {"torch", "opacus"}
