"""``deai verify``: replay a run from chain events and the store; exit 1 on any mismatch.

    deai verify OUTPUT_DIR
    deai verify --rpc URL --contract ADDRESS --run-id N (--store-root DIR | --store-api MULTIADDR)
    deai verify ... --allow-model my_lab.nets.Net    (a model it may build, besides the bundled ones)

The rule, its parameters, the blob size limit and the DP settings come from the run spec
the chain names (``specHash``), read from the store; nothing is taken from flags or a
config. An output directory is checked against the store inside it. A loss-scored run's
scores are recomputed with the spec's model, which is built only if it is a bundled model
or one ``--allow-model`` names exactly: a spec names code, and a verifier runs none it
did not choose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DeaiError

if TYPE_CHECKING:  # deai_flower.verify pulls in the ML stack: imported when a run is verified
    from ..verify import RunRecord, StoreLocation, Verification


def add_parser(groups: argparse._SubParsersAction) -> None:
    verify = groups.add_parser("verify", help="replay a run's rounds from the chain and the store",
                               description="Replay a run from the chain's events and the content store; the rule, "
                                           "its parameters and the DP settings come from the run spec the chain "
                                           "names. Exit status 1 on any mismatch, 2 when the run cannot be read.")  # fmt: skip
    verify.add_argument("output_dir", nargs="?", metavar="OUTPUT_DIR",
                        help="a run's output directory (results.json and its store)")  # fmt: skip
    verify.add_argument("--rpc", metavar="URL", help="JSON-RPC URL of the chain (instead of an output directory)")
    verify.add_argument("--contract", metavar="ADDRESS", help="the run's contract address (with --rpc)")
    verify.add_argument("--run-id", type=int, default=1, metavar="N", help="run id on the contract (default 1)")
    store = verify.add_mutually_exclusive_group()
    store.add_argument("--store-root", metavar="DIR",
                       help="local store directory (default for OUTPUT_DIR: the store inside it)")  # fmt: skip
    store.add_argument("--store-api", metavar="MULTIADDR", help="read blobs from the IPFS node at this RPC API")
    verify.add_argument("--allow-model", action="append", default=[], metavar="NAME",
                        help="an exact model target (module.function or module.Class) this verifier may build to "
                             "recompute loss scores, besides the bundled models; repeatable")  # fmt: skip
    verify.set_defaults(func=run_verify)


def _store_location(args: argparse.Namespace) -> StoreLocation | None:
    from ..verify import StoreLocation

    if args.store_api:
        return StoreLocation("ipfs", args.store_api)
    if args.store_root:
        return StoreLocation("local", args.store_root)
    return None


def run_verify(args: argparse.Namespace) -> None:
    from ..protocol.spec import MAX_SPEC_BYTES, allowed_models
    from ..verify import RunRecord, load_spec, verify_run

    try:
        models = allowed_models(args.allow_model)
    except DeaiError as exc:
        raise DeaiError(f"--allow-model: {exc}") from None
    explicit = _store_location(args)
    if args.rpc:
        if args.output_dir:
            raise DeaiError("give either OUTPUT_DIR or --rpc, not both")
        if not args.contract or explicit is None:
            raise DeaiError("--rpc needs --contract ADDRESS and --store-root DIR or --store-api MULTIADDR")
        record = RunRecord.from_chain(rpc_url=args.rpc, contract=args.contract, run_id=args.run_id)
    elif args.output_dir:
        if args.contract:
            raise DeaiError("--contract goes with --rpc; an output directory names its own contract")
        record = RunRecord.from_output_dir(Path(args.output_dir))
    else:
        raise DeaiError("give a run's OUTPUT_DIR, or --rpc URL --contract ADDRESS --store-root DIR")
    location = explicit or record.store
    assert location is not None  # an output directory always names one
    # The spec first, read under its own size cap; then the blobs, under the spec's.
    spec, cid = load_spec(record, location.open(max_bytes=MAX_SPEC_BYTES))
    verification = verify_run(record, location.open(max_bytes=spec.max_blob_bytes), spec=(spec, cid), models=models)
    _print(verification, record, location)
    if not verification.rounds:
        raise DeaiError("the run has no rounds to verify")
    if not verification.ok:
        failed = [str(v.round) for v in verification.rounds if not v.ok]
        what = (["the run (spec, parameters or incentives)"] if verification.problems else []) + (
            [f"round(s) {', '.join(failed)}"] if failed else []
        )
        print(f"verification failed for {' and '.join(what)}", file=sys.stderr)
        sys.exit(1)
    # A lapsed attempt is a round of its own on chain, so the two counts can differ.
    finalized = sum(1 for v in verification.rounds if v.status == "finalized")
    print(f"all {len(verification.rounds)} rounds verified ({finalized} finalized)")


def _print(verification: Verification, record: RunRecord, location: StoreLocation) -> None:
    spec = verification.spec
    epsilon = "∞" if not spec.private else f"{spec.privacy.epsilon:g}"
    print(f"run {record.run_id} on {record.contract} (chain {record.chain_id}), events from {record.source}")
    print(f"spec: {spec.rule.name} {json.dumps(spec.rule.params, sort_keys=True)}, "
          f"ε={epsilon} δ={spec.privacy.delta:g} ({spec.privacy.accountant}), blobs ≤ {spec.max_blob_bytes} bytes")  # fmt: skip
    print(f"store: {location.describe()}")
    run_details = "; ".join(verification.problems or verification.checks)
    print(f"{'run':<9} {'':<13} {'MISMATCH' if verification.problems else 'ok':<8}  {run_details}")
    for v in verification.rounds:
        details = "; ".join(v.problems) if v.problems else "; ".join(v.checks)
        print(f"round {v.round:<3} {v.status:<13} {'ok' if v.ok else 'MISMATCH':<8}  {details}")
