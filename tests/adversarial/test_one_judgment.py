"""Attack: a round with an invalid blob and a false privacy claim beside an honest update.

Attesters and ``deai verify`` must reach the same verdict on every reveal, and the same
aggregate and scores, because both ask the one judgment (``protocol.judgment``) and the
one outcome assembly (``protocol.outcome``): the round is played on the real contract
and store, the attesters' path is the ClientApp's attest handler, the verifier's path is
``verify_run`` over the chain's event log, and both are spied on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import Deployment

from deai_flower import verify
from deai_flower.chain.node import register_embedded_node, unregister_embedded_node
from deai_flower.participant import Participant, handle_attest, handlers
from deai_flower.privacy import PrivacyLedger
from deai_flower.protocol import judgment, outcome
from deai_flower.protocol.encoding import DpParams, commitment_of
from deai_flower.protocol.outcome import Refusal, RoundOutcome, decode_outcome
from deai_flower.protocol.rules import RevealedUpdate
from deai_flower.storage import LocalStore, cid_from_bytes, cid_to_bytes, compute_cid, decode_arrays, encode_arrays
from deai_flower.verify import RunRecord, verify_run
from unit.participant._support import call, context, create_run, local_data, message, small_spec

HONEST, INVALID, LIAR = 0, 1, 2
SIGMA, RATE, STEPS, DELTA, EXAMPLES = 1.1, 0.125, 8, 1e-5, 64  # q = batch_size 8 / 64, steps = floor(1 / q)


def _spy(record: list[Any], real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, recording each call's result (a judgment with the participant it judged)."""

    def spy(spec: Any, subject: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(spec, subject, *args, **kwargs)
        record.append((subject.participant, result) if real is judgment.judge_reveal else result)
        return result

    return spy


def _verdicts(judged: list[tuple[str, RevealedUpdate | Refusal]]) -> dict[str, Refusal | str]:
    return {who: "aggregated" if isinstance(v, RevealedUpdate) else v for who, v in judged}


def _play_tampered_round(d: Deployment, store: LocalStore) -> tuple[int, int]:
    """Round 1 of a run of the participants' spec: client 1 reveals bytes that are no
    blob, client 2 claims ε = 0 for the noise it reveals; all three commit and reveal."""
    run_id = create_run(d, store, small_spec())
    round_id, _ = d.admin.open_round(run_id)
    initial = decode_arrays(store.get(cid_from_bytes(bytes(d.admin.get_run(run_id)["modelCid"]))), max_bytes=2**20)
    truth = PrivacyLedger(history=[(SIGMA, RATE, STEPS)]).epsilon(DELTA, "rdp")
    rng = np.random.default_rng(3)
    revealed = []
    for i in (HONEST, INVALID, LIAR):
        client = d.as_client(i)
        update = {k: (v + rng.normal(scale=0.1, size=v.shape)).astype(v.dtype) for k, v in initial.items()}
        blob = b"not a blob" if i == INVALID else encode_arrays(update)
        dp = DpParams.from_floats(noise_multiplier=SIGMA, sample_rate=RATE, steps=STEPS, delta=DELTA,
                                  epsilon=0.0 if i == LIAR else truth, accountant="rdp")  # fmt: skip
        cid, salt = cid_to_bytes(compute_cid(blob)), bytes([i + 1]) * 32
        client.commit(run_id, round_id, commitment_of(
            chain_id=d.node.chain_id, contract=d.admin.address, run_id=run_id, round_id=round_id,
            participant=client.account.address, cid=cid, num_examples=EXAMPLES, dp=dp, salt=salt))  # fmt: skip
        revealed.append((client, blob, cid, dp, salt))
    for client, blob, cid, dp, salt in revealed:
        store.put(blob)
        client.reveal(run_id, round_id, cid=cid, num_examples=EXAMPLES, dp=dp, salt=salt)
    assert d.admin.phase(run_id, round_id) == "attest"
    return run_id, round_id


@pytest.fixture
def participants(deployment: Deployment, store: LocalStore) -> Any:
    url = register_embedded_node(deployment.node)
    location = f"local:{store.describe()['location']}"
    yield [Participant(account=account, data=local_data(i), store_location=location, chain_url=url, device="cpu",
                       num_threads=1, noise_seed=1_000 + i, name=f"client-{i}")
           for i, account in enumerate(deployment.clients[:3])]  # fmt: skip
    unregister_embedded_node(url)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_attesters_and_the_verifier_judge_a_tampered_round_alike_with_the_same_functions(
    deployment: Deployment, store: LocalStore, participants: list[Participant], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = deployment
    # one definition each, imported by both paths
    assert handlers.judge_reveal is verify.judge_reveal is judgment.judge_reveal
    assert handlers.round_outcome is verify.round_outcome is outcome.round_outcome
    judged: dict[str, list[Any]] = {"attester": [], "verifier": []}
    assembled: dict[str, list[RoundOutcome]] = {"attester": [], "verifier": []}
    for module, path in ((handlers, "attester"), (verify, "verifier")):
        monkeypatch.setattr(module, "judge_reveal", _spy(judged[path], judgment.judge_reveal))
        monkeypatch.setattr(module, "round_outcome", _spy(assembled[path], outcome.round_outcome))
    # each attester computes its own outcome here (sharing one process, they would compute it once)
    monkeypatch.setattr(handlers, "shared_outcome", lambda *inputs: inputs[-1]())

    run_id, round_id = _play_tampered_round(d, store)
    locator = {"contract": d.admin.address, "run-id": run_id, "chain-url": participants[0].chain_url,
               "store": participants[0].store_location, "round": round_id}  # fmt: skip
    replies = []
    for i in (HONEST, INVALID):  # two of the three committee members finalize
        reply = call(handle_attest, participants[i], message("train.attest", locator), context(node_id=10 + i),
                     node_id=10 + i)  # fmt: skip
        assert not reply.has_error(), reply.error
        replies.append(dict(reply.content["status"]))
    assert [r["state"] for r in replies] == ["attested", "attested"]
    assert d.admin.phase(run_id, round_id) == "finalized"

    record = RunRecord(events=d.admin.event_log(), chain_id=d.node.chain_id, contract=d.admin.address, run_id=run_id)
    verification = verify_run(record, store)

    honest, invalid, liar = (d.clients[i].address for i in (HONEST, INVALID, LIAR))
    attester_runs = [judged["attester"][i * 3 : i * 3 + 3] for i in range(2)]
    ours = _verdicts(judged["verifier"])
    assert all(_verdicts(run) == ours for run in attester_runs)  # the same verdicts, reasons included
    assert {who: v if isinstance(v, str) else v.verdict for who, v in ours.items()} == {
        honest: "aggregated", invalid: "invalid", liar: "dp-claims"}  # fmt: skip
    assert "claims cumulative ε=0.000000" in ours[liar].reason  # type: ignore[union-attr]

    # the same aggregate, and the outcome the chain finalized (the verifier recomputes
    # scores only for a round it finds no problem in: this one has the liar)
    (verifier_outcome,) = assembled["verifier"]
    assert len(assembled["attester"]) == 2 and verifier_outcome.scores is None
    attested = [e["args"] for e in record.events if e["event"] == "Attested"]
    finalized = decode_outcome(bytes.fromhex(str(attested[-1]["outcome"]).removeprefix("0x")))
    assert {e.participant: e.verdict for e in finalized} == {honest: "aggregated", invalid: "invalid",
                                                             liar: "dp-claims"}  # fmt: skip
    for attester_outcome in assembled["attester"]:
        assert attester_outcome.result == verifier_outcome.result
        assert attester_outcome.outcome == bytes.fromhex(str(attested[-1]["outcome"]).removeprefix("0x"))
        assert {w: r.verdict for w, r in attester_outcome.refused.items()} == {invalid: "invalid", liar: "dp-claims"}
        assert {w: r.verdict for w, r in verifier_outcome.refused.items()} == {invalid: "invalid", liar: "dp-claims"}
    round_verdict = verification.rounds[0]  # round 2 opened with the finalization
    assert round_verdict.round == round_id and round_verdict.status == "finalized"
    assert "fedavg aggregate equals the finalized CID" in round_verdict.checks
    # the verifier reports the liar (its claim, its ε) and nothing else
    assert round_verdict.problems and all(liar in p for p in round_verdict.problems), round_verdict.problems
