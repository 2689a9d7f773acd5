"""``deai verify``: replay a run from chain events and the store; exit 1 on any mismatch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import DeaiError
from ..federation import open_store
from ..storage import ContentStore, LocalStore
from ..verify import RunRecord, verify_run


def add_parser(groups: argparse._SubParsersAction) -> None:
    verify = groups.add_parser("verify", help="replay a run's rounds from the chain and the store")
    verify.add_argument("output_dir", nargs="?", help="a run's output directory (holds results.json and store/)")
    verify.add_argument("--rpc", help="JSON-RPC URL of the chain (instead of an output directory's event log)")
    verify.add_argument("--contract", help="contract address (with --rpc)")
    verify.add_argument("--run-id", type=int, default=1, help="run id on the contract (with --rpc; default 1)")
    verify.add_argument("--store-root", help="embedded store directory (default: the store the run recorded)")
    verify.add_argument("--api-addr", help="IPFS node RPC multiaddr to read blobs from instead")
    verify.add_argument("--rule", default="fedavg", help="aggregation rule of the run (with --rpc)")
    verify.add_argument("--rule-params", default="{}", help="JSON object of rule parameters (with --rpc)")
    verify.add_argument("--max-blob-bytes", type=int, default=64 * 1024 * 1024)
    verify.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> None:
    if args.rpc:
        if not args.contract or not (args.store_root or args.api_addr):
            raise DeaiError("--rpc needs --contract and --store-root or --api-addr")
        record = RunRecord.from_chain(rpc_url=args.rpc, contract=args.contract, run_id=args.run_id, rule=args.rule,
                                      rule_params=json.loads(args.rule_params), max_blob_bytes=args.max_blob_bytes)  # fmt: skip
        store = _explicit_store(args)
    elif args.output_dir:
        output_dir = Path(args.output_dir)
        record = RunRecord.from_output_dir(output_dir)
        store = _explicit_store(args) if (args.store_root or args.api_addr) else _recorded_store(output_dir)
    else:
        raise DeaiError("give a run's OUTPUT_DIR, or --rpc URL --contract ADDRESS --store-root DIR")
    verdicts = verify_run(record, store)
    table = Table(title=f"deai verify: run {record.run_id} on {record.contract}")
    for column in ("round", "status", "verdict", "details"):
        table.add_column(column)
    for v in verdicts:
        details = "; ".join(v.problems) if v.problems else "; ".join(v.checks)
        table.add_row(str(v.round), v.status, "[green]ok[/green]" if v.ok else "[red]MISMATCH[/red]", details)
    Console(width=160).print(table)
    if not verdicts:
        raise DeaiError("the run has no rounds to verify")
    failed = [v.round for v in verdicts if not v.ok]
    if failed:
        print(f"verification failed for round(s) {', '.join(map(str, failed))}", file=sys.stderr)
        sys.exit(1)
    print(f"all {len(verdicts)} rounds verified")


def _explicit_store(args: argparse.Namespace) -> ContentStore:
    if args.api_addr:
        return open_store("ipfs", args.api_addr, max_bytes=args.max_blob_bytes)
    return LocalStore(args.store_root)


def _recorded_store(output_dir: Path) -> ContentStore:
    """The store a run recorded (a local one moved with its run is found beside results)."""
    results = json.loads((output_dir / "results.json").read_text(encoding="utf-8"))
    kind, location = results["store"]["kind"], results["store"]["location"]
    if kind == "local" and not Path(location).is_dir():
        location = str(output_dir / "store")
    return open_store(kind, location, max_bytes=int(results["config"]["storage"]["max_blob_bytes"]))
