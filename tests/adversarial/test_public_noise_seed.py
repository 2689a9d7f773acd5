"""Attack: an outsider replays a participant's DP noise from public information.

The outsider knows the experiment config (its seed), ``results.json`` (the run spec,
the initial model, every reveal) and every training record of the target's partition
but one, which is either in it or not. It re-runs the target's round-1 training under
both hypotheses with the seed the config gives and compares with the revealed blob. With
secret noise (the default) neither replay matches: the update is not reproducible and
membership is not decided by a byte comparison. With ``privacy.reproducible_noise=true``
exactly one replay matches, bit for bit: why results.json labels such a run not private.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support import compose_with

from deai_flower.data import client_partitions, load_dataset
from deai_flower.models import instantiate_model, select_device, set_arrays
from deai_flower.privacy import PrivacyLedger, PrivacySettings, train_round
from deai_flower.protocol.encoding import parse_reveal_record
from deai_flower.experiment import run_experiment
from deai_flower.results import SECRET_NOISE, SEEDED_NOISE
from deai_flower.storage import LocalStore, cid_from_bytes, decode_arrays, encode_arrays
from deai_flower.verify import RunRecord, load_spec

pytestmark = pytest.mark.slow

TARGET = 0


def _replays(out: Path, results: dict[str, Any], cfg: Any) -> tuple[bytes, list[bytes]]:
    """The target's revealed round-1 blob, and the outsider's replays of it (with the
    target's partition as is, and without its last record)."""
    store = LocalStore(out / "store")
    record = RunRecord.from_output_dir(out)
    spec, _ = load_spec(record, store)
    target = next(e for e in results["events"] if e["event"] == "ParticipantRegistered"
                  and int(e["args"]["index"]) == TARGET)["args"]["participant"]  # fmt: skip
    reveal = next(e["args"] for e in results["events"] if e["event"] == "Revealed"
                  and e["args"]["participant"] == target and int(e["args"]["round"]) == 1)  # fmt: skip
    revealed_cid = cid_from_bytes(parse_reveal_record(bytes.fromhex(reveal["record"].removeprefix("0x"))).cid)
    initial = decode_arrays(store.get(results["global_model_cids"][0]), max_bytes=spec.max_blob_bytes)
    seed = int(cfg.seed)
    d = cfg.dataset
    x, y = client_partitions(load_dataset(d, seed=seed), num_partitions=int(cfg.num_clients),
                             partitioner=str(d.partitioner), seed=seed, alpha=float(d.dirichlet_alpha),
                             classes_per_partition=int(d.classes_per_partition))[TARGET]  # fmt: skip
    replays = []
    for xs, ys in ((x, y), (x[:-1], y[:-1])):  # the unknown record in, or out
        model = instantiate_model(spec.model, spec.data)
        set_arrays(model, initial)
        p = spec.privacy
        trained = train_round(
            model=model, x=xs, y=ys, ledger=PrivacyLedger(),
            settings=PrivacySettings(epsilon=p.epsilon, delta=p.delta, max_grad_norm=p.max_grad_norm,
                                     accountant=p.accountant),
            planned_rounds=spec.rounds.num_rounds, local_epochs=spec.training.local_epochs,
            batch_size=spec.training.batch_size, learning_rate=spec.training.learning_rate,
            seed=seed * 1_000_003 + TARGET + 1 * 1_009,  # the public seed of partition TARGET, round 1
            device=select_device("cpu"), num_threads=1,
        )  # fmt: skip
        replays.append(encode_arrays(trained.arrays))
    return store.get(revealed_cid), replays


@pytest.mark.parametrize("reproducible", [False, True])
def test_an_outsider_cannot_replay_secret_noise(tmp_path: Path, reproducible: bool) -> None:
    cfg = compose_with("num_clients=3", "num_rounds=1", "progress=false", "training.local_epochs=1",
                       f"privacy.reproducible_noise={str(reproducible).lower()}")  # fmt: skip
    results = run_experiment(cfg, output_dir=tmp_path)
    assert results["private"] and results["rounds"][0]["status"] == "finalized"
    assert results["privacy"]["noise"] == (SEEDED_NOISE if reproducible else SECRET_NOISE)
    revealed, replays = _replays(tmp_path, results, cfg)
    matches = [replay == revealed for replay in replays]
    if reproducible:
        assert matches == [True, False]  # rebuilt bit for bit: membership decided exactly
    else:
        assert matches == [False, False]
        # not merely another encoding: the weights themselves differ
        ours, theirs = (decode_arrays(b, max_bytes=len(b)) for b in (revealed, replays[0]))
        assert any(not np.array_equal(ours[k], theirs[k]) for k in ours)
