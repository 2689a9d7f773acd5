"""``deai consortium …``: set up a consortium of silos on a Flower deployment.

    deai consortium keystore --out DIR --name NAME        a silo's chain key (encrypted) + password file
    deai consortium tls --out DIR [--host H ...]          the SuperLink's CA, certificate and key
    deai consortium supernode-key --out DIR --name NAME   a SuperNode's EC P-384 key pair (OpenSSH)
    deai consortium fund --rpc URL ADDRESS ...            development ether (anvil, hardhat)
    deai consortium deploy --rpc URL --keystore K --password-file P
    deai consortium register --rpc URL --contract ADDR --keystore K --password-file P
                             --silo ADDRESS --supernode-key KEY.pub
    deai consortium create-run --rpc URL --contract ADDR --keystore K --password-file P
                               --store local:DIR|ipfs:MULTIADDR [--validation-set FILE] [OVERRIDE ...]
    deai consortium watch --rpc URL --contract ADDR --run-id N    a line per round phase, from the chain
    deai consortium demo-data --out DIR --silos N [OVERRIDE ...]
    deai consortium withdraw --rpc URL --contract ADDR --run-id N --keystore K --password-file P [--pool]

Each step prints what it did; one that is repeated or wrong prints one ``error:`` line
and exits 2, having changed nothing.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any


def _keystore_args(parser: argparse.ArgumentParser, who: str) -> None:
    parser.add_argument("--keystore", required=True, type=Path, help=f"{who}'s encrypted keystore file")
    parser.add_argument("--password-file", required=True, type=Path, help="its password (first line)")


def _chain_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpc", required=True, metavar="URL", help="the chain's JSON-RPC URL")


def _admin(args: argparse.Namespace) -> Any:
    from ..consortium.setup import admin_key

    return admin_key(args.keystore, args.password_file)


def _keystore(args: argparse.Namespace) -> None:
    from ..consortium.credentials import create_keystore

    password = None
    if args.password_file:
        lines = Path(args.password_file).read_text(encoding="utf-8").splitlines()
        password = lines[0] if lines else ""
    key = create_keystore(args.out, args.name, password=password, kdf=args.kdf)
    print(f"created chain key {key.address}")
    print(f"  keystore       {key.keystore}")
    print(f"  password file  {key.password_file}  (keep both here; hand over only the address)")


def _tls(args: argparse.Namespace) -> None:
    from ..consortium.credentials import create_tls

    files = create_tls(args.out, hosts=args.host, days=args.days)
    print(f"created a CA and the SuperLink's TLS certificate (valid for localhost, 127.0.0.1, ::1"
          f"{''.join(', ' + h for h in args.host)})")  # fmt: skip
    print(f"  SuperLink:  --ssl-ca-certfile {files.ca_cert} --ssl-certfile {files.server_cert} "
          f"--ssl-keyfile {files.server_key}")  # fmt: skip
    print(f"  SuperNodes and flwr trust {files.ca_cert} (--root-certificates / root-certificates)")
    print(f"  keep {files.ca_key} offline")


def _supernode_key(args: argparse.Namespace) -> None:
    from ..consortium.credentials import create_supernode_keys

    keys = create_supernode_keys(args.out, args.name)
    print(f"created SuperNode key pair {keys.private_key} (EC P-384, OpenSSH)")
    print(f"  public key  {keys.public_key}  (flwr supernode register {keys.public_key} <connection>)")
    print(f"  identity    0x{keys.identity.hex()}  (keccak256 of the public key; the registry binds it to the silo)")


def _fund(args: argparse.Namespace) -> None:
    from ..consortium.setup import fund

    fund(args.rpc, args.addresses)
    print(f"funded {', '.join(args.addresses)} with development ether on {args.rpc}")


def _deploy(args: argparse.Namespace) -> None:
    from ..consortium.setup import deploy

    account = _admin(args)
    address, gas = deploy(args.rpc, account)
    print(f"deployed the round contract at {address} (admin {account.address}, {gas} gas)")


def _register(args: argparse.Namespace) -> None:
    from ..consortium.errors import ConsortiumError
    from ..consortium.setup import register

    try:
        public_key = Path(args.supernode_key).read_bytes()
    except OSError as exc:
        raise ConsortiumError(f"--supernode-key {args.supernode_key}: {exc.strerror or exc}") from None
    identity = register(args.rpc, args.contract, _admin(args), silo=args.silo, supernode_key=public_key)
    print(f"registered silo {args.silo} bound to SuperNode identity 0x{identity.hex()} ({args.supernode_key})")


def _create_run(args: argparse.Namespace) -> None:
    from ..consortium.setup import create_run

    account = _admin(args)
    run = create_run(args.rpc, args.contract, account, store_location=args.store, overrides=args.overrides,
                     validation_set=args.validation_set)  # fmt: skip
    coordinator_keystore = (args.coordinator_keystore or args.keystore).resolve()
    coordinator_password = (args.coordinator_password_file or args.password_file).resolve()
    run_config = " ".join(f"{k}={_toml(v)}" for k, v in (
        ("mode", "deployment"), ("contract", run.contract), ("run-id", run.run_id), ("chain-url", args.rpc),
        ("store", args.store),
        ("keystore", str(coordinator_keystore)), ("password-file", str(coordinator_password)),
        ("output-dir", str(Path(args.output_dir).resolve())),
    ))  # fmt: skip
    print(f"created run {run.run_id} on contract {run.contract}: {run.num_rounds} rounds, rule {run.rule}")
    print(f"  spec           {run.spec_cid}")
    print(f"  initial model  {run.initial_cid}")
    print("  start it with:")
    print(f"    flwr run . {args.connection} --stream --run-config {shlex.quote(run_config)}")


def _withdraw(args: argparse.Namespace) -> None:
    from ..consortium.setup import withdraw

    account = _admin(args)
    amounts = withdraw(args.rpc, args.contract, account, run_id=args.run_id, pool=args.pool)
    unit = "wei (or token units)"
    print(f"withdrew from run {args.run_id} to {account.address}: "
          + ", ".join(f"{kind} {amount} {unit}" for kind, amount in amounts.items()))  # fmt: skip


def _cancel_run(args: argparse.Namespace) -> None:
    from ..consortium.setup import cancel_run

    done = cancel_run(args.rpc, args.contract, _admin(args), run_id=args.run_id)
    print(f"cancelled run {args.run_id} at round {done['round']} with {done['finalized_rounds']} rounds finalized; "
          f"its creator may withdraw the pool ({done['pool']} wei or token units) with 'withdraw --pool'")


def _watch(args: argparse.Namespace) -> None:
    import sys

    from eth_account import Account

    from ..consortium.progress import watch_run
    from ..consortium.setup import open_contract

    contract = open_contract(args.rpc, args.contract, Account.create())  # reads only: no key needed
    done = watch_run(contract, args.run_id, poll_s=args.poll, timeout_s=args.timeout,
                     say=lambda line: print(line, flush=True))  # fmt: skip
    if not done:
        sys.exit(1)


def _toml(value: Any) -> str:
    return str(value) if isinstance(value, int) else '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _demo_data(args: argparse.Namespace) -> None:
    from ..consortium.demo_data import write_silo_files

    written = write_silo_files(args.out, num_silos=args.silos, overrides=args.overrides,
                               eval_fraction=args.eval_fraction)  # fmt: skip
    for files in written:
        print(f"wrote {files.train} ({files.num_train} examples) and {files.eval} ({files.num_eval} held out)")


def add_parser(groups: Any) -> None:
    consortium = groups.add_parser("consortium", help="set up a consortium: keys, certificates, contract, silos, runs")
    steps = consortium.add_subparsers(dest="step", required=True)

    p = steps.add_parser("keystore", help="create a silo's chain key as an encrypted keystore + password file")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", required=True, help="file name stem: NAME.keystore.json and NAME.password")
    p.add_argument("--password-file", type=Path, default=None, help="use this password (default: a random one)")
    p.add_argument("--kdf", choices=("scrypt", "pbkdf2"), default="scrypt")
    p.set_defaults(func=_keystore)

    p = steps.add_parser("tls", help="create the SuperLink's CA, TLS certificate and key")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--host", action="append", default=[], help="a name or IP the SuperLink is reached by (repeat)")
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=_tls)

    p = steps.add_parser("supernode-key", help="create a SuperNode's EC P-384 key pair (OpenSSH format)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.set_defaults(func=_supernode_key)

    p = steps.add_parser("fund", help="give development ether to addresses (development nodes only)")
    _chain_args(p)
    p.add_argument("addresses", nargs="+", metavar="ADDRESS")
    p.set_defaults(func=_fund)

    p = steps.add_parser("deploy", help="deploy the round contract; the key becomes its admin")
    _chain_args(p)
    _keystore_args(p, "the admin")
    p.set_defaults(func=_deploy)

    p = steps.add_parser("register", help="register a silo's address bound to its SuperNode public key")
    _chain_args(p)
    p.add_argument("--contract", required=True)
    _keystore_args(p, "the admin")
    p.add_argument("--silo", required=True, metavar="ADDRESS", help="the silo's chain address")
    p.add_argument("--supernode-key", required=True, type=Path, metavar="KEY.pub",
                   help="the silo's SuperNode public key (OpenSSH)")  # fmt: skip
    p.set_defaults(func=_register)

    p = steps.add_parser("create-run", help="store a run's spec and initial model, record them on chain")
    _chain_args(p)
    p.add_argument("--contract", required=True)
    _keystore_args(p, "the admin")
    p.add_argument("--store", required=True, help="where the silos read blobs: local:DIR or ipfs:MULTIADDR")
    p.add_argument("--coordinator-keystore", type=Path, default=None,
                   help="the coordinator's key (opens rounds) for the printed command (default: the admin's)")
    p.add_argument("--coordinator-password-file", type=Path, default=None)
    p.add_argument("--output-dir", default="deai-run", help="where the coordinator writes results.json")
    p.add_argument("--connection", default="consortium", help="the flwr connection name for the printed command")
    p.add_argument("--validation-set", type=Path, default=None, metavar="FILE",
                   help="a loss-scored run's validation rows (.npz, .csv or .parquet, as a silo's file)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for deai-flower (e.g. num_rounds=2); no dataset "
                   "is loaded: the data schema is the one dataset.schema declares")  # fmt: skip
    p.set_defaults(func=_create_run)

    p = steps.add_parser("withdraw", help="pull a key's rewards and stake from a run (and, for its creator, the pool)")
    _chain_args(p)
    p.add_argument("--contract", required=True)
    p.add_argument("--run-id", required=True, type=int)
    _keystore_args(p, "the silo (or the run's creator)")
    p.add_argument("--pool", action="store_true", help="also return what the pool holds (the creator, after the run)")
    p.set_defaults(func=_withdraw)

    p = steps.add_parser("cancel-run", help="end a run whose last three attempts failed, so stakes and pool come back")
    _chain_args(p)
    p.add_argument("--contract", required=True)
    p.add_argument("--run-id", required=True, type=int)
    _keystore_args(p, "any funded key")
    p.set_defaults(func=_cancel_run)

    p = steps.add_parser("watch", help="print a run's rounds as the chain records them, until every one is finalized")
    _chain_args(p)
    p.add_argument("--contract", required=True)
    p.add_argument("--run-id", required=True, type=int)
    p.add_argument("--poll", type=float, default=2.0, help="seconds between two looks at the chain (default: 2)")
    p.add_argument("--timeout", type=float, default=None, help="stop watching after this many seconds (exit 1)")
    p.set_defaults(func=_watch)

    p = steps.add_parser("demo-data", help="write silo data files from a bundled dataset (demonstrations)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--silos", required=True, type=int)
    p.add_argument("--eval-fraction", type=float, default=0.25)
    p.add_argument("overrides", nargs="*", help="Hydra overrides choosing the dataset (e.g. dataset=breast_cancer)")
    p.set_defaults(func=_demo_data)
