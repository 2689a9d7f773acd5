"""``deai``: tools around a run.

    deai store add FILE            store FILE, print its CID (ipfs add --cid-version=1 --raw-leaves)
    deai store get CID [-o OUT]    write the verified blob to OUT (default: stdout)
    deai store verify CID          check the stored blob still matches its CID
    deai verify OUTPUT_DIR         replay a run from its exported events and the store inside it
    deai verify --rpc URL --contract ADDRESS --run-id N (--store-root DIR | --store-api MULTIADDR)
                                   the same from a live node's events

    deai consortium ...            set up a consortium (keys, certificates, contract, silos, runs)
    deai silo check --node-config CONFIG
                                   check a SuperNode's node config (terms, key, data, chain, store)
    deai release ...               the FAB hash a silo approves, and the gate that runs only approved FABs
    deai local ...                 start and stop a trial's background parts; stop the local SuperLink

``deai verify`` takes the rule, its parameters and the DP settings from the run spec the
chain names, never from flags or a config; it exits 1 when the run does not verify.

For ``deai store``, the store is the embedded one at ``--root`` (default:
``$DEAI_STORE_ROOT``, else ``./store``; a run keeps its blobs in ``<output dir>/store``),
or with ``--store ipfs`` (implied by ``--api-addr``) the IPFS node whose RPC API is at
``--api-addr`` (default: ``$DEAI_IPFS_API``, else ``/ip4/127.0.0.1/tcp/5001``). Either
way every blob read is verified against its CID on this machine. Errors are one line on
stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import DeaiError
from ..storage import DEFAULT_API_ADDR, validate_cid

if TYPE_CHECKING:
    from ..storage import IpfsStore, LocalStore


def _store(args: argparse.Namespace) -> LocalStore | IpfsStore:
    kind = args.store or ("ipfs" if args.api_addr else os.environ.get("DEAI_STORE", "local"))
    from ..storage import IpfsStore, LocalStore

    if kind == "ipfs":
        api_addr = args.api_addr or os.environ.get("DEAI_IPFS_API", DEFAULT_API_ADDR)
        return IpfsStore(api_addr, timeout=args.timeout, retries=args.retries)
    if kind != "local":
        raise DeaiError(f"unknown store {kind!r} (from $DEAI_STORE); choose local or ipfs")
    return LocalStore(args.root)


def _add(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise DeaiError(f"no such file: {path}")
    print(_store(args).put_file(path))


def _get(args: argparse.Namespace) -> None:
    store = _store(args)
    cid = validate_cid(args.cid)
    if args.output:
        store.get_to_file(cid, args.output)
    else:
        sys.stdout.buffer.write(store.get(cid))
        sys.stdout.buffer.flush()


def _verify(args: argparse.Namespace) -> None:
    cid = validate_cid(args.cid)
    _store(args).get(cid)  # raises if missing or tampered
    print(f"ok {cid}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deai", description="deai-flower tools")
    groups = parser.add_subparsers(dest="group", required=True)
    store = groups.add_parser("store", help="the content-addressed blob store")
    store.add_argument("--store", choices=("local", "ipfs"), default=None,
                       help="local directory or IPFS node (default: $DEAI_STORE, else ipfs if --api-addr "
                            "is given, else local)")  # fmt: skip
    store.add_argument("--root", default=os.environ.get("DEAI_STORE_ROOT", "store"),
                       help="embedded store directory (default: $DEAI_STORE_ROOT or ./store)")  # fmt: skip
    store.add_argument("--api-addr", default=None, metavar="MULTIADDR",
                       help=f"IPFS node's RPC API (default: $DEAI_IPFS_API or {DEFAULT_API_ADDR})")  # fmt: skip
    store.add_argument("--timeout", type=float, default=30.0, help="IPFS: seconds per request (default: 30)")
    store.add_argument("--retries", type=int, default=2,
                       help="IPFS: extra attempts when the node is unreachable (default: 2)")  # fmt: skip
    actions = store.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="store a file and print its CID")
    add.add_argument("file")
    add.set_defaults(func=_add)
    get = actions.add_parser("get", help="write a blob, verified against its CID")
    get.add_argument("cid")
    get.add_argument("-o", "--output", help="output file (default: standard output)")
    get.set_defaults(func=_get)
    verify = actions.add_parser("verify", help="check a stored blob against its CID")
    verify.add_argument("cid")
    verify.set_defaults(func=_verify)
    # Each subcommand imports what it runs only when it runs: --help and the store
    # commands must not pay for the ML stack or web3.
    from . import consortium_cmd, silo_cmd, verify_cmd

    verify_cmd.add_parser(groups)
    consortium_cmd.add_parser(groups)
    silo_cmd.add_parser(groups)
    from . import local_cmd, release_cmd

    release_cmd.add_parser(groups)
    local_cmd.add_parser(groups)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DeaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
